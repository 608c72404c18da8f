"""The torch autograd engine: the reference implementation and the 'plain torch loop' baseline."""

from __future__ import annotations

import torch

from onnxstyle.engines.base import Engine, EngineSpec
from onnxstyle.errors import ProviderError
from onnxstyle.sysinfo import default_threads
from onnxstyle.losses import LossTerms, gram_matrix, objective
from onnxstyle.weights import build_backbone


def torch_device(name: str) -> torch.device:
    """``cpu``, ``cuda`` or ``cuda:N``; an unusable device fails in one line."""
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ProviderError(f"torch device {name} is not usable here: torch.cuda.is_available() is False")
        return torch.device(name)
    if name != "cpu":
        raise ProviderError(f"unknown torch device '{name}'; use cpu or cuda[:N]")
    return torch.device("cpu")


class TorchEngine(Engine):
    name = "torch"

    def __init__(self, spec: EngineSpec, device: str = "cpu", threads: int | None = None) -> None:
        super().__init__(spec)
        self._device = torch_device(device)
        torch.set_num_threads(threads or default_threads())
        if self._device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        self.model = build_backbone(spec.backbone, spec.layers, pooling=spec.pooling, resolved=spec.weights).to(self._device)

    @property
    def device(self) -> torch.device:
        return self._device

    def extract(self, image: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        with torch.no_grad():
            features = self.model(self.spec.weights.preprocessing.to_model(image.to(self._device)))
        content = {layer: features[layer] for layer in self.spec.content_layers}
        grams = {layer: gram_matrix(features[layer]) for layer in self.spec.style_layers}
        return content, grams

    def loss_and_grad(self, image: torch.Tensor) -> tuple[LossTerms, torch.Tensor]:
        assert self.targets is not None, "set_targets() first"
        pixels = image.detach().to(self._device).requires_grad_(True)
        model_input = self.spec.weights.preprocessing.to_model(pixels)
        total, content, style, tv = objective(
            self.model(model_input), model_input, self.targets.content, self.targets.style, self.targets.weights
        )
        total.backward()
        assert pixels.grad is not None
        terms = LossTerms(float(total.detach()), [float(t.detach()) for t in content], [float(t.detach()) for t in style], float(tv.detach()))
        return terms, pixels.grad

    def describe(self) -> dict[str, object]:
        return {
            "engine": "torch",
            "device": str(self._device),
            "threads": torch.get_num_threads(),
            "tf32": False if self._device.type == "cuda" else None,
            "torch": torch.__version__,
        }
