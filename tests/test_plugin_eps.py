"""Plugin execution providers (OpenVINO first): the registry, device choice, explicit precision, no CPU fallback,
and one line wherever the plugin is missing or lists no device (on AMD CPUs OpenVINO lists none)."""

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from onnxstyle import ort_providers as providers
from onnxstyle import plugin_eps
from onnxstyle.errors import ProviderError, UsageError
from onnxstyle.plugin_eps import KNOWN, PluginTarget, load_config, parse_library, parse_target, select_device
from onnxstyle.ort_providers import ProviderConfig, canonical, session_options, short_name
from onnxstyle.runners import parse_runner

OPENVINO = KNOWN["openvino"]


def _openvino_devices() -> list:
    """The OpenVINO devices the real plugin lists here (none on AMD CPUs, none when it is not installed)."""
    try:
        plugin_eps.register(OPENVINO)
    except ProviderError:
        return []
    return plugin_eps.ep_devices(OPENVINO.ep_name)


OPENVINO_LISTS_A_DEVICE = bool(_openvino_devices())
needs_openvino_device = pytest.mark.skipif(not OPENVINO_LISTS_A_DEVICE, reason="OpenVINO is not installed or lists no device here (AMD CPU)")
refused_here = pytest.mark.skipif(OPENVINO_LISTS_A_DEVICE, reason="OpenVINO lists a device here: nothing is refused")


@dataclass
class FakeDevice:
    """What we read of an OrtEpDevice."""

    ep_name: str
    ep_metadata: dict[str, str] = field(default_factory=dict)


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_registry_names_every_known_plugin():
    assert set(KNOWN) == {"openvino", "tensorrt-rtx", "webgpu", "mlx"}
    assert OPENVINO.distributions[0] == "onnxruntime-ep-openvino" and OPENVINO.module == "onnxruntime_ep_openvino"
    assert OPENVINO.ep_name == "OpenVINOExecutionProvider" and OPENVINO.device_key == "ov_device" and OPENVINO.default_device == "CPU"
    assert KNOWN["tensorrt-rtx"].distributions[0] == "onnxruntime-ep-nv-tensorrt-rtx"
    assert KNOWN["webgpu"].module == "onnxruntime_ep_webgpu"


@pytest.mark.parametrize(
    "text,provider,target",
    [
        ("openvino", "OpenVINOExecutionProvider", "openvino"),
        ("OpenVINO:CPU", "OpenVINOExecutionProvider", "openvino"),
        ("openvino:gpu", "OpenVINOExecutionProvider:GPU", "openvino-gpu"),
        ("openvino-npu", "OpenVINOExecutionProvider:NPU", "openvino-npu"),
        ("OpenVINOExecutionProvider:GPU", "OpenVINOExecutionProvider:GPU", "openvino-gpu"),
        ("tensorrt-rtx", "NvTensorRTRTXExecutionProvider", "tensorrt-rtx"),
        ("webgpu", "WebGpuExecutionProvider", "webgpu"),
    ],
)
def test_plugin_names_resolve_to_provider_and_runner(text, provider, target):
    assert canonical(text) == provider
    assert short_name(provider) == target
    assert parse_runner(text).label == f"ort-{target}"
    assert parse_runner(f"ort-{text}").target == target


def test_built_in_names_are_not_taken_for_plugins():
    assert canonical("tensorrt") == "TensorrtExecutionProvider" and parse_target("tensorrt") is None
    assert parse_runner("cpu").target == "cpu"


def test_unknown_plugin_device_is_a_usage_error_naming_the_devices():
    with pytest.raises(UsageError, match="unknown OpenVINO device 'xpu'.*use openvino, openvino-gpu, openvino-npu"):
        parse_runner("openvino:xpu")
    with pytest.raises(UsageError, match="unknown WebGPU device"):
        canonical("webgpu:gpu")


def test_device_selection_by_ov_device_metadata():
    devices = [
        FakeDevice("CPUExecutionProvider"),
        FakeDevice("OpenVINOExecutionProvider", {"ov_device": "CPU"}),
        FakeDevice("OpenVINOExecutionProvider", {"ov_device": "GPU.0"}),
        FakeDevice("OpenVINOExecutionProvider", {"ov_device": "GPU.1"}),
    ]
    assert select_device(devices, PluginTarget(OPENVINO, "CPU")) is devices[1]
    assert select_device(devices, PluginTarget(OPENVINO, "GPU")) is devices[2]
    assert select_device(devices, PluginTarget(OPENVINO, "NPU")) is None
    assert select_device(devices[:1], PluginTarget(OPENVINO, "CPU")) is None
    webgpu = FakeDevice("WebGpuExecutionProvider")
    assert select_device([devices[1], webgpu], PluginTarget(KNOWN["webgpu"], None)) is webgpu


def test_no_device_reasons_say_what_the_plugin_lists():
    cpu_only = [FakeDevice("OpenVINOExecutionProvider", {"ov_device": "CPU"})]
    assert plugin_eps.no_device_reason(PluginTarget(OPENVINO, "GPU"), "1.8.1", cpu_only) == (
        "OpenVINO (onnxruntime-ep-openvino 1.8.1) lists no GPU device here (it lists CPU)"
    )
    none = plugin_eps.no_device_reason(PluginTarget(OPENVINO, "CPU"), "1.8.1", [FakeDevice("CPUExecutionProvider")])
    assert none.startswith("OpenVINO (onnxruntime-ep-openvino 1.8.1) lists no device here: its plugin lists only Intel CPUs, GPUs and NPUs, and this CPU's vendor is ")


@pytest.mark.parametrize("precision,hint", [("fp32", "f32"), ("bf16", "bf16"), ("fp16", "f16")])
def test_precision_is_told_through_load_config(precision, hint):
    cpu = ProviderConfig(canonical("openvino"), threads=3, precision=precision).options()
    assert set(cpu) == {"load_config"}  # the plugin rejects the old built-in EP's device_type
    assert json.loads(cpu["load_config"]) == {
        "CPU": {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1", "INFERENCE_NUM_THREADS": "3"}
    }
    gpu = json.loads(ProviderConfig(canonical("openvino:gpu"), threads=3, precision=precision).options()["load_config"])
    assert gpu == {"GPU": {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1"}}
    assert load_config(PluginTarget(OPENVINO, "NPU"), precision, 3) == {"NPU": {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY"}}


def test_plugin_sessions_disable_the_cpu_fallback():
    options = session_options(ProviderConfig(canonical("openvino"), threads=2))
    assert options.get_session_config_entry("session.disable_cpu_ep_fallback") == "1"


def test_plugin_precisions_follow_the_device():
    from onnxstyle.precision import cpu_has_bf16, supported

    assert supported("onnxruntime", "openvino")[0] == (("fp32", "bf16") if cpu_has_bf16() else ("fp32",))
    assert supported("onnxruntime", "openvino-gpu")[0] == ("fp32", "fp16")
    assert supported("onnxruntime", "webgpu")[0] == ("fp32",)


class RecordingOptions:
    """Stands in for SessionOptions: records the device and options a plugin session is opened with."""

    def __init__(self, real):
        self.real, self.devices, self.provider_options = real, None, None

    def add_provider_for_devices(self, devices, options):
        self.devices, self.provider_options = devices, options


def test_plugin_session_is_opened_on_the_chosen_device_and_verified(monkeypatch):
    import onnxruntime as ort

    device = FakeDevice("OpenVINOExecutionProvider", {"ov_device": "GPU.0"})
    opened = {}
    monkeypatch.setattr(plugin_eps, "device_for", lambda target: device if target.device == "GPU" else None)
    monkeypatch.setattr(providers, "session_options", lambda config: opened.setdefault("options", RecordingOptions(session_options(config))))

    class FakeSession:
        def __init__(self, source, sess_options=None, providers=None):
            opened["providers"] = providers
            self.claimed = opened.get("claims", ["OpenVINOExecutionProvider", "CPUExecutionProvider"])

        def get_providers(self):
            return self.claimed

    monkeypatch.setattr(ort, "InferenceSession", FakeSession)
    config = ProviderConfig(canonical("openvino:gpu"), threads=2, precision="fp16")
    providers.create_session(b"model", config)
    options = opened["options"]
    assert options.devices == [device] and opened["providers"] is None
    assert json.loads(options.provider_options["load_config"])["GPU"]["INFERENCE_PRECISION_HINT"] == "f16"
    assert options.real.get_session_config_entry("session.disable_cpu_ep_fallback") == "1"
    opened.clear()
    opened["claims"] = ["CPUExecutionProvider"]
    with pytest.raises(ProviderError, match="provider openvino-gpu was requested but the session runs on CPUExecutionProvider; refusing a silent fallback"):
        providers.create_session(b"model", config)


def test_missing_package_is_one_line_with_the_install_hint(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None if name == OPENVINO.module else real(name, *args))
    with pytest.raises(ProviderError, match=r"^OpenVINO is not installed: pip install onnxruntime-ep-openvino$"):
        providers.create_session(providers.probe_model(), ProviderConfig(canonical("openvino")))
    status = providers.probe_provider(canonical("openvino"))
    assert not status.usable and "pip install onnxruntime-ep-openvino" in status.reason


def test_registration_is_once_per_process():
    if plugin_eps.installed_version(OPENVINO) is None:
        pytest.skip("onnxruntime-ep-openvino is not installed")
    assert plugin_eps.register(OPENVINO) == plugin_eps.register(OPENVINO)


def test_engine_gives_plugins_the_direct_graph_and_records_load_config(monkeypatch):
    """Winograd is the CPU EP's rewrite: a plugin EP gets direct convolutions, and describe() carries its load_config."""
    from onnxstyle.backbones import get_backbone
    from onnxstyle.engines import EngineSpec
    from onnxstyle.engines import onnxruntime_engine
    from onnxstyle.weights import resolve

    real = onnxruntime_engine.create_session
    # sessions on the CPU EP stand in for the plugin's (no OpenVINO device here); the engine's decisions are what is tested
    monkeypatch.setattr(onnxruntime_engine, "create_session", lambda model, config: real(model, replace(config, provider="CPUExecutionProvider")))
    nin = get_backbone("nin")
    spec = EngineSpec.defaults(nin, resolve("synthetic", nin))
    config = ProviderConfig(canonical("openvino"), threads=1)
    with pytest.raises(UsageError, match="Winograd convolutions are built for the cpu provider only; openvino chooses its own"):
        onnxruntime_engine.OnnxRuntimeEngine(spec, config, [(128, 128)], winograd=True, whole_image=False)
    engine = onnxruntime_engine.OnnxRuntimeEngine(spec, config, [(128, 128)], whole_image=False)
    described = engine.describe()
    assert engine.winograd_size is None and described["conv_algorithm"] == "direct" and described["static_shapes"]
    assert json.loads(described["provider_options"]["load_config"])["CPU"]["INFERENCE_PRECISION_HINT"] == "f32"
    if plugin_eps.installed_version(OPENVINO) is not None:
        assert str(described["provider_package"]).startswith("onnxruntime-ep-openvino ")


def test_ep_library_values_are_checked_and_passed_to_workers(tmp_path, monkeypatch):
    monkeypatch.setenv(plugin_eps.EP_LIBRARIES_VARIABLE, "")  # restored afterwards: add_libraries writes os.environ
    assert parse_library("/opt/libfoo.so:FooExecutionProvider") == (Path("/opt/libfoo.so"), "FooExecutionProvider")
    assert parse_library("/opt/libfoo.so")[1] is None
    assert parse_library(r"C:\ep\foo.dll")[1] is None
    with pytest.raises(UsageError, match="no such file"):
        plugin_eps.add_libraries([str(tmp_path / "missing.so")])
    library = tmp_path / "libfoo.so"
    library.write_bytes(b"")
    plugin_eps.add_libraries([f"{library}:FooExecutionProvider", f"{library}:FooExecutionProvider"])
    assert os.environ[plugin_eps.EP_LIBRARIES_VARIABLE] == f"{library}:FooExecutionProvider"


def test_ep_library_that_is_no_plugin_fails_in_one_line(cli, tmp_path, monkeypatch):
    monkeypatch.setenv(plugin_eps.EP_LIBRARIES_VARIABLE, "")
    library = tmp_path / "libnot.so"
    library.write_bytes(b"not a library")
    missing = cli("--ep-library", str(tmp_path / "missing.so"), "providers")
    assert missing.returncode == 2 and "no such file" in missing.stderr
    broken = cli("--ep-library", f"{library}:NotExecutionProvider", "profile", "--provider", "NotExecutionProvider", "--model", "nin", "--size", "64")
    assert broken.returncode == 8, broken.stderr
    assert "cannot register" in _flat(broken.stderr) and "Traceback" not in broken.stderr and len(broken.stderr.strip().splitlines()) == 1


def test_providers_lists_every_plugin_with_why(cli):
    result = cli("providers", "--json")
    assert result.returncode == 0, result.stderr
    rows = {row["provider"]: row for row in json.loads(result.stdout) if row["engine"] == "onnxruntime"}
    for key, ep in KNOWN.items():
        assert key in rows
        if not rows[key]["usable"]:
            reason = rows[key]["reason"]
            assert f"pip install {ep.distributions[0]}" in reason or "lists no device here" in reason, reason
    if not OPENVINO_LISTS_A_DEVICE and plugin_eps.installed_version(OPENVINO) is not None:
        assert "its plugin lists only Intel CPUs, GPUs and NPUs, and this CPU's vendor is" in rows["openvino"]["reason"]


@refused_here
@pytest.mark.parametrize(
    "args",
    [
        ["bench", "--provider", "openvino", "--model", "nin", "--sizes", "64"],
        ["bench", "--provider", "cpu,openvino:gpu", "--model", "nin", "--sizes", "64"],
        ["stylize", "--demo", "--provider", "openvino", "--model", "nin", "--size", "64", "--iterations", "1"],
        ["parity", "--provider", "openvino", "--model", "nin", "--sizes", "64"],
        ["profile", "--provider", "openvino", "--model", "nin", "--size", "64"],
        ["converge", "--configs", "openvino:fp32:lbfgs", "--sizes", "64", "--seconds", "1"],
    ],
)
def test_every_command_naming_openvino_ends_in_one_line(cli, tmp_path, args):
    result = cli(*args, cwd=tmp_path)
    assert result.returncode == 8, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.stderr
    assert "OpenVINO" in lines[0] and ("lists no device here" in lines[0] or "pip install onnxruntime-ep-openvino" in lines[0])
    assert not [path for path in tmp_path.rglob("*") if path.is_file()]  # nothing written: no silent CPU-EP run


@needs_openvino_device
def test_real_openvino_runs_the_probe_on_its_own_device():
    session = providers.create_session(providers.probe_model(), ProviderConfig(canonical("openvino"), threads=1))
    assert session.get_providers()[0] == "OpenVINOExecutionProvider"
    assert providers.run_probe(session) is None
    assert providers.probe_provider(canonical("openvino")).usable


@needs_openvino_device
def test_real_openvino_fp32_gradient_matches_the_cpu_provider():
    """The loss+gradient graph on OpenVINO's CPU with f32 told: the export's fp32 parity, not bf16's."""
    from onnxstyle.provider_audit import check_ort_provider, check_problem

    check = check_ort_provider(providers.probe_provider(canonical("openvino")), check_problem(threads=1), threads=1)
    assert check.usable, check.reason
    assert check.ok, check.problems
