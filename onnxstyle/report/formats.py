"""Report files: JSON (the source of truth), CSV, Markdown and PNG, all rewritten together after every cell."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import BinaryIO

from onnxstyle.bench.records import Cell, GemmRate
from onnxstyle.errors import OnnxstyleError, OutputError, ReportError, UsageError
from onnxstyle.files import write_all
from onnxstyle.report.metrics import cpus_used, noise_text, precision_speedup, speedup
from onnxstyle.report.plotting import pyplot, save
from onnxstyle.report.schema import STUDY_2016, STUDY_MACHINES, Report, load_report
from onnxstyle.report.table import markdown_lines
from onnxstyle.report.views import detail_table, noise_lines, speed_table, system_lines

CSV_COLUMNS = (
    "model", "runner", "node", "precision", "width", "height", "status", "reason", "median_it_per_min", "q1", "q3", "min", "max",
    "windows", "iterations", "speedup_vs_eager", "speedup_vs_fp32", "gflop_per_iteration", "gflops", "roof_share", "peak_rss_bytes",
    "device_peak_bytes", "device_used_bytes", "device_memory_source", "estimate_bytes", "setup_seconds", "first_iteration_seconds", "overhead", "grad_error", "final_loss",
    "provider_effective", "threads", "weights", "noisy", "noise", "cpus_used", "torch_threads", "onnxruntime_threads",
)


def to_csv(report: Report) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    for cell in report.cells:
        stats = cell.stats or {}
        ratio = speedup(report, cell)
        writer.writerow([
            cell.model, cell.runner, cell.node, cell.precision, cell.width, cell.height, cell.status, cell.reason,
            stats.get("median", ""), stats.get("q1", ""), stats.get("q3", ""), stats.get("min", ""), stats.get("max", ""),
            len(cell.windows), len(cell.iteration_seconds), "" if ratio is None else ratio, _blank(precision_speedup(report, cell)),
            _blank(cell.gflop_per_iteration), _blank(cell.gflops), _blank(cell.roof_share), _blank(cell.peak_rss_bytes),
            _blank(cell.device_peak_bytes), _blank(cell.device_used_bytes), _blank(cell.device_memory_source), _blank(cell.estimate_bytes), _blank(cell.setup_seconds), _blank(cell.first_iteration_seconds),
            _blank(cell.overhead), "" if not cell.check else cell.check.get("grad_error", ""), _blank(cell.final_loss),
            cell.engine.get("provider_effective", cell.engine.get("device", "")), _blank(cell.threads), cell.weights,
            cell.noisy, noise_text(cell), _blank(cpus_used(cell)), _blank(cell.thread_counts.get("torch")),
            _blank(cell.thread_counts.get("onnxruntime_intra_op")),
        ])
    return buffer.getvalue()


def _blank(value: object) -> object:
    return "" if value is None else value


def to_markdown(report: Report) -> str:
    """GitHub-flavoured Markdown: the header facts, the study-shaped table, the per-cell table."""
    speed = speed_table(report)
    lines = [f"# onnxstyle bench — {report.created}", ""]
    if report.command:
        lines += ["```", " ".join(report.command), "```", ""]
    lines += [f"- {line}" for line in system_lines(report)]
    if report.interrupted:
        lines.append("- **interrupted**: cells not finished are marked so")
    lines += [f"- {line}" for line in noise_lines(report)]
    details = detail_table(report)
    lines += ["", f"## {speed.title}", "", *markdown_lines(speed), "", f"## {details.title}", "", *markdown_lines(details)]
    lines += [
        "",
        "µs/px: median time per iteration divided by the pixel count. × eager: against the plain torch eager loop (PyTorch-tutorial shape) in fp32 on the same device in this run; where the runners were interleaved, the median of per-round window ratios. × fp32: a reduced-precision cell against the same runner in fp32, likewise. "
        "GFLOP/s counts convolution and Gram arithmetic (forward + adjoint); % GEMM roof divides it by the fp32 "
        "matrix-multiply rate measured at the start of the run. Loop overhead: share of an iteration outside "
        "loss+gradient (optimiser step, copies, Python). Grad check: relative error of the gradient against torch "
        "autograd in fp32 at 64 px, for each runner and precision. Roof shares of reduced-precision cells are "
        "still against the fp32 rate. Every runner ran in a worker process of its own; threads: what torch and ONNX "
        "Runtime ran with there; CPUs: the worker's CPU time per wall second (median over windows), the cores it "
        "actually got. A cell is noisy when its windows spread more than 10% (IQR/median) or when other processes, "
        "the bench's idle ones or the hypervisor took CPU time during a window.",
        "",
    ]
    return "\n".join(lines)


def plot(report: Report, out: BinaryIO) -> None:
    """it/min against image side (log scale) per runner and model, with the 2016 study dashed, as PNG."""
    plt = pyplot()

    models = list(dict.fromkeys(cell.model for cell in report.cells))
    figure, axes = plt.subplots(1, max(1, len(models)), figsize=(6 * max(1, len(models)), 4.5), squeeze=False)
    for axis, model in zip(axes[0], models, strict=False):
        for _, runner, precision in [row for row in report.rows() if row[0] == model]:
            points = sorted(
                (math.sqrt(cell.width * cell.height), cell.median)
                for cell in report.cells
                if cell.model == model and cell.label == runner and cell.precision == precision and cell.median is not None
            )
            if points:
                label = runner if precision == "fp32" else f"{runner} {precision}"
                axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
        for kind in ("cpu", "gpu"):
            row = STUDY_2016.get((model, kind), {})
            points = sorted((side, value) for side, value in row.items() if value is not None)
            if points:
                axis.plot([p[0] for p in points], [p[1] for p in points], linestyle="--", marker="x", color="grey" if kind == "cpu" else "black", label=STUDY_MACHINES[kind])
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.set_xlabel("image side (px, √(W·H))")
        axis.set_ylabel("iterations per minute")
        axis.set_title(model)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle(f"onnxstyle bench — {report.system.get('cpu', '')}", fontsize=10)
    save(figure, out)


STEM = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
PARTIAL = re.compile(r"\.partial(-[0-9]+)?$")  # a rerun's report while it has fewer cells (see ReportWriter)


def check_stem(stem: str) -> str:
    """``--name`` is a file name inside ``--out``, never a path that leads elsewhere, nor a name the writer keeps
    for a rerun's partial report (``NAME.partial``), which a later rerun of ``NAME`` would replace."""
    if not STEM.fullmatch(stem) or stem.endswith((".json", ".csv", ".md", ".png", ".lock")):
        raise UsageError(f"--name must be a plain file name (letters, digits, '.', '_', '-'), without a folder or suffix; got '{stem}'")
    if PARTIAL.search(stem):
        raise UsageError(f"--name must not end in '.partial': reruns of NAME write NAME.partial.* while they have measured less; got '{stem}'")
    return stem


FileContent = bytes | str | Callable[[BinaryIO], None]
REPORT_SUFFIXES = ("json", "csv", "md", "png")


def bench_files(report: Report, *, final: bool = False) -> dict[str, FileContent]:
    """A bench report's formats by suffix; the PNG only at the end of a run that measured something."""
    files: dict[str, FileContent] = {"json": json.dumps(report.to_json(), indent=1) + "\n", "csv": to_csv(report), "md": to_markdown(report)}
    if final and report.measured():
        files["png"] = partial(plot, report)
    return files


class ReportWriter:
    """A run's report files, rewritten after every cell so that a killed run keeps what it measured.

    Every write replaces all formats at once (``files.write_all``). A stem another running bench holds
    (its ``.lock`` file names a live process) is not shared: this run takes ``stem-2``, ``stem-3``… An
    existing report with more measured cells than this run has so far is never replaced: this run writes
    ``stem.partial.*`` until it catches up, and ``kept`` says what stayed. A partial report of an earlier rerun
    is held to the same rule: while it has more, this run's partial goes to ``stem.partial-2.*`` (``-3``…).
    The PNG is drawn at the end.
    """

    def __init__(
        self, directory: Path, stem: str, *, measured_in: Callable[[Path], float] | None = None, unit: str = "measured cells"
    ) -> None:
        """``measured_in`` counts what an existing report of the stem holds, in ``unit`` (default: a bench report's cells)."""
        check_directory(directory)
        self.directory = directory
        self.requested = check_stem(stem)
        self.stem = self._claim(stem)
        self._count = measured_in or _measured_in
        self.previous = self._held(self.stem)
        self.partial = f"{self.stem}.partial"  # moves to stem.partial-N when an earlier partial holds more than this run
        self.paths: dict[str, Path] = {}
        self.unit = unit

    def _held(self, stem: str) -> float:
        """What the report ``stem`` already holds (0: none there)."""
        existing = self.directory / f"{stem}.json"
        return self._count(existing) if existing.exists() else 0

    def _claim(self, stem: str) -> str:
        import psutil

        for index in range(1, 1000):
            candidate = stem if index == 1 else f"{stem}-{index}"
            lock = self.directory / f"{candidate}.lock"
            try:
                try:
                    handle = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                except FileExistsError:
                    try:
                        holder = int(lock.read_text().strip() or 0)
                    except (OSError, ValueError):
                        holder = 0
                    if holder and holder != os.getpid() and psutil.pid_exists(holder):
                        continue
                    lock.unlink(missing_ok=True)  # left by a run that died
                    handle = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                try:
                    with os.fdopen(handle, "w") as out:
                        out.write(str(os.getpid()))
                except OSError:
                    lock.unlink(missing_ok=True)  # an empty lock would only confuse the next run
                    raise
            except OSError as error:
                raise OutputError(f"cannot write reports to {self.directory}: {error.strerror or error}") from None
            self._lock = lock
            return candidate
        raise OutputError(f"{self.directory}: no free report name like {stem}-N (999 runs hold one)")

    @property
    def kept(self) -> str | None:
        """What stayed untouched, when this run measured fewer cells than the report it would have replaced."""
        if self.paths.get("json", Path()).name.startswith(f"{self.stem}.partial"):
            return f"kept {self.directory / (self.stem + '.json')} ({self.previous} {self.unit}); this run's report is {self.paths['json']}"
        return None

    def write(self, report: Report, *, final: bool = False) -> dict[str, Path]:
        return self.write_files(len(report.measured()), bench_files(report, final=final))

    def write_files(self, measured: float, contents: dict[str, FileContent]) -> dict[str, Path]:
        """Write ``contents`` (by suffix) under the stem, or under ``stem.partial`` while ``measured`` is below what
        the existing report held; once the stem is written, any partial files of it go."""
        stem = self.stem if measured >= self.previous else self._partial_for(measured)
        paths = {suffix: self.directory / f"{stem}.{suffix}" for suffix in contents}
        write_all({paths[suffix]: content for suffix, content in contents.items()})
        if stem == self.stem:
            for partial in dict.fromkeys((f"{self.stem}.partial", self.partial)):
                if self._held(partial) <= measured:
                    for suffix in REPORT_SUFFIXES:
                        (self.directory / f"{partial}.{suffix}").unlink(missing_ok=True)
        self.paths = paths
        return paths

    def _partial_for(self, measured: float) -> str:
        """Where this run's partial report goes: never over an earlier rerun's partial that holds more."""
        if self.paths.get("json") == self.directory / f"{self.partial}.json":
            return self.partial  # ours already: it only grows
        for index in range(1, 1000):
            candidate = f"{self.stem}.partial" if index == 1 else f"{self.stem}.partial-{index}"
            if self._held(candidate) <= measured:
                self.partial = candidate
                return candidate
        raise OutputError(f"{self.directory}: no free name like {self.stem}.partial-N for this run's partial report")

    def close(self) -> None:
        self._lock.unlink(missing_ok=True)

    def __enter__(self) -> ReportWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LiveReport:
    """A run's report on disk, rewritten after every cell or configuration. A failed write is kept, not raised, so
    the run goes on measuring; the caller reports ``errors`` at the end."""

    def __init__(self, writer: ReportWriter, report: Report | None = None) -> None:
        self.writer = writer
        self.report = report  # a bench report, refreshed by ``update``
        self.errors: list[str] = []

    def update(self, cells: list[Cell], roofs: dict[str, GemmRate], interrupted: bool, *, final: bool = False) -> str | None:
        """Write the bench run as it is now (see ``save``)."""
        assert self.report is not None, "a bench LiveReport holds its report"
        self.report.refresh(cells, roofs, interrupted)
        return self.save(len(self.report.measured()), bench_files(self.report, final=final), final=final)

    def save(self, measured: float, contents: dict[str, FileContent], *, final: bool = False) -> str | None:
        """Write ``contents``; returns the error text the first time a write fails (later failures are only counted).
        A final write that succeeds clears the earlier failures: what is on disk is then complete."""
        if final:
            self.errors.clear()
        try:
            self.writer.write_files(measured, contents)
        except OnnxstyleError as error:
            self.errors.append(str(error))
            return str(error) if len(self.errors) == 1 else None
        return None


def _measured_in(path: Path) -> float:
    """Measured cells in an existing report; a file that is not a readable report counts as unbounded (never replaced)."""
    try:
        return len(load_report(path).measured())
    except ReportError:
        return math.inf


def write_report(report: Report, directory: Path, stem: str) -> dict[str, Path]:
    """JSON, CSV, Markdown and PNG side by side, written atomically (see ``ReportWriter``)."""
    with ReportWriter(directory, stem) as writer:
        return writer.write(report, final=True)


def check_directory(directory: Path) -> None:
    """Fail before a long run, not after it: create the folder and write a probe file (root ignores modes)."""
    import tempfile

    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".onnxstyle-probe-"):
            pass
    except OSError as error:
        raise OutputError(f"cannot write reports to {directory}: {error.strerror or error}") from None
