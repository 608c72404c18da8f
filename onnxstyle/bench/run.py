"""The parent side of a bench run: which cells run, in which workers, in what order, and what they recorded.

The parent never builds a loop or reads a clock that goes into a figure; it starts workers, hands each a
``LoopRecipe``, decides what runs when (interleaved rounds), adds up what the bench's other processes used
meanwhile, and turns the windows into a cell's statistics and noise verdict.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from onnxstyle.backbones import BackboneSpec
from onnxstyle.bench.options import BenchOptions, window_plan
from onnxstyle.bench.records import Cell, GemmRate, LoopRecipe, summarize
from onnxstyle.engines import EngineSpec
from onnxstyle.errors import NumericalError, OnnxstyleError, UsageError, WorkerError, first_line, interruption
from onnxstyle.interference import noise_reasons
from onnxstyle.memory import estimate_bytes, free_bytes, iteration_flops
from onnxstyle.runners import Runner, precision_support, takes_cuda_graph
from onnxstyle.sysinfo import default_threads
from onnxstyle.tiling import TilePlan, tile_for
from onnxstyle.weights import ResolvedWeights, resolve
from onnxstyle.workers import Worker

CellCallback = Callable[[Cell, str], None]


@dataclass
class PendingCell:
    """A cell that passed every skip rule: what its worker builds, and whether it runs the gradient check."""

    cell: Cell
    runner: Runner
    recipe: LoopRecipe
    check: dict[str, Any] | None = None  # keyword arguments of check_gradient, run in this cell's worker


CELL_ERRORS = (OnnxstyleError, RuntimeError, MemoryError)
# Imported before a worker reports ready, so a cell's set-up time covers graphs, sessions and targets, not
# Python imports that every runner pays alike.
WORKER_PRELOAD = (
    "torch", "onnxruntime", "onnxstyle.bench.session", "onnxstyle.engines.torch_engine", "onnxstyle.engines.onnxruntime_engine",
    "onnxstyle.engines.eager", "onnxstyle.tiling",
)
# A fresh worker's RSS after WORKER_PRELOAD, measured at 257 MB on the project's machine (Intel Xeon, torch
# 2.13, onnxruntime 1.31), rounded up; interleaved cells keep one worker each resident.
WORKER_BASE_BYTES = 300 * 2**20


def cell_recipe(
    runner: Runner, spec: EngineSpec, width: int, height: int, threads: int, precision: str, tile: int | None, cuda_graph: bool
) -> LoopRecipe:
    """What a cell's worker builds: ``build_loop`` on the built-in image pair at the cell's size."""
    kwargs = {"runner": runner, "spec": spec, "threads": threads, "precision": precision, "tile": tile, "cuda_graph": cuda_graph}
    return LoopRecipe("onnxstyle.bench.loops:build_loop", kwargs, (width, height))


def worker_environment(runner: Runner, threads: int, extra: dict[str, str]) -> dict[str, str]:
    """Process-global settings, fixed before the interpreter starts, then the user's ``--env``.

    Libraries that read a thread count at load time get the pinned one; in an ONNX Runtime worker they get
    one, as ORT's own pool owns the cores and torch runs only the optimiser step there. Measured in isolated
    ORT workers on an Intel Xeon (3 runs each, NIN/VGG19 at 64 and 256 px): with ``OMP_NUM_THREADS=1`` the
    median it/min was 0.4-3% above the default and ``OMP_WAIT_POLICY=PASSIVE``, in all four cells.
    """
    count = "1" if runner.engine == "onnxruntime" else str(threads)
    environment = {"OMP_NUM_THREADS": count, "MKL_NUM_THREADS": count}
    environment.update(extra)
    return environment


def open_worker(label: str, environment: dict[str, str], log_dir: Path, connect: bool = True) -> Any:
    """A fresh worker process importing torch and onnxruntime (tests substitute in-process hosts)."""
    return Worker(label, log_dir=log_dir, environment=environment, preload=WORKER_PRELOAD, connect=connect)


def open_cell_workers(group: Sequence[PendingCell], options: BenchOptions, log_dir: Path) -> list[Any]:
    """Start every worker of a group at once; nothing is timed while their interpreters start and import."""
    workers = []
    for pending in group:
        cell, runner = pending.cell, pending.runner
        cell.environment = worker_environment(runner, cell.threads or default_threads(), options.environment)
        label = f"{runner.label}-{cell.model}-{cell.width}x{cell.height}-{cell.precision}"
        workers.append(open_worker(label, cell.environment, log_dir, connect=False))
    return workers


def _fail(cell: Cell, error: BaseException) -> None:
    cell.status, cell.reason = "failed", first_line(error)
    cell.error_code = error.exit_code if isinstance(error, OnnxstyleError) else WorkerError.exit_code


def _deadline(options: BenchOptions, expected_seconds: float) -> float:
    """How long a worker may take: generous against what the cell should take, never less than ``hang_seconds``."""
    return options.hang_seconds + 20.0 * expected_seconds


class CellRun:
    """A cell whose worker is set up and warmed up: the handle, the window length, the expected step time."""

    def __init__(self, pending: PendingCell, worker: Any, count: int, seconds_per_iteration: float) -> None:
        self.pending = pending
        self.cell = pending.cell
        self.worker = worker
        self.count = count
        self.seconds_per_iteration = seconds_per_iteration
        self.loss = pending.cell.first_loss if pending.cell.first_loss is not None else math.nan


def start_cell(
    pending: PendingCell, worker: Any, options: BenchOptions, roofs: dict[str, GemmRate], progress: CellCallback | None = None
) -> CellRun:
    """Set the cell up in its started worker, time its first iteration apart, warm it up, and size its windows."""
    cell, runner = pending.cell, pending.runner
    say = progress or (lambda _cell, _text: None)
    roof = roofs.get(runner.device)
    expected = (cell.gflop_per_iteration or 0.0) / roof.gflops if roof else 60.0
    say(cell, "setup")
    worker.start("onnxstyle.bench.session:CellSession", _deadline(options, expected), recipe=pending.recipe, device=runner.device, threads=cell.threads or default_threads())
    setup = worker.call("setup", _deadline(options, 2 * expected))
    cell.setup_seconds, cell.engine = setup["setup_seconds"], setup["engine"]
    cell.rss_before_bytes, cell.inputs_sha256 = setup["rss_before_bytes"], setup["inputs_sha256"]
    cell.first_iteration_seconds, cell.first_loss = worker.call("first_iteration", _deadline(options, expected), stage="the first iteration")
    per_iteration = cell.first_iteration_seconds
    if options.warmup:
        say(cell, f"warm-up ({options.warmup} it)")
        warm = worker.call("warm_up", _deadline(options, options.warmup * max(expected, per_iteration)), stage="warm-up", count=options.warmup)
        per_iteration = warm if warm is not None else per_iteration
    cell.warmup = options.warmup
    return CellRun(pending, worker, window_plan(options, per_iteration), per_iteration)


def time_window(run: CellRun, round_index: int, rounds: int, options: BenchOptions, others: Sequence[Any], progress: CellCallback | None) -> None:
    """One timed window in the worker; the parent meanwhile adds up the CPU time of the bench's other processes."""
    if progress:
        progress(run.cell, f"window {round_index + 1}/{rounds} ({run.count} it)")
    idle_before = time.process_time() + sum(worker.cpu_seconds() for worker in others)
    timeout = _deadline(options, run.count * run.seconds_per_iteration)
    window, steps, run.loss = run.worker.call("window", timeout, stage=f"window {round_index + 1}", count=run.count, round_index=round_index)
    window.bench_cpu_seconds = max(0.0, time.process_time() + sum(worker.cpu_seconds() for worker in others) - idle_before)
    if window.busy_seconds is not None and window.cpu_seconds is not None:
        window.other_cpu_seconds = max(0.0, window.busy_seconds - window.cpu_seconds - window.bench_cpu_seconds)
    run.cell.windows.append(asdict(window))
    run.cell.iteration_seconds.extend(steps)


def finish_cell(run: CellRun, roofs: dict[str, GemmRate]) -> None:
    """Median and spread over the windows, the noise verdict, memory, threads, loop overhead and final loss."""
    cell = run.cell
    cell.final_loss = run.loss
    used = run.worker.call("finish", 60.0)
    cell.peak_rss_bytes, cell.device_peak_bytes = used["peak_rss_bytes"], used["device_peak_bytes"]
    cell.device_used_bytes, cell.thread_counts = used["device_used_bytes"], used["thread_counts"]
    cell.device_memory_source = used.get("device_memory_source")
    if not math.isfinite(run.loss):
        raise NumericalError(f"loss became {run.loss} during the benchmark")
    rates = cell.window_rates()
    cell.stats = asdict(summarize(rates))
    total = sum(window["seconds"] for window in cell.windows)
    cell.overhead = max(0.0, 1.0 - sum(window["engine_seconds"] for window in cell.windows) / total)
    cell.noise = noise_reasons(cell.windows, rates)
    cell.noisy = bool(cell.noise)
    assert cell.gflop_per_iteration is not None
    cell.gflops = cell.gflop_per_iteration * cell.stats["median"] / 60.0
    roof = roofs.get(run.pending.runner.device)
    cell.roof_share = cell.gflops / roof.gflops if roof else None
    cell.status = "ok"


def run_group(
    group: list[PendingCell],
    options: BenchOptions,
    roofs: dict[str, GemmRate],
    log_dir: Path,
    progress: CellCallback | None = None,
    checks: dict[tuple[str, str, str], dict[str, Any]] | None = None,
) -> None:
    """Cells measured together, each in its own worker: all set up and warmed up, then their windows taken in
    rounds (ABC, BCA, CAB, …); a group of one is a cell measured alone.

    On a shared machine the load drifts by tens of percent within a minute; a ratio between runners is only
    worth quoting when both were timed under the same load, so each round times one window of every runner,
    and the report pairs windows by round. Only one worker computes at a time; the others wait idle, and
    whatever CPU they still use during another's window is counted against that window. A failing, crashing
    or hanging worker fails its own cell only. Ctrl-C kills every worker of the group and propagates.
    """
    runs: list[CellRun] = []
    if progress:
        progress(group[0].cell, "starting workers")
    workers = open_cell_workers(group, options, log_dir)
    try:
        started = []
        for pending, worker in zip(group, workers, strict=True):
            try:
                worker.connect()
                started.append((pending, worker))
            except CELL_ERRORS as error:
                _fail(pending.cell, error)
        for pending, worker in started:
            try:
                runs.append(start_cell(pending, worker, options, roofs, progress))
                pending.cell.interleaved = len(group) > 1
            except CELL_ERRORS as error:
                _fail(pending.cell, error)
                worker.kill()
        for round_index in range(options.runs):
            live = [run for run in runs if run.cell.status == "pending"]
            if not live:
                break
            shift = round_index % len(live)
            for run in live[shift:] + live[:shift]:
                try:
                    others = [other.worker for other in runs if other is not run and other.worker.alive]
                    time_window(run, round_index, options.runs, options, others, progress)
                except CELL_ERRORS as error:
                    _fail(run.cell, error)
                    run.worker.kill()
        for run in runs:
            if run.cell.status != "pending":
                continue
            try:
                finish_cell(run, roofs)
                if run.pending.check is not None and checks is not None:
                    key = (run.cell.runner, run.cell.model, run.cell.precision)
                    if progress:
                        progress(run.cell, "gradient check")
                    try:
                        checks[key] = run.worker.run("onnxstyle.gradient_checks:check_gradient", _deadline(options, 60.0), **run.pending.check)
                    except CELL_ERRORS as error:
                        checks[key] = {"ok": False, "error": first_line(error)}
                    run.cell.check = checks[key]
            except CELL_ERRORS as error:
                _fail(run.cell, error)
    except BaseException:
        for worker in workers:
            worker.kill()
        raise
    finally:
        for worker in workers:
            worker.close()


def interleavable(group: Sequence[PendingCell], options: BenchOptions) -> bool:
    """Interleave only untiled cells that fit in half the free memory together: all their workers stay resident."""
    if not options.interleave or len(group) < 2 or any(pending.cell.tile for pending in group):
        return False
    needed = sum((pending.cell.estimate_bytes or 0) + WORKER_BASE_BYTES for pending in group)
    return needed <= 0.5 * min(free_bytes(pending.runner.device) for pending in group)


def measure_roofs(devices: Sequence[str], threads: int, options: BenchOptions, log_dir: Path) -> dict[str, GemmRate]:
    """The fp32 GEMM roof of each device, each in a worker of its own (one that fails leaves its roof out)."""
    roofs: dict[str, GemmRate] = {}
    for device in devices:
        worker = open_worker(f"gemm-{device}", worker_environment(Runner("torch", device), threads, options.environment), log_dir)
        try:
            roofs[device] = worker.run("onnxstyle.bench.gemm:measure_gemm", _deadline(options, 10.0), device=device, threads=threads)
        except CELL_ERRORS:
            pass
        finally:
            worker.close()
    return roofs


@dataclass
class BenchRun:
    """A run as far as it got: the cells (finished, skipped, pending), the GEMM roofs, and whether it was cut short."""

    cells: list[Cell] = field(default_factory=list)
    roofs: dict[str, GemmRate] = field(default_factory=dict)
    interrupted: bool = False


def run_bench(
    options: BenchOptions,
    progress: CellCallback | None = None,
    on_cell: Callable[[Cell, BenchRun], None] | None = None,
) -> tuple[list[Cell], dict[str, GemmRate], bool]:
    """Measure every cell; returns (cells, GEMM roofs by device, interrupted?).

    ``on_cell`` hears each cell as it finishes, with the run so far (to write the report after every cell).
    Ctrl-C keeps the finished cells; the ones it cut short are ``interrupted`` and those it never reached
    are listed as ``not run``.
    """
    threads = min(options.threads or default_threads(), default_threads())
    run = BenchRun()
    planner = CellPlanner(options, threads, run.cells, lambda cell: on_cell(cell, run) if on_cell else None)
    for runner, reason in options.skipped.items():
        for model, (width, height), precision in _grid(options):
            run.cells.append(Cell(runner.label, model.name, width, height, precision, status="skipped", reason=reason))
    log_dir = Path(tempfile.mkdtemp(prefix="onnxstyle-workers-"))
    try:
        run.roofs.update(measure_roofs(sorted({runner.device for runner in options.runners}), threads, options, log_dir))
        # Runners of one model and size are measured together (interleaved where they fit), so a ratio
        # between them (×eager) is taken under the same load, not across the whole run while it drifts.
        for model in options.models:
            for width, height in options.sizes:
                group = [
                    pending
                    for precision in options.precisions
                    for runner in options.runners
                    if (pending := planner.prepare(runner, model, width, height, precision)) is not None
                ]
                batches = [group] if interleavable(group, options) else [[pending] for pending in group]
                for batch in batches:
                    run_group(batch, options, run.roofs, log_dir, progress, planner.checks)
                    for pending in batch:
                        if pending.cell.check is None:
                            pending.cell.check = planner.checks.get((pending.cell.runner, pending.cell.model, pending.cell.precision))
                        planner.notify(pending.cell)
    except KeyboardInterrupt:
        run.interrupted = True
        _mark_interrupted(run.cells, options)
    finally:
        shutil.rmtree(log_dir, ignore_errors=True)
    return run.cells, run.roofs, run.interrupted


class Outcome(Protocol):
    """What ``nothing_measured`` reads: a bench cell, a cluster cell or a parity row."""

    @property
    def status(self) -> str: ...
    @property
    def reason(self) -> str: ...
    @property
    def error_code(self) -> int | None: ...
    @property
    def model(self) -> str: ...
    @property
    def runner(self) -> str: ...
    @property
    def width(self) -> int: ...
    @property
    def height(self) -> int: ...


def nothing_measured(outcomes: Sequence[Outcome], unit: str = "cell") -> tuple[str, int] | None:
    """When nothing was measured: the line that says why (the first failure, else the first reason) and the exit code.

    The one rule of every measuring command: one measured ``unit`` makes the run a success (its failures are in the
    report); none, and it exits with its first failure's code, or 2 when everything was skipped.
    """
    if any(outcome.status == "ok" for outcome in outcomes) or not outcomes:
        return None
    failed = [outcome for outcome in outcomes if outcome.status == "failed"]
    first = (failed or [outcome for outcome in outcomes if outcome.reason] or list(outcomes))[0]
    code = (failed[0].error_code or WorkerError.exit_code) if failed else UsageError.exit_code
    return f"no {unit} was measured; {first.model} {first.runner} {first.width}x{first.height}: {first.reason}", code


def _grid(options: BenchOptions) -> list[tuple[BackboneSpec, tuple[int, int], str]]:
    return [(model, size, precision) for model in options.models for size in options.sizes for precision in options.precisions]


def _mark_interrupted(cells: list[Cell], options: BenchOptions) -> None:
    """Cells Ctrl-C or SIGTERM cut short become ``interrupted`` (the reason names which); those never reached are added as ``not run``."""
    for cell in cells:
        if cell.status == "pending":
            cell.status, cell.reason = "interrupted", f"{interruption()} before this cell finished"
    started = {cell.key for cell in cells}
    for model, (width, height), precision in _grid(options):
        for runner in options.runners:
            if (runner.label, model.name, width, height, precision) not in started:
                cells.append(Cell(runner.label, model.name, width, height, precision, status="not run", reason="the run was interrupted before it"))


class CellPlanner:
    """Turns runner × model × size × precision into cells: skipped with the reason, or pending with a worker recipe."""

    def __init__(self, options: BenchOptions, threads: int, cells: list[Cell], notify: Callable[[Cell], None]) -> None:
        self.options = options
        self.threads = threads
        self.cells = cells
        self.notify = notify
        self.resolved: dict[str, ResolvedWeights] = {}
        self.checks: dict[tuple[str, str, str], dict[str, Any]] = {}

    def prepare(self, runner: Runner, model: BackboneSpec, width: int, height: int, precision: str) -> PendingCell | None:
        """The cell, unless a skip rule applies (then it is finished here and ``None`` returned)."""
        options = self.options
        cell = Cell(runner.label, model.name, width, height, precision, threads=self.threads)
        self.cells.append(cell)
        if model.name not in self.resolved:
            self.resolved[model.name] = resolve(options.weights, model)
        spec = EngineSpec.defaults(model, self.resolved[model.name])
        cell.weights = self.resolved[model.name].label
        layers = spec.layers
        if (problem := model.size_problem(layers, width, height)) is not None:
            return self._skip(cell, problem)
        unsupported = precision_support(runner, precision)
        if unsupported:
            return self._skip(cell, unsupported)
        cell.estimate_bytes = estimate_bytes(runner.engine, model, layers, width, height)
        try:
            cell.tile = tile_for(runner.engine, spec, width, height, options.tile, free_bytes(runner.device))
        except UsageError as error:
            return self._skip(cell, str(error))
        if cell.tile:
            rows, cols = TilePlan.create(model, layers, height, width, cell.tile).largest_tile
            cell.estimate_bytes = estimate_bytes(runner.engine, model, layers, cols, rows)
        cell.gflop_per_iteration = iteration_flops(model, spec.content_layers, spec.style_layers, width, height) / 1e9
        cell.cuda_graph = options.cuda_graph and takes_cuda_graph(runner)
        recipe = cell_recipe(runner, spec, width, height, self.threads, precision, cell.tile, cell.cuda_graph)
        check = None
        if options.check and (runner.label, model.name, precision) not in self.checks:
            check = {"runner": runner, "spec": spec, "threads": self.threads, "precision": precision}
        return PendingCell(cell, runner, recipe, check)

    def _skip(self, cell: Cell, reason: str) -> PendingCell | None:
        """Finish ``cell`` as skipped; the ``None`` it returns is ``prepare``'s "nothing to run"."""
        cell.status, cell.reason = "skipped", reason
        self.notify(cell)
        return None
