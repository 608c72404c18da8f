"""The Gatys optimisation loop with the classic tools' vocabulary and defaults (neural-style flags).

The optimisers are torch's own (Adam, L-BFGS) driving a leaf tensor whose ``.grad`` the engine fills,
so torch autograd and ONNX Runtime run through exactly the same loop.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

import torch
from PIL import Image

from onnxstyle.backbones import BackboneSpec, Pooling, get_backbone, parse_layers
from onnxstyle.bench.options import check_threads
from onnxstyle.defaults import CONTENT_WEIGHT, ITERATIONS, LEARNING_RATE, SIZE, STYLE_WEIGHT, TV_WEIGHT
from onnxstyle.engines import EngineSpec, create_engine, engine_name
from onnxstyle.errors import ImageError, Interrupted, NumericalError, OutputError, UsageError
from onnxstyle.files import same_file
from onnxstyle.images import (
    DEMO_CONTENT,
    DEMO_STYLE,
    check_writable,
    load_image,
    parse_size,
    pixel_limit,
    resize,
    resize_dimensions,
    save_image,
    to_image,
    to_tensor,
)
from onnxstyle.losses import LossTerms, LossWeights
from onnxstyle.memory import free_bytes
from onnxstyle.precision import require
from onnxstyle.providers import canonical, short_name
from onnxstyle.runners import Runner
from onnxstyle.sysinfo import default_threads
from onnxstyle.tiling import check_tile, tile_for
from onnxstyle.weights import ResolvedWeights, resolve

Optimizer = Literal["lbfgs", "adam"]


@dataclass
class StylizeResult:
    output: Path
    iterations: int
    losses: list[float]
    seconds: float
    engine: dict[str, object]
    weights: str
    timing_only: bool
    final: LossTerms | None = None
    saved: list[Path] = field(default_factory=list)
    image: torch.Tensor | None = field(default=None, repr=False)  # the written image in float, before 8-bit rounding
    ended_by: Literal["iterations", "time"] = "iterations"

    @property
    def best_loss(self) -> float:
        """The loss of the written image: the lowest evaluated, not the last (a line search or Adam may overshoot)."""
        return min(self.losses) if self.losses else math.nan

    @property
    def loss_reduction(self) -> float:
        return 1.0 - self.best_loss / self.losses[0] if self.losses and self.losses[0] else 0.0


ProgressCallback = Callable[[int, int, LossTerms], None]


MAX_SEED = 2**64 - 1
MAX_TIME_SECONDS = 30 * 24 * 3600.0
# --max-time without --iterations: the budget alone ends the run (an L-BFGS history never gets this long).
TIME_BOUND_ITERATIONS = 10**9


def _finite(name: str, value: float, *, positive: bool = False) -> float:
    """A float option that must be a real number, ≥ 0 (or > 0 when ``positive``)."""
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise UsageError(f"--{name} must be a finite number {'above' if positive else 'of at least'} 0, got {value}")
    return float(value)


def _blend(text: str | Sequence[float] | None) -> tuple[float, ...] | None:
    if text is None:
        return None
    if isinstance(text, str) and not text.strip():
        raise UsageError("--style-blend-weights is empty; give one weight per style image, such as 3,7")
    items = text.split(",") if isinstance(text, str) else list(text)
    try:
        values = tuple(float(item) for item in items)
    except (TypeError, ValueError):
        raise UsageError(f"--style-blend-weights needs numbers such as 3,7, got '{text}'") from None
    if not values:
        raise UsageError("--style-blend-weights is empty; give one weight per style image, such as 3,7")
    if any(not math.isfinite(value) or value < 0 for value in values) or sum(values) <= 0:
        raise UsageError("--style-blend-weights must be finite, non-negative and not all zero")
    return values


@dataclass(frozen=True)
class StylizeConfig:
    """Every stylize option that is not a file, checked on construction: one line per bad value, before any work."""

    engine: str = "onnxruntime"
    provider: str = "cpu"
    model: str = "vgg19"
    weights: str | ResolvedWeights = "auto"
    iterations: int = ITERATIONS
    optimizer: Optimizer = "lbfgs"
    learning_rate: float = LEARNING_RATE
    content_weight: float = CONTENT_WEIGHT
    style_weight: float = STYLE_WEIGHT
    tv_weight: float = TV_WEIGHT
    content_layers: str | Sequence[str] | None = None
    style_layers: str | Sequence[str] | None = None
    style_blend_weights: str | Sequence[float] | None = None
    style_scale: float = 1.0
    seed: int = 0
    original_colors: bool = False
    pooling: Pooling = "max"
    save_every: int = 0
    threads: int | None = None
    precision: str = "fp32"
    tile: int | None = None
    cuda_graph: bool = False
    cluster: str | None = None  # a Ray address or "local": the tiles run on the cluster's nodes (onnxstyle.cluster)
    max_time: float | None = None  # wall seconds for the whole run, set-up included; the best image so far is written

    def __post_init__(self) -> None:
        setattr_ = object.__setattr__
        setattr_(self, "engine", engine_name(self.engine))
        if isinstance(self.iterations, bool) or not isinstance(self.iterations, int) or self.iterations <= 0:
            raise UsageError(f"--iterations must be a positive whole number, got {self.iterations}")
        if self.optimizer not in ("lbfgs", "adam"):
            raise UsageError(f"unknown optimizer '{self.optimizer}'; choose lbfgs or adam")
        _finite("learning-rate", self.learning_rate, positive=True)
        for name in ("content-weight", "style-weight", "tv-weight"):
            _finite(name, getattr(self, name.replace("-", "_")))
        _finite("style-scale", self.style_scale, positive=True)
        setattr_(self, "style_blend_weights", _blend(self.style_blend_weights))
        backbone = get_backbone(self.model)
        for option, default in (("content-layers", backbone.default_content_layers), ("style-layers", backbone.default_style_layers)):
            names = parse_layers(getattr(self, option.replace("-", "_")), default)
            setattr_(self, option.replace("-", "_"), tuple(backbone.validate_layers(names, option)))
        if not 0 <= self.seed <= MAX_SEED:
            raise UsageError(f"--seed must be between 0 and 2**64-1, got {self.seed}")
        if self.pooling not in ("max", "avg"):
            raise UsageError(f"unknown pooling '{self.pooling}'; choose max or avg")
        if self.save_every < 0:
            raise UsageError(f"--save-every cannot be negative, got {self.save_every}")
        if self.max_time is not None and (_finite("max-time", self.max_time, positive=True) > MAX_TIME_SECONDS):
            raise UsageError(f"--max-time must be at most {MAX_TIME_SECONDS:.0f} seconds (30 days), got {self.max_time:g}")
        check_threads(self.threads)
        if self.threads is not None and self.cluster is None:  # on a cluster, threads are the nodes' to cap
            setattr_(self, "threads", min(self.threads, default_threads()))
        if self.tile is not None and self.tile < 0:
            raise UsageError(f"--tile must be positive (or 0 for never), got {self.tile}")
        if self.cuda_graph and self.tile:
            raise UsageError("CUDA graphs replay one fixed-shape run; they cannot be combined with tiling (use --tile 0)")
        if self.cluster is not None:
            from onnxstyle.cluster import parse_address

            parse_address(self.cluster)
            if self.tile == 0 or self.cuda_graph:
                raise UsageError("--cluster runs the image tile by tile; it cannot be combined with --tile 0 or --cuda-graph")
        if self.engine == "torch" and self.cluster is None:  # on a cluster, the nodes' devices count, not the driver's
            from onnxstyle.engines.torch_engine import torch_device

            torch_device(self.provider)
        runner = stylize_runner(self.engine, self.provider)
        require(runner.engine, runner.target if runner.engine == "onnxruntime" else runner.device, self.precision)

    @property
    def backbone(self) -> BackboneSpec:
        return get_backbone(self.model)


def stylize_runner(engine: str, provider: str) -> Runner:
    """The bench's name for what stylize runs: an ORT provider, or torch on a device."""
    if engine == "onnxruntime":
        return Runner("onnxruntime", short_name(canonical(provider)))
    return Runner(engine, "cuda" if provider.lower().startswith("cuda") else "cpu")


def _luminance_transfer(stylised: Image.Image, content: Image.Image) -> Image.Image:
    """Keep the stylised luminance, take colour from the content (neural-style -original_colors)."""
    luma = stylised.convert("YCbCr").split()[0]
    _, cb, cr = content.resize(stylised.size).convert("YCbCr").split()
    return Image.merge("YCbCr", (luma, cb, cr)).convert("RGB")


# Core edge of a cluster run's tiles when neither --tile nor memory chose one: 512-px cores keep a VGG19
# tile's halo (≈150 px) under half of its pixels and give a 2048-px image 16 tiles to spread.
CLUSTER_TILE = 512


def _tile_for(spec: EngineSpec, config: StylizeConfig, height: int, width: int) -> int | None:
    """``tile`` None: tile only when the untiled loop would not fit in free memory; 0: never; N: a core of N px.

    The bench's rule (``tiling.tile_for``), so both refuse the same sizes with the same estimate.
    """
    tile = 0 if config.cuda_graph and config.tile is None else config.tile
    runner = stylize_runner(config.engine, config.provider)
    try:
        return tile_for(runner.engine, spec, width, height, tile, free_bytes(runner.device))
    except UsageError as error:
        if tile == 0 and str(error).startswith("needs"):
            raise UsageError(f"{width}x{height} untiled {error}; leave out --tile 0 to run it tile by tile") from None
        raise


def _inputs(content: str | Path, styles: Sequence[str | Path], init: str | torch.Tensor) -> list[str | Path]:
    """The run's input files (the demo images are not files), which no output may replace."""
    sources = [content, *styles, *([] if isinstance(init, torch.Tensor) else [init])]
    return [source for source in sources if str(source) not in (DEMO_CONTENT, DEMO_STYLE, "random", "content")]


def _resized(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """A (1, C, H, W) float tensor at another size (bicubic; an image stays in [0, 1])."""
    if tuple(image.shape[2:]) == (height, width):
        return image.clone()
    return torch.nn.functional.interpolate(image, size=(height, width), mode="bicubic", align_corners=False)


def stylize(
    content: str | Path = DEMO_CONTENT,
    styles: Sequence[str | Path] = (DEMO_STYLE,),
    output: str | Path = "out.png",
    *,
    size: int | str | tuple[int, int] = SIZE,
    init: str | torch.Tensor = "random",
    progress: ProgressCallback | None = None,
    config: StylizeConfig | None = None,
    deadline: float | None = None,
    **options: Any,
) -> StylizeResult:
    """Stylise ``content`` with one or more ``styles`` and write ``output``; returns the loss history.

    ``deadline`` (``time.perf_counter()`` units) ends the optimisation; without it, ``max_time`` counts from this call.

    ``options`` are :class:`StylizeConfig`'s fields (or pass ``config``). Everything is checked before any
    work: options, the output (never one of the inputs), and that the image fits in memory, tiled if
    need be. The output is only written with an image better than the start: a run that fails or is
    interrupted before improving on it leaves an existing file as it was.
    """
    config = config or _config(options)
    if deadline is None and config.max_time is not None:
        deadline = time.perf_counter() + config.max_time
    output, blend = _check_outputs(config, content, styles, output, init)
    backbone = config.backbone
    layers = [*(config.content_layers or ()), *(config.style_layers or ())]
    content_image = resize(load_image(content), size if isinstance(size, tuple) else parse_size(size))
    if (problem := backbone.size_problem(layers, content_image.width, content_image.height)) is not None:
        raise ImageError(f"image {problem}")
    style_side = max(backbone.min_size(layers), round(max(content_image.size) * config.style_scale))
    if style_side**2 > pixel_limit():
        raise UsageError(
            f"--style-scale {config.style_scale:g} makes the style image {style_side} px on its long side, over the "
            f"{pixel_limit():,}-pixel image limit; use a smaller scale"
        )
    resolved = config.weights if isinstance(config.weights, ResolvedWeights) else resolve(config.weights, backbone)
    spec = EngineSpec(backbone, tuple(config.content_layers or ()), tuple(config.style_layers or ()), config.pooling, resolved)
    tile = _tile_for(spec, config, content_image.height, content_image.width) if config.cluster is None else config.tile
    style_images = [resize(load_image(style), style_side) for style in styles]
    sizes = [(content_image.height, content_image.width)]
    if config.cluster is not None:
        from onnxstyle.cluster.tiles import cluster_engine

        core = tile or max(CLUSTER_TILE, spec.backbone.receptive_field(spec.layers))
        check_tile(spec.backbone, spec.layers, core)
        engine: Any = cluster_engine(
            config.engine, spec, address=config.cluster, core=core, provider=config.provider, precision=config.precision, sizes=sizes,
            threads=config.threads,
        )
    else:
        engine = create_engine(
            config.engine, spec, provider=config.provider, threads=config.threads, sizes=sizes, precision=config.precision, tile=tile,
            cuda_graph=config.cuda_graph,
        )
    try:
        return _stylize_with(engine, config, spec, content_image, style_images, blend, init, output, progress, resolved, deadline)
    finally:
        if config.cluster is not None:
            engine.cluster.close()


def _stylize_with(
    engine: Any, config: StylizeConfig, spec: EngineSpec, content_image: Image.Image, style_images: list[Image.Image], blend: list[float],
    init: str | torch.Tensor, output: Path, progress: ProgressCallback | None, resolved: ResolvedWeights, deadline: float | None,
) -> StylizeResult:
    loss_weights = LossWeights((config.content_weight,) * len(spec.content_layers), (config.style_weight,) * len(spec.style_layers), config.tv_weight)
    engine.set_targets(engine.build_targets(to_tensor(content_image), [to_tensor(image) for image in style_images], blend, loss_weights))
    run = _Optimisation(engine, config, _start_image(init, content_image, config.seed), output, content_image, progress, deadline)
    run.optimise()
    return StylizeResult(
        output=output,
        iterations=len(run.losses),
        losses=run.losses,
        seconds=run.seconds,
        engine=engine.describe(),
        weights=resolved.label,
        timing_only=resolved.weight_set.synthetic,
        final=run.last_terms,
        saved=run.saved,
        image=run.best.detach().cpu().clone(),
        ended_by=run.ended_by,
    )


def _check_outputs(
    config: StylizeConfig, content: str | Path, styles: Sequence[str | Path], output: str | Path, init: str | torch.Tensor
) -> tuple[Path, list[float]]:
    """(the checked output path, one blend weight per style): no file the run writes may be one of its inputs."""
    if not styles:
        raise UsageError("at least one style image is needed")
    inputs = _inputs(content, styles, init)
    checked = check_writable(Path(output), inputs)
    for step in _existing_snapshot_steps(checked, config) if config.save_every else ():
        clash = next((source for source in inputs if Path(source).exists() and same_file(snapshot_path(checked, step), source)), None)
        if clash is not None:
            raise OutputError(f"--save-every {config.save_every} would write {snapshot_path(checked, step)}, which is an input; choose another output")
    blend = [float(value) for value in (config.style_blend_weights or [1.0] * len(styles))]
    if len(blend) != len(styles):
        raise UsageError(f"--style-blend-weights has {len(blend)} value(s) but {len(styles)} style image(s) were given")
    return checked, blend


def _existing_snapshot_steps(output: Path, config: StylizeConfig) -> list[int]:
    """The ``--save-every`` steps whose snapshot file already exists: only those can be an input (or link to one).

    Read from the folder rather than counted up to ``iterations``, which a ``--max-time`` run sets to 10⁹.
    """
    prefix = f"{output.stem}_"
    steps = []
    for candidate in output.parent.glob(f"{prefix}*{output.suffix}"):
        number = candidate.name[len(prefix) : len(candidate.name) - len(output.suffix)]
        if number.isdigit() and str(int(number)) == number and int(number) % config.save_every == 0 and 0 < int(number) < config.iterations:
            steps.append(int(number))
    return sorted(steps)


def _start_image(init: str | torch.Tensor, content_image: Image.Image, seed: int) -> torch.Tensor:
    """The first image: a tensor passed on (a previous scale), the content, seeded noise, or an image file."""
    if isinstance(init, torch.Tensor):
        return _resized(init.detach().float().cpu(), content_image.height, content_image.width).clamp(0.0, 1.0)
    if init == "content":
        return to_tensor(content_image)
    if init == "random":
        return torch.randn(to_tensor(content_image).shape, generator=torch.Generator().manual_seed(seed)) * 0.1 + 0.5
    return to_tensor(resize(load_image(init), (content_image.width, content_image.height)))


class _OutOfTime(Exception):
    """Raised inside the optimiser's closure when the wall-time budget is spent: L-BFGS has no other way out."""


class _Optimisation:
    """One optimisation of the pixels: the loss history, the image with the lowest loss so far, and the rule
    that an output is only ever written with an image better than the start."""

    def __init__(
        self, engine: Any, config: StylizeConfig, start: torch.Tensor, output: Path, content_image: Image.Image,
        progress: ProgressCallback | None, deadline: float | None = None,
    ) -> None:
        self.engine = engine
        self.config = config
        self.output = output
        self.content_image = content_image
        self.progress = progress
        self.pixels = start.to(engine.device).clone().requires_grad_(True)
        self.best = self.pixels.detach().clone()
        self.best_loss = math.inf
        self.deadline = deadline
        self.ended_by: Literal["iterations", "time"] = "iterations"
        self.losses: list[float] = []
        self.saved: list[Path] = []
        self.last_terms: LossTerms | None = None
        self.seconds = 0.0  # the optimisation's wall time, without writing the output

    def finish(self, image: torch.Tensor, path: Path) -> Path:
        picture = to_image(image)
        if self.config.original_colors:
            picture = _luminance_transfer(picture, self.content_image)
        return save_image(picture, path)

    def improved(self) -> bool:
        """Whether the best image is worth writing: better than the start."""
        return bool(self.losses) and self.best_loss < self.losses[0]

    def closure(self) -> torch.Tensor:
        terms, grad = self.engine.loss_and_grad(self.pixels.detach())
        losses, output = self.losses, self.output
        if not math.isfinite(terms.total) or not bool(torch.isfinite(grad).all()):
            if self.improved():
                self.finish(self.best, output)
                kept = f"saved the best image (loss {self.best_loss:.4g}) to {output}"
            else:
                kept = f"nothing better than the start to save; {output} was not written"
            raise NumericalError(
                f"loss became {terms.total} at evaluation {len(losses) + 1}; {kept} (try a smaller learning rate or weights)"
            )
        if terms.total < self.best_loss:
            self.best.copy_(self.pixels.detach())
            self.best_loss = terms.total
        losses.append(terms.total)
        self.last_terms = terms
        # L-BFGS sees the loss in units of the first one: its curvature test (s·y > 1e-10) and first step
        # (1/|g|₁) are absolute, and real VGG19 losses of ~1e8 (pixels in [0, 1], Caffe's 0-255 inside)
        # made it skip every update and explode on a raw gradient step. Adam is invariant to the scale.
        scale = max(abs(losses[0]), 1e-30) if self.config.optimizer == "lbfgs" else 1.0
        self.pixels.grad = grad.to(self.pixels.dtype) / scale
        step, every = len(losses), self.config.save_every
        if self.progress:
            self.progress(step, self.config.iterations, terms)
        if every and step % every == 0 and step < self.config.iterations:
            self.saved.append(self.finish(self.pixels.detach(), snapshot_path(output, step)))
        if self.deadline is not None and time.perf_counter() >= self.deadline:
            raise _OutOfTime
        return torch.tensor(terms.total / scale)

    def optimise(self) -> None:
        """Run the optimiser's budget, then write the output; Ctrl-C writes it only when it improved on the start."""
        iterations, output = self.config.iterations, self.output
        started = time.perf_counter()
        try:
            if self.config.optimizer == "lbfgs":
                # With real VGG19 weights, plain L-BFGS (lr 1, no line search, as neural-style) crawled at 128 px
                # (loss −74% in 100 evaluations, against −99% with the strong-Wolfe line search; 256 px: −97% either
                # way). Evaluations still count as iterations: the line search spends them from the same budget.
                lbfgs = torch.optim.LBFGS(
                    [self.pixels], lr=1.0, max_iter=iterations, max_eval=iterations, tolerance_grad=-1.0, tolerance_change=-1.0,
                    history_size=100, line_search_fn="strong_wolfe",
                )
                lbfgs.step(self.closure)
            else:
                adam = torch.optim.Adam([self.pixels], lr=self.config.learning_rate)
                for _ in range(iterations):
                    adam.zero_grad(set_to_none=True)
                    self.closure()
                    adam.step()
        except _OutOfTime:
            self.ended_by = "time"
            if not self.improved():
                raise UsageError(
                    f"--max-time {self.config.max_time:g} ran out after {len(self.losses)} evaluation(s), before any improvement on the "
                    f"start; {output} was not written (give more time: set-up alone took part of it)"
                ) from None
        except KeyboardInterrupt:
            count = len(self.losses)
            if self.improved():
                self.finish(self.best, output)
                raise Interrupted(f"interrupted after {count} iteration(s); saved the best image so far to {output}") from None
            raise Interrupted(f"interrupted after {count} iteration(s), before any improvement; {output} was not written") from None
        self.seconds = time.perf_counter() - started
        if not self.improved() and len(self.losses) > 1:
            raise NumericalError(
                f"the loss never fell below its start {self.losses[0]:.4g} over {len(self.losses)} iterations; {output} was not written "
                "(try a smaller learning rate)"
            )
        self.finish(self.best, output)


def _config(options: dict[str, Any]) -> StylizeConfig:
    known = {item.name for item in fields(StylizeConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise UsageError(f"unknown stylize option(s): {', '.join(unknown)}")
    return StylizeConfig(**options)


def snapshot_path(output: Path, step: int) -> Path:
    """Where ``--save-every`` writes the image of ``step``: beside the output (``out_100.png``)."""
    return output.with_name(f"{output.stem}_{step}{output.suffix}")


def parse_scales(text: str | Sequence[int | str]) -> list[tuple[int, int] | int]:
    """``512,1024,2048`` (longest sides) or ``960x540,1920x1080``; each must be larger than the last."""
    items = [item.strip() for item in text.split(",")] if isinstance(text, str) else [str(item) for item in text]
    scales = [parse_size(item) for item in items if item]
    if not scales:
        raise UsageError("--scales is empty; give sizes such as 512,1024,2048")
    sides = [max(scale) if isinstance(scale, tuple) else scale for scale in scales]
    if any(later <= earlier for earlier, later in zip(sides, sides[1:], strict=False)):
        raise UsageError(f"--scales must increase, got {','.join(items)}")
    return scales


def default_scales(size: tuple[int, int] | int) -> list[tuple[int, int] | int]:
    """Above 1024 px: start at 512 and double up to ``size``, as the classic multi-resolution scripts do."""
    side = max(size) if isinstance(size, tuple) else size
    if side <= 1024:
        return [size]
    scales: list[tuple[int, int] | int] = []
    current = 512
    while current < side:
        scales.append(current)
        current *= 2
    return [*scales, size]


def scale_iterations(iterations: int | str | Sequence[int], count: int) -> list[int]:
    """One count per scale; a single number N gives N at the first scale and halves it per larger scale (≥ min(N, 20))."""
    if isinstance(iterations, str):
        try:
            iterations = [int(item) for item in iterations.split(",") if item.strip()]
        except ValueError:
            raise UsageError(f"--scale-iterations needs whole numbers such as 200,100, got '{iterations}'") from None
    if isinstance(iterations, int):
        if iterations <= 0:
            raise UsageError(f"--iterations must be a positive whole number, got {iterations}")
        return [max(min(20, iterations), iterations >> index) for index in range(count)]
    counts = list(iterations)
    if len(counts) != count or any(value <= 0 for value in counts):
        raise UsageError(f"--scale-iterations needs {count} positive counts (one per scale), got {counts}")
    return counts


def stylize_scales(
    content: str | Path,
    styles: Sequence[str | Path],
    output: str | Path,
    *,
    scales: Sequence[tuple[int, int] | int],
    iterations: int | str | Sequence[int],
    init: str | torch.Tensor = "random",
    progress: ProgressCallback | None = None,
    config: StylizeConfig | None = None,
    deadline: float | None = None,
    **options: Any,
) -> StylizeResult:
    """Multi-resolution: each scale starts from the previous result upsampled; the last one is ``output``.

    The image passes from scale to scale as a float tensor (bicubic upsampling, no 8-bit round trip);
    intermediate results are still written beside the output (``out.scale512.png``), as neural-style's
    multires scripts do. Each scale starts its optimiser afresh: L-BFGS's curvature pairs belong to one
    resolution, and carrying Adam's moments and step count (resized like the image) was measured worse —
    VGG19 (vgg19-q8) 128 → 256 px, 60 + 30 Adam steps: 1.88e7 at the end against 9.88e6 afresh; NIN
    64 → 96 px: the loss rose. Every scale is checked before the first starts (outputs, memory), and the
    weights are resolved and hashed once.

    Under ``max_time`` (or ``deadline``) each scale gets the share of the time left that its planned work
    (pixels × iterations) is of the work left, so the coarse scales cannot eat the final one's time.
    """
    output = Path(output)
    counts = scale_iterations(iterations, len(scales))
    config = replace(config or _config(options), iterations=counts[0])
    if deadline is None and config.max_time is not None:
        deadline = time.perf_counter() + config.max_time
    inputs = _inputs(content, styles, init)
    paths = [output if index == len(scales) - 1 else scale_path(output, scale) for index, scale in enumerate(scales)]
    for path in paths:
        check_writable(path, inputs)
    backbone = config.backbone
    resolved = config.weights if isinstance(config.weights, ResolvedWeights) else resolve(config.weights, backbone)
    config = replace(config, weights=resolved)
    spec = EngineSpec(backbone, tuple(config.content_layers or ()), tuple(config.style_layers or ()), config.pooling, resolved)
    source = load_image(content)
    work = []
    for scale, count in zip(scales, counts, strict=True):
        width, height = resize_dimensions(source.size, scale)
        if (problem := backbone.size_problem(spec.layers, width, height)) is not None:
            raise ImageError(f"--scales {scale}: image {problem}")
        _tile_for(spec, config, height, width)
        work.append(float(width * height * count))
    results: list[StylizeResult] = []
    for index, (scale, count, path) in enumerate(zip(scales, counts, paths, strict=True)):
        previous = results[-1] if results else None
        start: str | torch.Tensor = init if previous is None or previous.image is None else previous.image
        share = None if deadline is None else time.perf_counter() + (deadline - time.perf_counter()) * work[index] / sum(work[index:])
        results.append(
            stylize(content, styles, path, size=scale, init=start, progress=progress, config=replace(config, iterations=count), deadline=share)
        )
    last = results[-1]
    return StylizeResult(
        output=last.output,
        iterations=sum(result.iterations for result in results),
        losses=[loss for result in results for loss in result.losses],
        seconds=sum(result.seconds for result in results),
        engine={**last.engine, "scales": [result.iterations for result in results]},
        weights=last.weights,
        timing_only=last.timing_only,
        final=last.final,
        saved=[result.output for result in results[:-1]] + [path for result in results for path in result.saved],
        image=last.image,
        ended_by=last.ended_by,
    )


def scale_path(output: Path, scale: tuple[int, int] | int) -> Path:
    """Where a multi-resolution run keeps the result of an intermediate ``scale`` (``out.scale512.png``)."""
    label = f"{scale[0]}x{scale[1]}" if isinstance(scale, tuple) else str(scale)
    return output.with_name(f"{output.stem}.scale{label}{output.suffix}")
