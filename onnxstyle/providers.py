"""ONNX Runtime execution providers: names, options, and proof of which one actually runs.

ORT lists compiled-in providers even when their libraries are missing and then silently runs on
the CPU. A benchmark built on that would lie, so every accelerator session is created
with CPU fallback disabled and checked with ``get_providers()`` afterwards.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onnxstyle.errors import ProviderError, UsageError, first_line

ALIASES: dict[str, str] = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "dml": "DmlExecutionProvider",
    "directml": "DmlExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "migraphx": "MIGraphXExecutionProvider",
    "qnn": "QNNExecutionProvider",
    "xnnpack": "XnnpackExecutionProvider",
}


def canonical(name: str) -> str:
    """``cuda`` → ``CUDAExecutionProvider``; full names pass through; unknown names fail clearly."""
    key = name.strip()
    if key.lower() in ALIASES:
        return ALIASES[key.lower()]
    if key.endswith("ExecutionProvider"):
        return key
    raise UsageError(f"unknown provider '{name}'; use one of {', '.join(sorted(ALIASES))} or a full ORT provider name")


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
    reverse = {full: alias for alias, full in ALIASES.items() if alias not in ("trt", "directml")}
    return reverse.get(provider, provider.removesuffix("ExecutionProvider").lower())


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

    def options(self) -> dict[str, str]:
        """Provider options per the ONNX Runtime documentation, with TF32, fp16 and algo search pinned.

        Everything that changes speed is set explicitly (never left to a default that differs between
        ORT versions) and recorded in reports: cuDNN's exhaustive algorithm search, TF32 only when asked,
        CUDA graphs only when asked.
        """
        options: dict[str, str] = {}
        if self.provider == "CUDAExecutionProvider":
            options = {
                "device_id": str(self.device_id),
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
        elif self.provider == "OpenVINOExecutionProvider":
            options = {"device_type": "CPU"}
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
    if config.provider != "CPUExecutionProvider":
        options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    return options


# Shared libraries each GPU provider needs before ORT can even load it; checking them first turns
# ORT's multi-line fallback banners into one line that names what is missing.
REQUIRED_LIBRARIES: dict[str, tuple[tuple[str, str], ...]] = {
    "CUDAExecutionProvider": (("libcuda.so.1", "no NVIDIA driver"),),
    "TensorrtExecutionProvider": (("libcuda.so.1", "no NVIDIA driver"), ("libnvinfer.so.10", "TensorRT 10 libraries not installed")),
}


def preflight(provider: str) -> str | None:
    """Why ``provider`` cannot work on this machine, or ``None`` if nothing obvious is missing."""
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
    return None


def create_session(model: bytes | str | Path, config: ProviderConfig) -> Any:
    """Open a session on exactly the requested provider, or fail with the reason in one line."""
    import onnxruntime as ort

    ort.set_default_logger_severity(4)
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


def verify_provider(effective: Sequence[str], requested: str) -> None:
    """The first provider of the session must be the requested one: no silent CPU fallback."""
    if not effective or effective[0] != requested:
        raise ProviderError(
            f"provider {short_name(requested)} was requested but the session runs on {', '.join(effective) or 'nothing'}; "
            "refusing a silent fallback"
        )


def ort_package() -> str:
    """Which onnxruntime distribution is installed (they share the import name)."""
    from importlib import metadata

    for name in ("onnxruntime-gpu", "onnxruntime", "onnxruntime-openvino", "onnxruntime-directml", "onnxruntime-silicon"):
        try:
            return f"{name} {metadata.version(name)}"
        except metadata.PackageNotFoundError:
            continue
    return "onnxruntime (unknown distribution)"


@dataclass(frozen=True)
class ProviderStatus:
    name: str
    usable: bool
    reason: str


def probe_model() -> bytes:
    from onnx import TensorProto, helper

    node = helper.make_node("Relu", ["x"], ["y"])
    graph = helper.make_graph(
        [node], "probe", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def probe_providers() -> list[ProviderStatus]:
    """Try a one-node session on every provider ORT lists, so 'available' means 'works here'."""
    import onnxruntime as ort

    statuses = []
    probe = probe_model()
    for provider in ort.get_available_providers():
        try:
            create_session(probe, ProviderConfig(provider))
            statuses.append(ProviderStatus(provider, True, "ok"))
        except ProviderError as error:
            statuses.append(ProviderStatus(provider, False, str(error)))
    return statuses
