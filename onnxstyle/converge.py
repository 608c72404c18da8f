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
from onnxstyle.errors import NumericalError, OnnxstyleError, OutputError, UsageError, WorkerError, first_line, interruption
from onnxstyle.images import demo_content, demo_pair, demo_style, save_image, to_image, written_by
from onnxstyle.losses import objective
from onnxstyle.memory import free_bytes
from onnxstyle.optimizers import OPTIMIZERS
from onnxstyle.report.formats import check_directory
from onnxstyle.report.converge import QualityReport, QualityRun, band_times
from onnxstyle.runners import Runner, parse_runner, precision_support, runner_status, select_runners
from onnxstyle.stylize import TIME_BOUND_ITERATIONS, StylizeConfig, coarse_to_fine, default_scales, random_start, stylize_scales
from onnxstyle.sysinfo import default_threads, fingerprint, seconds_since_start
from onnxstyle.text import printable
from onnxstyle.tiling import tile_for
from onnxstyle.weights import resolve

SNAPSHOTS = 40  # per run, evenly spread over its wall time
MAX_SECONDS = 86_400.0  # per configuration: a day, far past any useful run (1e12 s overflowed the worker's deadline)
VGG19 = get_backbone("vgg19")  # the one backbone with real weights that install with pip
# The plain eager loop (the anchor), plain Adam and ours on ONNX Runtime, each engine in fp32 with L-BFGS, L-BFGS coarse to fine, the
# reduced precisions and plugin EPs where they run, and auto: what `stylize --max-time` runs with no other flags, for
# the whole budget and for one minute (`stylize --size 512 --max-time 60`, to set beside the plain loop's curve).
DEFAULT_CONFIGS = (
    "eager:fp32:adam,cpu:fp32:adam-plain,cpu:fp32:adam,cpu:fp32:lbfgs,cpu:fp32:lbfgs:c2f,torch:fp32:lbfgs,torch:bf16:lbfgs,torch:bf16:lbfgs:c2f,"
    "openvino:fp32:lbfgs,openvino:bf16:lbfgs,openvino:bf16:lbfgs:c2f,auto,auto@60"
)
COARSE_TO_FINE = "c2f"
# What auto's worker is set up like, and whose memory estimate refuses a size up front: torch on the CPU, the runner
# whose settings (OpenMP threads) suit whichever engine auto picks.
AUTO_ESTIMATE = Runner("torch", "cpu")


@dataclass(frozen=True)
class QualityConfig:
    """One way of running the loop: a runner, a precision, an optimiser (the eager loop is Adam only) and whether it
    runs coarse to fine; or ``auto`` (no runner): exactly what ``stylize --max-time`` runs with no other flags, its
    probe and set-up inside the budget. ``seconds`` is the configuration's own budget, else the size's."""

    runner: Runner | None
    precision: str = "fp32"
    optimizer: str = "lbfgs"
    coarse_to_fine: bool = False
    seconds: float | None = None

    @property
    def auto(self) -> bool:
        return self.runner is None

    @property
    def spec(self) -> str:
        """``torch-cpu:bf16:lbfgs:c2f@60``: what ``--configs`` takes to run it again."""
        return self._name(":") if self.seconds is None else f"{self._name(':')}@{self.seconds:g}"

    @property
    def label(self) -> str:
        return self._name(" ") if self.seconds is None else f"{self._name(' ')} ({self.seconds:g} s)"

    def _name(self, separator: str) -> str:
        if self.runner is None:
            return "auto"
        return separator.join([self.runner.label, self.precision, self.optimizer, *([COARSE_TO_FINE] if self.coarse_to_fine else [])])

    def spec_at(self, size: int) -> str:
        """``torch-cpu:bf16:lbfgs @ 512 px``: what ``--configs`` and ``--sizes`` take to run it again."""
        return f"{self.spec} @ {size} px"

    def budget(self, size_budget: float) -> float:
        return self.seconds if self.seconds is not None else size_budget


def parse_configs(text: str) -> list[QualityConfig]:
    """``cpu:fp32:lbfgs:c2f,torch:bf16:adam,eager:fp32:adam,auto@60`` → configurations.

    Each is ``RUNNER[:PRECISION[:OPTIMIZER[:c2f]]]`` or ``auto``, optionally ``@SECONDS`` for a budget of its own.
    """
    configs = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            raise UsageError(f"empty configuration in --configs '{text}'; use RUNNER[:PRECISION[:OPTIMIZER[:c2f]]][@SECONDS] or auto")
        item, _, budget = item.partition("@")
        seconds = _own_budget(budget, item) if budget else None
        if item.strip().lower() == "auto":
            configs.append(QualityConfig(None, seconds=seconds))
            continue
        runner_name, _, rest = item.partition(":")
        precision, _, rest = rest.partition(":")
        optimizer, _, schedule = rest.partition(":")
        runner = parse_runner(runner_name)
        optimizer = optimizer or ("adam" if runner.engine == "eager" else "lbfgs")
        if optimizer not in OPTIMIZERS:
            raise UsageError(f"unknown optimizer '{optimizer}' in --configs; use {' or '.join(OPTIMIZERS)}")
        if schedule not in ("", COARSE_TO_FINE):
            raise UsageError(f"unknown schedule '{schedule}' in --configs '{item}'; the fourth field is {COARSE_TO_FINE} (coarse to fine) or nothing")
        if runner.engine == "eager" and (optimizer != "adam" or schedule):
            raise UsageError("the eager loop is the plain Adam loop a user would write at one size; give eager:PRECISION:adam")
        configs.append(QualityConfig(runner, precision or "fp32", optimizer, bool(schedule), seconds))
    return list(dict.fromkeys(configs))


def _own_budget(text: str, item: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0 < value <= MAX_SECONDS):
        raise UsageError(f"--configs '{item}@{text}': a configuration's own budget is a number of seconds above 0 and at most {MAX_SECONDS:g}")
    return value


def default_configs() -> list[QualityConfig]:
    """``DEFAULT_CONFIGS`` less the plugin EPs that are not installed (an installed one that lists no device is
    kept, and its rows say why it did not run)."""
    from onnxstyle.plugin_eps import KNOWN, installed_version

    absent = {key for key, ep in KNOWN.items() if installed_version(ep) is None}
    return [config for config in parse_configs(DEFAULT_CONFIGS) if config.runner is None or config.runner.target.partition("-")[0] not in absent]


def run_config(config: QualityConfig, size: int, seconds: float, weights: str, threads: int, seed: int = 0) -> dict[str, Any]:
    """In a worker: set up, then optimise for ``seconds`` of wall time, keeping the best image every so often.

    Returns the set-up time and the snapshots as (seconds, evaluations, the runner's own loss, image as fp16).
    The loop is stylize's own (``stylize_scales`` with ``optimizers.Descent``), from stylize's random start
    (``--init random``, seed 0): an engine configuration is built before the clock starts (its set-up is
    reported apart); ``auto``'s clock starts with the worker process, as ``--max-time`` counts imports, probe and
    set-up. The best
    image, not the last evaluated one, is what a user would keep: L-BFGS's line search evaluates trial points
    that can be far worse. A coarse scale's snapshot is what the next scale would start from.
    """
    # auto's budget counts from the worker's start, imports included, as stylize --max-time counts from the command's
    started = time.perf_counter() - (seconds_since_start() if config.auto else 0.0)
    resolved = resolve(weights, VGG19)
    spec = EngineSpec.defaults(VGG19, resolved)
    content, style = demo_content(size), demo_style(size)
    snapshots: list[tuple[float, int, float, torch.Tensor]] = []
    best: dict[str, Any] = {"loss": math.inf, "image": torch.empty(0), "side": 0}
    count = {"evaluations": 0}
    clock = {"start": started}
    interval = seconds / SNAPSHOTS

    def record(loss: float, image: torch.Tensor) -> None:
        count["evaluations"] += 1
        if image.shape[-1] != best["side"]:  # a new scale: losses of another size are not comparable
            best["loss"], best["side"] = math.inf, image.shape[-1]
        if math.isfinite(loss) and loss < best["loss"]:
            best["loss"], best["image"] = loss, _at_size(image, size).detach().cpu().clone()
        elapsed = time.perf_counter() - clock["start"]
        if not snapshots or elapsed >= len(snapshots) * interval:
            snapshots.append((elapsed, count["evaluations"], best["loss"], best["image"].half()))

    note = ""
    if config.runner is not None and config.runner.engine == "eager":
        start = random_start(size, size, seed)
        loop = EagerLoop(spec, *demo_pair(size, size), spec.loss_weights(), device=config.runner.target, threads=threads, learning_rate=LEARNING_RATE, start=start, precision=config.precision)
        setup_seconds = time.perf_counter() - started
        clock["start"] = time.perf_counter()
        while time.perf_counter() - clock["start"] < seconds:
            image = loop.pixels.detach().clone()  # the image whose loss this step computes, before Adam moves it
            record(loop.step(), image)
    else:
        stylize_config, engine = _stylize_config(config, spec, resolved, size, threads, seed, seconds)
        setup_seconds = time.perf_counter() - started
        if not config.auto:
            clock["start"] = time.perf_counter()
        scales = coarse_to_fine(size) if config.coarse_to_fine else default_scales(size) if config.auto else [size]
        lines: list[str] = []
        with tempfile.TemporaryDirectory(prefix="onnxstyle-converge-") as folder:
            try:
                stylize_scales(
                    content, [style], Path(folder) / "out.png", scales=scales, iterations=TIME_BOUND_ITERATIONS, init="random",
                    config=stylize_config, deadline=clock["start"] + seconds, ready_engine=engine, announce=lines.append,
                    on_evaluation=lambda _step, terms, image: record(terms.total, image),
                )
            except UsageError as error:  # the budget ran out before an improvement: what was recorded still counts
                if not count["evaluations"]:
                    raise
                note = first_line(error)
        note = "; ".join([*lines, *([note] if note else [])])
        if config.auto:
            setup_seconds = 0.0
    total = time.perf_counter() - clock["start"]
    if count["evaluations"] == 0:
        raise UsageError(f"{config.label} at {size} px: the run of {seconds:g} s is shorter than one iteration; give more --seconds")
    if not math.isfinite(best["loss"]):
        raise NumericalError(f"{config.label} at {size} px: the loss was NaN or Inf in all {count['evaluations']} evaluations")
    snapshots.append((total, count["evaluations"], best["loss"], best["image"].half()))
    return {"setup_seconds": setup_seconds, "seconds": total, "evaluations": count["evaluations"], "snapshots": snapshots, "note": note}


def _stylize_config(
    config: QualityConfig, spec: EngineSpec, resolved: Any, size: int, threads: int, seed: int, seconds: float
) -> tuple[StylizeConfig, Any]:
    """The stylize configuration of ``config`` and, for an engine configuration, its engine, built now (set-up)."""
    if config.runner is None:
        return StylizeConfig(weights=resolved, threads=threads, seed=seed, iterations=TIME_BOUND_ITERATIONS, max_time=seconds), None
    runner = config.runner
    stylize_config = StylizeConfig(
        engine=runner.engine, provider=runner.target, precision=config.precision, optimizer=config.optimizer, weights=resolved,  # type: ignore[arg-type]
        threads=threads, seed=seed, tile=0, iterations=TIME_BOUND_ITERATIONS, max_time=seconds,
    )
    engine = create_engine(runner.engine, spec, provider=runner.target, threads=threads, sizes=[(size, size)], precision=config.precision)
    return stylize_config, engine


def _at_size(image: torch.Tensor, size: int) -> torch.Tensor:
    """A coarse scale's image as the next scale would start from it (bicubic, clamped), so every snapshot scores at ``size``."""
    if image.shape[-1] == size:
        return image.detach()
    return torch.nn.functional.interpolate(image.detach().float().cpu(), size=(size, size), mode="bicubic", align_corners=False).clamp(0.0, 1.0)


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
    skip_unusable: bool = False,
    images: Path | None = None,
) -> QualityReport:
    """Run every configuration at every size (each in its own worker, one at a time) and score its snapshots.

    ``seconds`` is the wall time per configuration: one value for every size, or one per size (a configuration
    with a budget of its own, ``auto@60``, keeps it). ``skip_unusable`` (the default set) shows a configuration
    whose runner cannot run here as skipped, with why; otherwise naming one is an error. ``images``: a folder
    for each configuration's final picture (``eager-cpu-fp32-adam-512px.png``), replacing only files an earlier
    converge wrote. ``on_update``
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
    unusable = unusable_runners(configs) if skip_unusable else check_runners(configs)
    resolved = resolve(weights, VGG19)
    spec = EngineSpec.defaults(VGG19, resolved)
    check_fits([config for config in configs if config.runner not in unusable], sizes, spec)
    if images is not None:
        check_images(images, configs, sizes)
    threads = min(threads or default_threads(), default_threads())
    options = {
        "seconds": dict(zip(map(str, sizes), budgets, strict=True)), "sizes": list(sizes), "configs": [config.label for config in configs],
        "threads": threads,
    }
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
            if config.runner in unusable:
                run.status, run.reason = "skipped", f"not usable here: {unusable[config.runner]}"
                continue
            say(f"{config.label} at {size} px for {config.budget(budget):g} s")
            snapshots = _measure(run, config, config.budget(budget), weights, threads, hang_seconds, log_dir, codes)
            if snapshots:
                say(f"scoring {len(snapshots)} snapshots of {config.label} at {size} px with the fp32 torch loss")
                _score(run, snapshots, weights, threads, hang_seconds, log_dir, codes)
                if images is not None and run.status == "ok":
                    run.image = str(save_image(to_image(snapshots[-1].float()), picture_path(images, config, size), tag=PICTURE_TAG))
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


PICTURE_TAG = "onnxstyle converge"  # in each picture's PNG metadata: a file holding it may be replaced by a rerun


def picture_path(folder: Path, config: QualityConfig, size: int) -> Path:
    """``auto@60`` at 512 px → ``FOLDER/auto-60-512px.png``."""
    return folder / f"{config.spec.replace(':', '-').replace('@', '-')}-{size}px.png"


def check_images(folder: Path, configs: Sequence[QualityConfig], sizes: Sequence[int]) -> None:
    """Before any work: the folder can take files, and no picture would replace a file converge did not write."""
    check_directory(folder)
    for size in sizes:
        for config in configs:
            path = picture_path(folder, config, size)
            if path.exists() and not written_by(path, PICTURE_TAG):
                raise OutputError(f"{path} exists and was not written by converge; choose another --images folder")


def check_budgets(seconds: Sequence[float], sizes: int) -> list[float]:
    """``--seconds`` as one budget per size; refused before any work if it is not a sane wall time."""
    budgets = list(seconds) * sizes if len(seconds) == 1 else list(seconds)
    if len(budgets) != sizes or not all(math.isfinite(value) and 0 < value <= MAX_SECONDS for value in budgets):
        given = ", ".join(f"{value:g}" for value in seconds)
        raise UsageError(f"--seconds needs one positive number, or one per size ({sizes}), each at most {MAX_SECONDS:g} ({MAX_SECONDS / 3600:g} h); got {given}")
    return budgets


def check_runners(configs: Sequence[QualityConfig]) -> dict[Runner, str]:
    """A configuration on a provider or device that cannot run here is refused before any work, as bench refuses
    a runner named in ``--provider`` (a ProviderError). Returns no unusable runner: there is none."""
    labels = dict.fromkeys(config.runner.label for config in configs if config.runner is not None)
    if labels:
        select_runners(",".join(labels))
    return {}


def unusable_runners(configs: Sequence[QualityConfig]) -> dict[Runner, str]:
    """The configurations' runners that cannot run here, each with why (``runners.runner_status``)."""
    reasons = {config.runner: runner_status(config.runner) for config in configs if config.runner is not None}
    return {runner: reason for runner, reason in reasons.items() if reason is not None}


def check_fits(configs: Sequence[QualityConfig], sizes: Sequence[int], spec: EngineSpec) -> None:
    """Every size must be large enough for the layers and, untiled as converge runs it, fit in free memory.

    A worker that runs out of memory dies with a MemoryError or the kernel's SIGKILL minutes into a run;
    the estimate ``stylize`` and ``bench`` use says so up front, in the same words.
    """
    check_sizes([VGG19], [(size, size) for size in sizes])
    for size in sizes:
        for config in configs:
            runner = config.runner or AUTO_ESTIMATE
            try:
                tile_for(runner.engine, spec, size, size, 0, free_bytes(runner.device))
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
    unsupported = precision_support(config.runner, config.precision) if config.runner is not None else None
    if unsupported:
        run.status, run.reason = "skipped", unsupported
        return []
    runner = config.runner or AUTO_ESTIMATE
    worker = None
    try:
        worker = bench_run.open_worker(f"quality-{'auto' if config.auto else runner.label}-{run.size}", worker_environment(runner, threads, {}), log_dir)
        result = worker.run(
            "onnxstyle.converge:run_config", hang_seconds + 2 * budget, config=config, size=run.size, seconds=budget, weights=weights, threads=threads,
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
    run.note = printable(str(result.get("note", "")))
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
        run.yardstick = worker.run("onnxstyle.converge:score", hang_seconds + 10 * len(images), size=run.size, weights=weights, images=images, threads=threads)
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
