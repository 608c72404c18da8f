"""The Gatys objective in torch: the reference every exported graph and engine is checked against.

Normalisations follow jcjohnson/neural-style so its weights (content 5, style 100, TV 1e-3) mean
the same here: content = w·mean((F−P)²); Gram = F·Fᵀ/(C·H·W); style = w·mean((G−A)²);
TV = w/2·Σ(Δx² + Δy²) over the (H−1)×(W−1) interior of the network input.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


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
