"""Exact tiled loss and gradient: images larger than memory, same gradient as untiled.

Style Grams are sums over positions, so a first pass accumulates each tile's *core* positions into the
whole-image Grams. The loss's derivative with respect to a Gram, D = dL/dG, is then known, and a
second pass backpropagates, per tile, the surrogate ⟨D, G_core(tile)⟩ + content(core) — whose gradient
with respect to the tile's pixels is exactly that tile's share of the whole-image gradient. Tiles
start on multiples of the network's total stride and read a halo around their core as wide as the
receptive fields of the core's features reach (before: the accumulated padding; after: the rest of
the field), so every core feature, and every value its gradient passes through, is computed from the
same pixels, with the same padding and pooling windows, as in the whole image.
Total variation needs no network and is taken on the whole image.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import torch

from onnxstyle.backbones import BackboneSpec
from onnxstyle.engines.base import Engine, EngineSpec, Targets
from onnxstyle.errors import UsageError
from onnxstyle.losses import LossTerms
from onnxstyle.memory import activation_bytes, estimate_bytes, memory_model
from onnxstyle.weights import Preprocessing


@dataclass(frozen=True)
class Span:
    """One axis of a tile: the pixels it reads [start, stop) and the core it owns [core_start, core_stop)."""

    start: int
    stop: int
    core_start: int
    core_stop: int


@dataclass(frozen=True)
class Tile:
    rows: Span
    cols: Span

    def crop(self, image: torch.Tensor) -> torch.Tensor:
        return image[:, :, self.rows.start : self.rows.stop, self.cols.start : self.cols.stop]

    def core_mask(self, device: torch.device) -> torch.Tensor:
        """(1, 1, h, w) float mask of the core inside the tile."""
        height, width = self.rows.stop - self.rows.start, self.cols.stop - self.cols.start
        mask = torch.zeros(1, 1, height, width, device=device)
        mask[
            :, :,
            self.rows.core_start - self.rows.start : self.rows.core_stop - self.rows.start,
            self.cols.core_start - self.cols.start : self.cols.core_stop - self.cols.start,
        ] = 1.0
        return mask


@dataclass(frozen=True)
class TilePlan:
    """How an image of ``height``×``width`` is cut: core size, halo, and the resulting tiles."""

    height: int
    width: int
    core: int
    halo_before: int
    halo_after: int
    stride: int

    @staticmethod
    def create(backbone: BackboneSpec, layers: list[str], height: int, width: int, core: int) -> TilePlan:
        """``core`` and the leading halo are rounded up to the total stride, so tiles start on its multiples."""
        stride = backbone.stride(layers)
        if core < stride:
            raise UsageError(f"--tile {core} is smaller than {backbone.name}'s total stride {stride}; use at least {stride}")
        before, after = halo_extents(backbone, layers)
        return TilePlan(height, width, -(-core // stride) * stride, -(-before // stride) * stride, after, stride)

    def _spans(self, length: int) -> list[Span]:
        spans = []
        for core_start in range(0, length, self.core):
            core_stop = min(core_start + self.core, length)
            spans.append(Span(max(0, core_start - self.halo_before), min(length, core_stop + self.halo_after), core_start, core_stop))
        return spans

    def tiles(self) -> Iterator[Tile]:
        for rows in self._spans(self.height):
            for cols in self._spans(self.width):
                yield Tile(rows, cols)

    @property
    def count(self) -> int:
        return len(self._spans(self.height)) * len(self._spans(self.width))

    @property
    def largest_tile(self) -> tuple[int, int]:
        """(height, width) of the biggest tile: what memory must hold at once."""
        rows = max(span.stop - span.start for span in self._spans(self.height))
        cols = max(span.stop - span.start for span in self._spans(self.width))
        return rows, cols


def halo_extents(backbone: BackboneSpec, layers: list[str]) -> tuple[int, int]:
    """Pixels a core must read before and after itself so all its features see whole receptive fields.

    A unit j of a layer with cumulative stride S, padding offset P and field R reads pixels
    [j·S − P, j·S − P + R − 1]; a core [a, b) owns units with j·S in [a, b), so it reads from a − P up
    to b − S − P + R − 1. (VGG19 to relu5_1: 70 and 70 px, where the symmetric field would be 156.)
    """
    before = after = 0
    field, jump, offset = 1, 1, 0
    for layer in backbone.truncated(layers):
        if layer.kind in ("conv", "pool"):
            offset += layer.padding * jump
            field += (layer.kernel - 1) * jump
            jump *= layer.stride
        before, after = max(before, offset), max(after, field - offset - jump)
    return before, after


def check_tile(backbone: BackboneSpec, layers: list[str], core: int) -> None:
    """A user-given tile must be at least the receptive field: its halo alone is that wide on each side."""
    field = backbone.receptive_field(layers)
    if core < field:
        deepest = backbone.truncated(layers)[-1].name
        stride = backbone.stride(layers)
        minimum = -(-field // stride) * stride
        raise UsageError(
            f"--tile {core} is smaller than {backbone.name}'s receptive field at {deepest} ({field} px), which every tile "
            f"also reads as a halo on each side; use --tile {minimum} or more"
        )


def tile_for(engine: str, spec: EngineSpec, width: int, height: int, tile: int | None, available: int) -> int | None:
    """The tile core for a run: as asked, or automatic when it would not fit untiled (the eager loop never tiles).

    The one rule for ``bench`` and ``stylize``: what runs untiled must fit in ``available`` bytes and what
    tiles must fit tiled (``choose_tile``); otherwise a UsageError says how much it needs.
    """
    if tile == 0 or engine == "eager":
        need = estimate_bytes(engine, spec.backbone, spec.layers, width, height)
        if need > 0.9 * available:
            raise UsageError(f"needs ≈{need / 2**30:.1f} GB, {available / 2**30:.1f} GB free")
        return None
    if tile is not None:
        check_tile(spec.backbone, spec.layers, tile)
        return tile
    return choose_tile(spec, engine, height, width, available)


def choose_tile(spec: EngineSpec, engine: str, height: int, width: int, available: int) -> int | None:
    """None when the untiled loop fits in ``available`` bytes; else the largest core whose tiles fit in half of it."""
    backbone, layers = spec.backbone, spec.layers
    model = memory_model(backbone.name, engine)

    def need(rows: int, cols: int) -> float:
        return model.per_activation_byte * activation_bytes(backbone, layers, cols, rows) + model.fixed_bytes

    # what stays whole-image: ≈6 copies of the pixels (image, gradient, Adam's two moments, content, init)
    # and the content-layer targets
    targets = sum(math.prod(backbone.feature_shape(name, height, width) or (0,)) * 4 for name in spec.content_layers)
    whole_image = 6 * 3 * height * width * 4 + targets
    if need(height, width) <= 0.8 * available:
        return None
    field = backbone.receptive_field(layers)
    stride = backbone.stride(layers)
    for core in range(8192, field - 1, -stride):
        plan = TilePlan.create(backbone, layers, height, width, core)
        rows, cols = plan.largest_tile
        if need(rows, cols) + whole_image <= 0.5 * available:
            return plan.core
    raise UsageError(
        f"{width}x{height} does not fit even tiled: the smallest tile needs ≈{(need(2 * field, 2 * field) + whole_image) / 2**30:.1f} GB, "
        f"{available / 2**30:.1f} GB free"
    )


def layer_strides(backbone: BackboneSpec, layers: list[str]) -> dict[str, int]:
    """Cumulative stride at each layer's output: feature j there is owned by the core holding pixel j·stride."""
    strides, stride = {}, 1
    for layer in backbone.truncated(layers):
        stride *= layer.stride
        strides[layer.name] = stride
    return strides


def feature_mask(core: torch.Tensor, stride: int, height: int, width: int) -> torch.Tensor:
    """The core mask sampled at a layer's positions, shaped (1, 1, height, width)."""
    sampled = core[:, :, ::stride, ::stride][:, :, :height, :width]
    missing_rows, missing_cols = height - sampled.shape[2], width - sampled.shape[3]
    if missing_rows or missing_cols:
        sampled = torch.nn.functional.pad(sampled, (0, missing_cols, 0, missing_rows))
    return sampled


class TileBackend(Protocol):
    """What an engine provides for tiling: masked Gram sums, and a tile's share of the gradient."""

    spec: EngineSpec

    @property
    def device(self) -> torch.device: ...

    def tile_statistics(
        self, tile: torch.Tensor, core: torch.Tensor, strides: dict[str, int]
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(un-normalised Gram sums over core positions per style layer, content-layer features of the tile)."""
        ...

    def tile_gradient(
        self,
        tile: torch.Tensor,
        core: torch.Tensor,
        strides: dict[str, int],
        style_directions: dict[str, torch.Tensor],
        content_targets: dict[str, torch.Tensor],
        content_scales: dict[str, float],
    ) -> tuple[dict[str, float], torch.Tensor]:
        """(content loss over the core per content layer, d(surrogate)/d(tile pixels))."""
        ...

    def describe(self) -> dict[str, object]: ...


TileStatistics = tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]
TileGradient = tuple[dict[str, float], torch.Tensor]


class TileExecutor(Protocol):
    """Where the tiles of one pass are computed: here, one after another, or on many machines (``onnxstyle.cluster``).

    Results come back in the order of ``jobs`` whatever order they finish in, so the sums over tiles are
    taken in one order and a distributed run equals a local one.
    """

    def set_content(self, content: dict[str, torch.Tensor]) -> None:
        """The whole-image content targets, from which each tile's gradient job crops its own."""
        ...

    def statistics(self, jobs: list[tuple[Tile, torch.Tensor]], with_content: bool) -> Iterator[TileStatistics]:
        """Per tile: Gram sums over its core, and (if ``with_content``) its content-layer features."""
        ...

    def gradients(
        self, jobs: list[tuple[Tile, torch.Tensor]], directions: dict[str, torch.Tensor], content_scales: dict[str, float]
    ) -> Iterator[TileGradient]: ...


def content_crops(content: dict[str, torch.Tensor], tile: Tile, strides: dict[str, int], backbone: BackboneSpec) -> dict[str, torch.Tensor]:
    """Each content target cut to the feature window a tile computes (zero-padded where the tile's map runs past it)."""
    crops = {}
    for layer, target in content.items():
        stride = strides[layer]
        shape = backbone.feature_shape(layer, tile.rows.stop - tile.rows.start, tile.cols.stop - tile.cols.start)
        assert shape is not None
        top, left = tile.rows.start // stride, tile.cols.start // stride
        crop = torch.zeros(1, *shape, device=target.device, dtype=target.dtype)
        available = target[:, :, top : top + shape[1], left : left + shape[2]]
        crop[:, :, : available.shape[2], : available.shape[3]] = available
        crops[layer] = crop
    return crops


class LocalTiles:
    """The tiles of a pass computed by one backend in this process, one at a time (memory holds one tile)."""

    def __init__(self, backend: TileBackend) -> None:
        self.backend = backend
        self.strides = layer_strides(backend.spec.backbone, backend.spec.layers)
        self.content: dict[str, torch.Tensor] = {}

    def set_content(self, content: dict[str, torch.Tensor]) -> None:
        self.content = content

    def statistics(self, jobs: list[tuple[Tile, torch.Tensor]], with_content: bool) -> Iterator[TileStatistics]:
        for tile, pixels in jobs:
            yield self.backend.tile_statistics(pixels, tile.core_mask(self.backend.device), self.strides)

    def gradients(
        self, jobs: list[tuple[Tile, torch.Tensor]], directions: dict[str, torch.Tensor], content_scales: dict[str, float]
    ) -> Iterator[TileGradient]:
        for tile, pixels in jobs:
            crops = content_crops(self.content, tile, self.strides, self.backend.spec.backbone)
            yield self.backend.tile_gradient(pixels, tile.core_mask(self.backend.device), self.strides, directions, crops, content_scales)


class TiledEngine(Engine):
    """Any ``TileBackend`` engine, run tile by tile with the exact whole-image loss and gradient.

    ``executor`` computes each pass's tiles (default: ``backend`` here); the whole-image sums, the loss and
    total variation are always taken here.
    """

    name = "tiled"

    def __init__(self, backend: TileBackend, core: int, executor: TileExecutor | None = None) -> None:
        super().__init__(backend.spec)
        self.backend = backend
        self.core = core
        self.layers = backend.spec.layers
        self.strides = layer_strides(backend.spec.backbone, self.layers)
        self.executor = executor if executor is not None else LocalTiles(backend)

    def set_targets(self, targets: Targets) -> None:
        super().set_targets(targets)
        assert self.targets is not None
        self.executor.set_content(self.targets.content)

    @property
    def device(self) -> torch.device:
        return self.backend.device

    def plan(self, height: int, width: int) -> TilePlan:
        return TilePlan.create(self.spec.backbone, self.layers, height, width, self.core)

    def _statistics(self, image: torch.Tensor, with_content: bool) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Whole-image content features (if asked) and Grams (normalised as ``gram_matrix``), tile by tile."""
        height, width = image.shape[2:]
        gram_sums: dict[str, torch.Tensor] = {}
        content: dict[str, torch.Tensor] = {}
        backbone = self.spec.backbone
        if (problem := backbone.size_problem(self.spec.layers, width, height)) is not None:
            raise UsageError(problem)
        tiles = list(self.plan(height, width).tiles())
        for tile, (sums, features) in zip(tiles, self.executor.statistics([(tile, tile.crop(image)) for tile in tiles], with_content), strict=True):
            for layer, value in sums.items():
                gram_sums[layer] = gram_sums[layer] + value if layer in gram_sums else value
            for layer, value in features.items() if with_content else ():
                if layer not in content:
                    shape = backbone.feature_shape(layer, height, width)
                    assert shape is not None
                    content[layer] = torch.zeros(1, *shape, device=value.device, dtype=value.dtype)
                stride = self.strides[layer]
                rows = _owned(tile.rows, stride, content[layer].shape[2])
                cols = _owned(tile.cols, stride, content[layer].shape[3])
                local_rows = slice(rows.start - tile.rows.start // stride, rows.stop - tile.rows.start // stride)
                local_cols = slice(cols.start - tile.cols.start // stride, cols.stop - tile.cols.start // stride)
                content[layer][:, :, rows, cols] = value[:, :, local_rows, local_cols]
        grams = {}
        for layer, total in gram_sums.items():
            shape = backbone.feature_shape(layer, height, width)
            assert shape is not None
            grams[layer] = total / math.prod(shape)
        return content, grams

    def extract(self, image: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        content, grams = self._statistics(image.to(self.device), with_content=True)
        return {layer: content[layer] for layer in self.spec.content_layers}, {layer: grams[layer] for layer in self.spec.style_layers}

    def loss_and_grad(self, image: torch.Tensor) -> tuple[LossTerms, torch.Tensor]:
        assert self.targets is not None, "set_targets() first"
        targets, weights = self.targets, self.targets.weights
        image = image.detach().to(self.device)
        height, width = image.shape[2:]
        backbone = self.spec.backbone
        _, grams = self._statistics(image, with_content=False)
        style_terms, directions = [], {}
        for (layer, target), weight in zip(targets.style.items(), weights.style, strict=True):
            channels = grams[layer].shape[0]
            difference = grams[layer] - target
            style_terms.append(float(weight * (difference**2).sum() / channels**2))
            shape = backbone.feature_shape(layer, height, width)
            assert shape is not None
            # dL/dG = 2w(G−A)/C²; G = ΣF·Fᵀ/N, so the surrogate ⟨dL/dG, ΣF·Fᵀ⟩/N carries the exact gradient
            directions[layer] = 2.0 * weight * difference / channels**2 / math.prod(shape)
        content_scales = {}
        for (layer, target), weight in zip(targets.content.items(), weights.content, strict=True):
            content_scales[layer] = weight / target.numel()
        content_terms = dict.fromkeys(targets.content, 0.0)
        grad = torch.zeros_like(image)
        tiles = list(self.plan(height, width).tiles())
        results = self.executor.gradients([(tile, tile.crop(image)) for tile in tiles], directions, content_scales)
        for tile, (content_parts, tile_grad) in zip(tiles, results, strict=True):
            for layer, value in content_parts.items():
                content_terms[layer] += value
            grad[:, :, tile.rows.start : tile.rows.stop, tile.cols.start : tile.cols.stop] += tile_grad.to(grad.device)
        tv = add_tv_gradient(image, self.spec.weights.preprocessing, weights.tv, grad)
        content_values = list(content_terms.values())
        total = tv + sum(content_values) + sum(style_terms)
        return LossTerms(total, content_values, style_terms, tv), grad

    def describe(self) -> dict[str, object]:
        plan = self.plan(self.core, self.core)
        described = getattr(self.executor, "describe", None)
        return {
            **self.backend.describe(),
            "tiling": {"core": plan.core, "halo_before": plan.halo_before, "halo_after": plan.halo_after, "exact": True},
            **({"cluster": described()} if described is not None else {}),
        }


def add_tv_gradient(image: torch.Tensor, preprocessing: Preprocessing, weight: float, grad: torch.Tensor) -> float:
    """``losses.tv_loss`` of the network input and its gradient, added into ``grad`` in place, one channel at a time.

    Autograd on a whole 8K image holds six image-sized temporaries (≈2.4 GB); this holds two channel-sized ones.
    """
    total = 0.0
    for channel, source in enumerate(preprocessing.permutation):
        pixels, target = image[0, source], grad[0, source]
        scale = weight * preprocessing.multiplier[channel] ** 2  # offsets cancel in differences
        across = pixels[:-1, 1:] - pixels[:-1, :-1]
        down = pixels[1:, :-1] - pixels[:-1, :-1]
        total += 0.5 * scale * float(torch.dot(across.reshape(-1), across.reshape(-1)) + torch.dot(down.reshape(-1), down.reshape(-1)))
        across.mul_(scale)
        down.mul_(scale)
        target[:-1, 1:] += across
        target[1:, :-1] += down
        target[:-1, :-1] -= across
        target[:-1, :-1] -= down
    return total


def _owned(span: Span, stride: int, length: int) -> slice:
    """Feature positions j (global) with j·stride inside the span's core, clipped to the map."""
    return slice(-(-span.core_start // stride), min(length, -(-span.core_stop // stride)))
