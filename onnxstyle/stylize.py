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

from onnxstyle.auto import AUTO_OPTIMIZER, Choice, choose
from onnxstyle.backbones import BackboneSpec, Pooling, get_backbone, parse_layers
from onnxstyle.bench.options import check_threads
from onnxstyle.defaults import COARSE_ITERATIONS, COARSEST_SIDE, CONTENT_WEIGHT, ITERATIONS, LEARNING_RATE, MULTI_SCALE_FROM, SIZE, STYLE_WEIGHT, TV_WEIGHT
from onnxstyle.engines import Engine, EngineSpec, create_engine, engine_name
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
from onnxstyle.optimizers import Descent, OnEvaluation, OptimizerName, check_optimizer
from onnxstyle.precision import PRECISIONS, require
from onnxstyle.ort_providers import canonical, short_name
from onnxstyle.runners import Runner
from onnxstyle.sysinfo import default_threads
from onnxstyle.tiling import check_tile, tile_for
from onnxstyle.weights import ResolvedWeights, resolve

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
    final_scale_losses: list[float] | None = None  # a multi-resolution run's losses at the written size

    @property
    def written_losses(self) -> list[float]:
        """The losses at the output's size: a coarse scale's losses are of another problem and not comparable."""
        return self.losses if self.final_scale_losses is None else self.final_scale_losses

    @property
    def best_loss(self) -> float:
        """The loss of the written image: the lowest evaluated, not the last (a line search or Adam may overshoot)."""
        return min(self.written_losses) if self.written_losses else math.nan

    @property
    def loss_reduction(self) -> float:
        losses = self.written_losses
        return 1.0 - self.best_loss / losses[0] if losses and losses[0] else 0.0


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
    """Every stylize option that is not a file, checked on construction: one line per bad value, before any work.

    ``engine`` "auto" (the default) leaves ``provider`` and ``precision`` that are not given (None) to
    ``onnxstyle.auto``, which picks the fastest runner here; a named engine runs exactly what is named, on
    the CPU in fp32 unless told otherwise. ``optimizer`` None is auto's optimiser (L-BFGS).
    """

    engine: str = "auto"
    provider: str | None = None
    model: str = "vgg19"
    weights: str | ResolvedWeights = "auto"
    iterations: int = ITERATIONS
    optimizer: OptimizerName | None = None
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
    precision: str | None = None
    tile: int | None = None
    cuda_graph: bool = False
    cluster: str | None = None  # a Ray address or "local": the tiles run on the cluster's nodes (onnxstyle.cluster)
    max_time: float | None = None  # wall seconds for the whole run, set-up included; the best image so far is written

    def __post_init__(self) -> None:
        setattr_ = object.__setattr__
        setattr_(self, "engine", "auto" if self.engine.strip().lower() == "auto" else engine_name(self.engine))
        if self.engine != "auto" or self.cluster is not None:  # a cluster's nodes run tiles on ONNX Runtime's CPU provider unless told
            setattr_(self, "engine", "onnxruntime" if self.engine == "auto" else self.engine)
            setattr_(self, "provider", self.provider or "cpu")
            setattr_(self, "precision", self.precision or "fp32")
        if isinstance(self.iterations, bool) or not isinstance(self.iterations, int) or self.iterations <= 0:
            raise UsageError(f"--iterations must be a positive whole number, got {self.iterations}")
        setattr_(self, "optimizer", check_optimizer(self.optimizer or AUTO_OPTIMIZER))
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
        if self.precision is not None and self.precision not in PRECISIONS:
            raise UsageError(f"unknown precision '{self.precision}'; choose from {', '.join(PRECISIONS)}")
        if self.engine == "auto":
            return  # what runs is chosen (and checked) when the run starts: auto.choose
        if self.engine == "torch" and self.cluster is None:  # on a cluster, the nodes' devices count, not the driver's
            from onnxstyle.engines.torch_engine import torch_device

            torch_device(self.provider)
        runner = stylize_runner(self.engine, self.provider)
        require(runner.engine, runner.target if runner.engine == "onnxruntime" else runner.device, self.precision)

    @property
    def backbone(self) -> BackboneSpec:
        return get_backbone(self.model)


    def resolved(self, choice: Choice) -> StylizeConfig:
        """This configuration with auto's choice filled in: a named engine, provider and precision."""
        return replace(self, engine=choice.engine_name, provider=choice.provider, precision=choice.precision)


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


Source = str | Path | Image.Image  # an image file, demo:content / demo:style, or an image already in memory


def _inputs(content: Source, styles: Sequence[Source], init: str | torch.Tensor) -> list[str | Path]:
    """The run's input files (the demo images and images in memory are not files), which no output may replace."""
    sources = [content, *styles, *([] if isinstance(init, torch.Tensor) else [init])]
    return [
        source for source in sources if not isinstance(source, Image.Image) and str(source) not in (DEMO_CONTENT, DEMO_STYLE, "random", "content")
    ]


def _open(source: Source) -> Image.Image:
    return source.convert("RGB") if isinstance(source, Image.Image) else load_image(source)


def _resized(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """A (1, C, H, W) float tensor at another size (bicubic; an image stays in [0, 1])."""
    if tuple(image.shape[2:]) == (height, width):
        return image.clone()
    return torch.nn.functional.interpolate(image, size=(height, width), mode="bicubic", align_corners=False)


def stylize(
    content: Source = DEMO_CONTENT,
    styles: Sequence[Source] = (DEMO_STYLE,),
    output: str | Path = "out.png",
    *,
    size: int | str | tuple[int, int] = SIZE,
    **options: Any,
) -> StylizeResult:
    """Stylise ``content`` with one or more ``styles`` at one size and write ``output``; returns the loss history.

    ``stylize_scales`` with one scale: the same keywords (``init``, ``progress``, ``config`` or
    :class:`StylizeConfig`'s fields, ``deadline``, ``on_evaluation``, ``announce``). Everything is checked before
    any work: options, the output (never one of the inputs), and that the image fits in memory, tiled if need be.
    The output is only written with an image better than the start: a run that fails or is interrupted before
    improving on it leaves an existing file as it was.
    """
    return stylize_scales(content, styles, output, scales=[parse_size(size) if isinstance(size, str) else size], **options)


@dataclass
class _Scale:
    """One resolution of a run, checked before any of them starts (its images are only made when it runs)."""

    width: int
    height: int
    iterations: int
    output: Path
    planned: int = 0  # the iterations its share of a time budget is reckoned from (its own count when 0)
    style_side: int = 0
    tile: int | None = None

    @property
    def work(self) -> float:
        """Pixels × planned iterations: what a time budget is shared by."""
        return float(self.width * self.height * (self.planned or self.iterations))


def stylize_scales(
    content: Source,
    styles: Sequence[Source],
    output: str | Path,
    *,
    scales: Sequence[tuple[int, int] | int],
    iterations: int | str | Sequence[int] | None = None,
    init: str | torch.Tensor = "random",
    progress: ProgressCallback | None = None,
    config: StylizeConfig | None = None,
    deadline: float | None = None,
    on_evaluation: OnEvaluation | None = None,
    announce: Callable[[str], None] | None = None,
    ready_engine: Engine | None = None,
    **options: Any,
) -> StylizeResult:
    """Coarse to fine: each scale starts from the previous result upsampled; the last one is ``output``.

    The image passes from scale to scale as a float tensor (bicubic upsampling, no 8-bit round trip);
    intermediate results are still written beside the output (``out.scale512.png``), as neural-style's
    multires scripts do. Each scale starts its optimiser afresh: L-BFGS's curvature pairs belong to one
    resolution, and carrying Adam's moments and step count (resized like the image) was measured worse —
    VGG19 (vgg19-q8) 128 → 256 px, 60 + 30 Adam steps: 1.88e7 at the end against 9.88e6 afresh; NIN
    64 → 96 px: the loss rose. Every scale is checked before the first starts (outputs, sizes, memory), the
    weights are resolved and hashed once, and the scales that run untiled share one engine (its set-up,
    seconds for ONNX Runtime, is paid once).

    Under ``max_time`` (or ``deadline``) each scale gets the share of the time left that its planned work
    (pixels × iterations) is of the work left, so the coarse scales cannot eat the final one's time. When only
    the budget ends the run (no ``--iterations``), a coarse scale also ends after ``COARSE_ITERATIONS``
    evaluations, leaving what it did not use to the finer ones.
    ``iterations``: one count per scale, or N for the halving rule (``scale_iterations``); None is the config's.
    ``deadline`` (``time.perf_counter()`` units) ends the run; without it, ``max_time`` counts from this call.
    ``ready_engine``, built beforehand for this configuration, runs every untiled scale (converge times set-up apart).
    ``on_evaluation`` hears every evaluation with the image it evaluated, at that scale's size.
    """
    config = config or _config(options)
    if ready_engine is not None and config.engine == "auto":
        raise UsageError("an engine passed in needs a configuration that names it, not --engine auto")
    if deadline is None and config.max_time is not None:
        deadline = time.perf_counter() + config.max_time
    output, blend = _check_outputs(config, content, styles, output, init)
    counts = scale_iterations(config.iterations if iterations is None else iterations, len(scales))
    inputs = _inputs(content, styles, init)
    paths = [output if index == len(scales) - 1 else check_writable(scale_path(output, scale), inputs) for index, scale in enumerate(scales)]
    backbone = config.backbone
    resolved = config.weights if isinstance(config.weights, ResolvedWeights) else resolve(config.weights, backbone)
    config = replace(config, weights=resolved)
    spec = EngineSpec(backbone, tuple(config.content_layers or ()), tuple(config.style_layers or ()), config.pooling, resolved)
    source = _open(content)
    plan = [_Scale(*resize_dimensions(source.size, scale), count, path) for scale, count, path in zip(scales, counts, paths, strict=True)]
    if counts[0] >= TIME_BOUND_ITERATIONS:  # only the budget ends the run: a coarse scale also ends when it has settled
        for item in plan[:-1]:
            item.planned, item.iterations = item.iterations, min(item.iterations, COARSE_ITERATIONS)
    # What cannot fit is refused before auto's probe, by ONNX Runtime's CPU estimate (the choice is checked again after)
    estimate = replace(config, engine="onnxruntime", provider="cpu", precision="fp32") if config.engine == "auto" else config
    for item, scale in zip(plan, scales, strict=True):
        if (problem := backbone.size_problem(spec.layers, item.width, item.height)) is not None:
            raise ImageError(f"{f'--scales {scale}: ' if len(scales) > 1 else ''}image {problem}")
        item.tile = _tile_for(spec, estimate, item.height, item.width) if config.cluster is None else config.tile
    for item in plan:
        item.style_side = _style_side(spec, config, item)
    style_sources = [_open(style) for style in styles]
    ready = ready_engine
    if config.engine == "auto":
        largest = max(max(item.width, item.height) for item in plan)
        choice = choose(
            spec, largest, provider=config.provider, precision=config.precision, cuda_graph=config.cuda_graph, threads=config.threads,
            budget=None if deadline is None else deadline - time.perf_counter(), optimizer=config.optimizer or AUTO_OPTIMIZER,
        )
        if announce:
            announce(choice.reason)
        config, ready = config.resolved(choice), choice.engine
        for item in plan:
            item.tile = _tile_for(spec, config, item.height, item.width) if config.cluster is None else config.tile
    engines = _Engines(spec, config, ready, plan)
    results: list[StylizeResult] = []
    try:
        for index, item in enumerate(plan):
            previous = results[-1] if results else None
            start: str | torch.Tensor = init if previous is None or previous.image is None else previous.image
            engine = engines.at(item)  # built before the share is reckoned: set-up spends the budget, not one scale's part of it
            share = None if deadline is None else time.perf_counter() + (deadline - time.perf_counter()) * item.work / sum(later.work for later in plan[index:])
            content_at, styles_at = resize(source, (item.width, item.height)), [resize(image, item.style_side) for image in style_sources]
            results.append(
                _stylize_with(
                    engine, replace(config, iterations=item.iterations), spec, item, content_at, styles_at, blend, start, progress, share,
                    on_evaluation, last=index == len(plan) - 1,
                )
            )
    finally:
        engines.close()
    if len(results) == 1:
        return results[0]
    last = results[-1]
    return replace(
        last,
        iterations=sum(result.iterations for result in results),
        losses=[loss for result in results for loss in result.losses],
        seconds=sum(result.seconds for result in results),
        engine={**last.engine, "scales": [result.iterations for result in results]},
        final_scale_losses=last.losses,
        saved=[result.output for result in results[:-1] if result.image is not None] + [path for result in results for path in result.saved],
    )


def _style_side(spec: EngineSpec, config: StylizeConfig, item: _Scale) -> int:
    """The style image's long side at a scale, refused in one line when it would pass the image pixel limit."""
    style_side = max(spec.backbone.min_size(spec.layers), round(max(item.width, item.height) * config.style_scale))
    if style_side**2 > pixel_limit():
        raise UsageError(
            f"--style-scale {config.style_scale:g} makes the style image {style_side} px on its long side, over the "
            f"{pixel_limit():,}-pixel image limit; use a smaller scale"
        )
    return style_side


class _Engines:
    """The engines of a run's scales: one shared by every untiled scale, one per tile size, one per cluster scale."""

    def __init__(self, spec: EngineSpec, config: StylizeConfig, ready: Engine | None, plan: Sequence[_Scale]) -> None:
        self.spec, self.config = spec, config
        self.by_tile: dict[int, Any] = {} if ready is None else {0: ready}
        self.cluster: list[Any] = []
        # The shared engine hears every size it will run (Winograd is chosen for the largest, TensorRT profiles span them).
        self.untiled = [(item.height, item.width) for item in plan if not item.tile]

    def at(self, item: _Scale) -> Any:
        config, spec = self.config, self.spec
        sizes = [(item.height, item.width)]
        if config.cluster is not None:
            from onnxstyle.cluster.tiles import cluster_engine

            core = item.tile or max(CLUSTER_TILE, spec.backbone.receptive_field(spec.layers))
            check_tile(spec.backbone, spec.layers, core)
            engine = cluster_engine(
                config.engine, spec, address=config.cluster, core=core, provider=config.provider, precision=config.precision, sizes=sizes,
                threads=config.threads,
            )
            self.cluster.append(engine)
            return engine
        key = item.tile or 0
        if key not in self.by_tile:
            self.by_tile[key] = create_engine(
                config.engine, spec, provider=config.provider or "cpu", threads=config.threads, sizes=sizes if key else self.untiled,
                precision=config.precision or "fp32", tile=item.tile, cuda_graph=config.cuda_graph,
            )
        return self.by_tile[key]

    def close(self) -> None:
        for engine in self.cluster:
            engine.cluster.close()
        self.cluster.clear()


def _stylize_with(
    engine: Any, config: StylizeConfig, spec: EngineSpec, item: _Scale, content_image: Image.Image, style_images: list[Image.Image],
    blend: list[float], init: str | torch.Tensor, progress: ProgressCallback | None, deadline: float | None, on_evaluation: OnEvaluation | None,
    *, last: bool = True,
) -> StylizeResult:
    loss_weights = LossWeights((config.content_weight,) * len(spec.content_layers), (config.style_weight,) * len(spec.style_layers), config.tv_weight)
    engine.set_targets(engine.build_targets(to_tensor(content_image), [to_tensor(image) for image in style_images], blend, loss_weights))
    run = _Optimisation(engine, config, _start_image(init, content_image, config.seed), item.output, content_image, progress, deadline, on_evaluation)
    run.optimise(last=last)
    descent = run.descent
    assert isinstance(config.weights, ResolvedWeights)
    return StylizeResult(
        output=item.output,
        iterations=len(descent.losses),
        losses=descent.losses,
        seconds=run.seconds,
        engine=engine.describe(),
        weights=config.weights.label,
        timing_only=config.weights.weight_set.synthetic,
        final=descent.last_terms,
        saved=run.saved,
        image=None if run.passed_on else descent.best.detach().cpu().clone(),
        ended_by=descent.ended_by,
    )


def _check_outputs(
    config: StylizeConfig, content: Source, styles: Sequence[Source], output: str | Path, init: str | torch.Tensor
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
        return random_start(content_image.height, content_image.width, seed)
    return to_tensor(resize(load_image(init), (content_image.width, content_image.height)))


def random_start(height: int, width: int, seed: int) -> torch.Tensor:
    """``--init random``: mid-grey with seeded noise (σ 0.1), the start converge gives every configuration."""
    return torch.randn((1, 3, height, width), generator=torch.Generator().manual_seed(seed)) * 0.1 + 0.5


class _Optimisation:
    """One scale's optimisation (``optimizers.Descent``) with what belongs to files: progress, ``--save-every``
    snapshots, and the rule that an output is only ever written with an image better than the start."""

    def __init__(
        self, engine: Any, config: StylizeConfig, start: torch.Tensor, output: Path, content_image: Image.Image,
        progress: ProgressCallback | None, deadline: float | None = None, on_evaluation: OnEvaluation | None = None,
    ) -> None:
        self.config = config
        self.output = output
        self.content_image = content_image
        self.progress = progress
        self.on_evaluation = on_evaluation
        self.saved: list[Path] = []
        self.seconds = 0.0  # the optimisation's wall time, without writing the output
        self.passed_on = False  # a coarse scale that wrote nothing and hands its start to the next
        assert config.optimizer is not None
        self.descent = Descent(
            engine.loss_and_grad, start.to(engine.device), optimizer=config.optimizer, iterations=config.iterations,
            learning_rate=config.learning_rate, deadline=deadline, on_evaluation=self._heard, clock=time.perf_counter,
        )

    def finish(self, image: torch.Tensor, path: Path) -> Path:
        picture = to_image(image)
        if self.config.original_colors:
            picture = _luminance_transfer(picture, self.content_image)
        return save_image(picture, path)

    def _heard(self, step: int, terms: LossTerms, image: torch.Tensor) -> None:
        if self.on_evaluation:
            self.on_evaluation(step, terms, image)
        if self.progress:
            self.progress(step, self.config.iterations, terms)
        every = self.config.save_every
        if every and step % every == 0 and step < self.config.iterations:
            self.saved.append(self.finish(image, snapshot_path(self.output, step)))

    def optimise(self, *, last: bool = True) -> None:
        """Run the optimiser's budget, then write the output; NaN and Ctrl-C write it only when it improved on the start.

        A coarse scale (not ``last``) whose share of the budget ran out before it improved writes nothing and
        passes its start on: the finer scales still have their time."""
        descent, output = self.descent, self.output
        started = time.perf_counter()
        try:
            descent.run()
        except NumericalError as error:
            if descent.improved():
                self.finish(descent.best, output)
                kept = f"saved the best image (loss {descent.best_loss:.4g}) to {output}"
            else:
                kept = f"nothing better than the start to save; {output} was not written"
            raise NumericalError(f"{error}; {kept} (try a smaller learning rate or weights)") from None
        except KeyboardInterrupt:
            count = len(descent.losses)
            if descent.improved():
                self.finish(descent.best, output)
                raise Interrupted(f"interrupted after {count} iteration(s); saved the best image so far to {output}") from None
            raise Interrupted(f"interrupted after {count} iteration(s), before any improvement; {output} was not written") from None
        self.seconds = time.perf_counter() - started
        if descent.ended_by == "time" and not descent.improved():
            if not last:
                self.passed_on = True
                return
            raise UsageError(
                f"--max-time {self.config.max_time:g} ran out after {len(descent.losses)} evaluation(s), before any improvement on the "
                f"start; {output} was not written (give more time: set-up alone took part of it)"
            )
        if not descent.improved() and len(descent.losses) > 1:
            raise NumericalError(
                f"the loss never fell below its start {descent.losses[0]:.4g} over {len(descent.losses)} iterations; {output} was not written "
                "(try a smaller learning rate)"
            )
        self.finish(descent.best, output)


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
    """Coarse to fine (``coarse_to_fine``) from ``MULTI_SCALE_FROM`` px up; one scale below.

    Measured with ``onnxstyle converge`` at 512 px (reports/quality-512-amd.md): 128 → 256 → 512 reached the
    plain loop's final picture in 90 s against 242 s for the same L-BFGS at 512 px from the start, since the
    coarse scales, 16× and 4× cheaper per iteration, settle the layout before the expensive one refines it.
    """
    side = max(size) if isinstance(size, tuple) else size
    return coarse_to_fine(size) if side >= MULTI_SCALE_FROM else [size]


def coarse_to_fine(size: tuple[int, int] | int) -> list[tuple[int, int] | int]:
    """``COARSEST_SIDE`` px, doubling, up to ``size`` (longest sides): 512 → 128, 256, 512."""
    side = max(size) if isinstance(size, tuple) else size
    scales: list[tuple[int, int] | int] = []
    current = COARSEST_SIDE
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


def scale_path(output: Path, scale: tuple[int, int] | int) -> Path:
    """Where a multi-resolution run keeps the result of an intermediate ``scale`` (``out.scale512.png``)."""
    label = f"{scale[0]}x{scale[1]}" if isinstance(scale, tuple) else str(scale)
    return output.with_name(f"{output.stem}.scale{label}{output.suffix}")
