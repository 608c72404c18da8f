"""Export the feature extractor and the loss+gradient graph, each validated against torch.

``export_backbone`` is the one library entry point; ``onnxstyle export`` is a thin layer over it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper

from onnxstyle import __version__
from onnxstyle.backbones import Backbone, BackboneSpec, Pooling, get_backbone, parse_layers
from onnxstyle.errors import ExportValidationError, OutputError, UsageError
from onnxstyle.files import check_output, write_all
from onnxstyle.exporters.graph import (
    DEFAULT_OPSET,
    HEIGHT,
    IMAGE_INPUT,
    MAX_OPSET,
    POOL_CHOICE,
    POOL_MASK,
    RELU_CHOICE,
    MIN_OPSET,
    WIDTH,
    GraphBuilder,
    NetworkGraph,
    image_input,
)
from onnxstyle.losses import LossWeights, gram_matrix, objective
from onnxstyle.weights import Preprocessing, ResolvedWeights, build_backbone, resolve

FEATURE_TOLERANCE = 1e-4
GRADIENT_TOLERANCE = 1e-4
# Graphs exported in fp16 are held to 1e-2 against fp32 torch (with shared ReLU/pool decisions measured
# ≤ 1e-3 on both backbones: the rounding of 5 exponent and 10 mantissa bits, not a wrong graph).
EXPORT_TOLERANCES = {"fp32": 1e-4, "fp16": 1e-2}
VALIDATION_SIZES: tuple[tuple[int, int], ...] = ((64, 64), (97, 130), (256, 192))
LOSS_OUTPUTS = ("loss", "content_losses", "style_losses", "tv_loss", "grad")
ALLOWED_OPS = frozenset(
    "Add Cast Concat Conv ConstantOfShape DepthToSpace Div Equal Gather Greater MatMul MaxPool AveragePool "
    "Mod Mul Not Or And Pad ReduceProd ReduceSum Relu Reshape Resize Shape Slice Sub Sum Transpose Where".split()
)


def check_opset(opset: int) -> int:
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise UsageError(f"opset {opset} is out of range: use {MIN_OPSET}..{MAX_OPSET} (≤17 keeps DirectML usable)")
    return opset


def content_input(layer: str) -> str:
    return f"content_target.{layer}"


def style_input(layer: str) -> str:
    return f"style_gram.{layer}"


def dimension_values(backbone: BackboneSpec, content_layers: Sequence[str], height: int, width: int) -> dict[str, int]:
    """Every symbolic dimension our graphs use, for an input image of ``height``×``width``."""
    values = {HEIGHT: height, WIDTH: width}
    for layer in content_layers:
        shape = backbone.feature_shape(layer, height, width)
        if shape is None:
            raise UsageError(f"{width}x{height} is too small for {layer} of {backbone.name}")
        values[f"{layer}_h"], values[f"{layer}_w"] = shape[1], shape[2]
    return values


def fix_dimensions(graph: onnx.ModelProto, values: dict[str, int]) -> onnx.ModelProto:
    """A copy of ``graph`` with its symbolic input/output dimensions set, so ORT folds all shape arithmetic."""
    fixed = onnx.ModelProto()
    fixed.CopyFrom(graph)
    for value in [*fixed.graph.input, *fixed.graph.output]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_param") and dim.dim_param in values:
                size = values[dim.dim_param]
                dim.Clear()
                dim.dim_value = size
    return fixed


def build_features_model(
    model: Backbone, preprocessing: Preprocessing, *, grams: Sequence[str] = (), opset: int = DEFAULT_OPSET,
    precision: str = "fp32",
    winograd_size: tuple[int, int] | None = None,
) -> onnx.ModelProto:
    """RGB image in [0, 1] → the requested feature maps by layer name (and Grams when asked)."""
    builder = GraphBuilder()
    network = NetworkGraph(builder, model, preprocessing, precision, winograd_size)
    tensors = network.forward(IMAGE_INPUT)
    channels = _channels(model)
    outputs = []
    for layer in model.outputs:
        builder.nodes.append(helper.make_node("Identity", [tensors[layer]], [layer]))
        outputs.append(helper.make_tensor_value_info(layer, TensorProto.FLOAT, [1, channels[layer], f"{layer}_h", f"{layer}_w"]))
    for layer in grams:
        gram, _, _ = network.gram(tensors[layer], channels[layer])
        builder.nodes.append(helper.make_node("Identity", [gram], [f"gram.{layer}"]))
        outputs.append(helper.make_tensor_value_info(f"gram.{layer}", TensorProto.FLOAT, [channels[layer], channels[layer]]))
    return builder.model([image_input()], outputs, opset, "onnxstyle feature extractor")


def _channels(model: Backbone) -> dict[str, int]:
    channels, current = {}, 3
    for layer in model.layer_specs:
        if layer.kind == "conv":
            current = layer.out_channels
        channels[layer.name] = current
    return channels


def build_loss_model(
    model: Backbone,
    preprocessing: Preprocessing,
    *,
    content_layers: Sequence[str],
    style_layers: Sequence[str],
    opset: int = DEFAULT_OPSET,
    precision: str = "fp32",
    winograd_size: tuple[int, int] | None = None,
) -> onnx.ModelProto:
    """Image + targets + per-layer weights → total loss, each term, and d(loss)/d(image)."""
    builder = GraphBuilder()
    b = builder
    network = NetworkGraph(builder, model, preprocessing, precision, winograd_size)
    tensors = network.forward(IMAGE_INPUT)
    channels = _channels(model)
    seeds: dict[str, list[str]] = {}
    content_terms, style_terms = [], []
    inputs = [image_input()]
    for index, layer in enumerate(content_layers):
        target = content_input(layer)
        inputs.append(helper.make_tensor_value_info(target, TensorProto.FLOAT, [1, channels[layer], f"{layer}_h", f"{layer}_w"]))
        weight = b.op("Gather", ["content_weights", b.ints(index)], "content_weight")
        count = b.element_count(tensors[layer])
        scale = b.op("Div", [weight, count])
        diff = b.op("Sub", [tensors[layer], target], "content_diff")
        content_terms.append(b.op("Mul", [b.op("ReduceSum", [b.op("Mul", [diff, diff])], keepdims=0), scale]))
        seeds.setdefault(layer, []).append(b.op("Mul", [diff, b.op("Mul", [scale, b.scalar(2.0)])], "content_grad"))
    for index, layer in enumerate(style_layers):
        target = style_input(layer)
        c = channels[layer]
        inputs.append(helper.make_tensor_value_info(target, TensorProto.FLOAT, [c, c]))
        weight = b.op("Gather", ["style_weights", b.ints(index)], "style_weight")
        gram, matrix, count = network.gram(tensors[layer], c)
        diff = b.op("Sub", [gram, target], "gram_diff")
        scale = b.op("Div", [weight, b.scalar(float(c * c))])
        style_terms.append(b.op("Mul", [b.op("ReduceSum", [b.op("Mul", [diff, diff])], keepdims=0), scale]))
        grad_scale = b.op("Div", [b.op("Mul", [scale, b.scalar(4.0)]), count])
        grad_matrix = b.op("MatMul", [b.op("Mul", [diff, grad_scale]), matrix], "style_grad")
        seeds.setdefault(layer, []).append(b.op("Reshape", [grad_matrix, b.op("Shape", [tensors[layer]])]))
    merged = {layer: (terms[0] if len(terms) == 1 else b.op("Sum", terms)) for layer, terms in seeds.items()}
    grad = network.backward(merged)
    tv_term, tv_grad = _tv(builder, network.model_input)
    grad = network.input_adjoint(b.op("Add", [grad, tv_grad]))
    inputs += [
        helper.make_tensor_value_info("content_weights", TensorProto.FLOAT, [len(content_layers)]),
        helper.make_tensor_value_info("style_weights", TensorProto.FLOAT, [len(style_layers)]),
        helper.make_tensor_value_info("tv_weight", TensorProto.FLOAT, [1]),
    ]
    content_vector = b.op("Concat", content_terms, axis=0)
    style_vector = b.op("Concat", style_terms, axis=0)
    total = b.op("Sum", [b.op("ReduceSum", [content_vector], keepdims=0), b.op("ReduceSum", [style_vector], keepdims=0), b.op("ReduceSum", [tv_term], keepdims=0)])
    for source, name in zip((total, content_vector, style_vector, tv_term, grad), LOSS_OUTPUTS, strict=True):
        b.nodes.append(helper.make_node("Identity", [source], [name]))
    outputs = [
        helper.make_tensor_value_info("loss", TensorProto.FLOAT, []),
        helper.make_tensor_value_info("content_losses", TensorProto.FLOAT, [len(content_layers)]),
        helper.make_tensor_value_info("style_losses", TensorProto.FLOAT, [len(style_layers)]),
        helper.make_tensor_value_info("tv_loss", TensorProto.FLOAT, [1]),
        helper.make_tensor_value_info("grad", TensorProto.FLOAT, [1, 3, HEIGHT, WIDTH]),
    ]
    return builder.model(inputs, outputs, opset, "onnxstyle loss and gradient")


CORE_INPUT = "core"


def _core_mask(builder: GraphBuilder, stride: int, like: str) -> str:
    """The tile's core mask sampled at a layer's positions (feature j ↔ pixel j·stride), shaped like ``like``."""
    b = builder
    big = np.iinfo(np.int64).max
    sampled = b.op("Slice", [CORE_INPUT, b.ints(0, 0), b.ints(big, big), b.ints(2, 3), b.ints(stride, stride)], "core_sampled")
    size = b.op("Slice", [b.op("Shape", [like]), b.ints(2), b.ints(4)], "feature_hw")
    return b.op("Slice", [sampled, b.ints(0, 0), size, b.ints(2, 3)], "core_mask")


def _core_input() -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(CORE_INPUT, TensorProto.FLOAT, [1, 1, HEIGHT, WIDTH])


def build_tile_statistics_model(
    model: Backbone, preprocessing: Preprocessing, *, content_layers: Sequence[str], style_layers: Sequence[str],
    strides: dict[str, int], opset: int = DEFAULT_OPSET,
    precision: str = "fp32",
    winograd_size: tuple[int, int] | None = None,
) -> onnx.ModelProto:
    """Tile + core mask → Gram sums over core positions (``gram_sum.LAYER``) and content features (see tiling.py)."""
    builder = GraphBuilder()
    b = builder
    network = NetworkGraph(builder, model, preprocessing, precision, winograd_size)
    tensors = network.forward(IMAGE_INPUT)
    channels = _channels(model)
    outputs = []
    for layer in style_layers:
        c = channels[layer]
        masked = b.op("Mul", [tensors[layer], _core_mask(b, strides[layer], tensors[layer])], "core_features")
        matrix = b.op("Reshape", [masked, b.ints(c, -1)], "flat")
        b.nodes.append(helper.make_node("MatMul", [matrix, b.op("Transpose", [matrix], perm=[1, 0])], [f"gram_sum.{layer}"]))
        outputs.append(helper.make_tensor_value_info(f"gram_sum.{layer}", TensorProto.FLOAT, [c, c]))
    for layer in content_layers:
        b.nodes.append(helper.make_node("Identity", [tensors[layer]], [layer]))
        outputs.append(helper.make_tensor_value_info(layer, TensorProto.FLOAT, [1, channels[layer], f"{layer}_h", f"{layer}_w"]))
    return builder.model([image_input(), _core_input()], outputs, opset, "onnxstyle tile statistics")


def build_tile_gradient_model(
    model: Backbone, preprocessing: Preprocessing, *, content_layers: Sequence[str], style_layers: Sequence[str],
    strides: dict[str, int], opset: int = DEFAULT_OPSET,
    precision: str = "fp32",
    winograd_size: tuple[int, int] | None = None,
) -> onnx.ModelProto:
    """Tile + core mask + dL/dG per style layer + content targets → core content losses and the tile's gradient.

    The surrogate ⟨D, ΣF·Fᵀ⟩ over core positions has gradient 2·D·F on them, which with D = dL/dG / N is
    exactly the whole-image style gradient there (D is symmetric)."""
    builder = GraphBuilder()
    b = builder
    network = NetworkGraph(builder, model, preprocessing, precision, winograd_size)
    tensors = network.forward(IMAGE_INPUT)
    channels = _channels(model)
    inputs = [image_input(), _core_input()]
    seeds: dict[str, list[str]] = {}
    content_parts = []
    for index, layer in enumerate(content_layers):
        target = content_input(layer)
        inputs.append(helper.make_tensor_value_info(target, TensorProto.FLOAT, [1, channels[layer], f"{layer}_h", f"{layer}_w"]))
        scale = b.op("Gather", ["content_scales", b.ints(index)], "content_scale")
        mask = _core_mask(b, strides[layer], tensors[layer])
        diff = b.op("Mul", [b.op("Sub", [tensors[layer], target]), mask], "core_content_diff")
        content_parts.append(b.op("Mul", [b.op("ReduceSum", [b.op("Mul", [diff, diff])], keepdims=0), scale]))
        seeds.setdefault(layer, []).append(b.op("Mul", [diff, b.op("Mul", [scale, b.scalar(2.0)])], "content_grad"))
    for layer in style_layers:
        c = channels[layer]
        direction = f"direction.{layer}"
        inputs.append(helper.make_tensor_value_info(direction, TensorProto.FLOAT, [c, c]))
        mask = _core_mask(b, strides[layer], tensors[layer])
        matrix = b.op("Reshape", [b.op("Mul", [tensors[layer], mask]), b.ints(c, -1)], "flat")
        grad_matrix = b.op("MatMul", [b.op("Mul", [direction, b.scalar(2.0)]), matrix], "style_grad")
        seeds.setdefault(layer, []).append(b.op("Mul", [b.op("Reshape", [grad_matrix, b.op("Shape", [tensors[layer]])]), mask]))
    merged = {layer: (terms[0] if len(terms) == 1 else b.op("Sum", terms)) for layer, terms in seeds.items()}
    grad = network.input_adjoint(network.backward(merged))
    inputs.append(helper.make_tensor_value_info("content_scales", TensorProto.FLOAT, [len(content_layers)]))
    b.nodes.append(helper.make_node("Concat", content_parts, ["content_parts"], axis=0))
    b.nodes.append(helper.make_node("Identity", [grad], ["grad"]))
    outputs = [
        helper.make_tensor_value_info("content_parts", TensorProto.FLOAT, [len(content_layers)]),
        helper.make_tensor_value_info("grad", TensorProto.FLOAT, [1, 3, HEIGHT, WIDTH]),
    ]
    return builder.model(inputs, outputs, opset, "onnxstyle tile gradient")


def _tv(builder: GraphBuilder, model_input: str) -> tuple[str, str]:
    """TV term and its gradient as one grouped 2×2 Conv and its adjoint Conv."""
    b = builder
    kernels = np.zeros((6, 1, 2, 2), np.float32)
    kernels[0::2, 0, 0, 0], kernels[0::2, 0, 0, 1] = -1.0, 1.0
    kernels[1::2, 0, 0, 0], kernels[1::2, 0, 1, 0] = -1.0, 1.0
    adjoint = np.ascontiguousarray(kernels[:, 0, ::-1, ::-1].reshape(3, 2, 2, 2))
    weight = "tv_weight"
    diffs = b.op("Conv", [model_input, b.const(kernels, "tv_kernels")], "tv_diffs", kernel_shape=[2, 2], group=3)
    term = b.op("Mul", [b.op("ReduceSum", [b.op("Mul", [diffs, diffs])], keepdims=0), b.op("Mul", [weight, b.scalar(0.5)])])
    term = b.op("Reshape", [term, b.ints(1)], "tv_term")
    scaled = b.op("Mul", [diffs, weight])
    grad = b.op("Conv", [scaled, b.const(adjoint, "tv_adjoint")], "tv_grad", kernel_shape=[2, 2], pads=[1, 1, 1, 1], group=3)
    return term, grad


def torch_loss_and_grad(
    model: Backbone,
    preprocessing: Preprocessing,
    image: torch.Tensor,
    content_targets: dict[str, torch.Tensor],
    style_targets: dict[str, torch.Tensor],
    weights: LossWeights,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference loss and gradient by torch autograd, with the same normalisations as the graph."""
    pixels = image.detach().clone().requires_grad_(True)
    model_input = preprocessing.to_model(pixels)
    loss, _, _, _ = objective(model(model_input), model_input, content_targets, style_targets, weights)
    (grad,) = torch.autograd.grad(loss, pixels)
    return loss.detach(), grad


class _RoutedMaxPoolFunction(torch.autograd.Function):
    """Max pool whose backward follows given per-offset choices instead of its own argmax."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, choices: torch.Tensor, kernel: int, stride: int, ceil: bool) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(choices)
        ctx.geometry = (x.shape, kernel, stride)  # type: ignore[attr-defined]
        return torch.nn.functional.max_pool2d(x, kernel, stride, ceil_mode=ceil)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        (choices,) = ctx.saved_tensors  # type: ignore[attr-defined]
        shape, kernel, stride = ctx.geometry  # type: ignore[attr-defined]
        batch, channels, rows, cols = grad.shape
        columns = (choices.to(grad.dtype) * grad.unsqueeze(2)).reshape(batch, channels * kernel * kernel, rows * cols)
        span = ((rows - 1) * stride + kernel, (cols - 1) * stride + kernel)
        placed = torch.nn.functional.fold(columns, span, kernel_size=kernel, stride=stride)
        placed = torch.nn.functional.pad(placed, (0, max(0, shape[3] - span[1]), 0, max(0, shape[2] - span[0])))
        return placed[:, :, : shape[2], : shape[3]], None, None, None, None


class _MaskedMaxPoolFunction(torch.autograd.Function):
    """Max pool (kernel == stride) whose backward sends the gradient to a given full-resolution mask."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, mask: torch.Tensor, kernel: int) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(mask)
        ctx.kernel = kernel  # type: ignore[attr-defined]
        return torch.nn.functional.max_pool2d(x, kernel, kernel)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        (mask,) = ctx.saved_tensors  # type: ignore[attr-defined]
        kernel = ctx.kernel  # type: ignore[attr-defined]
        spread = grad.repeat_interleave(kernel, dim=2).repeat_interleave(kernel, dim=3)
        spread = torch.nn.functional.pad(spread, (0, mask.shape[3] - spread.shape[3], 0, mask.shape[2] - spread.shape[2]))
        return spread * mask.to(grad.dtype), None, None


class _RoutedMaxPool(torch.nn.Module):
    """Per-offset choices (overlapping pools) or one full-resolution mask (tiling pools)."""

    def __init__(self, pool: torch.nn.MaxPool2d, choices: torch.Tensor, full_mask: bool = False) -> None:
        super().__init__()
        self.pool, self.choices, self.full_mask = pool, choices, full_mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.full_mask:
            return _MaskedMaxPoolFunction.apply(x, self.choices, self.pool.kernel_size)
        return _RoutedMaxPoolFunction.apply(x, self.choices, self.pool.kernel_size, self.pool.stride, self.pool.ceil_mode)


class _RoutedReluFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(mask)
        return torch.relu(x)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        (mask,) = ctx.saved_tensors  # type: ignore[attr-defined]
        return grad * mask.to(grad.dtype), None


class _RoutedRelu(torch.nn.Module):
    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.mask = mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _RoutedReluFunction.apply(x, self.mask)


def with_decisions(
    model: Backbone,
    pool_choices: dict[str, torch.Tensor],
    relu_masks: dict[str, torch.Tensor],
    pool_masks: dict[str, torch.Tensor] | None = None,
) -> Backbone:
    """A copy of ``model`` whose ReLUs and max pools route gradients as the ONNX graph decided.

    These gradients jump where a pre-activation is near 0 or two window values nearly tie, and
    fp32 rounding in two runtimes can decide such kinks differently (torch fp32 disagrees with
    torch fp64 in the same way, by up to 1e-2). Sharing the decisions isolates what validation
    must check: the adjoint arithmetic.
    """
    routed = copy.copy(model)
    routed._modules = dict(model._modules)
    routed.body = torch.nn.ModuleDict(dict(model.body.items()))
    for layer, choice in pool_choices.items():
        routed.body[layer] = _RoutedMaxPool(model.body[layer], choice)  # type: ignore[arg-type]
    for layer, mask in (pool_masks or {}).items():
        routed.body[layer] = _RoutedMaxPool(model.body[layer], mask, full_mask=True)  # type: ignore[arg-type]
    for layer, mask in relu_masks.items():
        routed.body[layer] = _RoutedRelu(mask)
    return routed


def _with_choice_outputs(graph: onnx.ModelProto) -> onnx.ModelProto:
    exposed = onnx.ModelProto()
    exposed.CopyFrom(graph)
    for node in graph.graph.node:
        for name in node.output:
            if name.startswith((POOL_CHOICE, POOL_MASK, RELU_CHOICE)):
                exposed.graph.output.append(helper.make_tensor_value_info(name, TensorProto.BOOL, None))
    return exposed


def _stack_choices(named: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    layers: dict[str, list[tuple[int, np.ndarray]]] = {}
    for name, value in named.items():
        layer, index = name.removeprefix(POOL_CHOICE).rsplit(".", 1)
        layers.setdefault(layer, []).append((int(index), value))
    return {layer: torch.from_numpy(np.stack([v for _, v in sorted(items, key=lambda item: item[0])], axis=2)) for layer, items in layers.items()}


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """‖actual − expected‖₂ / ‖expected‖₂, the usual vector relative error (scale-free)."""
    actual64, expected64 = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    scale = float(np.linalg.norm(expected64)) or 1.0
    return float(np.linalg.norm(actual64 - expected64)) / scale


@dataclass
class ValidationRecord:
    graph: str
    size: tuple[int, int]
    output: str
    error: float
    tolerance: float


def _checked(graph: str, size: tuple[int, int], output: str, actual: np.ndarray, expected: np.ndarray, tolerance: float) -> ValidationRecord:
    """One comparison against torch; beyond tolerance it is a typed error, not a warning."""
    error = relative_error(np.asarray(actual), expected)
    if not error <= tolerance:
        raise ExportValidationError(
            f"exported {graph} graph disagrees with torch at {size[0]}x{size[1]} ({output}): "
            f"relative error {error:.2e} > {tolerance:.0e}"
        )
    return ValidationRecord(graph, size, output, error, tolerance)


def _session(model: onnx.ModelProto) -> object:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _validation_images(sizes: Sequence[tuple[int, int]]) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(7)
    return [torch.rand(1, 3, height, width, generator=generator) for width, height in sizes]


def validate_features(
    graph: onnx.ModelProto,
    model: Backbone,
    preprocessing: Preprocessing,
    sizes: Sequence[tuple[int, int]] = VALIDATION_SIZES,
    tolerance: float = FEATURE_TOLERANCE,
) -> list[ValidationRecord]:
    """Run ORT and torch on the same images; any output beyond tolerance is a typed error."""
    session = _session(graph)
    records = []
    for image in _validation_images(sizes):
        size = (image.shape[3], image.shape[2])
        with torch.no_grad():
            expected = model(preprocessing.to_model(image))
        actual = dict(zip([o.name for o in session.get_outputs()], session.run(None, {IMAGE_INPUT: image.numpy()}), strict=True))  # type: ignore[attr-defined]
        for layer, reference in expected.items():
            records.append(_checked("features", size, layer, actual[layer], reference.numpy(), tolerance))
    return records


def random_targets(
    model: Backbone, preprocessing: Preprocessing, content_layers: Sequence[str], style_layers: Sequence[str], image: torch.Tensor
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Targets from a different random image of the same size, so the loss is far from zero."""
    generator = torch.Generator().manual_seed(11)
    other = torch.rand(image.shape, generator=generator)
    with torch.no_grad():
        features = model(preprocessing.to_model(other))
    return (
        {layer: features[layer] for layer in content_layers},
        {layer: gram_matrix(features[layer]) for layer in style_layers},
    )


def loss_feeds(
    image: np.ndarray, content_targets: dict[str, torch.Tensor], style_targets: dict[str, torch.Tensor], weights: LossWeights
) -> dict[str, np.ndarray]:
    feeds = {IMAGE_INPUT: image}
    feeds.update({content_input(layer): value.numpy() for layer, value in content_targets.items()})
    feeds.update({style_input(layer): value.numpy() for layer, value in style_targets.items()})
    feeds["content_weights"] = np.array(weights.content, np.float32)
    feeds["style_weights"] = np.array(weights.style, np.float32)
    feeds["tv_weight"] = np.array([weights.tv], np.float32)
    return feeds


def validate_loss(
    graph: onnx.ModelProto,
    model: Backbone,
    preprocessing: Preprocessing,
    content_layers: Sequence[str],
    style_layers: Sequence[str],
    sizes: Sequence[tuple[int, int]] = VALIDATION_SIZES,
    weights: LossWeights | None = None,
    tolerance: float = GRADIENT_TOLERANCE,
) -> list[ValidationRecord]:
    """Gradient parity against torch.autograd at every size (relative error ≤ 1e-4 for fp32 graphs)."""
    weights = weights or LossWeights((5.0,) * len(content_layers), (100.0,) * len(style_layers), 1e-3)
    session = _session(_with_choice_outputs(graph))
    names = [output.name for output in session.get_outputs()]  # type: ignore[attr-defined]
    records = []
    for image in _validation_images(sizes):
        size = (image.shape[3], image.shape[2])
        content_targets, style_targets = random_targets(model, preprocessing, content_layers, style_layers, image)
        outputs = dict(zip(names, session.run(None, loss_feeds(image.numpy(), content_targets, style_targets, weights)), strict=True))  # type: ignore[attr-defined]
        choices = _stack_choices({name: value for name, value in outputs.items() if name.startswith(POOL_CHOICE)})
        masks = {name.removeprefix(RELU_CHOICE): torch.from_numpy(value) for name, value in outputs.items() if name.startswith(RELU_CHOICE)}
        pool_masks = {name.removeprefix(POOL_MASK): torch.from_numpy(value) for name, value in outputs.items() if name.startswith(POOL_MASK)}
        reference = with_decisions(model, choices, masks, pool_masks)
        loss, grad = torch_loss_and_grad(reference, preprocessing, image, content_targets, style_targets, weights)
        for name, expected in (("loss", loss), ("grad", grad)):
            records.append(_checked("loss", size, name, outputs[name], expected.numpy(), tolerance))
    return records


def operator_types(graph: onnx.ModelProto) -> set[str]:
    return {node.op_type for node in graph.graph.node if node.op_type != "Identity"}


@dataclass
class ExportResult:
    features_path: Path
    loss_path: Path
    metadata_path: Path
    metadata: dict[str, object] = field(default_factory=dict)


def default_stem(backbone: str, pooling: str, weights: ResolvedWeights, content: Sequence[str], style: Sequence[str], features: Sequence[str]) -> str:
    digest = hashlib.sha256(json.dumps([list(content), list(style), list(features)]).encode()).hexdigest()[:8]
    return f"{backbone}-{pooling}-{weights.id.replace(':', '_')}-{digest}"


def export_backbone(
    *,
    backbone: str,
    weights: str = "auto",
    layers: str | Sequence[str] | None = None,
    content_layers: str | Sequence[str] | None = None,
    style_layers: str | Sequence[str] | None = None,
    pooling: Pooling = "max",
    opset: int = DEFAULT_OPSET,
    precision: str = "fp32",
    output: Path | None = None,
    models_dir: Path = Path("models"),
    validation_sizes: Sequence[tuple[int, int]] = VALIDATION_SIZES,
    force: bool = False,
    on_plan: Callable[[list[Path]], None] | None = None,
) -> ExportResult:
    """Write the features model, the loss+gradient model and a metadata sidecar, all validated.

    ``precision="fp16"`` runs the network and its adjoint in fp16 inside the graphs; inputs, outputs,
    Grams and loss sums stay fp32 (see ``NetworkGraph``).

    The three paths are decided and checked before any work (``on_plan`` hears them): an explicit
    ``output`` whose files already exist is refused unless ``force``, since ``-o dir/data.onnx`` also
    writes ``dir/data.loss.onnx`` and ``dir/data.json``; the default store's files are named by their
    configuration and are replaced. All three are written together or not at all.
    """
    check_opset(opset)
    if precision not in EXPORT_TOLERANCES:
        raise UsageError(f"graphs are exported in {' or '.join(EXPORT_TOLERANCES)}, not {precision} (bf16 Conv needs opset 22)")
    tolerance = EXPORT_TOLERANCES[precision]
    spec = get_backbone(backbone)
    content = spec.validate_layers(parse_layers(content_layers, spec.default_content_layers), "content-layers")
    style = spec.validate_layers(parse_layers(style_layers, spec.default_style_layers), "style-layers")
    feature_layers = spec.validate_layers(parse_layers(layers, list(dict.fromkeys([*style, *content]))), "layers")
    started = time.perf_counter()
    resolved = resolve(weights, spec)
    if output is None:
        models_dir.mkdir(parents=True, exist_ok=True)
        stem = default_stem(spec.name, pooling, resolved, content, style, feature_layers) + ("" if precision == "fp32" else f"-{precision}")
        output = models_dir / f"{stem}.features.onnx"
        replace = True
    else:
        output, replace = Path(output), force
    paths = export_paths(output)
    for path in paths:
        check_output(path, formats=(".onnx",) if path.suffix == ".onnx" else None, replace=replace, what="export")
    if on_plan is not None:
        on_plan(list(paths))
    output, loss_path, metadata_path = paths
    features_model = build_backbone(spec, feature_layers, pooling=pooling, resolved=resolved)
    features_graph = build_features_model(features_model, resolved.preprocessing, opset=opset, precision=precision)
    onnx.checker.check_model(features_graph, full_check=True)
    records = validate_features(features_graph, features_model, resolved.preprocessing, validation_sizes, tolerance)
    loss_model = build_backbone(spec, list(dict.fromkeys([*content, *style])), pooling=pooling, resolved=resolved)
    loss_graph = build_loss_model(
        loss_model, resolved.preprocessing, content_layers=content, style_layers=style, opset=opset, precision=precision
    )
    onnx.checker.check_model(loss_graph, full_check=True)
    records += validate_loss(loss_graph, loss_model, resolved.preprocessing, content, style, validation_sizes, tolerance=tolerance)
    metadata: dict[str, object] = {
        "tool": "onnxstyle",
        "tool_version": __version__,
        "backbone": spec.name,
        "pooling": pooling,
        "opset": opset,
        "precision": precision,
        "features": {"file": output.name, "layers": feature_layers, "inputs": [IMAGE_INPUT], "dynamic_axes": [HEIGHT, WIDTH]},
        "loss": {
            "file": loss_path.name,
            "content_layers": content,
            "style_layers": style,
            "outputs": list(LOSS_OUTPUTS),
            "operators": sorted(operator_types(loss_graph)),
        },
        "weights": resolved.as_dict(),
        "preprocessing_in_graph": True,
        "input": "RGB float32 in [0, 1], shape (1, 3, height, width)",
        "validation": {
            "reference": f"torch {torch.__version__}",
            "feature_tolerance": tolerance,
            "gradient_tolerance": tolerance,
            "records": [asdict(record) for record in records],
        },
        "export_seconds": round(time.perf_counter() - started, 2),
    }
    write_all({
        output: features_graph.SerializeToString(),
        loss_path: loss_graph.SerializeToString(),
        metadata_path: json.dumps(metadata, indent=2) + "\n",
    })
    return ExportResult(output, loss_path, metadata_path, metadata)


def export_paths(output: Path) -> tuple[Path, Path, Path]:
    """The features model, loss model and metadata an export to ``output`` writes (``x.onnx``: x.loss.onnx, x.json)."""
    if output.suffix != ".onnx":
        raise OutputError(f"{output}: the output must end in .onnx")
    base = output.name.removesuffix(".onnx").removesuffix(".features")
    return output, output.with_name(base + ".loss.onnx"), output.with_name(base + ".json")
