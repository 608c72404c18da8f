"""Numeric precisions: which engine and device can run which, and how torch runs them.

Reduced precision applies to the network (convolutions, ReLU, pooling): our torch engine casts its
weights once and runs the network in bf16/fp16, the eager baseline wraps it in autocast as a user would,
and ORT runs fp16 graphs. Gram matrices and loss sums stay in fp32, since a Gram sums H·W products and its loss squares them
again (fp16 overflows there, bf16 loses the small differences the style term is made of).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from onnxstyle.errors import UsageError
from onnxstyle.plugin_eps import PluginTarget, parse_target
from onnxstyle.ort_providers import CPU_TARGETS

PRECISIONS = ("fp32", "bf16", "fp16", "tf32")

# How far a reduced-precision gradient may stray from torch fp32 (relative L2 norm) and still be called
# correct. bf16 keeps 8 mantissa bits through ~20 layers of products and flips ReLU/max-pool decisions
# near kinks: measured 0.15 (NIN) and 0.23 (VGG19) at 64 px, while a 200-iteration demo run ends within
# 1% of fp32's loss. A wrong gradient (sign, scale, layer) lands at 1 or more.
GRADIENT_TOLERANCES = {"fp32": 5e-2, "tf32": 5e-2, "bf16": 0.4, "fp16": 0.1}
# The same runner check's bound on the loss value (relative), which has no kinks to flip.
LOSS_TOLERANCES = {"fp32": 1e-4, "tf32": 1e-3, "bf16": 2e-2, "fp16": 1e-2}
# An exported graph against torch autograd with the graph's own kink decisions: exact arithmetic parity in
# fp32; graphs exported in fp16 are held to 1e-2 (with shared ReLU/pool decisions measured ≤ 1e-3 on both
# backbones: the rounding of 5 exponent and 10 mantissa bits, not a wrong graph).
EXPORT_TOLERANCES = {"fp32": 1e-4, "fp16": 1e-2}
# `providers --check`: an fp32 provider against torch fp32 on the CPU, same targets, at 64 px (the GPU target).
PROVIDER_PARITY_TOLERANCE = 1e-4
# Its TF32 probes (a K=2048 matmul, a K=1152 convolution) against float64: fp32 sums land near 1e-6, TF32's 10-bit
# mantissa near 1e-3, so an error above this floor means TF32 (or worse) ran where fp32 was asked for.
TF32_ERROR_FLOOR = 1e-4

# fp16 keeps 5 exponent bits: image gradients of order 1e-8 would flush to zero without a loss scale
# (static; an overflow is detected and reported by the engines, never left as NaN).
FP16_LOSS_SCALE = 1024.0


def cpu_has_bf16() -> bool:
    """AVX-512-BF16 or AMX: the instructions that make CPU bf16 faster than fp32 rather than slower."""
    try:
        if torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return True
    except (AttributeError, RuntimeError):
        pass
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def supported(engine: str, device: str) -> tuple[tuple[str, ...], str]:
    """(precisions this engine runs on this device, why the others are not offered)."""
    if engine == "onnxruntime":
        if (plugin := parse_target(device)) is not None:
            return plugin_precisions(plugin)
        if device == "tensorrt":
            return ("fp32", "fp16"), "bf16 gradient graphs need ONNX opset 22 Conv; ORT does not expose TensorRT's tf32 switch"
        if device == "cuda":
            return ("fp32", "tf32", "fp16"), "bf16 gradient graphs need ONNX opset 22 Conv, which ORT's CUDA EP does not run in bf16"
        if device == "cpu":
            return ("fp32", "fp16"), (
                "ONNX Runtime's CPU provider has no bf16 Conv kernels (ONNX Conv admits bf16 only from opset 22); "
                "--engine torch runs bf16"
            )
        return ("fp32",), f"only fp32 is wired up for the {device} provider"
    if device.startswith("cuda"):
        on_device = ["fp32", "tf32", "fp16"]
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            on_device.append("bf16")
        return tuple(on_device), "bf16 needs a GPU that supports it (Ampere or newer)"
    if cpu_has_bf16():
        return ("fp32", "bf16"), "tf32 is a GPU format, and CPU fp16 convolutions are slower than fp32"
    return ("fp32",), "this CPU lacks AVX-512-BF16/AMX, so bf16 would run slower than fp32"


def plugin_precisions(target: PluginTarget) -> tuple[tuple[str, ...], str]:
    """A plugin EP's precisions: those it is told through its own options (OpenVINO: INFERENCE_PRECISION_HINT)."""
    if not target.ep.precision_hints:
        return ("fp32",), f"only fp32 is wired up for the {target.ep.title} plugin"
    if target.device == "CPU":
        if cpu_has_bf16():
            return ("fp32", "bf16"), "OpenVINO's CPU runs f16 only on AVX512-FP16/AMX-FP16 CPUs; tf32 is an NVIDIA GPU mode"
        return ("fp32",), "this CPU lacks AVX-512-BF16/AMX, so OpenVINO's bf16 would be emulated; tf32 is an NVIDIA GPU mode"
    return ("fp32", "fp16"), f"OpenVINO's {target.device} runs f32 and f16; tf32 is an NVIDIA GPU mode"


def why_not(engine: str, device: str, precision: str) -> str:
    """Why ``precision`` is not offered for this engine and device (each precision has its own reason)."""
    on_cpu = device in CPU_TARGETS or (engine != "onnxruntime" and not device.startswith("cuda"))
    if precision == "tf32" and on_cpu:
        return "tf32 is a tensor-core mode of NVIDIA GPUs; CPUs compute fp32 as fp32"
    if precision == "fp16" and on_cpu and engine != "onnxruntime":
        return "torch's fp16 convolutions on the CPU are slower than fp32; --engine onnxruntime runs fp16 graphs there"
    return supported(engine, device)[1]


def require(engine: str, device: str, precision: str) -> None:
    """One clear line when ``precision`` cannot run here, naming what can."""
    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision '{precision}'; choose from {', '.join(PRECISIONS)}")
    allowed, _ = supported(engine, device)
    if precision not in allowed:
        raise UsageError(f"{engine} on {device} cannot run {precision}: supported {', '.join(allowed)} ({why_not(engine, device, precision)})")


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The dtype the network runs in, or None for fp32 (tf32 is a matmul mode, not a dtype)."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


def set_tf32(device: torch.device, precision: str) -> None:
    """Pin TF32 for CUDA matmuls and cuDNN convolutions (torch's defaults differ: cuDNN allows it, cuBLAS not).

    The switches are process-global, so engines pin them before every step, not once: two engines in one
    process (a parity check, an interleaved group) would otherwise both run with whichever was set last.
    torch ≥ 2.9 has ``fp32_precision`` and refuses reads once the legacy ``allow_tf32`` was mixed in, so
    the new switches are used wherever they exist.
    """
    if device.type != "cuda":
        return
    enabled = precision == "tf32"
    matmul, convolution = torch.backends.cuda.matmul, getattr(torch.backends.cudnn, "conv", None)
    if hasattr(matmul, "fp32_precision") and convolution is not None and hasattr(convolution, "fp32_precision"):
        matmul.fp32_precision = "tf32" if enabled else "ieee"
        convolution.fp32_precision = "tf32" if enabled else "ieee"
    else:
        matmul.allow_tf32 = enabled
        torch.backends.cudnn.allow_tf32 = enabled


def tf32_state() -> dict[str, bool]:
    """Whether torch lets CUDA matmuls and cuDNN convolutions use TF32 right now (for reports)."""
    matmul, convolution = torch.backends.cuda.matmul, getattr(torch.backends.cudnn, "conv", None)
    if hasattr(matmul, "fp32_precision") and convolution is not None and hasattr(convolution, "fp32_precision"):
        return {"matmul": matmul.fp32_precision == "tf32", "cudnn_conv": convolution.fp32_precision == "tf32"}
    return {"matmul": bool(matmul.allow_tf32), "cudnn_conv": bool(torch.backends.cudnn.allow_tf32)}


def tf32_override() -> str | None:
    """A warning when ``NVIDIA_TF32_OVERRIDE`` is set: the CUDA libraries then ignore every TF32 switch above."""
    import os

    value = os.environ.get("NVIDIA_TF32_OVERRIDE")
    if value is None:
        return None
    effect = "TF32 is off everywhere, so tf32 cells measure fp32" if value == "0" else "CUDA libraries may use TF32 even for fp32 cells"
    return f"NVIDIA_TF32_OVERRIDE={value} is set: {effect}"


@contextmanager
def exact_bf16_matmuls(device: torch.device, network_dtype: torch.dtype | None) -> Iterator[None]:
    """Let fp32 matmuls run on the CPU's bf16 units (oneDNN) while a bf16 network's losses are computed.

    The Gram inputs are bf16 feature maps widened to fp32, so they are exact in bf16: the products are
    exact and still summed in fp32, and the Gram comes out fp32 as before — 2–4× faster on AVX-512-BF16/AMX.
    Only the Gram's backward rounds its incoming gradient to bf16, as the bf16 network does anyway.
    Elsewhere (fp32 networks, GPUs, torch without the switch) nothing changes.
    """
    matmul = getattr(getattr(torch.backends, "mkldnn", None), "matmul", None)
    if device.type != "cpu" or network_dtype != torch.bfloat16 or not hasattr(matmul, "fp32_precision"):
        yield
        return
    assert matmul is not None
    before = matmul.fp32_precision
    matmul.fp32_precision = "bf16"
    try:
        yield
    finally:
        matmul.fp32_precision = before
