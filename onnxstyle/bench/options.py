"""What a bench run is asked to do: the options every entry point (CLI, tests, a cluster) fills in and checks once."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from onnxstyle.backbones import BackboneSpec, get_backbone
from onnxstyle.defaults import LEARNING_RATE
from onnxstyle.errors import UsageError
from onnxstyle.images import parse_size
from onnxstyle.precision import PRECISIONS
from onnxstyle.runners import Runner, check_precisions, select_runners, takes_cuda_graph


def parse_models(text: str) -> list[BackboneSpec]:
    names = [name.strip() for name in text.split(",")]
    if not all(names):
        raise UsageError("empty model name in --model; use vgg19 and/or nin")
    return list({spec.name: spec for spec in (get_backbone(name) for name in names)}.values())


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """``64,128,1920x1080`` → [(64, 64), (128, 128), (1920, 1080)] as (width, height)."""
    items = [item.strip() for item in text.split(",")]
    if not items or not all(items):
        raise UsageError(f"--sizes needs a comma-separated list like 64,128,256 or 1920x1080, got '{text}'")
    sizes = []
    for item in items:
        size = parse_size(item)
        sizes.append(size if isinstance(size, tuple) else (size, size))
    return list(dict.fromkeys(sizes))


def parse_square_sizes(text: str, command: str) -> list[int]:
    """``--sizes`` of a command that runs square images only: one side each."""
    sizes = parse_sizes(text)
    if (oblong := next(((width, height) for width, height in sizes if width != height), None)) is not None:
        raise UsageError(f"{command} runs square images; --sizes {oblong[0]}x{oblong[1]} is not square: give one side, e.g. {min(oblong)}")
    return [width for width, _height in sizes]


def parse_seconds(text: str) -> list[float]:
    """``--seconds 60`` or ``60,150``: wall time per configuration, one number or one per size."""
    try:
        return [float(item) for item in text.split(",")]
    except ValueError:
        raise UsageError(f"--seconds needs numbers such as 60 or 60,150, got '{text}'") from None


def parse_precisions(text: str) -> list[str]:
    precisions = [item.strip().lower() for item in text.split(",")]
    for precision in precisions:
        if precision not in PRECISIONS:
            raise UsageError(f"unknown precision '{precision}' in --precision; supported: {', '.join(PRECISIONS)}")
    return list(dict.fromkeys(precisions))




def check_sizes(models: Sequence[BackboneSpec], sizes: Sequence[tuple[int, int]]) -> None:
    """A size no selected model can run is refused before any work, in ``size_problem``'s words; a size some
    model can run stays, and the others' cells at it are skipped with the same words."""
    for width, height in sizes:
        problems = [spec.size_problem([*spec.default_content_layers, *spec.default_style_layers], width, height) for spec in models]
        if all(problems):
            raise UsageError(str(problems[0]))


def check_counts(runs: int, warmup: int) -> None:
    """``--runs`` and ``--warmup`` of every command that times runs (bench, profile): one message each."""
    if runs <= 0:
        raise UsageError(f"--runs must be positive, got {runs}")
    if warmup < 0:
        raise UsageError(f"--warmup cannot be negative, got {warmup}")


def check_threads(threads: int | None) -> None:
    """``--threads``: None means every CPU this process may use; zero or fewer is a usage error in every command."""
    if threads is not None and threads <= 0:
        raise UsageError(f"--threads must be positive, got {threads}")


@dataclass
class BenchOptions:
    runners: list[Runner]
    models: list[BackboneSpec]
    sizes: list[tuple[int, int]]
    precisions: list[str] = field(default_factory=lambda: ["fp32"])
    duration: float | None = 6.0
    iterations: int | None = None
    runs: int = 5
    warmup: int = 3
    threads: int | None = None
    weights: str = "auto"
    check: bool = True
    skipped: dict[Runner, str] = field(default_factory=dict)
    tile: int | None = None  # None: tile only cells that would not fit; 0: never; N: always, cores of N px
    cuda_graph: bool = False  # for ORT runners on cuda/tensorrt (others run as usual)
    interleave: bool = True  # time a size's runners in alternating windows where they fit in memory together
    environment: dict[str, str] = field(default_factory=dict)  # set in every worker before it starts (--env)
    hang_seconds: float = 300.0  # the least a worker may stay silent before it is declared hung

    def __post_init__(self) -> None:
        if self.iterations is not None and self.iterations <= 0:
            raise UsageError(f"--iterations must be positive, got {self.iterations}")
        if self.duration is not None and not (math.isfinite(self.duration) and self.duration > 0):
            raise UsageError(f"--duration must be a positive number of seconds, got {self.duration}")
        check_counts(self.runs, self.warmup)
        check_threads(self.threads)
        if self.tile is not None and self.tile < 0:
            raise UsageError(f"--tile must be positive (or 0 for never), got {self.tile}")
        if not self.hang_seconds > 0:
            raise UsageError(f"the hang timeout must be positive, got {self.hang_seconds}")
        for width, height in self.sizes:
            if width <= 0 or height <= 0:
                raise UsageError(f"sizes must be positive, got {width}x{height}")

    def as_dict(self) -> dict[str, object]:
        return {
            "runners": [runner.label for runner in self.runners],
            "models": [model.name for model in self.models],
            "sizes": [f"{w}x{h}" for w, h in self.sizes],
            "precisions": self.precisions,
            "duration": self.duration if self.iterations is None else None,
            "iterations": self.iterations,
            "runs": self.runs,
            "warmup": self.warmup,
            "threads": self.threads,
            "weights": self.weights,
            "check": self.check,
            "tile": "auto" if self.tile is None else self.tile,
            "interleave": self.interleave,
            "isolation": "one worker process per runner",
            "environment": self.environment,
            "optimizer": f"adam lr={LEARNING_RATE}",
            "init": "content image",
        }


def parse_environment(items: Sequence[str]) -> dict[str, str]:
    """``--env KEY=VALUE`` (repeatable) → a dict; a malformed item is a usage error."""
    environment = {}
    for item in items:
        key, equals, value = item.partition("=")
        if not equals or not key.strip() or any(char.isspace() for char in key.strip()):
            raise UsageError(f"--env needs KEY=VALUE, got '{item}'")
        environment[key.strip()] = value
    return environment


def window_plan(options: BenchOptions, seconds_per_iteration: float) -> int:
    """Iterations per timed window: fixed, or enough to fill ``duration`` over ``runs`` windows."""
    if options.iterations is not None:
        return options.iterations
    assert options.duration is not None
    return max(1, round(options.duration / options.runs / max(seconds_per_iteration, 1e-9)))


def bench_options(
    *,
    provider: str | None = None,
    model: str = "vgg19,nin",
    sizes: str = "64,128,256",
    precision: str = "fp32",
    duration: float = 6.0,
    iterations: int | None = None,
    runs: int = 5,
    warmup: int = 3,
    threads: int | None = None,
    weights: str = "auto",
    check: bool = True,
    tile: int | None = None,
    cuda_graph: bool = False,
    interleave: bool = True,
    environment: Sequence[str] = (),
    local_runners: bool = True,
) -> BenchOptions:
    """Options from the command line's text, every check made before anything runs (the CLI only maps flags here).

    ``local_runners=False`` for a cluster: each node selects its own runners, so none are chosen (or refused) here."""
    from onnxstyle.engines import EngineSpec
    from onnxstyle.tiling import check_tile
    from onnxstyle.weights import resolve

    models = parse_models(model)
    size_list = parse_sizes(sizes)
    check_sizes(models, size_list)
    precisions = parse_precisions(precision)
    runners, skipped = select_runners(provider) if local_runners else ([], {})
    check_precisions(runners, precisions)
    if local_runners and cuda_graph and not any(takes_cuda_graph(runner) for runner in runners):
        raise UsageError("--cuda-graph applies to ONNX Runtime on cuda or tensorrt, and no selected runner is one")
    if tile:
        for spec in models:
            check_tile(spec, EngineSpec.defaults(spec, resolve("synthetic", spec)).layers, tile)
    return BenchOptions(
        runners=runners, models=models, sizes=size_list, precisions=precisions, duration=None if iterations else duration,
        iterations=iterations, runs=runs, warmup=warmup, threads=threads, weights=weights, check=check, skipped=skipped,
        tile=tile, cuda_graph=cuda_graph, interleave=interleave, environment=parse_environment(environment),
    )
