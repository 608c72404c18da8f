"""The ONNX Runtime engine: the exported loss+gradient graph on any execution provider.

On CUDA/TensorRT the image, targets and gradient stay on the GPU through IOBinding (torch CUDA
tensors are bound by pointer), so a step copies only the few loss scalars back to the host.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import torch

from onnxstyle.engines.base import Engine, EngineSpec
from onnxstyle.exporters.export import (
    CORE_INPUT,
    build_features_model,
    build_loss_model,
    build_tile_gradient_model,
    build_tile_statistics_model,
    content_input,
    style_input,
)
from onnxstyle.exporters.graph import IMAGE_INPUT
from onnxstyle.losses import LossTerms
from onnxstyle.providers import ProviderConfig, ShapeProfile, create_session, ort_package
from onnxstyle.sysinfo import release_memory
from onnxstyle.weights import build_backbone

GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")


def tensorrt_profile(spec: EngineSpec, sizes: list[tuple[int, int]]) -> ShapeProfile:
    """min/opt/max shapes over the requested (height, width) sizes for every dynamic input."""
    ordered = sorted(sizes, key=lambda size: size[0] * size[1])
    picks = {"min": ordered[0], "opt": ordered[len(ordered) // 2], "max": ordered[-1]}
    shapes: dict[str, dict[str, list[int]]] = {}
    for key, (height, width) in picks.items():
        shapes[key] = {IMAGE_INPUT: [1, 3, height, width]}
        for layer in spec.content_layers:
            shape = spec.backbone.feature_shape(layer, height, width)
            assert shape is not None, f"{height}x{width} is too small for {layer}"
            channels, rows, cols = shape
            shapes[key][content_input(layer)] = [1, channels, rows, cols]
    return ShapeProfile(shapes["min"], shapes["opt"], shapes["max"])


class OnnxRuntimeEngine(Engine):
    name = "onnxruntime"

    def __init__(self, spec: EngineSpec, config: ProviderConfig, sizes: list[tuple[int, int]] | None = None) -> None:
        super().__init__(spec)
        if config.provider == "TensorrtExecutionProvider" and config.profile is None and sizes:
            config.profile = tensorrt_profile(spec, sizes)
        self.config = config
        model = build_backbone(spec.backbone, spec.layers, pooling=spec.pooling, resolved=spec.weights)
        loss_graph = build_loss_model(
            model, spec.weights.preprocessing, content_layers=spec.content_layers, style_layers=spec.style_layers
        )
        self.loss_session = create_session(loss_graph.SerializeToString(), config)
        # The session holds its own copy of the weights; the proto and the torch model (≈0.4 GB for VGG19) go.
        del model, loss_graph
        release_memory()
        self._features_session: Any = None
        self._tile_sessions_cache: tuple[Any, Any] | None = None
        self.on_gpu = config.provider in GPU_PROVIDERS
        if not self.on_gpu:
            # ORT's pool owns the cores; torch only runs the optimiser's small vector updates between
            # runs, and its own spinning OpenMP threads would steal time from ORT's (loop overhead 3-15% → ~1%).
            torch.set_num_threads(1)
        self._device = torch.device(f"cuda:{config.device_id}") if self.on_gpu else torch.device("cpu")
        self._feeds: dict[str, Any] = {}

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def features_session(self) -> Any:
        """The feature extractor, opened on demand: it is only needed while targets are built."""
        if self._features_session is None:
            spec = self.spec
            model = build_backbone(spec.backbone, spec.layers, pooling=spec.pooling, resolved=spec.weights)
            model.outputs = list(spec.content_layers)
            graph = build_features_model(model, spec.weights.preprocessing, grams=spec.style_layers)
            # Without an arena its activations go back to the OS as soon as a run ends.
            self._features_session = create_session(graph.SerializeToString(), replace(self.config, memory_arena=False))
        return self._features_session

    def extract(self, image: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        names = [output.name for output in self.features_session.get_outputs()]
        values = self.features_session.run(None, {IMAGE_INPUT: image.detach().cpu().numpy()})
        outputs = {name: torch.from_numpy(value).to(self._device) for name, value in zip(names, values, strict=True)}
        content = {layer: outputs[layer] for layer in self.spec.content_layers}
        grams = {layer: outputs[f"gram.{layer}"] for layer in self.spec.style_layers}
        return content, grams

    def set_targets(self, targets: Any) -> None:
        super().set_targets(targets)
        # Targets are built: the extractor's weights and buffers (≈0.2 GB for VGG19) are freed until needed again.
        self._features_session = None
        release_memory()
        feeds: dict[str, Any] = {content_input(layer): value for layer, value in targets.content.items()}
        feeds.update({style_input(layer): value for layer, value in targets.style.items()})
        weights = targets.weights
        feeds["content_weights"] = torch.tensor(weights.content, dtype=torch.float32)
        feeds["style_weights"] = torch.tensor(weights.style, dtype=torch.float32)
        feeds["tv_weight"] = torch.tensor([weights.tv], dtype=torch.float32)
        if self.on_gpu:
            self._feeds = {name: value.to(self._device).contiguous() for name, value in feeds.items()}
        else:
            self._feeds = {name: value.detach().cpu().numpy() for name, value in feeds.items()}

    def loss_and_grad(self, image: torch.Tensor) -> tuple[LossTerms, torch.Tensor]:
        assert self.targets is not None, "set_targets() first"
        if self.on_gpu:
            return self._run_bound(image)
        feeds = dict(self._feeds)
        feeds[IMAGE_INPUT] = image.detach().cpu().numpy()
        loss, content, style, tv, grad = self.loss_session.run(None, feeds)
        return _terms(loss, content, style, tv), torch.from_numpy(grad)

    def _run_bound(self, image: torch.Tensor) -> tuple[LossTerms, torch.Tensor]:
        """IOBinding: inputs and the gradient bound by device pointer; only the scalars come back."""
        binding = self.loss_session.io_binding()
        pixels = image.detach().to(self._device).contiguous()
        grad = torch.empty_like(pixels)
        for name, tensor in {IMAGE_INPUT: pixels, **self._feeds}.items():
            binding.bind_input(name, "cuda", self.config.device_id, np.float32, tuple(tensor.shape), tensor.data_ptr())
        binding.bind_output("grad", "cuda", self.config.device_id, np.float32, tuple(grad.shape), grad.data_ptr())
        for name in ("loss", "content_losses", "style_losses", "tv_loss"):
            binding.bind_output(name, "cpu")
        self.loss_session.run_with_iobinding(binding)
        loss, content, style, tv = (value.numpy() for value in binding.get_outputs()[1:5])
        return _terms(loss, content, style, tv), grad

    def _tile_sessions(self, strides: dict[str, int]) -> tuple[Any, Any]:
        """The tile statistics and tile gradient sessions, opened on first use (see tiling.py)."""
        if self._tile_sessions_cache is None:
            spec = self.spec
            model = build_backbone(spec.backbone, spec.layers, pooling=spec.pooling, resolved=spec.weights)
            layers = {"content_layers": spec.content_layers, "style_layers": spec.style_layers, "strides": strides}
            statistics = build_tile_statistics_model(model, spec.weights.preprocessing, **layers)
            gradient = build_tile_gradient_model(model, spec.weights.preprocessing, **layers)
            del model
            self._tile_sessions_cache = (
                create_session(statistics.SerializeToString(), replace(self.config, memory_arena=False)),
                create_session(gradient.SerializeToString(), self.config),
            )
            del statistics, gradient
            release_memory()
        return self._tile_sessions_cache

    def tile_statistics(
        self, tile: torch.Tensor, core: torch.Tensor, strides: dict[str, int]
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        session, _ = self._tile_sessions(strides)
        names = [output.name for output in session.get_outputs()]
        values = session.run(None, {IMAGE_INPUT: tile.detach().cpu().numpy(), CORE_INPUT: core.cpu().numpy()})
        outputs = {name: torch.from_numpy(value).to(self._device) for name, value in zip(names, values, strict=True)}
        sums = {layer: outputs[f"gram_sum.{layer}"] for layer in self.spec.style_layers}
        return sums, {layer: outputs[layer] for layer in self.spec.content_layers}

    def tile_gradient(
        self,
        tile: torch.Tensor,
        core: torch.Tensor,
        strides: dict[str, int],
        style_directions: dict[str, torch.Tensor],
        content_targets: dict[str, torch.Tensor],
        content_scales: dict[str, float],
    ) -> tuple[dict[str, float], torch.Tensor]:
        _, session = self._tile_sessions(strides)
        feeds: dict[str, Any] = {IMAGE_INPUT: tile.detach().cpu().numpy(), CORE_INPUT: core.cpu().numpy()}
        feeds.update({f"direction.{layer}": value.detach().cpu().numpy() for layer, value in style_directions.items()})
        feeds.update({content_input(layer): value.detach().cpu().numpy() for layer, value in content_targets.items()})
        feeds["content_scales"] = np.array([content_scales[layer] for layer in self.spec.content_layers], np.float32)
        parts, grad = session.run(None, feeds)
        return dict(zip(self.spec.content_layers, (float(part) for part in parts), strict=True)), torch.from_numpy(grad).to(self._device)

    def describe(self) -> dict[str, object]:
        return {
            "engine": "onnxruntime",
            "package": ort_package(),
            "provider_requested": self.config.provider,
            "provider_effective": self.loss_session.get_providers()[0],
            "provider_options": self.config.options(),
            "threads": self.config.threads,
            "io_binding": self.on_gpu,
        }


def _terms(loss: np.ndarray, content: np.ndarray, style: np.ndarray, tv: np.ndarray) -> LossTerms:
    return LossTerms(float(loss), [float(v) for v in content], [float(v) for v in style], float(np.asarray(tv).reshape(-1)[0]))
