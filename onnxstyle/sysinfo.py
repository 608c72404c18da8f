"""A copy-pasteable system fingerprint: benchmarks are meaningless without the machine beside them."""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def default_threads() -> int:
    """The CPUs this process may run on (affinity, not the host's count: containers pin fewer)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def seconds_since_start() -> float:
    """How long this process has run: a user's time budget starts when they pressed Enter, not after our imports."""
    import time

    import psutil

    return max(0.0, time.time() - psutil.Process().create_time())


def fingerprint() -> dict[str, object]:
    """OS, CPU, RAM, GPU, Python and package versions, and ORT's providers."""
    import psutil
    import torch

    from onnxstyle import __version__
    from onnxstyle.ort_providers import ort_info

    try:
        import onnxruntime as ort

        providers = ort.get_available_providers()
    except ImportError:
        providers = []
    build = ort_info()
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    return {
        "onnxstyle": __version__,
        "os": platform.platform(),
        "cpu": cpu_model(),
        "cpu_cores_logical": os.cpu_count(),
        "cpu_cores_physical": psutil.cpu_count(logical=False),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "gpu": gpus or "none",
        "cuda_torch": torch.version.cuda,
        "cudnn_torch": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torchvision": _version("torchvision"),
        "onnx": _version("onnx"),
        "onnxruntime": f"{build['package']} {build['version']}",
        "onnxruntime_build": {key: value for key, value in build.items() if key not in ("package", "version")},
        "ort_providers_compiled_in": providers,
        "nvidia_tf32_override": os.environ.get("NVIDIA_TF32_OVERRIDE", "unset"),
        "weights_auto": auto_weights(),
    }


def environment_warnings() -> list[str]:
    """What on this machine would make a GPU figure mean something else than its label says."""
    from onnxstyle.precision import tf32_override
    from onnxstyle.ort_providers import ort_conflict, ort_info

    warnings = [tf32_override(), ort_conflict(ort_info())]
    return [warning for warning in warnings if warning]


def auto_weights() -> dict[str, str]:
    """What ``--weights auto`` runs for each backbone here (real, quantised real, or synthetic for timing only)."""
    from onnxstyle.backbones import BACKBONES
    from onnxstyle.errors import WeightsError
    from onnxstyle.weights import resolve

    labels = {}
    for name, spec in BACKBONES.items():
        try:
            labels[name] = resolve("auto", spec).label
        except WeightsError as error:
            labels[name] = f"unusable: {str(error).splitlines()[0]}"
    return labels


def release_memory() -> None:
    """Hand freed heap back to the OS (glibc keeps it otherwise), so RSS reflects what is still in use."""
    import ctypes
    import gc

    gc.collect()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except OSError:
            pass
