"""One interface for every way of computing the style loss and its gradient.

Targets are set once; ``loss_and_grad(image)`` is called per optimiser step, so the loop (and the
benchmark) is identical whichever engine runs underneath.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from onnxstyle.backbones import BackboneSpec, Pooling
from onnxstyle.losses import LossTerms, LossWeights
from onnxstyle.weights import ResolvedWeights


@dataclass
class Targets:
    """Content feature maps and (blended) style Gram matrices, keyed by layer name."""

    content: dict[str, torch.Tensor]
    style: dict[str, torch.Tensor]
    weights: LossWeights


@dataclass(frozen=True)
class EngineSpec:
    """What an engine computes: backbone, layers, pooling and weights."""

    backbone: BackboneSpec
    content_layers: tuple[str, ...]
    style_layers: tuple[str, ...]
    pooling: Pooling
    weights: ResolvedWeights

    @classmethod
    def defaults(cls, backbone: BackboneSpec, weights: ResolvedWeights) -> EngineSpec:
        """The backbone's default content and style layers with max pooling: what bench and converge run."""
        return cls(backbone, tuple(backbone.default_content_layers), tuple(backbone.default_style_layers), "max", weights)

    @property
    def layers(self) -> list[str]:
        return list(dict.fromkeys([*self.content_layers, *self.style_layers]))

    def loss_weights(self) -> LossWeights:
        """neural-style's default weights for this spec's layers."""
        return LossWeights.neural_style(len(self.content_layers), len(self.style_layers))


class Engine(ABC):
    """Loss and gradient with respect to RGB pixels in [0, 1], shape (1, 3, H, W)."""

    name: str = "engine"

    def __init__(self, spec: EngineSpec) -> None:
        self.spec = spec
        self.targets: Targets | None = None

    @property
    def device(self) -> torch.device:
        """Where images passed to ``loss_and_grad`` should live."""
        return torch.device("cpu")

    @abstractmethod
    def extract(self, image: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(content-layer feature maps, style-layer Gram matrices) of one image."""

    @abstractmethod
    def loss_and_grad(self, image: torch.Tensor) -> tuple[LossTerms, torch.Tensor]:
        """Loss terms and d(loss)/d(image) for the targets set with ``set_targets``."""

    @abstractmethod
    def describe(self) -> dict[str, object]:
        """Requested and effective device/provider and options, for reports."""

    def set_targets(self, targets: Targets) -> None:
        """Keep ``targets`` on this engine's device (targets built by another engine, e.g. a CPU reference, may arrive)."""
        device = self.device
        self.targets = Targets(
            {layer: value.to(device) for layer, value in targets.content.items()},
            {layer: value.to(device) for layer, value in targets.style.items()},
            targets.weights,
        )

    def build_targets(
        self, content: torch.Tensor, styles: list[torch.Tensor], blend: list[float], weights: LossWeights
    ) -> Targets:
        """Content features from one image; style Grams blended over several (weights sum to 1)."""
        content_features, _ = self.extract(content)
        total = sum(blend)
        style_grams: dict[str, torch.Tensor] = {}
        for style, share in zip(styles, blend, strict=True):
            _, grams = self.extract(style)
            for layer, gram in grams.items():
                scaled = gram * (share / total)
                style_grams[layer] = style_grams[layer] + scaled if layer in style_grams else scaled
        return Targets(content_features, style_grams, weights)
