"""The ONNX Runtime engine: the exported loss+gradient graph on any execution provider.

On CUDA/TensorRT the image, targets and gradient stay on the GPU through IOBinding (torch CUDA
tensors are bound by pointer, the optimiser updates them there), so a step copies only the few loss
scalars back to the host; the buffers keep their addresses, which lets ORT capture a CUDA graph.
Providers other than CPU and TensorRT get one session per image size with the shapes fixed
(see ``providers.DYNAMIC_SHAPE_PROVIDERS``).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import onnx
import torch

from onnxstyle.backbones import Backbone
from onnxstyle.engines.base import Engine, EngineSpec
from onnxstyle.errors import NumericalError, UsageError
from onnxstyle.exporters.graph import IMAGE_INPUT, winograd_layers
from onnxstyle.exporters.models import (
    CORE_INPUT,
    build_features_model,
    build_loss_model,
    build_tile_gradient_model,
    build_tile_statistics_model,
    content_input,
    dimension_values,
    fix_dimensions,
    target_feeds,
)
from onnxstyle.losses import LossTerms
from onnxstyle.precision import FP16_LOSS_SCALE
from onnxstyle.ort_providers import (
    CUDA_PROVIDERS,
    DYNAMIC_SHAPE_PROVIDERS,
    ProviderConfig,
    ShapeProfile,
    create_session,
    ort_package,
    probe_model,
    short_name,
)
from onnxstyle.plugin_eps import package_label
from onnxstyle.sysinfo import release_memory
from onnxstyle.tiling import layer_strides
from onnxstyle.weights import build_backbone


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


GraphKind = Literal["loss", "features", "tile_statistics", "tile_gradient"]
# Sessions whose runs happen once per target image or tile pass return their buffers to the OS at once.
ARENA_FREE_KINDS: tuple[GraphKind, ...] = ("features", "tile_statistics")


def session_config(base: ProviderConfig, kind: GraphKind, *, fixed: bool) -> ProviderConfig:
    """The provider settings of one graph's session, derived from the engine's.

    Only the loss session captures a CUDA graph: it alone runs through IOBinding with fixed buffers. A
    captured session replays without reading new feeds, so a feature session run with ``session.run``
    would hand back the content image's features for the style image.
    """
    return replace(
        base,
        memory_arena=base.memory_arena and kind not in ARENA_FREE_KINDS,
        profile=None if fixed else base.profile,
        cuda_graph=base.cuda_graph and kind == "loss",
    )


@dataclass
class BoundRun:
    """One loss session's IOBinding with fixed device buffers: the image is copied in, nothing is reallocated.

    Fixed addresses for every input and output are what a CUDA graph replays; without one they still
    keep each step free of host copies except the few loss scalars.
    """

    binding: Any
    image: torch.Tensor
    grad: torch.Tensor
    scalars: dict[str, torch.Tensor]


class OnnxRuntimeEngine(Engine):
    name = "onnxruntime"

    def __init__(
        self,
        spec: EngineSpec,
        config: ProviderConfig,
        sizes: list[tuple[int, int]] | None = None,
        *,
        io_binding: bool | None = None,
        winograd: bool | None = None,
        whole_image: bool = True,
    ) -> None:
        """``io_binding`` None: on GPU providers (where it saves host copies); True also on CPU, where it runs the same path.

        ``winograd`` None: Winograd F(4×4, 3×3) for the wide 3×3 convolutions of fp32 graphs on the CPU
        provider, whose direct convolutions already run near the FMA peak (VGG19 256 px: ≈80% of kernel time in
        Conv, see `onnxstyle profile`); GPU providers choose their own algorithms (cuDNN, TensorRT tactics), and so do
        plugin EPs such as OpenVINO, which get the direct-convolution graph.
        ``whole_image`` False: a tiled run, which never uses the whole-image loss session, does not open it.
        """
        super().__init__(spec)
        if config.provider == "TensorrtExecutionProvider" and config.profile is None and sizes:
            config = replace(config, profile=tensorrt_profile(spec, sizes))
        if config.cuda_graph and config.provider not in CUDA_PROVIDERS:
            raise UsageError(f"CUDA graphs need the cuda or tensorrt provider, not {short_name(config.provider)}")
        self.config = config
        self.on_gpu = config.provider in CUDA_PROVIDERS
        if winograd and self.graph_precision != "fp32":
            raise UsageError("Winograd convolutions are built for fp32 graphs only")
        if winograd and config.provider != "CPUExecutionProvider":
            raise UsageError(f"Winograd convolutions are built for the cpu provider only; {short_name(config.provider)} chooses its own convolution algorithms")
        if winograd is None:
            winograd = config.provider == "CPUExecutionProvider" and self.graph_precision == "fp32"
        # Which layers pay off depends on their size: decided for the largest size asked for, where most of a
        # coarse-to-fine run's time goes (one CPU graph serves all sizes).
        self.winograd_size = max(sizes, key=lambda size: size[0] * size[1]) if winograd and sizes else None
        self.static_shapes = config.provider not in DYNAMIC_SHAPE_PROVIDERS
        self.io_binding = self.on_gpu if io_binding is None else io_binding
        if config.cuda_graph and not self.io_binding:
            raise UsageError("CUDA graphs need IOBinding (fixed buffer addresses)")
        self._device = torch.device(f"cuda:{config.device_id}") if self.on_gpu else torch.device("cpu")
        self._sessions: dict[tuple[GraphKind, int, int], Any] = {}
        # Seconds spent building graphs and opening sessions (set-up that is not the targets). cuDNN chooses its plans
        # and a CUDA graph is captured at the first runs, so those costs land in the first iteration instead.
        self.build_seconds = 0.0
        self._graphs: dict[GraphKind, onnx.ModelProto] = {}
        self._network: Backbone | None = None
        # baked into the tile graphs; the same for every tile (TiledEngine passes them too, for engines that need them)
        self._strides = layer_strides(spec.backbone, spec.layers)
        self._bound: dict[tuple[int, int], BoundRun] = {}
        self._feeds: dict[str, Any] = {}
        if not self.on_gpu:
            # ORT's pool owns the cores; torch only runs the optimiser's small vector updates between
            # runs, and its own spinning OpenMP threads would steal time from ORT's (loop overhead 3-15% → ~1%).
            torch.set_num_threads(1)
        # Opened now so that set-up time, not the first iteration, pays for it (per size where shapes are fixed),
        # and an unusable provider fails here, in one line.
        if whole_image:
            for height, width in (sizes or []) if self._fixed_shapes("loss") else [(0, 0)]:
                self._session("loss", height, width)
        # The provider a probe session really ran on, for describe() before any graph's session is open (tiled runs).
        self._probed = None if self._sessions else create_session(probe_model(), config).get_providers()[0]

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def graph_precision(self) -> str:
        """fp16 graphs for ``--precision fp16`` on every provider.

        On TensorRT too: with ``trt_fp16_enable`` alone TensorRT may pick fp16 for any layer, including
        Gram and loss sums that overflow fp16's 65,504; the fp16 graph types those fp32 explicitly.
        """
        return "fp16" if self.config.precision == "fp16" else "fp32"

    @property
    def conv_algorithm(self) -> str:
        """Which convolutions the loss graph runs as Winograd (a report should say when the arithmetic is not direct)."""
        chosen = winograd_layers(self.spec.backbone.truncated(self.spec.layers), self.winograd_size) if self.winograd_size else []
        if not chosen:
            return "direct"
        return f"winograd F(4x4,3x3): {', '.join(chosen)} (chosen for {self.winograd_size[1]}x{self.winograd_size[0]}); others direct"

    def _build(self, kind: GraphKind) -> onnx.ModelProto:
        spec = self.spec
        if self._network is None:  # every graph kind is built from the same weights, read from disk once
            self._network = build_backbone(spec.backbone, spec.layers, pooling=spec.pooling, resolved=spec.weights)
        model = copy.copy(self._network)
        preprocessing = spec.weights.preprocessing
        graph = {"precision": self.graph_precision, "winograd_size": self.winograd_size}
        layers = {"content_layers": spec.content_layers, "style_layers": spec.style_layers}
        if kind == "loss":
            return build_loss_model(model, preprocessing, **layers, **graph)
        if kind == "features":  # runs once per target image: Winograd's weights would cost more memory and set-up than it saves
            model.outputs = list(spec.content_layers)
            return build_features_model(model, preprocessing, grams=spec.style_layers, precision=self.graph_precision)
        if kind == "tile_statistics":
            return build_tile_statistics_model(model, preprocessing, **layers, strides=self._strides, **graph)
        return build_tile_gradient_model(model, preprocessing, **layers, strides=self._strides, **graph)

    def _checked(self, loss: float, grad: torch.Tensor) -> None:
        """A reduced-precision graph that overflowed says so, instead of handing the optimiser NaN."""
        if self.config.precision != "fp16":
            return
        if not math.isfinite(loss) or not bool(torch.isfinite(grad).all()):
            raise NumericalError(
                f"{self.config.precision} loss or gradient overflowed on {short_name(self.config.provider)} "
                f"(loss {loss:g}, loss scale {FP16_LOSS_SCALE:g}); use fp32"
            )

    def _fixed_shapes(self, kind: GraphKind) -> bool:
        """TensorRT's optimisation profile describes the loss graph's inputs; its other graphs get fixed shapes."""
        return self.static_shapes or (self.config.provider == "TensorrtExecutionProvider" and kind != "loss")

    def _session(self, kind: GraphKind, height: int, width: int) -> Any:
        """The session running graph ``kind``: one for all sizes, or one per input size where shapes are fixed."""
        fixed = self._fixed_shapes(kind)
        key = (kind, height, width) if fixed else (kind, 0, 0)
        if key not in self._sessions:
            started = time.perf_counter()
            if fixed:
                # The dynamic graph is kept (host memory) to stamp out one fixed-shape copy per size.
                if kind not in self._graphs:
                    self._graphs[kind] = self._build(kind)
                graph = fix_dimensions(self._graphs[kind], dimension_values(self.spec.backbone, self.spec.content_layers, height, width))
            else:
                graph = self._build(kind)
            self._sessions[key] = create_session(graph.SerializeToString(), session_config(self.config, kind, fixed=fixed))
            # The session holds its own copy of the weights; the proto (≈0.2 GB for VGG19's loss graph) goes.
            del graph
            release_memory()
            self.build_seconds += time.perf_counter() - started
        return self._sessions[key]

    def end_profiling(self, kind: GraphKind) -> str:
        """Stop ORT's profiler on ``kind``'s session (opened with ``ProviderConfig.profile_prefix``); its JSON file."""
        sessions = [session for key, session in self._sessions.items() if key[0] == kind]
        if not sessions or not self.config.profile_prefix:
            raise UsageError(f"no profiled {kind} session: open the engine with ProviderConfig(profile_prefix=...) and run it first")
        return str(sessions[-1].end_profiling())

    def _close(self, kind: GraphKind) -> None:
        for key in [key for key in self._sessions if key[0] == kind]:
            del self._sessions[key]
        self._graphs.pop(kind, None)
        release_memory()

    def extract(self, image: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        session = self._session("features", *image.shape[2:])
        names = [output.name for output in session.get_outputs()]
        values = session.run(None, {IMAGE_INPUT: image.detach().cpu().numpy()})
        outputs = {name: torch.from_numpy(value).to(self._device) for name, value in zip(names, values, strict=True)}
        content = {layer: outputs[layer] for layer in self.spec.content_layers}
        grams = {layer: outputs[f"gram.{layer}"] for layer in self.spec.style_layers}
        return content, grams

    def set_targets(self, targets: Any) -> None:
        super().set_targets(targets)
        # Targets are built: the extractor's weights and buffers (≈0.2 GB for VGG19) are freed until needed again,
        # and so is the torch network the graphs were built from (a graph built later reads the weights again).
        self._close("features")
        self._network = None
        feeds = target_feeds(targets.content, targets.style, targets.weights)
        if self.io_binding:
            self._retarget(feeds)
        else:
            self._feeds = {name: value.detach().cpu().numpy() for name, value in feeds.items()}

    def _retarget(self, feeds: dict[str, torch.Tensor]) -> None:
        """New targets go into the bound buffers in place, so bindings and captured CUDA graphs stay valid.

        A captured graph replays the device addresses it saw; new buffers would leave it reading freed
        memory. Only a target whose shape changes (a new image size) gets a new buffer; then every binding
        is redone and, with CUDA graphs, the loss sessions that captured the old addresses are rebuilt.
        """
        reallocated = False
        for name, value in feeds.items():
            held = self._feeds.get(name)
            if isinstance(held, torch.Tensor) and held.shape == value.shape and held.dtype == value.dtype:
                held.copy_(value)
            else:
                self._feeds[name] = value.to(self._device).contiguous().clone()
                reallocated = True
        if reallocated and self._bound:
            self._bound.clear()
            if self.config.cuda_graph:
                self._close("loss")

    def loss_and_grad(self, image: torch.Tensor) -> tuple[LossTerms, torch.Tensor]:
        assert self.targets is not None, "set_targets() first"
        height, width = image.shape[2:]
        session = self._session("loss", height, width)
        if self.io_binding:
            return self._run_bound(session, image)
        feeds = dict(self._feeds)
        feeds[IMAGE_INPUT] = image.detach().cpu().numpy()
        loss, content, style, tv, grad = session.run(None, feeds)
        terms, gradient = _terms(loss, content, style, tv), torch.from_numpy(grad)
        self._checked(terms.total, gradient)
        return terms, gradient

    def _bind(self, session: Any, height: int, width: int) -> BoundRun:
        """Device buffers for every input and output of the loss graph at one size, bound once."""
        binding = session.io_binding()
        device_type, device_id = self._device.type, self.config.device_id
        image = torch.zeros(1, 3, height, width, device=self._device)
        grad = torch.empty_like(image)
        scalars = {
            output.name: torch.zeros(tuple(output.shape), device=self._device) for output in session.get_outputs() if output.name != "grad"
        }
        for name, tensor in {IMAGE_INPUT: image, **self._feeds}.items():
            binding.bind_input(name, device_type, device_id, np.float32, tuple(tensor.shape), tensor.data_ptr())
        for name, tensor in {**scalars, "grad": grad}.items():
            binding.bind_output(name, device_type, device_id, np.float32, tuple(tensor.shape), tensor.data_ptr())
        return BoundRun(binding, image, grad, scalars)

    def _run_bound(self, session: Any, image: torch.Tensor) -> tuple[LossTerms, torch.Tensor]:
        """IOBinding: the image is copied device-to-device into its bound buffer; only the loss scalars come back."""
        height, width = image.shape[2:]
        if (height, width) not in self._bound:
            self._bound[(height, width)] = self._bind(session, height, width)
        bound = self._bound[(height, width)]
        bound.image.copy_(image.detach())
        if self._device.type == "cuda":
            # ORT runs on its own CUDA stream: the copy on torch's stream must have landed before it reads the buffer.
            torch.cuda.synchronize(self._device)
        session.run_with_iobinding(bound.binding)
        # One device-to-host copy for all the loss scalars.
        values = torch.cat([tensor.reshape(-1) for tensor in bound.scalars.values()]).cpu().numpy()
        parts = dict(zip(bound.scalars, np.split(values, np.cumsum([t.numel() for t in bound.scalars.values()])[:-1]), strict=True))
        terms = _terms(parts["loss"], parts["content_losses"], parts["style_losses"], parts["tv_loss"])
        self._checked(terms.total, bound.grad)
        # The bound buffer is overwritten by the next run; the optimiser may keep this one (L-BFGS history).
        return terms, bound.grad.clone()

    def tile_statistics(
        self, tile: torch.Tensor, core: torch.Tensor, strides: dict[str, int]
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        session = self._session("tile_statistics", *tile.shape[2:])
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
        session = self._session("tile_gradient", *tile.shape[2:])
        feeds: dict[str, Any] = {IMAGE_INPUT: tile.detach().cpu().numpy(), CORE_INPUT: core.cpu().numpy()}
        feeds.update({f"direction.{layer}": value.detach().cpu().numpy() for layer, value in style_directions.items()})
        feeds.update({content_input(layer): value.detach().cpu().numpy() for layer, value in content_targets.items()})
        feeds["content_scales"] = np.array([content_scales[layer] for layer in self.spec.content_layers], np.float32)
        parts, grad = session.run(None, feeds)
        content = dict(zip(self.spec.content_layers, (float(part) for part in parts), strict=True))
        gradient = torch.from_numpy(grad)
        self._checked(sum(content.values()), gradient)
        return content, gradient.to(self._device)

    def describe(self) -> dict[str, object]:
        sessions = list(self._sessions.values())
        return {
            "engine": "onnxruntime",
            "package": ort_package(),
            "provider_requested": self.config.provider,
            "provider_effective": sessions[0].get_providers()[0] if sessions else self._probed,
            "provider_options": self.config.options(),
            "threads": self.config.threads,
            "io_binding": self.io_binding,
            "graph_precision": self.graph_precision,
            "conv_algorithm": self.conv_algorithm,
            "static_shapes": self.static_shapes,
            "cuda_graph": self.config.cuda_graph,
            "build_seconds": round(self.build_seconds, 3),
            # a plugin EP's own wheel (its version decides what it runs); its load_config is in provider_options, verbatim
            **({"provider_package": package} if (package := package_label(self.config.provider)) else {}),
        }


def _terms(loss: np.ndarray, content: np.ndarray, style: np.ndarray, tv: np.ndarray) -> LossTerms:
    return LossTerms(float(np.asarray(loss).reshape(-1)[0]), [float(v) for v in content], [float(v) for v in style], float(np.asarray(tv).reshape(-1)[0]))
