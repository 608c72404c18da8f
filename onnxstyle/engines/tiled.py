"""The tiled engine: any ``TileBackend`` engine run tile by tile with the exact whole-image loss and gradient.

Style Grams are sums over positions, so a first pass accumulates each tile's *core* positions into the
whole-image Grams. The loss's derivative with respect to a Gram, D = dL/dG, is then known, and a
second pass backpropagates, per tile, the surrogate ⟨D, G_core(tile)⟩ + content(core) — whose gradient
with respect to the tile's pixels is exactly that tile's share of the whole-image gradient. Where the
tiles start and how far they read is ``onnxstyle.tiling``'s geometry. Total variation needs no network
and is taken on the whole image.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Protocol

import torch

from onnxstyle.engines.base import Engine, EngineSpec, Targets
from onnxstyle.errors import UsageError
from onnxstyle.losses import LossTerms
from onnxstyle.tiling import Span, Tile, TilePlan, content_crops, layer_strides
from onnxstyle.weights import Preprocessing


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
