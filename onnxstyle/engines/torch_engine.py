"""The torch autograd engine: the reference implementation and the 'plain torch loop' baseline."""

from __future__ import annotations

import torch

from onnxstyle.engines.base import Engine, EngineSpec
from onnxstyle.errors import NumericalError, ProviderError, UsageError
from onnxstyle.losses import LossTerms, gram_matrix, objective
from onnxstyle.precision import FP16_LOSS_SCALE, autocast_dtype, exact_bf16_matmuls, require, set_tf32, tf32_state
from onnxstyle.sysinfo import default_threads
from onnxstyle.tiling import feature_mask
from onnxstyle.weights import build_backbone


def torch_device(name: str) -> torch.device:
    """``cpu``, ``cuda`` or ``cuda:N``; an unusable device fails in one line."""
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ProviderError(f"torch device {name} is not usable here: torch.cuda.is_available() is False")
        return torch.device(name)
    if name != "cpu":
        raise UsageError(f"unknown torch device '{name}'; use cpu or cuda[:N]")
    return torch.device("cpu")


class TorchEngine(Engine):
    name = "torch"

    def __init__(self, spec: EngineSpec, device: str = "cpu", threads: int | None = None, precision: str = "fp32") -> None:
        super().__init__(spec)
        self._device = torch_device(device)
        require("torch", self._device.type, precision)
        self.precision = precision
        torch.set_num_threads(threads or default_threads())
        set_tf32(self._device, precision)
        self.model = build_backbone(spec.backbone, spec.layers, pooling=spec.pooling, resolved=spec.weights).to(self._device)
        self.model.requires_grad_(False)
        self.network_dtype = autocast_dtype(precision)  # the network's dtype; None: fp32
        if self.network_dtype is not None:
            # oneDNN's and cuDNN's reduced-precision convolutions are fastest in NHWC (VGG19 bf16 on CPU, 256 px: 337 → 292 ms).
            # The weights are cast once here rather than by autocast on every forward pass (the same numbers:
            # autocast runs these convolutions on bf16/fp16 copies of them).
            self.model.to(dtype=self.network_dtype, memory_format=torch.channels_last)

    @property
    def device(self) -> torch.device:
        return self._device

    def features(self, model_input: torch.Tensor) -> dict[str, torch.Tensor]:
        """The network's feature maps, in reduced precision where asked, returned as fp32 for the losses."""
        if self.network_dtype is None:
            return self.model(model_input)
        features = self.model(model_input.to(dtype=self.network_dtype, memory_format=torch.channels_last))
        return {layer: value.float() for layer, value in features.items()}

    def extract(self, image: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        with torch.no_grad(), exact_bf16_matmuls(self._device, self.network_dtype):
            features = self.features(self.spec.weights.preprocessing.to_model(image.to(self._device)))
            content = {layer: features[layer] for layer in self.spec.content_layers}
            grams = {layer: gram_matrix(features[layer]) for layer in self.spec.style_layers}
        return content, grams

    def loss_and_grad(self, image: torch.Tensor) -> tuple[LossTerms, torch.Tensor]:
        assert self.targets is not None, "set_targets() first"
        set_tf32(self._device, self.precision)
        pixels = image.detach().to(self._device).requires_grad_(True)
        model_input = self.spec.weights.preprocessing.to_model(pixels)
        with exact_bf16_matmuls(self._device, self.network_dtype):
            total, content, style, tv = objective(
                self.features(model_input), model_input, self.targets.content, self.targets.style, self.targets.weights
            )
            grad = self._gradient(total, pixels)
        return loss_terms(total, content, style, tv), grad

    def tile_statistics(
        self, tile: torch.Tensor, core: torch.Tensor, strides: dict[str, int]
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Gram sums over the tile's core positions, and the tile's content-layer features (see tiling.py)."""
        with torch.no_grad(), exact_bf16_matmuls(self._device, self.network_dtype):
            features = self.features(self.spec.weights.preprocessing.to_model(tile.to(self._device)))
            sums = {}
            for layer in self.spec.style_layers:
                masked = _core_matrix(features[layer], core, strides[layer])
                sums[layer] = masked @ masked.t()
        return sums, {layer: features[layer] for layer in self.spec.content_layers}

    def tile_gradient(
        self,
        tile: torch.Tensor,
        core: torch.Tensor,
        strides: dict[str, int],
        style_directions: dict[str, torch.Tensor],
        content_targets: dict[str, torch.Tensor],
        content_scales: dict[str, float],
    ) -> tuple[dict[str, float], torch.Tensor]:
        """The tile's share of the whole-image gradient, through the surrogate ⟨D, ΣF·Fᵀ⟩ + core content loss."""
        set_tf32(self._device, self.precision)
        pixels = tile.detach().to(self._device).requires_grad_(True)
        with exact_bf16_matmuls(self._device, self.network_dtype):
            features = self.features(self.spec.weights.preprocessing.to_model(pixels))
            surrogate = torch.zeros((), device=self._device)
            parts = []
            for layer, direction in style_directions.items():
                masked = _core_matrix(features[layer], core, strides[layer])
                surrogate = surrogate + (direction * (masked @ masked.t())).sum()
            for layer, target in content_targets.items():
                value = features[layer]
                mask = feature_mask(core, strides[layer], *value.shape[2:])
                part = content_scales[layer] * (((value - target) ** 2) * mask).sum()
                parts.append(part.detach())
                surrogate = surrogate + part
            grad = self._gradient(surrogate, pixels)
        values = torch.stack(parts).cpu().tolist() if parts else []
        return dict(zip(content_targets, values, strict=True)), grad

    def _gradient(self, value: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        """d(value)/d(pixels), through the fp16 loss scale (and its overflow check) when running fp16."""
        scale = FP16_LOSS_SCALE if self.precision == "fp16" else 1.0
        (value * scale).backward()
        assert pixels.grad is not None
        grad = pixels.grad / scale if scale != 1.0 else pixels.grad
        if self.precision == "fp16" and not bool(torch.isfinite(grad).all()):
            raise NumericalError(f"fp16 gradient overflowed (loss scale {scale:g}); use bf16 or fp32")
        return grad

    def describe(self) -> dict[str, object]:
        return {
            "engine": "torch",
            "device": str(self._device),
            "precision": self.precision,
            "network_dtype": str(self.network_dtype).removeprefix("torch.") if self.network_dtype is not None else "float32",
            "losses_and_grams": "fp32 (bf16 products summed in fp32 on CPU)" if self.network_dtype == torch.bfloat16 and self._device.type == "cpu" else "fp32",
            "threads": torch.get_num_threads(),
            "tf32": tf32_state() if self._device.type == "cuda" else None,
            "torch": torch.__version__,
        }


def loss_terms(total: torch.Tensor, content: list[torch.Tensor], style: list[torch.Tensor], tv: torch.Tensor) -> LossTerms:
    """The loss terms as floats, copied off the device in one transfer (one sync per step, not one per term)."""
    values = torch.stack([total.detach(), *(t.detach() for t in content), *(t.detach() for t in style), tv.detach()]).cpu().tolist()
    count = len(content)
    return LossTerms(values[0], values[1 : 1 + count], values[1 + count : -1], values[-1])


def _core_matrix(features: torch.Tensor, core: torch.Tensor, stride: int) -> torch.Tensor:
    """A tile's (C, H·W) feature matrix with positions outside its core zeroed: what its Gram share sums."""
    masked = features * feature_mask(core, stride, *features.shape[2:])
    return masked.reshape(features.shape[1], -1)
