"""The Gatys objective in torch: the reference every exported graph and engine is checked against.

Normalisations follow jcjohnson/neural-style so its weights (content 5, style 100, TV 1e-3) mean
the same here: content = w·mean((F−P)²); Gram = F·Fᵀ/(C·H·W); style = w·mean((G−A)²);
TV = w/2·Σ(Δx² + Δy²) over the (H−1)×(W−1) interior of the network input.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from onnxstyle.defaults import CONTENT_WEIGHT, STYLE_WEIGHT, TV_WEIGHT


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    channels = features.shape[1]
    matrix = features.reshape(channels, -1)
    return matrix @ matrix.t() / features.numel()


def content_loss(features: torch.Tensor, target: torch.Tensor, weight: float | torch.Tensor) -> torch.Tensor:
    return weight * ((features - target) ** 2).sum() / features.numel()


def style_loss(features: torch.Tensor, target_gram: torch.Tensor, weight: float | torch.Tensor) -> torch.Tensor:
    channels = features.shape[1]
    return weight * ((gram_matrix(features) - target_gram) ** 2).sum() / (channels * channels)


def tv_loss(model_input: torch.Tensor, weight: float | torch.Tensor) -> torch.Tensor:
    corner = model_input[:, :, :-1, :-1]
    dx = model_input[:, :, :-1, 1:] - corner
    dy = model_input[:, :, 1:, :-1] - corner
    return weight * 0.5 * ((dx**2).sum() + (dy**2).sum())


@dataclass(frozen=True)
class LossWeights:
    """Per-layer weights, already multiplied by global strengths and style blend factors."""

    content: tuple[float, ...]
    style: tuple[float, ...]
    tv: float

    @classmethod
    def neural_style(cls, content_layers: int, style_layers: int) -> LossWeights:
        """neural-style's default weights (``onnxstyle.defaults``) for this many content and style layers."""
        return cls((CONTENT_WEIGHT,) * content_layers, (STYLE_WEIGHT,) * style_layers, TV_WEIGHT)


@dataclass
class LossTerms:
    """Total loss and each term, as floats, for progress displays and reports."""

    total: float
    content: list[float]
    style: list[float]
    tv: float


def objective(
    features: dict[str, torch.Tensor],
    model_input: torch.Tensor,
    content_targets: dict[str, torch.Tensor],
    style_targets: dict[str, torch.Tensor],
    weights: LossWeights,
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    """Total loss plus each term, from precomputed features (content and style targets keyed by layer)."""
    content_terms = [
        content_loss(features[layer], target, weight)
        for (layer, target), weight in zip(content_targets.items(), weights.content, strict=True)
    ]
    style_terms = [
        style_loss(features[layer], target, weight)
        for (layer, target), weight in zip(style_targets.items(), weights.style, strict=True)
    ]
    tv_term = tv_loss(model_input, weights.tv)
    total = tv_term + sum(content_terms, torch.zeros(())) + sum(style_terms, torch.zeros(()))
    return total, content_terms, style_terms, tv_term
