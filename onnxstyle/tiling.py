"""Tile geometry: where the tiles of an image start, how far each reads, and when and how finely to tile.

Tiles start on multiples of the network's total stride and read a halo around their core as wide as the
receptive fields of the core's features reach (before: the accumulated padding; after: the rest of
the field), so every core feature, and every value its gradient passes through, is computed from the
same pixels, with the same padding and pooling windows, as in the whole image. The engine that runs the
tiles with the exact whole-image loss and gradient is ``onnxstyle.engines.tiled``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import torch

from onnxstyle.backbones import BackboneSpec
from onnxstyle.errors import UsageError
from onnxstyle.memory import activation_bytes, estimate_bytes, memory_model


class TiledLayers(Protocol):
    """What the tile rule reads of an ``EngineSpec``: a protocol, so that geometry sits below the engines."""

    @property
    def backbone(self) -> BackboneSpec: ...

    @property
    def content_layers(self) -> tuple[str, ...]: ...

    @property
    def layers(self) -> list[str]: ...


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


def tile_for(engine: str, spec: TiledLayers, width: int, height: int, tile: int | None, available: int) -> int | None:
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


def choose_tile(spec: TiledLayers, engine: str, height: int, width: int, available: int) -> int | None:
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
