"""ONNX Runtime execution providers: names, options, and proof of which one actually runs.

ORT lists compiled-in providers even when their libraries are missing and then silently runs on
the CPU. A benchmark built on that would lie, so every accelerator session is created
with CPU fallback disabled and checked with ``get_providers()`` afterwards. Plugin EPs (OpenVINO,
TensorRT-RTX, WebGPU, MLX, ``--ep-library``) are opened on the device they list (``plugin_eps``), under the same rules.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onnxstyle import plugin_eps
from onnxstyle.errors import ProviderError, UsageError, first_line

ALIASES: dict[str, str] = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "dml": "DmlExecutionProvider",
    "directml": "DmlExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "migraphx": "MIGraphXExecutionProvider",
    "qnn": "QNNExecutionProvider",
    "xnnpack": "XnnpackExecutionProvider",
}


def canonical(name: str) -> str:
    """``cuda`` → ``CUDAExecutionProvider``; full names pass through; unknown names fail clearly.

    Plugin EPs name their device after a colon where it is not the default: ``openvino:gpu`` →
    ``OpenVINOExecutionProvider:GPU`` (``openvino`` is OpenVINO's CPU device).
    """
    key = name.strip()
    if key.lower() in ALIASES:
        return ALIASES[key.lower()]
    target = plugin_eps.parse_target(key)
    if target is not None:
        return target.provider
    if key.endswith("ExecutionProvider"):
        return key
    for ep_name in plugin_eps.extra_eps() if plugin_eps.library_entries() else {}:
        if key.lower() == _default_short_name(ep_name):
            return ep_name
    names = sorted({*ALIASES, *plugin_eps.KNOWN})
    raise UsageError(f"unknown provider '{name}'; use one of {', '.join(names)} or a full ORT provider name")


# Providers whose sessions get graphs with every input shape fixed (one session per size). Our graphs
# compute feature sizes with Shape ops; the CUDA EP places such shape arithmetic on the CPU EP, which a
# session without CPU fallback refuses and a CUDA graph cannot capture. With static inputs ORT folds it
# all to constants. CPU runs dynamic shapes natively; TensorRT takes them through optimisation profiles.
DYNAMIC_SHAPE_PROVIDERS = ("CPUExecutionProvider", "TensorrtExecutionProvider")
# Providers whose inputs and outputs live in CUDA memory: IO binding on the device, CUDA graphs, torch's "cuda".
CUDA_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")
# Runner targets (provider short names and torch devices) that compute on the host CPU.
CPU_TARGETS = ("cpu", "openvino", "xnnpack")
# Runner targets whose tensors live in CUDA memory (the short names of CUDA_PROVIDERS, and torch's "cuda").
CUDA_TARGETS = ("cuda", "tensorrt")


def short_name(provider: str) -> str:
    """``CUDAExecutionProvider`` → ``cuda``; plugin EPs by their runner target (``OpenVINOExecutionProvider:GPU`` → ``openvino-gpu``)."""
    target = plugin_eps.target_of(provider)
    if target is not None:
        return target.name
    reverse = {full: alias for alias, full in ALIASES.items() if alias not in ("trt", "directml")}
    return reverse.get(provider, _default_short_name(provider))


def _default_short_name(provider: str) -> str:
    return provider.removesuffix("ExecutionProvider").lower()


def is_plugin(provider: str) -> bool:
    """Whether ``provider`` is opened through a plugin library's device rather than by name."""
    if plugin_eps.target_of(provider) is not None:
        return True
    if not plugin_eps.library_entries():
        return False
    import onnxruntime as ort

    # compiled-in providers never go through --ep-library, so a broken library cannot stop a CPU session
    return provider not in ort.get_available_providers() and plugin_eps.ep_name_of(provider) in plugin_eps.extra_eps()


@dataclass(frozen=True)
class ShapeProfile:
    """TensorRT optimisation profile: every dynamic input's min/opt/max shape."""

    min: Mapping[str, Sequence[int]]
    opt: Mapping[str, Sequence[int]]
    max: Mapping[str, Sequence[int]]

    @staticmethod
    def format(shapes: Mapping[str, Sequence[int]]) -> str:
        return ",".join(f"{name}:{'x'.join(str(d) for d in dims)}" for name, dims in shapes.items())


@dataclass
class ProviderConfig:
    """Everything needed to open a session on one provider, recorded verbatim in reports."""

    provider: str
    threads: int | None = None
    device_id: int = 0
    cache_dir: Path = Path("models") / "cache"
    profile: ShapeProfile | None = None
    extra: dict[str, str] = field(default_factory=dict)
    memory_arena: bool = True
    precision: str = "fp32"
    cuda_graph: bool = False
    profile_prefix: str | None = None  # ORT's profiler on, writing PREFIX_<time>.json (onnxstyle profile)
    cpu_fallback: bool = False  # only `providers --check`, which measures what would fall back instead of refusing it

    def options(self) -> dict[str, str]:
        """Provider options per the ONNX Runtime documentation, with TF32, fp16 and algo search pinned.

        Everything that changes speed is set explicitly (never left to a default that differs between
        ORT versions) and recorded in reports: cuDNN's algorithm search, TF32 only when asked, CUDA graphs
        only when asked. ``use_tf32=0`` deselects tensor-core engines but is not a guarantee (ORT retries
        with TF32 when no other cuDNN plan builds): ``providers --check`` measures what really ran.
        """
        options: dict[str, str] = {}
        if self.provider == "CUDAExecutionProvider":
            options = {
                "device_id": str(self.device_id),
                # Asks cuDNN for its best-ranked algorithms; ORT's cuDNN 9 path maps it to a heuristic mode, not a timed search.
                "cudnn_conv_algo_search": "EXHAUSTIVE",
                "use_tf32": "1" if self.precision == "tf32" else "0",
                "do_copy_in_default_stream": "1",
                "enable_cuda_graph": "1" if self.cuda_graph else "0",
            }
        elif self.provider == "TensorrtExecutionProvider":
            engines = self.cache_dir / "tensorrt"
            options = {
                "device_id": str(self.device_id),
                "trt_engine_cache_enable": "True",
                "trt_engine_cache_path": str(engines),
                "trt_timing_cache_enable": "True",
                "trt_timing_cache_path": str(engines),
                "trt_fp16_enable": "True" if self.precision == "fp16" else "False",
                "trt_cuda_graph_enable": "True" if self.cuda_graph else "False",
            }
            if self.profile is not None:
                options["trt_profile_min_shapes"] = ShapeProfile.format(self.profile.min)
                options["trt_profile_opt_shapes"] = ShapeProfile.format(self.profile.opt)
                options["trt_profile_max_shapes"] = ShapeProfile.format(self.profile.max)
        elif (target := plugin_eps.target_of(self.provider)) is not None:
            options = plugin_eps.provider_options(target, self.precision, self.threads)
        options.update(self.extra)
        return options


def session_options(config: ProviderConfig) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.enable_cpu_mem_arena = config.memory_arena
    if config.provider == "CPUExecutionProvider":
        # The planned memory pattern pre-allocates one block for every intermediate of a run: VGG19 at
        # 512 px peaked at 2.2 GB with it and 1.7 GB without, at the same speed (A/B at 128 and 256 px).
        options.enable_mem_pattern = False
    if config.profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = config.profile_prefix
    if config.threads:
        options.intra_op_num_threads = config.threads
        options.inter_op_num_threads = 1
    if config.provider != "CPUExecutionProvider" and not config.cpu_fallback:
        options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    return options


# Shared libraries each GPU provider needs before ORT can even load it; checking them first turns
# ORT's multi-line fallback banners into one line that names what is missing.
REQUIRED_LIBRARIES: dict[str, tuple[tuple[str, str], ...]] = {
    "CUDAExecutionProvider": (("libcuda.so.1", "no NVIDIA driver"),),
    "TensorrtExecutionProvider": (("libcuda.so.1", "no NVIDIA driver"), ("libnvinfer.so.10", "TensorRT 10 libraries not installed")),
}


def preflight(provider: str) -> str | None:
    """Why ``provider`` cannot work on this machine, or ``None`` if nothing obvious is missing.

    The provider's own shared library is loaded here: the dynamic loader names the first library it
    lacks (``libcublasLt.so.13: cannot open shared object file``), which ORT's banner would bury.
    """
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return None
    try:
        import torch  # noqa: F401  (its nvidia-* wheels put CUDA/cuDNN on the loader path)
    except ImportError:
        pass
    for library, meaning in REQUIRED_LIBRARIES.get(provider, ()):
        try:
            ctypes.CDLL(library)
        except OSError:
            return f"{meaning} ({library} not found)"
    if provider in CUDA_PROVIDERS:
        preload_cuda_libraries()
        own = provider_library(provider)
        if own is not None:
            try:
                ctypes.CDLL(str(own))
            except OSError as error:
                return f"{own.name} cannot load: {missing_library(str(error)) or first_line(error)}"
    return None


def provider_library(provider: str) -> Path | None:
    """The shared library ORT loads for ``provider`` (``libonnxruntime_providers_cuda.so``), if this build ships one."""
    import onnxruntime as ort

    name = {"CUDAExecutionProvider": "cuda", "TensorrtExecutionProvider": "tensorrt"}.get(provider)
    if name is None:
        return None
    path = Path(ort.__file__).parent / "capi" / f"libonnxruntime_providers_{name}.so"
    return path if path.exists() else None


@functools.cache
def preload_cuda_libraries() -> list[str]:
    """Load CUDA and cuDNN from the nvidia-* pip wheels the way ORT documents (``preload_dlls``); what it said.

    Once per process (every CUDA session's preflight asks). torch loads its own copies on import; a
    CUDA-major mismatch between the two shows up in these lines.
    """
    import contextlib
    import io

    import onnxruntime as ort

    if not hasattr(ort, "preload_dlls"):
        return []
    said = io.StringIO()
    with contextlib.redirect_stdout(said):
        try:
            ort.preload_dlls(cuda=True, cudnn=True, msvc=False)
        except Exception as error:  # a missing nvidia-* folder raises; loading by soname may still work
            print(first_line(error))
    return [line.strip() for line in said.getvalue().splitlines() if line.strip()]


def missing_library(text: str) -> str | None:
    """The shared library an error message says could not be loaded (``libcudnn.so.9``), if it names one."""
    import re

    found = re.search(r"(lib[\w+.-]*?\.so(?:\.\d+)*)\s*:\s*cannot open shared object", text) or re.search(
        r"(?:load|open|find)\w*\s+(?:library\s+)?['\"]?(lib[\w+-]+\.so(?:\.\d+)*)", text, re.IGNORECASE
    )
    return f"missing {found.group(1)}" if found else None


def create_session(model: bytes | str | Path, config: ProviderConfig) -> Any:
    """Open a session on exactly the requested provider, or fail with the reason in one line."""
    import onnxruntime as ort

    ort.set_default_logger_severity(4)
    if is_plugin(config.provider):
        return _create_plugin_session(model, config)
    if config.provider not in ort.get_available_providers():
        raise ProviderError(
            f"provider {short_name(config.provider)} ({config.provider}) is not in this onnxruntime build "
            f"({ort_package()}); available: {', '.join(ort.get_available_providers())}"
        )
    missing = preflight(config.provider)
    if missing:
        raise ProviderError(f"provider {short_name(config.provider)} is not usable here: {missing}")
    if config.provider == "TensorrtExecutionProvider":
        Path(config.options()["trt_engine_cache_path"]).mkdir(parents=True, exist_ok=True)
    providers: list[str | tuple[str, dict[str, str]]] = [(config.provider, config.options())]
    source = str(model) if isinstance(model, Path) else model
    try:
        session = ort.InferenceSession(source, session_options(config), providers=providers)
    except Exception as error:  # ORT raises RuntimeError/Fail/InvalidArgument by build
        raise ProviderError(f"provider {short_name(config.provider)} is not usable here: {first_line(error)}") from error
    verify_provider(session.get_providers(), config.provider)
    return session


def plugin_device(provider: str) -> Any:
    """The OrtEpDevice a plugin provider runs on (registered first), or a ProviderError saying why there is none."""
    target = plugin_eps.target_of(provider)
    return plugin_eps.device_for(target) if target is not None else plugin_eps.extra_device(plugin_eps.ep_name_of(provider))


def _create_plugin_session(model: bytes | str | Path, config: ProviderConfig) -> Any:
    """A plugin EP's session on the device it listed, with its options, no CPU fallback, and the EP verified."""
    import onnxruntime as ort

    device = plugin_device(config.provider)
    options = session_options(config)
    source = str(model) if isinstance(model, Path) else model
    name = short_name(config.provider)
    try:
        options.add_provider_for_devices([device], config.options())
        session = ort.InferenceSession(source, sess_options=options)
    except Exception as error:  # ORT raises RuntimeError/Fail/InvalidArgument by build
        raise ProviderError(f"provider {name} is not usable here: {first_line(error)}") from error
    verify_provider(session.get_providers(), plugin_eps.ep_name_of(config.provider), name)
    return session


def verify_provider(effective: Sequence[str], requested: str, name: str | None = None) -> None:
    """The first provider of the session must be the requested one: no silent CPU fallback."""
    if not effective or effective[0] != requested:
        raise ProviderError(
            f"provider {name or short_name(requested)} was requested but the session runs on {', '.join(effective) or 'nothing'}; "
            "refusing a silent fallback"
        )


ORT_DISTRIBUTIONS = ("onnxruntime-gpu", "onnxruntime", "onnxruntime-openvino", "onnxruntime-directml", "onnxruntime-silicon", "onnxruntime-qnn")


def ort_package() -> str:
    """Which onnxruntime build this process imported, by the build's own record (the wheels share the import name)."""
    info = ort_info()
    return f"{info['package']} {info['version']}"


def ort_info() -> dict[str, object]:
    """The imported ORT build: package, file, device, CUDA/cuDNN it was built for, and every ORT wheel installed.

    Package metadata alone names whichever distribution it finds first; with the CPU and GPU wheels both
    installed, the files of the last one installed win, so the build's own ``build_and_package_info`` is asked.
    """
    from importlib import metadata

    import onnxruntime as ort

    installed = {}
    for name in ORT_DISTRIBUTIONS:
        try:
            installed[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    try:
        from onnxruntime.capi import build_and_package_info as build

        package = str(getattr(build, "package_name", "onnxruntime"))
    except ImportError:
        build, package = None, next(iter(installed), "onnxruntime")
    return {
        "package": package,
        "version": ort.__version__,
        "file": str(Path(ort.__file__).parent),
        "device": ort.get_device(),
        "cuda_version": getattr(build, "cuda_version", None),
        "cudnn_version": getattr(build, "cudnn_version", None),
        "distributions_installed": installed,
    }


def ort_conflict(info: dict[str, object]) -> str | None:
    """A warning when two ORT wheels share the import name: whichever was installed last overwrote the other's files."""
    installed = info["distributions_installed"]
    assert isinstance(installed, dict)
    if len(installed) < 2:
        return None
    listed = ", ".join(f"{name} {version}" for name, version in installed.items())
    return f"{listed} are all installed and share the import name; this process runs {info['package']} from {info['file']} (uninstall all, then install one)"


PROBE_CONV = (1, 4, 6, 6)  # input of the probe's 3×3 convolution (4 → 3 channels, padding 1)
PROBE_MATMUL = (8, 16)  # left operand of the probe's MatMul (16 → 8)
# The probe decides "works", not "exact": TF32 (10 mantissa bits) must pass, a wrong kernel or zeros must not.
PROBE_TOLERANCE = 1e-2


def probe_inputs() -> dict[str, Any]:
    import numpy as np

    generator = np.random.default_rng(0)
    return {
        "x": generator.standard_normal(PROBE_CONV).astype(np.float32),
        "a": generator.standard_normal(PROBE_MATMUL).astype(np.float32),
        "w": generator.standard_normal((3, PROBE_CONV[1], 3, 3)).astype(np.float32),
        "b": generator.standard_normal((PROBE_MATMUL[1], 8)).astype(np.float32),
    }


def probe_model() -> bytes:
    """A Conv and a MatMul with every shape fixed: running it makes the provider load its cuDNN and cuBLAS."""
    from onnx import TensorProto, helper, numpy_helper

    values = probe_inputs()
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("MatMul", ["a", "b"], ["matmul"]),
    ]
    batch, _, height, width = PROBE_CONV
    graph = helper.make_graph(
        nodes,
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(PROBE_CONV)), helper.make_tensor_value_info("a", TensorProto.FLOAT, list(PROBE_MATMUL))],
        [
            helper.make_tensor_value_info("conv", TensorProto.FLOAT, [batch, 3, height, width]),
            helper.make_tensor_value_info("matmul", TensorProto.FLOAT, [PROBE_MATMUL[0], 8]),
        ],
        initializer=[numpy_helper.from_array(values["w"], "w"), numpy_helper.from_array(values["b"], "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def convolve(image: Any, kernel: Any, padding: int) -> Any:
    """Direct 2-D cross-correlation (ONNX Conv, stride 1) in float64: the reference the providers are held to."""
    import numpy as np

    padded = np.pad(image.astype(np.float64), ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    rows, cols = kernel.shape[2:]
    height, width = padded.shape[2] - rows + 1, padded.shape[3] - cols + 1
    windows = np.lib.stride_tricks.sliding_window_view(padded, (rows, cols), axis=(2, 3))[:, :, :height, :width]
    return np.einsum("bchwij,ocij->bohw", windows, kernel.astype(np.float64))


def probe_expected() -> dict[str, Any]:
    import numpy as np

    values = probe_inputs()
    return {"conv": convolve(values["x"], values["w"], 1), "matmul": values["a"].astype(np.float64) @ values["b"].astype(np.float64)}


def run_probe(session: Any) -> str | None:
    """Run the probe on ``session`` and compare with numpy; why it is wrong, or None."""
    import numpy as np

    values = probe_inputs()
    outputs = session.run(["conv", "matmul"], {"x": values["x"], "a": values["a"]})
    for (name, expected), got in zip(probe_expected().items(), outputs, strict=True):
        error = float(np.linalg.norm(got - expected) / np.linalg.norm(expected))
        if not error <= PROBE_TOLERANCE:
            return f"its {name} differs from numpy by {error:.2g} (relative)"
    return None


@dataclass(frozen=True)
class ProviderStatus:
    name: str
    usable: bool
    reason: str


def probe_provider(provider: str) -> ProviderStatus:
    """Open the probe on ``provider`` with no CPU fallback, run it and check its answer.

    Creating a session proves little: CUDA loads cuDNN and cuBLAS at the first run, and a library missing
    then ends as a CPU fallback or a failed run whose line names the library.
    """
    try:
        session = create_session(probe_model(), ProviderConfig(provider))
    except ProviderError as error:
        return ProviderStatus(provider, False, str(error))
    try:
        wrong = run_probe(session)
    except Exception as error:  # ORT raises its own Fail/RuntimeException types
        reason = missing_library(str(error)) or first_line(error)
        return ProviderStatus(provider, False, f"provider {short_name(provider)} fails its first run: {reason}")
    if wrong:
        return ProviderStatus(provider, False, f"provider {short_name(provider)} computes wrong results: {wrong}")
    return ProviderStatus(provider, True, "ok: ran a Conv and a MatMul, equal to numpy")


def probe_providers() -> list[ProviderStatus]:
    """Probe every provider ORT lists and every plugin EP we know or were given, so 'available' means 'works here'."""
    return [probe_provider(provider) for provider in known_providers()]


def known_providers() -> list[str]:
    """ORT's compiled-in providers, then each known plugin EP (installed or not) and each ``--ep-library`` EP."""
    import onnxruntime as ort

    plugins = [target.provider for target in plugin_eps.known_targets()]
    extra = list(plugin_eps.extra_eps()) if plugin_eps.library_entries() else []
    return list(dict.fromkeys([*ort.get_available_providers(), *plugins, *extra]))
