"""Time to quality: how soon does each way of running the loop reach a good image?

Iterations per minute (``bench``) do not say whether bf16, L-BFGS against Adam, or a faster runner is worth
it: an iteration of one may buy less than an iteration of another. Here every configuration runs the same
problem (the built-in images at one size, the same start, real weights) for the same wall time, each in a
worker process of its own, and keeps snapshots of its best image as time passes. Afterwards every snapshot
is scored with one common yardstick, the fp32 torch loss of that image (same targets, same weights), and
the report gives the seconds each configuration needed to come within 5% and within 1% of the best final
yardstick loss any of them reached.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from onnxstyle.backbones import get_backbone
from onnxstyle.bench import run as bench_run
from onnxstyle.bench.options import check_sizes, check_threads
from onnxstyle.bench.run import CELL_ERRORS, worker_environment
from onnxstyle.defaults import LEARNING_RATE
from onnxstyle.engines import EngineSpec, create_engine
from onnxstyle.engines.eager import EagerLoop
from onnxstyle.engines.torch_engine import TorchEngine
from onnxstyle.errors import NumericalError, OnnxstyleError, UsageError, WorkerError, first_line, interruption
from onnxstyle.images import demo_pair
from onnxstyle.losses import objective
from onnxstyle.memory import free_bytes
from onnxstyle.report.quality import QualityReport, QualityRun, band_times
from onnxstyle.runners import Runner, parse_runner, precision_support, select_runners
from onnxstyle.sysinfo import default_threads, fingerprint
from onnxstyle.text import printable
from onnxstyle.tiling import tile_for
from onnxstyle.weights import resolve

SNAPSHOTS = 40  # per run, evenly spread over its wall time
MAX_SECONDS = 86_400.0  # per configuration: a day, far past any useful run (1e12 s overflowed the worker's deadline)
VGG19 = get_backbone("vgg19")  # the one backbone with real weights that install with pip
DEFAULT_CONFIGS = "cpu:fp32:lbfgs,torch:fp32:lbfgs,torch:bf16:lbfgs,cpu:fp32:adam,torch:bf16:adam,eager:fp32:adam"


@dataclass(frozen=True)
class QualityConfig:
    """One way of running the loop: a runner, a precision and an optimiser (the eager loop is Adam only)."""

    runner: Runner
    precision: str = "fp32"
    optimizer: str = "lbfgs"

    @property
    def label(self) -> str:
        return f"{self.runner.label} {self.precision} {self.optimizer}"

    def spec_at(self, size: int) -> str:
        """``torch-cpu:bf16:lbfgs @ 512 px``: what ``--configs`` and ``--sizes`` take to run it again."""
        return f"{self.runner.label}:{self.precision}:{self.optimizer} @ {size} px"


def parse_configs(text: str) -> list[QualityConfig]:
    """``cpu:fp32:lbfgs,torch:bf16:adam,eager:fp32:adam`` → configurations (precision and optimiser optional)."""
    configs = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            raise UsageError(f"empty configuration in --configs '{text}'; use RUNNER[:PRECISION[:OPTIMIZER]]")
        runner_name, _, rest = item.partition(":")
        precision, _, optimizer = rest.partition(":")
        runner = parse_runner(runner_name)
        optimizer = optimizer or ("adam" if runner.engine == "eager" else "lbfgs")
        if optimizer not in ("lbfgs", "adam"):
            raise UsageError(f"unknown optimizer '{optimizer}' in --configs; use lbfgs or adam")
        if runner.engine == "eager" and optimizer != "adam":
            raise UsageError("the eager loop is the plain Adam loop a user would write; give eager:PRECISION:adam")
        configs.append(QualityConfig(runner, precision or "fp32", optimizer))
    return list(dict.fromkeys(configs))


class _OutOfTime(Exception):
    """Raised inside the optimiser's closure when the wall-time budget is spent."""


def run_config(config: QualityConfig, size: int, seconds: float, weights: str, threads: int, seed: int = 0) -> dict[str, Any]:
    """In a worker: set up, then optimise for ``seconds`` of wall time, keeping the best image every so often.

    Returns the set-up time and the snapshots as (seconds, evaluations, the runner's own loss, image as fp16).
    The best image, not the last evaluated one, is what a user would keep: L-BFGS's line search evaluates
    trial points that can be far worse.
    """
    started = time.perf_counter()
    spec = EngineSpec.defaults(VGG19, resolve(weights, VGG19))
    content, style = demo_pair(size, size)
    start = (torch.randn(content.shape, generator=torch.Generator().manual_seed(seed)) * 0.1 + 0.5).clamp(0, 1)
    targets_weights = spec.loss_weights()
    if config.runner.engine == "eager":
        loop = EagerLoop(spec, content, style, targets_weights, device=config.runner.target, threads=threads, learning_rate=LEARNING_RATE, start=start, precision=config.precision)
        evaluate: Callable[[torch.Tensor], tuple[float, torch.Tensor]] | None = None
        pixels = loop.pixels
    else:
        engine = create_engine(config.runner.engine, spec, provider=config.runner.target, threads=threads, sizes=[(size, size)], precision=config.precision)
        engine.set_targets(engine.build_targets(content, [style], [1.0], targets_weights))

        def evaluate(image: torch.Tensor) -> tuple[float, torch.Tensor]:
            terms, grad = engine.loss_and_grad(image)
            return terms.total, grad

        pixels = start.clone().to(engine.device).requires_grad_(True)
    # Built before the clock starts: torch's first optimiser pulls in lazy imports that can take seconds.
    optimizer: torch.optim.Optimizer | None = None  # the eager loop brings its own Adam
    if evaluate is not None:
        optimizer = torch.optim.Adam([pixels], lr=LEARNING_RATE) if config.optimizer == "adam" else torch.optim.LBFGS(
            [pixels], lr=1.0, max_iter=10**9, max_eval=10**9, tolerance_grad=-1.0, tolerance_change=-1.0, history_size=100,
            line_search_fn="strong_wolfe",
        )
    setup_seconds = time.perf_counter() - started
    snapshots: list[tuple[float, int, float, torch.Tensor]] = []
    best = {"loss": math.inf, "image": start.clone()}
    count = {"evaluations": 0}
    clock = time.perf_counter()
    interval = seconds / SNAPSHOTS

    def record(loss: float, image: torch.Tensor) -> None:
        count["evaluations"] += 1
        if math.isfinite(loss) and loss < best["loss"]:
            best["loss"], best["image"] = loss, image.detach().cpu().clone()
        elapsed = time.perf_counter() - clock
        if not snapshots or elapsed >= (len(snapshots)) * interval:
            snapshots.append((elapsed, count["evaluations"], best["loss"], best["image"].half()))

    try:
        if evaluate is None:
            while time.perf_counter() - clock < seconds:
                image = loop.pixels.detach().clone()  # the image whose loss this step computes, before Adam moves it
                record(loop.step(), image)
        elif isinstance(optimizer, torch.optim.Adam):
            while time.perf_counter() - clock < seconds:
                optimizer.zero_grad(set_to_none=True)
                loss, grad = evaluate(pixels.detach())
                record(loss, pixels.detach())
                pixels.grad = grad.to(pixels.dtype)
                optimizer.step()
        else:
            scale: list[float] = []

            def closure() -> torch.Tensor:
                if time.perf_counter() - clock >= seconds:
                    raise _OutOfTime
                loss, grad = evaluate(pixels.detach())
                record(loss, pixels.detach())
                scale.append(scale[0] if scale else max(abs(loss), 1e-30))  # as stylize: L-BFGS in units of the first loss
                pixels.grad = grad.to(pixels.dtype) / scale[0]
                return torch.tensor(loss / scale[0])

            assert optimizer is not None
            optimizer.step(closure)
    except _OutOfTime:
        pass
    total = time.perf_counter() - clock
    if count["evaluations"] == 0:
        raise UsageError(f"{config.label} at {size} px: the run of {seconds:g} s is shorter than one iteration; give more --seconds")
    if not math.isfinite(best["loss"]):
        raise NumericalError(f"{config.label} at {size} px: the loss was NaN or Inf in all {count['evaluations']} evaluations")
    snapshots.append((total, count["evaluations"], best["loss"], best["image"].half()))
    return {"setup_seconds": setup_seconds, "seconds": total, "evaluations": count["evaluations"], "snapshots": snapshots}


def score(size: int, weights: str, images: Sequence[torch.Tensor], threads: int) -> list[float]:
    """In a worker: the yardstick — the fp32 torch loss of each image, against the same targets."""
    spec = EngineSpec.defaults(VGG19, resolve(weights, VGG19))
    content, style = demo_pair(size, size)
    engine = TorchEngine(spec, "cpu", threads=threads)
    engine.set_targets(engine.build_targets(content, [style], [1.0], spec.loss_weights()))
    assert engine.targets is not None
    losses = []
    with torch.no_grad():
        for image in images:
            model_input = spec.weights.preprocessing.to_model(image.float())
            total, *_ = objective(engine.features(model_input), model_input, engine.targets.content, engine.targets.style, engine.targets.weights)
            losses.append(float(total))
    return losses


def converge(
    *,
    configs: Sequence[QualityConfig],
    sizes: Sequence[int],
    seconds: Sequence[float],
    weights: str = "auto",
    threads: int | None = None,
    hang_seconds: float = 300.0,
    progress: Callable[[str], None] | None = None,
    on_update: Callable[[QualityReport], None] | None = None,
) -> QualityReport:
    """Run every configuration at every size (each in its own worker, one at a time) and score its snapshots.

    ``seconds`` is the wall time per configuration: one value for every size, or one per size. ``on_update``
    hears the report after every configuration (bands recomputed), so a killed run keeps what it measured.
    Every option is checked before the first worker starts; a worker that fails, crashes or is killed fails
    its own configuration only. Ctrl-C or SIGTERM ends the run early: the report comes back ``interrupted``,
    with what it never started in ``not_run``. When nothing was measured, the error carries the exit code of
    the first failure's cause (bad weights 5, a worker killed 11…).
    """
    if not configs or not sizes:
        raise UsageError("give at least one configuration and one size")
    budgets = check_budgets(seconds, len(sizes))
    check_threads(threads)
    check_runners(configs)
    resolved = resolve(weights, VGG19)
    spec = EngineSpec.defaults(VGG19, resolved)
    check_fits(configs, sizes, spec)
    threads = min(threads or default_threads(), default_threads())
    options = {"seconds": dict(zip(map(str, sizes), budgets, strict=True)), "sizes": list(sizes), "configs": [config.label for config in configs], "threads": threads}
    report = QualityReport([], options, fingerprint(), resolved.label, timing_only=resolved.weight_set.synthetic)
    report.created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    say = progress or (lambda _text: None)
    codes: dict[int, int] = {}  # id(run) → exit code of its failure's cause
    plan = [(size, budget, config) for size, budget in zip(sizes, budgets, strict=True) for config in configs]
    log_dir = Path(tempfile.mkdtemp(prefix="onnxstyle-quality-"))
    try:
        for size, budget, config in plan:
            run = QualityRun(config.label, size)
            report.runs.append(run)
            say(f"{config.label} at {size} px for {budget:g} s")
            images = _measure(run, config, budget, weights, threads, hang_seconds, log_dir, codes)
            if images:
                say(f"scoring {len(images)} snapshots of {config.label} at {size} px with the fp32 torch loss")
                _score(run, images, weights, threads, hang_seconds, log_dir, codes)
            band_times(report.runs)
            if on_update:
                on_update(report)
    except KeyboardInterrupt:
        report.interrupted = True
        started = len(report.runs)
        for run in report.runs:
            if run.status == "ok" and not run.yardstick:
                run.status, run.reason = "interrupted", f"{interruption()} before it finished"
        report.not_run = [config.spec_at(size) for size, _budget, config in plan[started:]]
        band_times(report.runs)
        if on_update:
            on_update(report)
        return report
    finally:
        shutil.rmtree(log_dir, ignore_errors=True)
    if not any(run.status == "ok" for run in report.runs):
        raise _nothing_measured(report.runs, codes)
    return report


def check_budgets(seconds: Sequence[float], sizes: int) -> list[float]:
    """``--seconds`` as one budget per size; refused before any work if it is not a sane wall time."""
    budgets = list(seconds) * sizes if len(seconds) == 1 else list(seconds)
    if len(budgets) != sizes or not all(math.isfinite(value) and 0 < value <= MAX_SECONDS for value in budgets):
        given = ", ".join(f"{value:g}" for value in seconds)
        raise UsageError(f"--seconds needs one positive number, or one per size ({sizes}), each at most {MAX_SECONDS:g} ({MAX_SECONDS / 3600:g} h); got {given}")
    return budgets


def check_runners(configs: Sequence[QualityConfig]) -> None:
    """A configuration on a provider or device that cannot run here is refused before any work, as bench refuses
    a runner named in ``--provider`` (a ProviderError)."""
    select_runners(",".join(dict.fromkeys(config.runner.label for config in configs)))


def check_fits(configs: Sequence[QualityConfig], sizes: Sequence[int], spec: EngineSpec) -> None:
    """Every size must be large enough for the layers and, untiled as converge runs it, fit in free memory.

    A worker that runs out of memory dies with a MemoryError or the kernel's SIGKILL minutes into a run;
    the estimate ``stylize`` and ``bench`` use says so up front, in the same words.
    """
    check_sizes([VGG19], [(size, size) for size in sizes])
    for size in sizes:
        for config in configs:
            try:
                tile_for(config.runner.engine, spec, size, size, 0, free_bytes(config.runner.device))
            except UsageError as error:
                raise UsageError(f"{config.label} at {size} px {error} (converge runs untiled); give smaller --sizes") from None


def _nothing_measured(runs: Sequence[QualityRun], codes: dict[int, int]) -> OnnxstyleError:
    """The first failure's line, with its cause's exit code (a usage error when every run was skipped)."""
    first = next((run for run in runs if id(run) in codes), None) or next((run for run in runs if run.reason), None)
    if first is None:
        return UsageError("no configuration was measured")
    error = OnnxstyleError(f"no configuration was measured: {first.config} at {first.size} px: {first.reason}")
    error.exit_code = codes.get(id(first), UsageError.exit_code)
    return error


def _fail(run: QualityRun, error: BaseException, codes: dict[int, int]) -> None:
    """``run`` failed: its reason (a worker's own words, shown in tables and the last error line) made printable."""
    run.status, run.reason = "failed", printable(first_line(error))
    codes[id(run)] = error.exit_code if isinstance(error, OnnxstyleError) else WorkerError.exit_code


def _measure(
    run: QualityRun, config: QualityConfig, budget: float, weights: str, threads: int, hang_seconds: float, log_dir: Path,
    codes: dict[int, int],
) -> list[torch.Tensor]:
    """One configuration in a worker of its own for ``budget`` seconds; fills ``run`` and returns its snapshot images."""
    unsupported = precision_support(config.runner, config.precision)
    if unsupported:
        run.status, run.reason = "skipped", unsupported
        return []
    worker = None
    try:
        worker = bench_run.open_worker(f"quality-{config.runner.label}-{run.size}", worker_environment(config.runner, threads, {}), log_dir)
        result = worker.run(
            "onnxstyle.quality:run_config", hang_seconds + 2 * budget, config=config, size=run.size, seconds=budget, weights=weights, threads=threads,
        )
    except CELL_ERRORS as error:
        _fail(run, error, codes)
        return []
    except BaseException:
        if worker is not None:
            worker.kill()  # Ctrl-C: no waiting for a busy worker to hear "exit"
        raise
    finally:
        if worker is not None:
            worker.close()
    run.setup_seconds, run.seconds, run.evaluations = result["setup_seconds"], result["seconds"], result["evaluations"]
    images = []
    for time_point, evaluation, own, image in result["snapshots"]:
        run.times.append(time_point)
        run.iterations.append(evaluation)
        run.own_losses.append(own)
        images.append(image)
    return images


def _score(run: QualityRun, images: list[torch.Tensor], weights: str, threads: int, hang_seconds: float, log_dir: Path, codes: dict[int, int]) -> None:
    """The yardstick of ``run``'s snapshots in a fresh fp32 torch worker; if that worker fails, so does ``run``."""
    worker = None
    try:
        worker = bench_run.open_worker(f"quality-score-{run.size}", worker_environment(Runner("torch", "cpu"), threads, {}), log_dir)
        run.yardstick = worker.run("onnxstyle.quality:score", hang_seconds + 10 * len(images), size=run.size, weights=weights, images=images, threads=threads)
    except CELL_ERRORS as error:
        _fail(run, error, codes)
        run.reason = f"scoring failed: {run.reason}"
    except BaseException:
        if worker is not None:
            worker.kill()
        raise
    finally:
        if worker is not None:
            worker.close()
