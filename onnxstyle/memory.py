"""Work and memory models: FLOPs of one loss+gradient, and the peak memory a loop at a size adds.

``bench`` skips cells that would not fit and reports GFLOP/s from them; ``stylize`` and the tiler decide
from them whether and how finely to tile. Nothing here imports an engine.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from onnxstyle.backbones import BackboneSpec
from onnxstyle.errors import UsageError


def forward_flops(backbone: BackboneSpec, layers: Sequence[str], width: int, height: int) -> float:
    """Convolution FLOPs (2 per multiply-add) of the truncated network's forward pass."""
    if (problem := backbone.size_problem(layers, width, height)) is not None:
        raise UsageError(problem)
    total = 0.0
    for layer in backbone.truncated(layers):
        if layer.kind != "conv":
            continue
        shape = backbone.feature_shape(layer.name, height, width)
        assert shape is not None
        channels, rows, cols = shape
        total += 2.0 * layer.in_channels * channels * layer.kernel * layer.kernel * rows * cols
    return total


def iteration_flops(backbone: BackboneSpec, content_layers: Sequence[str], style_layers: Sequence[str], width: int, height: int) -> float:
    """FLOPs of one loss+gradient: convolutions forward and adjoint, Gram products forward and adjoint.

    Elementwise work (ReLU, pooling, masks) is left out: it is memory-bound and small, so GFLOP/s
    here means useful arithmetic, comparable across runners that compute the same thing.
    """
    grams = 0.0
    for name in style_layers:
        shape = backbone.feature_shape(name, height, width)
        assert shape is not None
        channels, rows, cols = shape
        grams += 2.0 * channels * channels * rows * cols
    return 2.0 * forward_flops(backbone, [*content_layers, *style_layers], width, height) + 2.0 * grams


def activation_bytes(backbone: BackboneSpec, layers: Sequence[str], width: int, height: int) -> int:
    """Bytes of every layer output of the truncated network for one fp32 image."""
    total = 3 * width * height * 4
    for layer in backbone.truncated(layers):
        if layer.kind == "dropout":
            continue
        shape = backbone.feature_shape(layer.name, height, width)
        assert shape is not None
        total += math.prod(shape) * 4
    return total


@dataclass(frozen=True)
class MemoryModel:
    """Peak RSS a cell adds: ``per_activation_byte`` × forward activations + ``fixed_bytes`` (weights, sessions)."""

    per_activation_byte: float
    fixed_bytes: int


# Fitted to peak-RSS growth measured by `onnxstyle bench` at 512 and 1024 px on the project's machine
# (VGG19: ORT 0.99/3.62 GB, torch 0.86/2.86, eager 0.74/2.08; NIN: ORT 0.39/0.55, torch 0.20/0.62,
# eager 0.22/0.61), rounded up by ≈10%. Unknown backbones take the larger of the two. VGG19 on ORT's CPU
# provider since its Winograd layers: 1.62/4.06 GB (their pre-transformed weights are 4× the 3×3 ones).
MEMORY_MODELS: dict[tuple[str, str], MemoryModel] = {
    ("vgg19", "onnxruntime"): MemoryModel(1.5, 900 * 2**20),
    ("vgg19", "torch"): MemoryModel(1.15, 250 * 2**20),
    ("vgg19", "eager"): MemoryModel(1.15, 300 * 2**20),
    ("nin", "onnxruntime"): MemoryModel(1.5, 400 * 2**20),
    ("nin", "torch"): MemoryModel(2.0, 100 * 2**20),
    ("nin", "eager"): MemoryModel(2.0, 300 * 2**20),
}


def memory_model(backbone: str, engine: str) -> MemoryModel:
    known = MEMORY_MODELS.get((backbone, engine))
    if known is not None:
        return known
    fits = [model for (name, kind), model in MEMORY_MODELS.items() if kind == engine]
    return MemoryModel(max(fit.per_activation_byte for fit in fits), max(fit.fixed_bytes for fit in fits))


def estimate_bytes(engine: str, backbone: BackboneSpec, layers: Sequence[str], width: int, height: int) -> int:
    """What one cell is expected to add to this process's peak memory, from the measured fits above."""
    model = memory_model(backbone.name, engine)
    return int(model.per_activation_byte * activation_bytes(backbone, layers, width, height) + model.fixed_bytes)


# Libraries reserve more address space than they touch: VGG19 on ORT's CPU provider at 512 px ran under an
# address-space limit (ulimit -v) of 2.67 GiB and failed under 2.48 GiB, from 0.66 GiB after imports, for
# 1.6 GiB of estimated growth: ≈1.25 bytes of address space per byte the memory model counts.
ADDRESS_SPACE_PER_BYTE = 1.25


def free_bytes(device: str) -> int:
    """Memory a new cell can use: available RAM, or free device memory for GPU runners.

    Under an address-space limit (``ulimit -v``), what the limit leaves counts too: past it, allocations
    fail inside ONNX Runtime's graph building and the process dies instead of saying what it needs.
    """
    if device == "cuda":
        import torch

        if torch.cuda.is_available():
            free, _ = torch.cuda.mem_get_info()
            return int(free)
    import psutil

    return min(int(psutil.virtual_memory().available), address_space_left())


def address_space_left() -> int:
    """Bytes the address-space limit leaves for growth, in the memory model's terms (unlimited: a huge number)."""
    try:
        import resource
    except ImportError:
        return 2**62
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return 2**62
    import psutil

    used = psutil.Process().memory_info().vms
    return max(0, int((soft - used) / ADDRESS_SPACE_PER_BYTE))
