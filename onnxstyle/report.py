"""Bench reports: a versioned JSON schema, tables in the 2016 study's shape, CSV/Markdown/PNG, comparisons.

The JSON is the source of truth (raw per-iteration times, windows, statistics, options, system
fingerprint); every other format, and ``onnxstyle report show``, is rendered from it, so a report
from another machine re-renders and compares exactly like a fresh one.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO

from rich.table import Table

from onnxstyle.bench import Cell, GemmRate
from onnxstyle.errors import OutputError, ReportError, UsageError
from onnxstyle.files import write_all, write_atomic

SCHEMA = "onnxstyle.bench"
SCHEMA_VERSION = 2  # 2: runners in worker processes; per-window CPU accounting, noise verdicts, thread counts

# The 2016 study's iterations per minute (REFERENCE §1): Chainer, square images; None = core dump.
STUDY_2016: dict[tuple[str, str], dict[int, float | None]] = {
    ("vgg19", "cpu"): {64: 94.2, 128: 71.4, 256: 32.0, 512: None},
    ("vgg19", "gpu"): {64: 847.8, 128: 721.9, 256: 286.7, 512: None},
    ("nin", "cpu"): {128: 108.9},
    ("nin", "gpu"): {128: 980.0},
}
STUDY_MACHINES = {"cpu": "2016 CPU (i5-4460, Chainer)", "gpu": "2016 GPU (GTX 960, Chainer)"}
CPU_RUNNER_TARGETS = ("cpu", "openvino", "xnnpack")


@dataclass
class Report:
    cells: list[Cell]
    options: dict[str, Any] = field(default_factory=dict)
    system: dict[str, Any] = field(default_factory=dict)
    gemm: dict[str, dict[str, Any]] = field(default_factory=dict)
    weights: dict[str, str] = field(default_factory=dict)
    command: list[str] = field(default_factory=list)
    tool_version: str = ""
    created: str = ""
    interrupted: bool = False
    source: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "tool": {"name": "onnxstyle", "version": self.tool_version},
            "created": self.created,
            "command": self.command,
            "interrupted": self.interrupted,
            "options": self.options,
            "system": self.system,
            "gemm": self.gemm,
            "weights": self.weights,
            "verdict": {"trusted": trusted(self), "line": trust_line(self)},
            "cells": [asdict(cell) for cell in self.cells],
        }

    @classmethod
    def from_json(cls, data: Any, source: str = "") -> Report:
        where = source or "report"
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            raise ReportError(f"{where} is not an onnxstyle bench report (no \"schema\": \"{SCHEMA}\")")
        version = data.get("schema_version")
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise ReportError(f"{where} has schema version {version!r}; this onnxstyle reads up to {SCHEMA_VERSION}")
        known = {item.name for item in fields(Cell)}
        cells = []
        try:
            for raw in data["cells"]:
                cells.append(Cell(**{key: value for key, value in raw.items() if key in known}))
        except (KeyError, TypeError, AttributeError) as error:
            raise ReportError(f"{where} has a malformed cell list ({error})") from None
        return cls(
            cells=cells,
            options=dict(data.get("options") or {}),
            system=dict(data.get("system") or {}),
            gemm=dict(data.get("gemm") or {}),
            weights=dict(data.get("weights") or {}),
            command=list(data.get("command") or []),
            tool_version=str((data.get("tool") or {}).get("version", "")),
            created=str(data.get("created", "")),
            interrupted=bool(data.get("interrupted", False)),
            source=source,
        )

    def refresh(self, cells: list[Cell], roofs: dict[str, GemmRate], interrupted: bool) -> None:
        """Take a run's state as it is now (the report is rewritten after every cell)."""
        self.cells = list(cells)
        self.gemm = {device: {**asdict(rate), "gflops": rate.gflops} for device, rate in roofs.items()}
        self.interrupted = interrupted

    def measured(self) -> list[Cell]:
        return [cell for cell in self.cells if cell.status == "ok"]

    def sizes(self) -> list[tuple[int, int]]:
        return sorted({(cell.width, cell.height) for cell in self.cells}, key=lambda size: (size[0] * size[1], size))

    def rows(self) -> list[tuple[str, str, str]]:
        """(model, runner, precision) in first-seen order."""
        return list(dict.fromkeys((cell.model, cell.runner, cell.precision) for cell in self.cells))

    def find(self, model: str, runner: str, width: int, height: int, precision: str = "fp32") -> Cell | None:
        return next((cell for cell in self.cells if cell.key == (runner, model, width, height, precision)), None)


def new_report(cells: list[Cell], options: dict[str, Any], roofs: dict[str, GemmRate], weights: dict[str, str], command: list[str], interrupted: bool) -> Report:
    from onnxstyle import __version__
    from onnxstyle.sysinfo import fingerprint

    report = Report(
        cells=[],
        options=options,
        system=fingerprint(),
        weights=weights,
        command=command,
        tool_version=__version__,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    report.refresh(cells, roofs, interrupted)
    return report


def load_report(path: str | Path) -> Report:
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ReportError(f"report {file} does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ReportError(f"cannot read report {file}: {error}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ReportError(f"{file} is not valid JSON ({error.msg} at line {error.lineno}); is it a damaged report?") from None
    return Report.from_json(data, str(file))


# ---------------------------------------------------------------- figures per cell


def device_class(runner: str) -> str:
    target = runner.split("-", 1)[1] if "-" in runner else runner
    return "cpu" if target in CPU_RUNNER_TARGETS else "gpu"


def study_figure(model: str, runner: str, width: int, height: int) -> tuple[bool, float | None]:
    """(the study measured this cell?, its it/min or None for its core dump)."""
    if width != height:
        return False, None
    row = STUDY_2016.get((model, device_class(runner)), {})
    return (width in row), row.get(width)


def reference_cell(report: Report, cell: Cell) -> Cell | None:
    """The plain eager torch loop in fp32 on the same device, model and size: what a user would otherwise run."""
    device = "cuda" if device_class(cell.runner) == "gpu" else "cpu"
    reference = report.find(cell.model, f"eager-{device}", cell.width, cell.height, "fp32")
    return reference if reference is not None and reference.status == "ok" else None


def speedup(report: Report, cell: Cell) -> float | None:
    """``cell`` against the eager fp32 loop on its device, model and size."""
    return relative_rate(cell, reference_cell(report, cell))


def precision_speedup(report: Report, cell: Cell) -> float | None:
    """A reduced-precision cell against the same runner in fp32 (what the precision alone buys)."""
    if cell.precision == "fp32":
        return None
    reference = report.find(cell.model, cell.runner, cell.width, cell.height, "fp32")
    return relative_rate(cell, reference if reference is not None and reference.status == "ok" else None)


def relative_rate(cell: Cell, reference: Cell | None) -> float | None:
    """it/min of ``cell`` over ``reference``'s: the median of round-paired window ratios when both were
    interleaved (each pair timed under the same load), else the ratio of the two medians."""
    if reference is None or cell.median is None or reference.median is None or reference is cell:
        return None
    paired = paired_ratios(cell, reference)
    return statistics.median(paired) if paired else cell.median / reference.median


def paired_ratios(cell: Cell, reference: Cell) -> list[float]:
    """it/min ratios of windows timed in the same round of an interleaved run (empty when not interleaved)."""
    if not (cell.interleaved and reference.interleaved):
        return []
    rates = {window.get("round", index): 60.0 * window["iterations"] / window["seconds"] for index, window in enumerate(reference.windows)}
    return [
        60.0 * window["iterations"] / window["seconds"] / rates[round_index]
        for index, window in enumerate(cell.windows)
        if (round_index := window.get("round", index)) in rates
    ]


def _cell_size(cell: Cell) -> str:
    return f"{cell.width}x{cell.height}" + (f" tiled {cell.tile}" if cell.tile else "") + (" cuda-graph" if cell.cuda_graph else "")


def _gb(value: int | None) -> str:
    return "–" if value is None else f"{value / 2**30:.2f}"


def rate_text(cell: Cell | None) -> str:
    if cell is None:
        return "–"
    if cell.status != "ok" or cell.stats is None:
        return f"{cell.status}: {cell.reason}" if cell.reason else cell.status
    return f"{cell.stats['median']:,.1f} ±{100 * _spread(cell):.0f}%" + (" noisy" if cell.noisy else "")


def cpus_used(cell: Cell) -> float | None:
    """Median over the windows of the worker's CPU time per wall second: the cores it actually got."""
    shares = [window["cpu_seconds"] / window["seconds"] for window in cell.windows if window.get("cpu_seconds") is not None and window["seconds"]]
    return statistics.median(shares) if shares else None


def threads_text(cell: Cell) -> str:
    """The threads each library ran with in the cell's worker, e.g. ``ort 2 · torch 1``."""
    counts = cell.thread_counts
    if not counts:
        return "–"
    parts = [f"ort {counts['onnxruntime_intra_op']}"] if counts.get("onnxruntime_intra_op") is not None else []
    parts.append(f"torch {counts.get('torch', '?')}")
    return " · ".join(parts)


def noise_text(cell: Cell) -> str:
    return "; ".join(reason["text"] for reason in cell.noise)


def noisy_cells(report: Report) -> list[Cell]:
    return [cell for cell in report.measured() if cell.noisy]


def trusted(report: Report) -> bool:
    """Every measured cell quiet, nothing interrupted, and at least one cell measured."""
    return bool(report.measured()) and not noisy_cells(report) and not report.interrupted


def trust_line(report: Report) -> str:
    """The run's closing verdict in one line: can its numbers be trusted, and if not, why not."""
    measured, noisy = report.measured(), noisy_cells(report)
    if not measured:
        return "no cell was measured: nothing to trust"
    if noisy:
        shared = sum(1 for cell in noisy if any(reason["kind"] != "spread" for reason in cell.noise))
        spread = sum(1 for cell in noisy if any(reason["kind"] == "spread" for reason in cell.noise))
        return (
            f"NOT TRUSTED: {len(noisy)} of {len(measured)} measured cells are noisy ({shared} shared the CPUs with "
            f"other work, {spread} spread over 10%); rerun on a quiet machine"
        )
    if report.interrupted:
        return f"partly trusted: the {len(measured)} measured cells were quiet, but the run was interrupted"
    return f"trusted: all {len(measured)} measured cells ran on a quiet machine (windows within 10%, no other busy process)"


def _spread(cell: Cell) -> float:
    assert cell.stats is not None
    median = cell.stats["median"]
    return (cell.stats["q3"] - cell.stats["q1"]) / 2 / median if median else 0.0


def _size_text(width: int, height: int) -> str:
    return f"{width} px" if width == height else f"{width}x{height}"


# ---------------------------------------------------------------- tables


def speed_table(report: Report) -> Table:
    """The study's table shape: rows model × runner, columns sizes, it/min; 2016 rows beside ours."""
    sizes = report.sizes()
    table = Table(title="iterations per minute (median ±½IQR) — higher is better", title_justify="left")
    table.add_column("model")
    table.add_column("runner")
    for width, height in sizes:
        table.add_column(_size_text(width, height), justify="right")
    shown_study: set[tuple[str, str]] = set()
    for model, runner, precision in report.rows():
        cells = [report.find(model, runner, w, h, precision) for w, h in sizes]
        texts = []
        for cell in cells:
            text = rate_text(cell)
            if cell is not None and cell.median is not None:
                measured, figure = study_figure(model, runner, cell.width, cell.height)
                if measured:
                    text += f"\n[dim]×{cell.median / figure:.1f} vs 2016[/dim]" if figure else "\n[dim]2016: core dump[/dim]"
            texts.append(text)
        label = runner if precision == "fp32" else f"{runner} {precision}"
        table.add_row(model, label, *texts)
        for kind in ("cpu", "gpu"):
            key = (model, kind)
            if key in STUDY_2016 and key not in shown_study and device_class(runner) == kind:
                shown_study.add(key)
                row = STUDY_2016[key]
                figures = [
                    ("core dump" if row[w] is None else f"{row[w]:,.1f}") if w == h and w in row else "–" for w, h in sizes
                ]
                table.add_row(f"[dim]{model}[/dim]", f"[dim]{STUDY_MACHINES[kind]}[/dim]", *[f"[dim]{f}[/dim]" for f in figures])
    return table


DETAIL_COLUMNS = (
    "model", "runner", "prec.", "size", "it/min", "min–max", "µs/px", "×eager", "×fp32", "GFLOP/s", "roof",
    "RSS GB", "setup s", "1st it s", "overhead", "threads", "CPUs", "grad err",
)


def microseconds_per_pixel(cell: Cell) -> float:
    """Time per pixel per iteration: what stays flat when only the image grows (tiling's target)."""
    assert cell.stats is not None
    return 60e6 / (cell.stats["median"] * cell.width * cell.height)


def detail_rows(report: Report) -> list[list[str]]:
    rows = []
    for cell in report.cells:
        if cell.status != "ok" or cell.stats is None:
            rows.append([cell.model, cell.runner, cell.precision, _cell_size(cell), rate_text(cell), *["–"] * (len(DETAIL_COLUMNS) - 5)])
            continue
        ratio = speedup(report, cell)
        check_text = _check_text(cell.check)
        rows.append([
            cell.model,
            cell.runner,
            cell.precision,
            _cell_size(cell),
            f"{cell.stats['median']:,.1f}",
            f"{cell.stats['min']:,.1f}–{cell.stats['max']:,.1f}",
            f"{microseconds_per_pixel(cell):.2f}",
            "–" if ratio is None else f"{ratio:.2f}×",
            "–" if (by_precision := precision_speedup(report, cell)) is None else f"{by_precision:.2f}×",
            "–" if cell.gflops is None else f"{cell.gflops:,.1f}",
            "–" if cell.roof_share is None else f"{100 * cell.roof_share:.0f}%",
            _gb(cell.peak_rss_bytes if cell.device_peak_bytes is None else cell.device_peak_bytes),
            "–" if cell.setup_seconds is None else f"{cell.setup_seconds:.2f}",
            "–" if cell.first_iteration_seconds is None else f"{cell.first_iteration_seconds:.3f}",
            "–" if cell.overhead is None else f"{100 * cell.overhead:.1f}%",
            threads_text(cell),
            "–" if (used := cpus_used(cell)) is None else f"{used:.2f}",
            check_text,
        ])
    return rows


def _check_text(check: dict[str, Any] | None) -> str:
    if not check:
        return "–"
    if "error" in check:
        return "FAIL: " + str(check["error"])
    return f"{check.get('grad_error', float('nan')):.0e}" + ("" if check.get("ok") else " FAIL")


def noise_lines(report: Report) -> list[str]:
    """One line per noisy cell with its reasons, then the verdict."""
    lines = [f"noisy: {cell.model} {cell.runner} {cell.precision} {_cell_size(cell)}: {noise_text(cell)}" for cell in noisy_cells(report)]
    return [*lines, trust_line(report)]


def detail_table(report: Report) -> Table:
    table = Table(title="per cell", title_justify="left")
    for column in DETAIL_COLUMNS:
        table.add_column(column, justify="right" if column not in ("model", "runner", "prec.") else "left")
    for row in detail_rows(report):
        table.add_row(*row)
    return table


def _others(gemm: dict[str, Any]) -> str:
    others = gemm.get("others_gflops") or {}
    return "".join(f", {name} {rate:,.0f}" for name, rate in others.items())


def system_lines(report: Report) -> list[str]:
    system = report.system
    gemm = ", ".join(f"{device} {info.get('gflops', 0):,.0f} GFLOP/s ({info.get('library', 'torch')}{_others(info)}; {info.get('size')}³, {info.get('threads')} threads)" for device, info in report.gemm.items())
    weights = "; ".join(f"{model}: {label}" for model, label in report.weights.items())
    return [
        f"machine: {system.get('cpu', '?')}, {system.get('cpu_affinity') or system.get('cpu_cores_logical', '?')} CPUs used, "
        f"{system.get('ram_gb', '?')} GB RAM, GPU {system.get('gpu', 'none')}",
        f"software: python {system.get('python', '?')}, torch {system.get('torch', '?')}, {system.get('onnxruntime', '?')}, onnxstyle {report.tool_version}",
        f"fp32 GEMM roof (measured in this run): {gemm or '–'}",
        f"weights: {weights or '–'}",
        f"method: {_method(report.options)}",
    ]


def _method(options: dict[str, Any]) -> str:
    if not options:
        return "–"
    amount = f"{options.get('iterations')} it/window" if options.get("iterations") else f"≈{options.get('duration')} s over the windows"
    order = "windows interleaved across the runners of each size (×eager pairs them by round)" if options.get("interleave") else "cells one after another"
    isolation = f"; {options['isolation']}" if options.get("isolation") else "; runners sharing one process"
    environment = "".join(f"; {key}={value}" for key, value in (options.get("environment") or {}).items())
    return (
        f"{options.get('optimizer', 'adam')} steps; setup and first iteration apart; {options.get('warmup')} warm-up; "
        f"{options.get('runs')} windows, {amount}; {order}; threads {options.get('threads') or 'all'}{isolation}{environment}"
    )


# ---------------------------------------------------------------- files


CSV_COLUMNS = (
    "model", "runner", "precision", "width", "height", "status", "reason", "median_it_per_min", "q1", "q3", "min", "max",
    "windows", "iterations", "speedup_vs_eager", "speedup_vs_fp32", "gflop_per_iteration", "gflops", "roof_share", "peak_rss_bytes",
    "device_peak_bytes", "estimate_bytes", "setup_seconds", "first_iteration_seconds", "overhead", "grad_error", "final_loss",
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
            cell.model, cell.runner, cell.precision, cell.width, cell.height, cell.status, cell.reason,
            stats.get("median", ""), stats.get("q1", ""), stats.get("q3", ""), stats.get("min", ""), stats.get("max", ""),
            len(cell.windows), len(cell.iteration_seconds), "" if ratio is None else ratio, _blank(precision_speedup(report, cell)),
            _blank(cell.gflop_per_iteration), _blank(cell.gflops), _blank(cell.roof_share), _blank(cell.peak_rss_bytes),
            _blank(cell.device_peak_bytes), _blank(cell.estimate_bytes), _blank(cell.setup_seconds), _blank(cell.first_iteration_seconds),
            _blank(cell.overhead), "" if not cell.check else cell.check.get("grad_error", ""), _blank(cell.final_loss),
            cell.engine.get("provider_effective", cell.engine.get("device", "")), _blank(cell.threads), cell.weights,
            cell.noisy, noise_text(cell), _blank(cpus_used(cell)), _blank(cell.thread_counts.get("torch")),
            _blank(cell.thread_counts.get("onnxruntime_intra_op")),
        ])
    return buffer.getvalue()


def _blank(value: object) -> object:
    return "" if value is None else value


def _plain(text: str) -> str:
    from rich.text import Text

    return Text.from_markup(text).plain.replace("\n", " ")


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
    lines += ["", f"## {speed.title}", ""]
    lines += _markdown_table([_plain(str(column.header)) for column in speed.columns], [[_plain(str(cell)) for cell in row] for row in _table_rows(speed)])
    lines += ["", "## per cell", ""]
    lines += _markdown_table(list(DETAIL_COLUMNS), detail_rows(report))
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


def _table_rows(table: Table) -> list[list[str]]:
    columns = [list(column.cells) for column in table.columns]
    return [[str(column[index]) for column in columns] for index in range(table.row_count)]


def _markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    escape = lambda text: str(text).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(escape(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(escape(value) for value in row) + " |" for row in rows]
    return lines


def plot(report: Report, out: BinaryIO) -> None:
    """it/min against image side (log scale) per runner and model, with the 2016 study dashed, as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(cell.model for cell in report.cells))
    figure, axes = plt.subplots(1, max(1, len(models)), figsize=(6 * max(1, len(models)), 4.5), squeeze=False)
    for axis, model in zip(axes[0], models, strict=False):
        for _, runner, precision in [row for row in report.rows() if row[0] == model]:
            points = sorted(
                (math.sqrt(cell.width * cell.height), cell.median)
                for cell in report.cells
                if cell.model == model and cell.runner == runner and cell.precision == precision and cell.median is not None
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
    figure.tight_layout()
    figure.savefig(out, dpi=110, format="png")
    plt.close(figure)


STEM = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def check_stem(stem: str) -> str:
    """``--name`` is a file name inside ``--out``, never a path that leads elsewhere."""
    if not STEM.fullmatch(stem) or stem.endswith((".json", ".csv", ".md", ".png", ".lock")):
        raise UsageError(f"--name must be a plain file name (letters, digits, '.', '_', '-'), without a folder or suffix; got '{stem}'")
    return stem


class ReportWriter:
    """A run's report files, rewritten after every cell so that a killed run keeps what it measured.

    Every write replaces all formats at once (``files.write_all``). A stem another running bench holds
    (its ``.lock`` file names a live process) is not shared: this run takes ``stem-2``, ``stem-3``… An
    existing report with more measured cells than this run has so far is never replaced: this run writes
    ``stem.partial.*`` until it catches up, and ``kept`` says what stayed. The PNG is drawn at the end.
    """

    def __init__(self, directory: Path, stem: str) -> None:
        check_directory(directory)
        self.directory = directory
        self.requested = check_stem(stem)
        self.stem = self._claim(stem)
        existing = directory / f"{self.stem}.json"
        self.previous = _measured_in(existing) if existing.exists() else 0
        self.paths: dict[str, Path] = {}

    def _claim(self, stem: str) -> str:
        import psutil

        for index in range(1, 1000):
            candidate = stem if index == 1 else f"{stem}-{index}"
            lock = self.directory / f"{candidate}.lock"
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
            with os.fdopen(handle, "w") as out:
                out.write(str(os.getpid()))
            self._lock = lock
            return candidate
        raise OutputError(f"{self.directory}: no free report name like {stem}-N (999 runs hold one)")

    @property
    def kept(self) -> str | None:
        """What stayed untouched, when this run measured fewer cells than the report it would have replaced."""
        if self.paths.get("json", Path()).name.startswith(f"{self.stem}.partial"):
            return f"kept {self.directory / (self.stem + '.json')} ({self.previous} measured cells); this run's report is {self.paths['json']}"
        return None

    def write(self, report: Report, *, final: bool = False) -> dict[str, Path]:
        stem = self.stem if len(report.measured()) >= self.previous else f"{self.stem}.partial"
        paths = {suffix: self.directory / f"{stem}.{suffix}" for suffix in ("json", "csv", "md", "png")}
        files: dict[Path, bytes | str | Callable[[BinaryIO], None]] = {
            paths["json"]: json.dumps(report.to_json(), indent=1) + "\n",
            paths["csv"]: to_csv(report),
            paths["md"]: to_markdown(report),
        }
        if final and report.measured():
            files[paths["png"]] = partial(plot, report)
        else:
            del paths["png"]
        write_all(files)
        if stem == self.stem:
            for suffix in ("json", "csv", "md", "png"):
                (self.directory / f"{self.stem}.partial.{suffix}").unlink(missing_ok=True)
        self.paths = paths
        return paths

    def close(self) -> None:
        self._lock.unlink(missing_ok=True)

    def __enter__(self) -> ReportWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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


# ---------------------------------------------------------------- comparison


SYSTEM_KEYS = ("cpu", "cpu_affinity", "cpu_cores_logical", "ram_gb", "gpu", "os", "python", "torch", "onnxruntime", "onnxstyle", "cuda_torch", "cudnn_torch")


def machine_differences(reports: list[Report]) -> list[list[str]]:
    """Rows (fact, value in each report) where the machines or software differ, GEMM roof and threads included."""
    rows = []
    for key in SYSTEM_KEYS:
        values = [str(report.system.get(key, "–")) for report in reports]
        if len(set(values)) > 1:
            rows.append([key, *values])
    for device in sorted({device for report in reports for device in report.gemm}):
        values = [f"{report.gemm[device]['gflops']:,.0f}" if device in report.gemm else "–" for report in reports]
        if len(set(values)) > 1:
            rows.append([f"fp32 GEMM GFLOP/s ({device})", *values])
    for key in ("threads", "weights", "runs", "warmup", "isolation", "environment"):
        values = [str(report.options.get(key, "–")) for report in reports]
        if len(set(values)) > 1:
            rows.append([f"option {key}", *values])
    return rows


@dataclass
class Ratio:
    key: tuple[str, str, int, int, str]
    baseline: float
    other: float
    ratio: float
    uncertainty: float


def relative_speeds(baseline: Report, other: Report) -> list[Ratio]:
    """other/baseline per cell measured in both; uncertainty from each side's ½IQR in quadrature."""
    ratios = []
    for cell in baseline.measured():
        match = other.find(cell.model, cell.runner, cell.width, cell.height, cell.precision)
        if match is None or match.median is None or cell.median is None:
            continue
        ratio = match.median / cell.median
        uncertainty = ratio * math.hypot(_spread(cell), _spread(match))
        ratios.append(Ratio(cell.key, cell.median, match.median, ratio, uncertainty))
    return ratios


PLOT_FORMATS = (".png", ".pdf", ".svg")


def compare_plot(baseline: Report, others: list[Report], path: Path) -> Path:
    """Write the comparison chart to ``path`` (checked first with ``check_output``; its suffix picks the format)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = [(other, relative_speeds(baseline, other)) for other in others]
    labels = list(dict.fromkeys(f"{r.key[1]} {r.key[0]} {r.key[2]}x{r.key[3]}" + ("" if r.key[4] == "fp32" else f" {r.key[4]}") for _, ratios in series for r in ratios))
    figure, axis = plt.subplots(figsize=(8, 0.35 * max(4, len(labels)) + 1.5))
    height = 0.8 / max(1, len(series))
    for index, (other, ratios) in enumerate(series):
        by_label = {f"{r.key[1]} {r.key[0]} {r.key[2]}x{r.key[3]}" + ("" if r.key[4] == "fp32" else f" {r.key[4]}"): r for r in ratios}
        positions = [i + index * height for i, label in enumerate(labels) if label in by_label]
        values = [by_label[label].ratio for label in labels if label in by_label]
        errors = [by_label[label].uncertainty for label in labels if label in by_label]
        axis.barh(positions, values, height=height, xerr=errors, label=Path(other.source).name or f"report {index + 2}")
    axis.axvline(1.0, color="black", linewidth=0.8)
    axis.set_yticks([i + 0.4 - height / 2 for i in range(len(labels))], labels, fontsize=8)
    axis.set_xscale("log")
    axis.set_xlabel(f"speed relative to {Path(baseline.source).name or 'baseline'} (×, log scale)")
    axis.legend(fontsize=8)
    figure.tight_layout()
    write_atomic(path, lambda out: figure.savefig(out, dpi=110, format=path.suffix.lstrip(".").lower()))
    plt.close(figure)
    return path
