"""VGG19 and NIN-ImageNet as named layer lists, so users address layers by their classic names.

Both the torch modules and the ONNX graph builder read the same ``LayerSpec`` list, which keeps the
two implementations structurally identical (that is what export parity relies on).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from onnxstyle.errors import UsageError

Pooling = Literal["max", "avg"]
LayerKind = Literal["conv", "relu", "pool", "dropout"]


@dataclass(frozen=True)
class LayerSpec:
    """One layer; ``index`` is its position in the reference ``features`` Sequential (weights keys)."""

    name: str
    kind: LayerKind
    index: int
    in_channels: int = 0
    out_channels: int = 0
    kernel: int = 0
    stride: int = 1
    padding: int = 0
    ceil_mode: bool = False

    def output_size(self, height: int, width: int) -> tuple[int, int] | None:
        """This layer's output (height, width) for an input of height×width; ``None`` if its window does not fit."""
        if self.kind not in ("conv", "pool"):
            return height, width
        span_h, span_w = height + 2 * self.padding - self.kernel, width + 2 * self.padding - self.kernel
        if span_h < 0 or span_w < 0:
            return None
        if self.ceil_mode:
            return -(-span_h // self.stride) + 1, -(-span_w // self.stride) + 1
        return span_h // self.stride + 1, span_w // self.stride + 1


@dataclass(frozen=True)
class BackboneSpec:
    """A backbone's full layer list plus the classic default layer choices."""

    name: str
    aliases: tuple[str, ...]
    layers: tuple[LayerSpec, ...]
    default_content_layers: tuple[str, ...]
    default_style_layers: tuple[str, ...]
    description: str

    @property
    def layer_names(self) -> list[str]:
        return [layer.name for layer in self.layers if layer.kind != "dropout"]

    def stride(self, layers: Sequence[str]) -> int:
        """Pixels per feature at the deepest of ``layers``: tile cores are multiples of it."""
        return math.prod(layer.stride for layer in self.truncated(layers))

    def validate_layers(self, names: Sequence[str], option: str | None = None) -> list[str]:
        """Reject unknown names with the valid list (users often mix up VGG and NIN names), and names repeated
        within one ``--option`` (a layer may be a content and a style layer at once)."""
        repeated = sorted({name for name in names if list(names).count(name) > 1})
        if option is not None and repeated:
            raise UsageError(f"--{option} names {', '.join(repeated)} more than once")
        valid = self.layer_names
        unknown = [name for name in names if name not in valid]
        if unknown:
            raise UsageError(
                f"unknown layer(s) {', '.join(unknown)} for backbone '{self.name}'; "
                f"valid layers: {', '.join(valid)}"
            )
        if not names:
            raise UsageError(f"no layers given for backbone '{self.name}'")
        return list(names)

    def truncated(self, names: Sequence[str]) -> tuple[LayerSpec, ...]:
        """The layers up to and including the deepest one named: nothing past it is computed."""
        self.validate_layers(names)
        deepest = max(self.layer_names.index(name) for name in names)
        last = self.layer_names[deepest]
        end = next(i for i, layer in enumerate(self.layers) if layer.name == last)
        return self.layers[: end + 1]

    def feature_shape(self, layer: str, height: int, width: int) -> tuple[int, int, int] | None:
        """(channels, height, width) of ``layer`` for an input of height×width; ``None`` if a window
        would not fit inside its input somewhere on the way (the size is too small)."""
        channels = 3
        for spec in self.truncated([layer]):
            if spec.kind == "conv":
                channels = spec.out_channels
            size = spec.output_size(height, width)
            if size is None:
                return None
            height, width = size
        return channels, height, width

    def min_size(self, names: Sequence[str]) -> int:
        """Smallest square input (pixels) for which every named layer has at least a 1×1 map."""
        deepest = self.truncated(names)[-1].name
        return next(size for size in range(1, 4096) if self.feature_shape(deepest, size, size) is not None)

    def size_problem(self, names: Sequence[str], width: int, height: int) -> str | None:
        """Why width×height cannot run layers up to the deepest named one, or ``None``: every command checks
        sizes through this, so all of them refuse the same sizes with the same words."""
        minimum = self.min_size(names)
        if min(width, height) >= minimum:
            return None
        deepest = self.truncated(names)[-1].name
        return f"{width}x{height} is too small for {self.name} up to {deepest}: needs at least {minimum}x{minimum}"

    def receptive_field(self, names: Sequence[str]) -> int:
        """Receptive field (pixels) of one unit of the deepest named layer; tiling halos need it."""
        field, jump = 1, 1
        for layer in self.truncated(names):
            if layer.kind in ("conv", "pool"):
                field += (layer.kernel - 1) * jump
                jump *= layer.stride
        return field


def _vgg19_layers() -> tuple[LayerSpec, ...]:
    blocks = [(64, 2), (128, 2), (256, 4), (512, 4), (512, 4)]
    layers: list[LayerSpec] = []
    in_channels = 3
    for block, (channels, convs) in enumerate(blocks, start=1):
        for conv in range(1, convs + 1):
            layers.append(LayerSpec(f"conv{block}_{conv}", "conv", len(layers), in_channels, channels, 3, 1, 1))
            layers.append(LayerSpec(f"relu{block}_{conv}", "relu", len(layers)))
            in_channels = channels
        layers.append(LayerSpec(f"pool{block}", "pool", len(layers), kernel=2, stride=2))
    return tuple(layers)


def _nin_layers() -> tuple[LayerSpec, ...]:
    # Caffe NIN-ImageNet: note there is no relu4, and pools use ceil mode.
    table: list[tuple[str, LayerKind, int, int, int, int, int]] = [
        ("conv1", "conv", 3, 96, 11, 4, 0), ("relu0", "relu", 0, 0, 0, 1, 0),
        ("cccp1", "conv", 96, 96, 1, 1, 0), ("relu1", "relu", 0, 0, 0, 1, 0),
        ("cccp2", "conv", 96, 96, 1, 1, 0), ("relu2", "relu", 0, 0, 0, 1, 0),
        ("pool0", "pool", 0, 0, 3, 2, 0),
        ("conv2", "conv", 96, 256, 5, 1, 2), ("relu3", "relu", 0, 0, 0, 1, 0),
        ("cccp3", "conv", 256, 256, 1, 1, 0), ("relu5", "relu", 0, 0, 0, 1, 0),
        ("cccp4", "conv", 256, 256, 1, 1, 0), ("relu6", "relu", 0, 0, 0, 1, 0),
        ("pool2", "pool", 0, 0, 3, 2, 0),
        ("conv3", "conv", 256, 384, 3, 1, 1), ("relu7", "relu", 0, 0, 0, 1, 0),
        ("cccp5", "conv", 384, 384, 1, 1, 0), ("relu8", "relu", 0, 0, 0, 1, 0),
        ("cccp6", "conv", 384, 384, 1, 1, 0), ("relu9", "relu", 0, 0, 0, 1, 0),
        ("pool3", "pool", 0, 0, 3, 2, 0),
        ("drop", "dropout", 0, 0, 0, 1, 0),
        ("conv4-1024", "conv", 384, 1024, 3, 1, 1), ("relu10", "relu", 0, 0, 0, 1, 0),
        ("cccp7-1024", "conv", 1024, 1024, 1, 1, 0), ("relu11", "relu", 0, 0, 0, 1, 0),
        ("cccp8-1024", "conv", 1024, 1000, 1, 1, 0), ("relu12", "relu", 0, 0, 0, 1, 0),
    ]
    return tuple(
        LayerSpec(name, kind, index, cin, cout, kernel, stride, padding, ceil_mode=kind == "pool")
        for index, (name, kind, cin, cout, kernel, stride, padding) in enumerate(table)
    )


BACKBONES: dict[str, BackboneSpec] = {
    "vgg19": BackboneSpec(
        name="vgg19",
        aliases=("vgg", "vgg19"),
        layers=_vgg19_layers(),
        default_content_layers=("relu4_2",),
        default_style_layers=("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"),
        description="VGG19 (torchvision layout, conv1_1…relu5_4)",
    ),
    "nin": BackboneSpec(
        name="nin",
        aliases=("nin", "nin-imagenet"),
        layers=_nin_layers(),
        default_content_layers=("relu7",),
        default_style_layers=("relu0", "relu3", "relu7", "relu10"),
        description="NIN-ImageNet (Caffe layout, relu0…relu12, ceil-mode pools)",
    ),
}


def get_backbone(name: str) -> BackboneSpec:
    """Look a backbone up by name or alias (``vgg``, ``vgg19``, ``nin``)."""
    key = name.strip().lower()
    for spec in BACKBONES.values():
        if key in spec.aliases:
            return spec
    aliases = sorted(alias for spec in BACKBONES.values() for alias in spec.aliases)
    raise UsageError(f"unknown backbone '{name}'; choose one of: {', '.join(aliases)}")


def parse_layers(text: str | Sequence[str] | None, default: Sequence[str]) -> list[str]:
    """Accept ``relu1_1,relu2_1`` or a list; ``None`` gives the backbone default."""
    if text is None:
        return list(default)
    items = text.split(",") if isinstance(text, str) else list(text)
    return [item.strip() for item in items if item.strip()]


class Backbone(nn.Module):
    """A truncated backbone whose ``forward`` returns the requested feature maps by name."""

    def __init__(self, spec: BackboneSpec, layers: Sequence[str], pooling: Pooling = "max") -> None:
        super().__init__()
        if pooling not in ("max", "avg"):
            raise UsageError(f"unknown pooling '{pooling}'; choose max or avg")
        self.spec = spec
        self.pooling: Pooling = pooling
        self.layer_specs = spec.truncated(layers)
        self.outputs = list(layers)
        self.body = nn.ModuleDict({layer.name: _torch_layer(layer, pooling) for layer in self.layer_specs})

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        wanted = set(self.outputs)
        features: dict[str, torch.Tensor] = {}
        x = image
        for name, module in self.body.items():
            x = module(x)
            if name in wanted:
                features[name] = x
        return features

    def convs(self) -> dict[str, nn.Conv2d]:
        return {name: module for name, module in self.body.items() if isinstance(module, nn.Conv2d)}


def _torch_layer(layer: LayerSpec, pooling: Pooling) -> nn.Module:
    factories: dict[str, Callable[[], nn.Module]] = {
        "conv": lambda: nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel, layer.stride, layer.padding),
        "relu": lambda: nn.ReLU(),
        "dropout": lambda: nn.Identity(),
        "pool": lambda: (
            nn.MaxPool2d(layer.kernel, layer.stride, ceil_mode=layer.ceil_mode)
            if pooling == "max"
            else nn.AvgPool2d(layer.kernel, layer.stride, ceil_mode=layer.ceil_mode)
        ),
    }
    return factories[layer.kind]()
