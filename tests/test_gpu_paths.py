"""The GPU code paths, checked where they can be without a GPU: CUDA-graph scope, bound buffers that keep
their addresses, TF32 pinning, device memory, the provider probe and check, package detection, and the
torch engine's one transfer per step."""

import json
import sys
import types
from dataclasses import replace

import numpy as np
import pytest
import torch

from onnxstyle.backbones import get_backbone
from onnxstyle.engines import EngineSpec
from onnxstyle.engines.onnxruntime_engine import OnnxRuntimeEngine, session_config
from onnxstyle.losses import LossWeights
from onnxstyle.ort_providers import ProviderConfig
from onnxstyle.weights import resolve


def _nin_spec() -> EngineSpec:
    nin = get_backbone("nin")
    return EngineSpec(nin, ("relu7",), ("relu0", "relu3"), "max", resolve("synthetic", nin))


def _images(side: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, side, side, generator=generator), torch.rand(1, 3, side, side, generator=generator)


WEIGHTS = LossWeights((1.0,), (1.0, 2.0), 1e-3)


def test_only_the_loss_session_captures_a_cuda_graph(monkeypatch):
    for provider, option in (("CUDAExecutionProvider", "enable_cuda_graph"), ("TensorrtExecutionProvider", "trt_cuda_graph_enable")):
        base = ProviderConfig(provider, cuda_graph=True)
        assert session_config(base, "loss", fixed=True).options()[option] in ("1", "True")
        for kind in ("features", "tile_statistics", "tile_gradient"):
            assert session_config(base, kind, fixed=True).options()[option] in ("0", "False")
    # and the engine opens its sessions with exactly those settings
    import onnxstyle.engines.onnxruntime_engine as module

    opened: list[tuple[str, bool]] = []
    real = module.create_session

    def recording(model, config):
        opened.append((config.cuda_graph, len(model)))
        return real(model, replace(config, cuda_graph=False))

    engine = OnnxRuntimeEngine(_nin_spec(), ProviderConfig("CPUExecutionProvider", threads=1), [(96, 96)], io_binding=True)
    engine.config = replace(engine.config, cuda_graph=True)  # what a CUDA engine holds; the CPU EP ignores the flag
    engine._sessions.clear()
    monkeypatch.setattr(module, "create_session", recording)
    content, style = _images(96, 0)
    engine.set_targets(engine.build_targets(content, [style], [1.0], WEIGHTS))  # opens the features session
    engine.loss_and_grad(content)  # opens the loss session
    assert [flag for flag, _ in opened] == [False, True]


def test_new_targets_go_into_the_bound_buffers_and_a_new_size_rebinds():
    spec = _nin_spec()
    engine = OnnxRuntimeEngine(spec, ProviderConfig("CPUExecutionProvider", threads=1), [(96, 96)], io_binding=True)
    a, b = _images(96, 1)
    image = (a + b) / 2
    engine.set_targets(engine.build_targets(a, [b], [1.0], WEIGHTS))
    first, _ = engine.loss_and_grad(image)
    addresses = {name: tensor.data_ptr() for name, tensor in engine._feeds.items()}
    bound = engine._bound[(96, 96)]
    engine.set_targets(engine.build_targets(b, [a], [1.0], WEIGHTS))
    second, grad = engine.loss_and_grad(image)
    assert {name: tensor.data_ptr() for name, tensor in engine._feeds.items()} == addresses
    assert engine._bound[(96, 96)] is bound
    fresh = OnnxRuntimeEngine(spec, ProviderConfig("CPUExecutionProvider", threads=1), [(96, 96)], io_binding=True)
    fresh.set_targets(fresh.build_targets(b, [a], [1.0], WEIGHTS))
    expected, expected_grad = fresh.loss_and_grad(image)
    assert second.content == pytest.approx(expected.content, rel=1e-6) and second.content[0] != pytest.approx(first.content[0], rel=1e-2)
    assert torch.allclose(grad, expected_grad, rtol=1e-5, atol=1e-9)
    # A new size changes the content targets' shapes: new buffers, new bindings, and (with CUDA graphs) new loss sessions.
    engine.config = replace(engine.config, cuda_graph=True)
    captured = {key: session for key, session in engine._sessions.items() if key[0] == "loss"}
    small, other = _images(64, 2)
    engine.set_targets(engine.build_targets(small, [other], [1.0], WEIGHTS))
    assert engine._bound == {}
    assert all(engine._sessions.get(key) is not session for key, session in captured.items())
    terms, _ = engine.loss_and_grad(small)
    assert np.isfinite(terms.total)


def test_tf32_is_pinned_with_the_current_switches_and_before_every_step(monkeypatch):
    from onnxstyle.precision import set_tf32, tf32_state

    cuda = torch.device("cuda")
    set_tf32(cuda, "tf32")
    assert tf32_state() == {"matmul": True, "cudnn_conv": True}
    set_tf32(cuda, "fp32")
    assert tf32_state() == {"matmul": False, "cudnn_conv": False}  # cuDNN's own default is TF32 on: pinned off
    set_tf32(torch.device("cpu"), "tf32")
    assert tf32_state() == {"matmul": False, "cudnn_conv": False}

    import onnxstyle.engines.eager as eager_module
    import onnxstyle.engines.torch_engine as torch_module
    from onnxstyle.engines.eager import EagerLoop
    from onnxstyle.engines.torch_engine import TorchEngine

    pins: list[str] = []
    monkeypatch.setattr(torch_module, "set_tf32", lambda device, precision: pins.append(precision))
    monkeypatch.setattr(eager_module, "set_tf32", lambda device, precision: pins.append(precision))
    spec = _nin_spec()
    content, style = _images(64, 3)
    engine = TorchEngine(spec, "cpu", threads=1)
    engine.set_targets(engine.build_targets(content, [style], [1.0], WEIGHTS))
    engine.loss_and_grad(content)
    engine.loss_and_grad(content)
    loop = EagerLoop(spec, content, style, WEIGHTS, threads=1)
    loop.step()
    loop.step()
    assert len(pins) == 1 + 2 + 1 + 2  # each constructor once, then every step


def test_tf32_override_is_recorded_and_warned(monkeypatch):
    from onnxstyle.sysinfo import environment_warnings, fingerprint

    monkeypatch.delenv("NVIDIA_TF32_OVERRIDE", raising=False)
    assert not any("TF32" in warning for warning in environment_warnings())
    monkeypatch.setenv("NVIDIA_TF32_OVERRIDE", "0")
    assert any("NVIDIA_TF32_OVERRIDE=0" in warning and "tf32 cells measure fp32" in warning for warning in environment_warnings())
    assert fingerprint()["nvidia_tf32_override"] == "0"


def test_torch_engine_copies_the_loss_terms_off_the_device_once(monkeypatch):
    from onnxstyle.engines.torch_engine import TorchEngine, loss_terms

    spec = _nin_spec()
    content, style = _images(64, 4)
    engine = TorchEngine(spec, "cpu", threads=1)
    engine.set_targets(engine.build_targets(content, [style], [1.0], WEIGHTS))
    reads = []
    for name in ("__float__", "item"):
        original = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda self, *a, _name=name, _original=original: reads.append(_name) or _original(self, *a))
    terms, _ = engine.loss_and_grad(content * 0.5 + style * 0.5)
    assert reads == []  # no per-term float(): one stacked .cpu() transfer
    assert terms.total == pytest.approx(sum(terms.content) + sum(terms.style) + terms.tv, rel=1e-5)
    split = loss_terms(torch.tensor(6.0), [torch.tensor(1.0)], [torch.tensor(2.0), torch.tensor(3.0)], torch.tensor(0.5))
    assert (split.total, split.content, split.style, split.tv) == (6.0, [1.0], [2.0, 3.0], 0.5)


def test_targets_follow_the_engine_to_its_device():
    from onnxstyle.engines.base import Engine, Targets

    class MetaEngine(Engine):
        device = torch.device("meta")  # type: ignore[assignment]

        def extract(self, image):  # pragma: no cover - not used
            raise NotImplementedError

        def loss_and_grad(self, image):  # pragma: no cover - not used
            raise NotImplementedError

        def describe(self):  # pragma: no cover - not used
            return {}

    engine = MetaEngine(_nin_spec())
    engine.set_targets(Targets({"relu7": torch.ones(1, 2, 3, 3)}, {"relu0": torch.ones(2, 2)}, WEIGHTS))
    assert engine.targets is not None
    assert engine.targets.content["relu7"].device.type == "meta" and engine.targets.style["relu0"].device.type == "meta"


def test_gpu_memory_comes_from_nvml_for_this_process_and_the_table_says_which(monkeypatch):
    import os

    from onnxstyle.bench.records import Cell
    from onnxstyle.bench.session import process_device_bytes
    from onnxstyle.report.views import memory_text

    assert process_device_bytes("cpu") is None
    fake = types.ModuleType("pynvml")
    fake.NVMLError = RuntimeError  # type: ignore[attr-defined]
    fake.nvmlInit = lambda: None  # type: ignore[attr-defined]
    fake.nvmlDeviceGetHandleByIndex = lambda index: index  # type: ignore[attr-defined]
    fake.nvmlDeviceGetComputeRunningProcesses = lambda handle: [  # type: ignore[attr-defined]
        types.SimpleNamespace(pid=os.getpid() + 1, usedGpuMemory=1),
        types.SimpleNamespace(pid=os.getpid(), usedGpuMemory=3 * 2**30),
    ]
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    assert process_device_bytes("cuda:0") == 3 * 2**30
    gpu = Cell("vgg19", "ort-cuda", 256, 256, device_used_bytes=3 * 2**30, device_peak_bytes=0, peak_rss_bytes=2**30)
    cpu = Cell("vgg19", "ort-cpu", 256, 256, peak_rss_bytes=2**30)
    assert memory_text(gpu) == "3.00 GPU" and memory_text(cpu) == "1.00 RSS"
    from onnxstyle.report.views import setup_text

    gpu.setup_seconds, gpu.engine = 12.5, {"build_seconds": 10.25}
    cpu.setup_seconds = 1.5
    assert setup_text(gpu) == "12.50 (build 10.25)" and setup_text(cpu) == "1.50"


def test_the_probe_runs_a_conv_and_a_matmul_and_names_missing_libraries(monkeypatch):
    from onnxstyle import ort_providers as providers

    status = providers.probe_provider("CPUExecutionProvider")
    assert status.usable and "Conv and a MatMul" in status.reason

    class Wrong:
        def run(self, names, feeds):
            return [np.zeros((1, 3, 6, 6), np.float32), np.zeros((8, 8), np.float32)]

    assert "conv differs from numpy" in providers.run_probe(Wrong())

    class Lazy:
        def run(self, names, feeds):
            raise RuntimeError("CUDNN failure: Could not load library libcudnn_engines_precompiled.so.9. Error: not found\nmore")

    monkeypatch.setattr(providers, "create_session", lambda model, config: Lazy())
    status = providers.probe_provider("CUDAExecutionProvider")
    assert not status.usable and status.reason == "provider cuda fails its first run: missing libcudnn_engines_precompiled.so.9"
    assert providers.missing_library("libcublasLt.so.13: cannot open shared object file: No such file or directory") == "missing libcublasLt.so.13"


def test_preflight_names_the_library_the_cuda_provider_lacks(monkeypatch):
    from onnxstyle import ort_providers as providers

    if torch.cuda.is_available() or providers.provider_library("CUDAExecutionProvider") is None:
        pytest.skip("needs onnxruntime-gpu on a machine without CUDA libraries")
    monkeypatch.setitem(providers.REQUIRED_LIBRARIES, "CUDAExecutionProvider", ())  # past the driver check
    reason = providers.preflight("CUDAExecutionProvider")
    assert reason is not None and reason.startswith("libonnxruntime_providers_cuda.so cannot load: missing lib"), reason


def test_ort_build_is_read_from_the_build_and_two_wheels_are_a_warning():
    from onnxstyle.ort_providers import ort_conflict, ort_info

    info = ort_info()
    assert info["file"] and info["device"] in ("CPU", "GPU") and info["package"].startswith("onnxruntime")
    assert ort_conflict({**info, "distributions_installed": {"onnxruntime": "1.31.1"}}) is None
    warning = ort_conflict({**info, "distributions_installed": {"onnxruntime-gpu": "1.31.1", "onnxruntime": "1.30.0"}})
    assert warning is not None and "share the import name" in warning and str(info["file"]) in warning


def test_placement_problems_name_fallbacks_copies_and_unfolded_shapes(tmp_path):
    from onnxstyle.provider_audit import placement_problems, read_placement

    events = [
        {"cat": "Session", "name": "model_run"},
        {"cat": "Node", "name": "conv1_kernel_time", "args": {"op_name": "Conv", "provider": "CUDAExecutionProvider"}},
        {"cat": "Node", "name": "conv1_kernel_time", "args": {"op_name": "Conv", "provider": "CUDAExecutionProvider"}},
        {"cat": "Node", "name": "shape_kernel_time", "args": {"op_name": "Shape", "provider": "CPUExecutionProvider"}},
        {"cat": "Node", "name": "copy_kernel_time", "args": {"op_name": "MemcpyToHost", "provider": "CUDAExecutionProvider"}},
    ]
    profile = tmp_path / "profile.json"
    profile.write_text(json.dumps(events))
    placement = read_placement(profile, "CUDAExecutionProvider")
    assert placement.nodes == {"CUDAExecutionProvider": 2, "CPUExecutionProvider": 1} and placement.memcpy == 1
    problems = placement_problems(placement, "CUDAExecutionProvider")
    assert any("1 nodes ran off cuda: Shape (cpu)" in problem for problem in problems)
    assert any("Memcpy" in problem for problem in problems) and any("shape operators were not folded" in problem for problem in problems)


def test_provider_check_on_this_machine(cli):
    result = cli("providers", "--check", "--json")
    assert result.returncode == 0, result.stderr
    checks = {check["runner"]: check for check in json.loads(result.stdout)}
    cpu = checks["ort-cpu"]
    assert cpu["ok"] and cpu["tf32"] is False and set(cpu["placement"]["nodes"]) == {"CPUExecutionProvider"}
    assert cpu["placement"]["memcpy"] == 0 and cpu["grad_error_vs_cpu"] < 1e-4 and cpu["grad_error_vs_fp64"] < 1e-4
    if not torch.cuda.is_available():
        assert not checks["ort-cuda"]["usable"] and "libcuda.so.1" in checks["ort-cuda"]["reason"]
        assert not checks["torch-cuda"]["usable"]
