"""Build the backbone and its exact adjoint directly as standard ONNX operators.

torch.onnx cannot export ``autograd.grad`` and ORT's training graphs use contrib ops that inference
builds and TensorRT lack, so the gradient is written out here as a forward
computation. The same ``LayerSpec`` list drives the torch modules, which keeps the two in step.

Adjoint forms, chosen so every execution provider runs them and the CPU EP can use NCHWc Conv:
- ReLU: ``g · Cast(y > 0)`` (Mul by a 0/1 mask runs faster than Where on the CPU EP);
- stride-1 Conv: Conv with flipped, in/out-transposed weights and pads ``k - 1 - p``;
- optionally (``winograd=True``, fp32 CPU graphs) 3×3 stride-1 convolutions with ≥128 channels in and
  out, forward and adjoint alike, as Winograd F(4×4, 3×3): 4× fewer multiplies, built from Conv,
  MatMul and DepthToSpace (see ``NetworkGraph._winograd``);
- strided Conv: one flipped sub-kernel per stride phase in a single Conv, then DepthToSpace;
- non-overlapping pool (VGG's 2×2/2): windows tile the input, so the adjoint is the gradient
  upsampled by an exact nearest Resize times one full-resolution mask ``x == upsample(y)``; a ReLU just
  before it folds its ``x > 0`` into the same mask (ties between positive values, which
  torch breaks by first index, have probability zero; ties at 0 are removed by that ReLU term);
- overlapping pool (NIN's 3×3/2 ceil): one mask per window offset (first maximum wins, as in torch),
  placed by DepthToSpace; no MaxUnpool, ScatterND or ConvTranspose anywhere.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxstyle.backbones import Backbone, LayerSpec, Pooling
from onnxstyle.errors import UsageError
from onnxstyle.precision import FP16_LOSS_SCALE
from onnxstyle.weights import Preprocessing

DEFAULT_OPSET = 17
MIN_OPSET = 13
MAX_OPSET = 17
IMAGE_INPUT = "image"
HEIGHT, WIDTH = "height", "width"
POOL_CHOICE = "pool_choice."
POOL_MASK = "pool_mask."
RELU_CHOICE = "relu_choice."
# Winograd F(4x4, 3x3) (Lavin & Gray 2016, interpolation points 0, ±1, ±2): Y = Aᵀ[(G g Gᵀ) ⊙ (Bᵀ d B)]A
# turns each 6×6 input tile d into a 4×4 output tile with 36 multiplies per channel pair instead of 144.
WINOGRAD_BT = np.array(
    [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0], [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]],
    np.float64,
)
WINOGRAD_G = np.array(
    [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6], [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]],
    np.float64,
)
WINOGRAD_AT = np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]], np.float64)
# Below this many channels (in or out), or this many output tiles, the transforms' memory traffic and
# small-op overhead outweigh the saved multiplies on ORT's CPU EP (speed-up against the direct Conv, per
# shape: 64→64 at 256² 0.67×, 128→128 at 128² 1.1×, 256→256 at 64² 2.0×, 512→512 at 32² 2.0×, at 16² 1.8×,
# at 8² (4 tiles) 0.67×).
WINOGRAD_MIN_CHANNELS = 128
WINOGRAD_MIN_TILES = 16

# Precisions a gradient graph can be built in (bf16: ONNX Conv takes it only from opset 22, and no ORT EP runs it there).
GRAPH_PRECISIONS = {"fp32": TensorProto.FLOAT, "fp16": TensorProto.FLOAT16}


@dataclass
class GraphBuilder:
    """Accumulates nodes and initializers with unique names."""

    nodes: list[onnx.NodeProto] = field(default_factory=list)
    initializers: list[onnx.TensorProto] = field(default_factory=list)
    counter: int = 0
    constants: dict[tuple[str, bytes, tuple[int, ...]], str] = field(default_factory=dict)

    def name(self, hint: str) -> str:
        self.counter += 1
        return f"{hint}_{self.counter}"

    def op(self, op_type: str, inputs: Sequence[str], hint: str | None = None, outputs: int = 1, **attrs: object) -> str:
        names = [self.name(hint or op_type.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), names, name=names[0], **attrs))
        return names[0]

    def const(self, value: np.ndarray | float | int | Sequence[int], hint: str = "const") -> str:
        """An initializer, shared when the same small constant is asked for twice."""
        array = np.asarray(value)
        if array.dtype == np.float64:
            array = array.astype(np.float32)
        key = (str(array.dtype), array.tobytes(), array.shape) if array.size <= 16 else None
        if key is not None and key in self.constants:
            return self.constants[key]
        name = self.name(hint)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        if key is not None:
            self.constants[key] = name
        return name

    def ints(self, *values: int) -> str:
        return self.const(np.array(values, dtype=np.int64), "ints")

    def scalar(self, value: float) -> str:
        return self.const(np.array(value, dtype=np.float32), "scalar")

    def element_count(self, tensor: str, hint: str = "numel") -> str:
        """The element count of ``tensor`` as a float scalar.

        ReduceProd(Shape) rather than Size: with the input shapes fixed (GPU sessions) ORT folds it to a
        constant, whereas a Size node stays and is placed on the CPU EP, which a session without CPU
        fallback refuses and a CUDA graph cannot capture.
        """
        count = self.op("ReduceProd", [self.op("Shape", [tensor])], keepdims=0)
        return self.op("Cast", [count], hint, to=TensorProto.FLOAT)

    def model(
        self, inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto], opset: int, doc: str
    ) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, "onnxstyle", inputs, outputs)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="onnxstyle")
        # Added to the model's own graph: make_model copies the graph it is given, and VGG19's weights made that copy
        # (and make_graph's) about two seconds of every ONNX Runtime engine's set-up.
        model.graph.initializer.extend(self.initializers)
        model.doc_string = doc
        model.ir_version = 8
        return model


def image_input() -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(IMAGE_INPUT, TensorProto.FLOAT, [1, 3, HEIGHT, WIDTH])


@dataclass(frozen=True)
class LayerTensors:
    """What the adjoint needs from the forward pass at one layer."""

    spec: LayerSpec
    input: str
    output: str


class FeatureViews(Mapping[str, str]):
    """Layer outputs as the loss reads them: fp32, through a Cast added only for layers actually read."""

    def __init__(self, network: NetworkGraph, outputs: dict[str, str]) -> None:
        self.network, self.outputs, self.views = network, outputs, {}

    def __getitem__(self, layer: str) -> str:
        if layer not in self.views:
            tensor = self.outputs[layer]
            self.views[layer] = self.network.b.op("Cast", [tensor], f"{layer}_fp32", to=TensorProto.FLOAT) if self.network.reduced else tensor
        return self.views[layer]

    def __iter__(self) -> Iterator[str]:
        return iter(self.outputs)

    def __len__(self) -> int:
        return len(self.outputs)


class NetworkGraph:
    """Forward pass of a truncated backbone plus, on demand, its adjoint.

    ``precision="fp16"`` runs the network and its adjoint in fp16 (weights, activations, masks) while
    everything the loss sums (features handed out, Grams, seeds, the image gradient) stays fp32: seeds
    are multiplied by ``FP16_LOSS_SCALE`` before they enter fp16, so gradients of order 1e-8 survive.
    """

    def __init__(
        self,
        builder: GraphBuilder,
        model: Backbone,
        preprocessing: Preprocessing,
        precision: str = "fp32",
        winograd_size: tuple[int, int] | None = None,
    ) -> None:
        """``winograd_size``: the smallest (height, width) the graph will run at; the 3×3 convolutions that are
        wide enough and have enough tiles at that size become Winograd F(4×4, 3×3). None: all direct."""
        if precision not in GRAPH_PRECISIONS:
            raise UsageError(f"graphs are built in {', '.join(GRAPH_PRECISIONS)}, not {precision}")
        if winograd_size is not None and precision != "fp32":
            raise UsageError("Winograd convolutions are built for fp32 graphs only (their transforms lose too much in fp16)")
        self.winograd_size = winograd_size
        self.winograd_layers: set[str] = set()
        self.float_type = GRAPH_PRECISIONS[precision]
        self.reduced = precision != "fp32"
        self.np_float = helper.tensor_dtype_to_np_dtype(self.float_type)
        self.loss_scale = FP16_LOSS_SCALE if precision == "fp16" else 1.0
        self.b = builder
        self.model = model
        self.pooling: Pooling = model.pooling
        self.preprocessing = preprocessing
        self.weights = {
            name: (conv.weight.detach().cpu().numpy().astype(np.float32), conv.bias.detach().cpu().numpy().astype(np.float32))
            for name, conv in model.convs().items()
        }
        self.tensors: list[LayerTensors] = []
        self.model_input = ""
        self.pool_choices: dict[str, list[str]] = {}
        self.producers: dict[str, LayerTensors] = {}
        self.seeded: set[str] = set()
        self.folded_relus: set[str] = set()
        self.positive: dict[str, str] = {}

    def forward(self, image: str) -> FeatureViews:
        """The network on ``image``; returns each layer's output, in fp32, by layer name."""
        b = self.b
        channel_first = b.op("Gather", [image, b.ints(*self.preprocessing.permutation)], "to_model_order", axis=1)
        multiplier = b.const(np.array(self.preprocessing.multiplier, np.float32).reshape(1, 3, 1, 1), "pre_scale")
        offset = b.const(np.array(self.preprocessing.offset, np.float32).reshape(1, 3, 1, 1), "pre_offset")
        x = b.op("Add", [b.op("Mul", [channel_first, multiplier]), offset], "model_input")
        self.model_input = x
        if self.reduced:
            x = b.op("Cast", [x], "model_input_reduced", to=self.float_type)
        outputs: dict[str, str] = {}
        if self.winograd_size is not None:
            self.winograd_layers = set(winograd_layers(self.model.layer_specs, self.winograd_size))
        for layer in self.model.layer_specs:
            y = self._layer_forward(layer, x)
            self.tensors.append(LayerTensors(layer, x, y))
            self.producers[y] = self.tensors[-1]
            outputs[layer.name] = y
            x = y
        return FeatureViews(self, outputs)

    def _scalar(self, value: float) -> str:
        return self.b.const(np.array(value, dtype=self.np_float), "scalar")

    def _weight(self, array: np.ndarray, hint: str) -> str:
        return self.b.const(array.astype(self.np_float), hint)

    def _layer_forward(self, layer: LayerSpec, x: str) -> str:
        b = self.b
        if layer.kind == "conv":
            weight, bias = self.weights[layer.name]
            if layer.name in self.winograd_layers:
                shaped_bias = self._weight(bias.reshape(1, -1, 1, 1), f"{layer.name}_b")
                return b.op("Add", [self._winograd(x, weight, layer.name), shaped_bias], layer.name)
            return b.op(
                "Conv",
                [x, self._weight(weight, f"{layer.name}_w"), self._weight(bias, f"{layer.name}_b")],
                layer.name,
                kernel_shape=[layer.kernel, layer.kernel],
                strides=[layer.stride, layer.stride],
                pads=[layer.padding] * 4,
            )
        if layer.kind == "relu":
            return b.op("Relu", [x], layer.name)
        if layer.kind == "pool":
            op_type = "MaxPool" if self.pooling == "max" else "AveragePool"
            return b.op(
                op_type,
                [x],
                layer.name,
                kernel_shape=[layer.kernel, layer.kernel],
                strides=[layer.stride, layer.stride],
                ceil_mode=int(layer.ceil_mode),
            )
        return x  # dropout is the identity at inference

    def gram(self, features: str, channels: int) -> tuple[str, str, str]:
        """(Gram matrix F·Fᵀ/N, the (C, HW) matrix F, N as a float scalar)."""
        b = self.b
        matrix = b.op("Reshape", [features, b.ints(channels, -1)], "flat")
        count = b.element_count(features)
        product = b.op("MatMul", [matrix, b.op("Transpose", [matrix], perm=[1, 0])])
        return b.op("Div", [product, count], "gram"), matrix, count

    def backward(self, seeds: dict[str, str]) -> str:
        """Propagate per-layer output gradients (``seeds``, fp32) back to the model input (fp32)."""
        grad: str | None = None
        self.seeded = set(seeds)
        for tensors in reversed(self.tensors):
            seed = seeds.get(tensors.spec.name)
            if seed is not None and self.reduced:
                scaled = self.b.op("Mul", [seed, self.b.scalar(self.loss_scale)], "scaled_seed")
                seed = self.b.op("Cast", [scaled], "reduced_seed", to=self.float_type)
            if seed is not None:
                grad = seed if grad is None else self.b.op("Add", [grad, seed], "grad_sum")
            if grad is not None:
                grad = self._layer_adjoint(tensors, grad)
        if grad is None:
            raise ValueError("no loss layer was given a gradient")
        if self.reduced:
            grad = self.b.op("Cast", [grad], "grad_fp32", to=TensorProto.FLOAT)
            grad = self.b.op("Mul", [grad, self.b.scalar(1.0 / self.loss_scale)], "unscaled_grad")
        return grad

    def _layer_adjoint(self, tensors: LayerTensors, grad: str) -> str:
        layer = tensors.spec
        if layer.kind == "relu":
            if layer.name in self.folded_relus:
                return grad
            return self._masked(grad, self._relu_positive(tensors), f"{layer.name}_adj")
        if layer.kind == "conv":
            return self._conv_adjoint(layer, tensors, grad)
        if layer.kind == "pool":
            return self._pool_adjoint(layer, tensors, grad)
        return grad

    def _masked(self, grad: str, mask: str, hint: str) -> str:
        """``grad`` where ``mask`` holds, else 0; Mul by a 0/1 tensor runs faster than Where on CPU."""
        return self.b.op("Mul", [grad, self.b.op("Cast", [mask], "mask", to=self.float_type)], hint)

    def _relu_positive(self, tensors: LayerTensors) -> str:
        """``y > 0`` for a ReLU output, built once and exposed for validation."""
        name = tensors.spec.name
        if name not in self.positive:
            self.positive[name] = self.b.op("Greater", [tensors.output, self._scalar(0.0)])
            self.b.nodes.append(helper.make_node("Identity", [self.positive[name]], [f"{RELU_CHOICE}{name}"]))
        return self.positive[name]

    def _conv_adjoint(self, layer: LayerSpec, tensors: LayerTensors, grad: str) -> str:
        b = self.b
        weight, _ = self.weights[layer.name]
        k, s, p = layer.kernel, layer.stride, layer.padding
        if s == 1:
            flipped = np.ascontiguousarray(weight[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))
            pad = k - 1 - p
            if layer.name in self.winograd_layers:  # the adjoint is again 3×3, pads 1, at the same size
                return self._winograd(grad, flipped, f"{layer.name}_adj")
            return b.op(
                "Conv", [grad, self._weight(flipped, f"{layer.name}_adj_w")], f"{layer.name}_adj",
                kernel_shape=[k, k], pads=[pad] * 4,
            )
        taps = math.ceil(k / s)
        padded = np.zeros((weight.shape[0], weight.shape[1], s * taps, s * taps), np.float32)
        padded[:, :, :k, :k] = weight
        out_channels, in_channels = weight.shape[:2]
        phases = np.zeros((s * s * in_channels, out_channels, taps, taps), np.float32)
        for row_phase in range(s):
            for col_phase in range(s):
                sub = padded[:, :, row_phase::s, col_phase::s][:, :, ::-1, ::-1]
                start = (row_phase * s + col_phase) * in_channels
                phases[start : start + in_channels] = sub.transpose(1, 0, 2, 3)
        phased = b.op(
            "Conv", [grad, self._weight(phases, f"{layer.name}_phase_w")], f"{layer.name}_phases",
            kernel_shape=[taps, taps], pads=[taps - 1] * 4,
        )
        phased = b.op("Pad", [phased, b.ints(0, 0, 0, 0, 0, 0, 1, 1)])
        spread = b.op("DepthToSpace", [phased], blocksize=s, mode="DCR")
        return self._crop_to(spread, tensors.input, offset=p)

    def _winograd(self, x: str, weight: np.ndarray, hint: str) -> str:
        """``Conv(x, weight, pads=1)`` for a 3×3 kernel, as Winograd F(4×4, 3×3) in plain ONNX operators.

        The input is padded to whole 6×6 tiles at stride 4; one 1→36-channel Conv (each channel a batch
        item) applies Bᵀ·d·B to every tile; one batched MatMul multiplies the 36 transformed planes by the
        pre-transformed weights G·g·Gᵀ; one MatMul applies Aᵀ·m·A; DepthToSpace lays the 4×4 output tiles
        out, and a Slice drops the rows and columns that only filled the last tiles. Relative error against
        the direct convolution: ~1e-5 in fp32.
        """
        b = self.b
        out_channels, in_channels = weight.shape[:2]
        input_transform = np.einsum("ia,jb->ijab", WINOGRAD_BT, WINOGRAD_BT).reshape(36, 1, 6, 6)
        weight_transform = (WINOGRAD_G @ weight.astype(np.float64) @ WINOGRAD_G.T).transpose(2, 3, 0, 1)  # G·g·Gᵀ as (6, 6, K, C)
        output_transform = np.einsum("pi,qj->pqij", WINOGRAD_AT, WINOGRAD_AT).reshape(16, 36)
        size = b.op("Slice", [b.op("Shape", [x]), b.ints(2), b.ints(4)], "hw")
        short = b.op("Mod", [b.op("Sub", [b.ints(4, 4), b.op("Mod", [size, b.ints(4, 4)])]), b.ints(4, 4)], "short_of_tiles")
        pads = b.op("Concat", [b.ints(0, 0, 1, 1, 0, 0), b.op("Add", [short, b.ints(1, 1)])], axis=0)
        padded = b.op("Pad", [x, pads], f"{hint}_tiles_in")
        planes = b.op("Reshape", [padded, b.ints(in_channels, 1, 0, 0)])
        transformed = b.op(
            "Conv", [planes, self._weight(input_transform, f"{hint}_bt")], f"{hint}_wino_in", kernel_shape=[6, 6], strides=[4, 4]
        )
        tiles = b.op("Slice", [b.op("Shape", [transformed]), b.ints(2), b.ints(4)], "tiles_hw")
        by_point = b.op("Transpose", [b.op("Reshape", [transformed, b.ints(in_channels, 36, -1)])], perm=[1, 0, 2])
        products = b.op("MatMul", [self._weight(weight_transform.reshape(36, out_channels, in_channels), f"{hint}_wino_w"), by_point])
        flat = b.op("Reshape", [products, b.ints(36, -1)])
        outputs = b.op("MatMul", [self._weight(output_transform, f"{hint}_at"), flat], f"{hint}_wino_out")
        grid = b.op("Reshape", [outputs, b.op("Concat", [b.ints(1, 16 * out_channels), tiles], axis=0)])
        spread = b.op("DepthToSpace", [grid], blocksize=4, mode="DCR")
        return b.op("Slice", [spread, b.ints(0, 0), size, b.ints(2, 3)], hint)

    def _crop_to(self, tensor: str, like: str, offset: int = 0) -> str:
        """Slice ``tensor``'s spatial dims to ``like``'s, starting at ``offset``."""
        b = self.b
        size = b.op("Slice", [b.op("Shape", [like]), b.ints(2), b.ints(4)], "hw")
        starts = b.ints(offset, offset)
        ends = b.op("Add", [size, starts])
        return b.op("Slice", [tensor, starts, ends, b.ints(2, 3)], "crop")

    def _upsample(self, x: str, factor: int) -> str:
        """Nearest-neighbour upsampling by an integer factor (exact: asymmetric coordinates, floor)."""
        b = self.b
        scales = b.const(np.array([1, 1, factor, factor], np.float32), "scales")
        return b.op(
            "Resize", [x, "", scales], "upsampled",
            mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor",
        )

    def _pad_to(self, tensor: str, like: str, value: float) -> str:
        """Pad ``tensor`` at the bottom/right to ``like``'s spatial size (floor-mode pools drop a remainder)."""
        b = self.b
        missing = b.op("Sub", [b.op("Shape", [like]), b.op("Shape", [tensor])])
        pads = b.op("Concat", [b.ints(0, 0, 0, 0), missing], axis=0)
        return b.op("Pad", [tensor, pads, self._scalar(value)], "padded")

    def _tiling_pool_adjoint(self, layer: LayerSpec, tensors: LayerTensors, grad: str) -> str:
        """Adjoint of a pool whose windows tile the input (kernel == stride, floor mode)."""
        b = self.b
        k = layer.kernel
        spread = self._pad_to(self._upsample(grad, k), tensors.input, 0.0)
        if self.pooling == "avg":
            return b.op("Mul", [spread, self._scalar(1.0 / (k * k))], f"{layer.name}_adj")
        reach = self._pad_to(self._upsample(tensors.output, k), tensors.input, math.nan)
        mask = b.op("Equal", [tensors.input, reach], "is_max")
        b.nodes.append(helper.make_node("Identity", [mask], [f"{POOL_MASK}{layer.name}"]))
        producer = self.producers.get(tensors.input)
        if producer is not None and producer.spec.kind == "relu" and producer.spec.name not in self.seeded:
            mask = b.op("And", [mask, self._relu_positive(producer)], "is_positive_max")
            self.folded_relus.add(producer.spec.name)
        return self._masked(spread, mask, f"{layer.name}_adj")

    def _pool_adjoint(self, layer: LayerSpec, tensors: LayerTensors, grad: str) -> str:
        b = self.b
        k, s = layer.kernel, layer.stride
        if k == s and not layer.ceil_mode:
            return self._tiling_pool_adjoint(layer, tensors, grad)
        taps = math.ceil(k / s)
        offsets = [(row, col) for row in range(k) for col in range(k)]
        if self.pooling == "max":
            contributions = self._max_pool_contributions(tensors, grad, k, s, offsets)
        else:
            count = self._window_counts(tensors.input, tensors.output, k, s)
            share = b.op("Div", [grad, count], "avg_share")
            contributions = {offset: share for offset in offsets}
        phases: list[str] = []
        for row_phase in range(s):
            for col_phase in range(s):
                terms = []
                for (row, col), value in contributions.items():
                    if row % s != row_phase or col % s != col_phase:
                        continue
                    top, left = row // s, col // s
                    pads = b.ints(0, 0, top, left, 0, 0, taps - top, taps - left)
                    terms.append(b.op("Pad", [value, pads], "placed"))
                phases.append(terms[0] if len(terms) == 1 else b.op("Sum", terms, "phase"))
        stacked = b.op("Concat", phases, "phases", axis=1)
        spread = b.op("DepthToSpace", [stacked], f"{layer.name}_adj", blocksize=s, mode="DCR")
        return self._crop_to(spread, tensors.input)

    def _strided_views(self, x: str, pooled: str, k: int, s: int, pad_value: float) -> dict[tuple[int, int], str]:
        """x[row + s·i, col + s·j] for each window offset, sized like the pooled map."""
        b = self.b
        padded = b.op("Pad", [x, b.ints(0, 0, 0, 0, 0, 0, k, k), self._scalar(pad_value)], "pool_in_padded")
        pooled_hw = b.op("Slice", [b.op("Shape", [pooled]), b.ints(2), b.ints(4)], "pooled_hw")
        span = b.op("Mul", [pooled_hw, b.ints(s)])
        views: dict[tuple[int, int], str] = {}
        for row in range(k):
            for col in range(k):
                starts = b.ints(row, col)
                ends = b.op("Add", [span, starts])
                views[(row, col)] = b.op("Slice", [padded, starts, ends, b.ints(2, 3), b.ints(s, s)], "window_view")
        return views

    def _max_pool_contributions(
        self, tensors: LayerTensors, grad: str, k: int, s: int, offsets: list[tuple[int, int]]
    ) -> dict[tuple[int, int], str]:
        b = self.b
        views = self._strided_views(tensors.input, tensors.output, k, s, pad_value=float(np.finfo(self.np_float).min))
        zero = self._scalar(0.0)
        taken: str | None = None
        contributions: dict[tuple[int, int], str] = {}
        choices = self.pool_choices.setdefault(tensors.spec.name, [])
        for offset in offsets:
            is_max = b.op("Equal", [views[offset], tensors.output], "is_max")
            if taken is None:
                first, taken = is_max, is_max
            else:
                first = b.op("And", [is_max, b.op("Not", [taken])], "first_max")
                taken = b.op("Or", [taken, is_max], "taken")
            choices.append(first)
            self.b.nodes.append(helper.make_node("Identity", [first], [f"{POOL_CHOICE}{tensors.spec.name}.{len(choices) - 1}"]))
            contributions[offset] = b.op("Where", [first, grad, zero], "routed")
        return contributions

    def _window_counts(self, x: str, pooled: str, k: int, s: int) -> str:
        """How many input pixels each pooling window covers (fewer at ceil-mode borders)."""
        b = self.b
        hw = b.op("Slice", [b.op("Shape", [x]), b.ints(2), b.ints(4)])
        one = helper.make_tensor("one", self.float_type, [1], [1.0])
        ones = b.op("ConstantOfShape", [b.op("Concat", [b.ints(1, 1), hw], axis=0)], "ones", value=one)
        views = self._strided_views(ones, pooled, k, s, pad_value=0.0)
        return b.op("Sum", list(views.values()), "window_count")

    def input_adjoint(self, grad: str) -> str:
        """Chain rule through the preprocessing back to RGB pixels in [0, 1]."""
        b = self.b
        multiplier = b.const(np.array(self.preprocessing.multiplier, np.float32).reshape(1, 3, 1, 1), "pre_scale")
        scaled = b.op("Mul", [grad, multiplier])
        inverse = list(np.argsort(self.preprocessing.permutation))
        return b.op("Gather", [scaled, b.ints(*[int(i) for i in inverse])], "to_rgb_order", axis=1)


def winograd_layers(layers: Sequence[LayerSpec], size: tuple[int, int]) -> list[str]:
    """The convolutions a graph built for ``size`` (height, width) runs as Winograd F(4×4, 3×3)."""
    chosen: list[str] = []
    current: tuple[int, int] | None = size
    for layer in layers:
        if current is None:
            break
        if _takes_winograd(layer, current):
            chosen.append(layer.name)
        current = layer.output_size(*current)
    return chosen


def _takes_winograd(layer: LayerSpec, size: tuple[int, int]) -> bool:
    """A 3×3 stride-1 pad-1 convolution, ≥128 channels in and out, with ≥16 output tiles at ``size``."""
    if layer.kind != "conv" or (layer.kernel, layer.stride, layer.padding) != (3, 1, 1):
        return False
    tiles = math.ceil(size[0] / 4) * math.ceil(size[1] / 4)
    return min(layer.in_channels, layer.out_channels) >= WINOGRAD_MIN_CHANNELS and tiles >= WINOGRAD_MIN_TILES

