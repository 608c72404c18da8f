"""The exported graphs and their signatures: features, loss+gradient and tile graphs, the names of their inputs
and outputs, and how to fix their dynamic dimensions for providers that need static shapes."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper

from onnxstyle.backbones import Backbone, BackboneSpec
from onnxstyle.errors import UsageError
from onnxstyle.exporters.graph import (
    DEFAULT_OPSET,
    HEIGHT,
    IMAGE_INPUT,
    MAX_OPSET,
    MIN_OPSET,
    WIDTH,
    FeatureViews,
    GraphBuilder,
    NetworkGraph,
    image_input,
)
from onnxstyle.losses import LossWeights
from onnxstyle.weights import Preprocessing

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


def target_feeds(content_targets: dict[str, torch.Tensor], style_targets: dict[str, torch.Tensor], weights: LossWeights) -> dict[str, torch.Tensor]:
    """The loss graph's inputs besides the image: content features, style Grams and the loss weights, by input name."""
    feeds = {content_input(layer): value for layer, value in content_targets.items()}
    feeds.update({style_input(layer): value for layer, value in style_targets.items()})
    feeds["content_weights"] = torch.tensor(weights.content, dtype=torch.float32)
    feeds["style_weights"] = torch.tensor(weights.style, dtype=torch.float32)
    feeds["tv_weight"] = torch.tensor([weights.tv], dtype=torch.float32)
    return feeds


def dimension_values(backbone: BackboneSpec, content_layers: Sequence[str], height: int, width: int) -> dict[str, int]:
    """Every symbolic dimension our graphs use, for an input image of ``height``×``width``."""
    if content_layers and (problem := backbone.size_problem(content_layers, width, height)) is not None:
        raise UsageError(problem)
    values = {HEIGHT: height, WIDTH: width}
    for layer in content_layers:
        shape = backbone.feature_shape(layer, height, width)
        assert shape is not None
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
    builder, network, tensors, channels = _forward_graph(model, preprocessing, precision, winograd_size)
    outputs = []
    for layer in model.outputs:
        builder.nodes.append(helper.make_node("Identity", [tensors[layer]], [layer]))
        outputs.append(helper.make_tensor_value_info(layer, TensorProto.FLOAT, [1, channels[layer], f"{layer}_h", f"{layer}_w"]))
    for layer in grams:
        gram, _, _ = network.gram(tensors[layer], channels[layer])
        builder.nodes.append(helper.make_node("Identity", [gram], [f"gram.{layer}"]))
        outputs.append(helper.make_tensor_value_info(f"gram.{layer}", TensorProto.FLOAT, [channels[layer], channels[layer]]))
    return builder.model([image_input()], outputs, opset, "onnxstyle feature extractor")


def _forward_graph(
    model: Backbone, preprocessing: Preprocessing, precision: str, winograd_size: tuple[int, int] | None
) -> tuple[GraphBuilder, NetworkGraph, FeatureViews, dict[str, int]]:
    """What every graph starts with: a builder, the network's forward pass from the image, and channels per layer."""
    builder = GraphBuilder()
    network = NetworkGraph(builder, model, preprocessing, precision, winograd_size)
    return builder, network, network.forward(IMAGE_INPUT), _channels(model)


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
    builder, network, tensors, channels = _forward_graph(model, preprocessing, precision, winograd_size)
    b = builder
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
    builder, network, tensors, channels = _forward_graph(model, preprocessing, precision, winograd_size)
    b = builder
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
    builder, network, tensors, channels = _forward_graph(model, preprocessing, precision, winograd_size)
    b = builder
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



def operator_types(graph: onnx.ModelProto) -> set[str]:
    return {node.op_type for node in graph.graph.node if node.op_type != "Identity"}
