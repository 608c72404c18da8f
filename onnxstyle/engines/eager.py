"""The plain torch loop a user would otherwise write: the benchmark's reference point.

It follows the shape of the PyTorch neural-transfer tutorial: an ``nn.Sequential`` of the backbone's
layers with loss modules inserted after the chosen layers, truncated after the last of them, and
``loss.backward()`` + ``Adam.step()`` per iteration. It uses the same weights and loss
normalisations as the engines, so "× eager" in a report compares implementations, not objectives.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from onnxstyle import defaults
from onnxstyle.engines.base import EngineSpec
from onnxstyle.engines.torch_engine import torch_device
from onnxstyle.losses import LossWeights, content_loss, gram_matrix, style_loss, tv_loss
from onnxstyle.precision import autocast_dtype, require, set_tf32, tf32_state
from onnxstyle.sysinfo import default_threads
from onnxstyle.weights import Preprocessing, build_backbone


class _Normalization(nn.Module):
    def __init__(self, preprocessing: Preprocessing) -> None:
        super().__init__()
        self.preprocessing = preprocessing
        self.output: torch.Tensor | None = None

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        self.output = self.preprocessing.to_model(image)
        return self.output


class _ContentLoss(nn.Module):
    def __init__(self, target: torch.Tensor, weight: float) -> None:
        super().__init__()
        self.target, self.weight = target.detach(), weight
        self.loss = torch.tensor(0.0)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        with torch.autocast(features.device.type, enabled=False):
            self.loss = content_loss(features.float(), self.target, self.weight)
        return features


class _StyleLoss(nn.Module):
    def __init__(self, target_gram: torch.Tensor, weight: float) -> None:
        super().__init__()
        self.target, self.weight = target_gram.detach(), weight
        self.loss = torch.tensor(0.0)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        with torch.autocast(features.device.type, enabled=False):
            self.loss = style_loss(features.float(), self.target, self.weight)
        return features


class EagerLoop:
    """Tutorial-style model with loss modules, driven by Adam; one ``step()`` is one iteration."""

    name = "eager"

    def __init__(
        self,
        spec: EngineSpec,
        content: torch.Tensor,
        style: torch.Tensor,
        weights: LossWeights,
        *,
        device: str = "cpu",
        threads: int | None = None,
        learning_rate: float = defaults.LEARNING_RATE,
        start: torch.Tensor | None = None,
        precision: str = "fp32",
    ) -> None:
        self.spec = spec
        self.weights = weights
        self._device = torch_device(device)
        require("eager", self._device.type, precision)
        self.precision = precision
        self.autocast = autocast_dtype(precision)
        set_tf32(self._device, precision)
        torch.set_num_threads(threads or default_threads())
        backbone = build_backbone(spec.backbone, spec.layers, pooling=spec.pooling, resolved=spec.weights).to(self._device)
        backbone.requires_grad_(False)
        self.normalization = _Normalization(spec.weights.preprocessing)
        self.model = nn.Sequential(self.normalization)
        self.content_losses: list[_ContentLoss] = []
        self.style_losses: list[_StyleLoss] = []
        content, style = content.to(self._device), style.to(self._device)
        for name, module in backbone.body.items():
            self.model.append(module)
            if name in spec.content_layers:
                with torch.no_grad(), self._autocast():
                    target = self.model(content).float()
                loss = _ContentLoss(target, weights.content[spec.content_layers.index(name)])
                self.content_losses.append(loss)
                self.model.append(loss)
            if name in spec.style_layers:
                with torch.no_grad(), self._autocast():
                    features = self.model(style)
                target = gram_matrix(features.float())
                style_module = _StyleLoss(target, weights.style[spec.style_layers.index(name)])
                self.style_losses.append(style_module)
                self.model.append(style_module)
        initial = start if start is not None else content
        self.pixels = initial.detach().clone().to(self._device).requires_grad_(True)
        self.optimizer = torch.optim.Adam([self.pixels], lr=learning_rate)
        self.engine_seconds = 0.0

    @property
    def device(self) -> torch.device:
        return self._device

    def _autocast(self) -> torch.autocast:
        """What a user adds for reduced precision: autocast around the model; the loss modules opt out."""
        return torch.autocast(self._device.type, dtype=self.autocast or torch.float32, enabled=self.autocast is not None)

    def _loss(self, image: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            self.model(image)
        assert self.normalization.output is not None
        total = tv_loss(self.normalization.output, self.weights.tv)
        for module in (*self.content_losses, *self.style_losses):
            total = total + module.loss
        return total

    def loss_and_grad(self, image: torch.Tensor) -> tuple[float, torch.Tensor]:
        """Loss and gradient at ``image`` (for the correctness check; the loop uses ``step``)."""
        set_tf32(self._device, self.precision)
        pixels = image.detach().clone().to(self._device).requires_grad_(True)
        loss = self._loss(pixels)
        loss.backward()
        assert pixels.grad is not None
        return float(loss.detach()), pixels.grad

    def step(self) -> float:
        started = time.perf_counter()
        set_tf32(self._device, self.precision)
        self.optimizer.zero_grad()
        loss = self._loss(self.pixels)
        loss.backward()
        value = float(loss.detach())
        self.engine_seconds += time.perf_counter() - started
        self.optimizer.step()
        return value

    def describe(self) -> dict[str, object]:
        return {
            "engine": "eager",
            "device": str(self._device),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "precision": self.precision,
            "tf32": tf32_state() if self._device.type == "cuda" else None,
            "loop": "nn.Sequential with loss modules, loss.backward(), Adam (PyTorch tutorial shape)",
        }
