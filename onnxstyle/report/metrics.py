"""Figures derived from a report's cells: ratios against eager and fp32, the 2016 study's figure, CPU use, trust."""

from __future__ import annotations

import statistics

from onnxstyle.bench.records import Cell, window_rate
from onnxstyle.ort_providers import CPU_TARGETS
from onnxstyle.report.schema import STUDY_2016, Report


def device_class(runner: str) -> str:
    """cpu or gpu, from a runner's name or a report's label for it (``ort-cuda@node``)."""
    runner = runner.split("@", 1)[0]
    target = runner.split("-", 1)[1] if "-" in runner else runner
    return "cpu" if target in CPU_TARGETS else "gpu"


def study_figure(model: str, runner: str, width: int, height: int) -> tuple[bool, float | None]:
    """(the study measured this cell?, its it/min or None for its core dump)."""
    if width != height:
        return False, None
    row = STUDY_2016.get((model, device_class(runner)), {})
    return (width in row), row.get(width)


def reference_cell(report: Report, cell: Cell) -> Cell | None:
    """The plain eager torch loop in fp32 on the same device, node, model and size: what a user would otherwise run."""
    device = "cuda" if device_class(cell.runner) == "gpu" else "cpu"
    eager = f"eager-{device}" + (f"@{cell.node}" if cell.node else "")
    reference = report.find(cell.model, eager, cell.width, cell.height, "fp32")
    return reference if reference is not None and reference.status == "ok" else None


def speedup(report: Report, cell: Cell) -> float | None:
    """``cell`` against the eager fp32 loop on its device, model and size."""
    return relative_rate(cell, reference_cell(report, cell))


def precision_speedup(report: Report, cell: Cell) -> float | None:
    """A reduced-precision cell against the same runner in fp32 (what the precision alone buys)."""
    if cell.precision == "fp32":
        return None
    reference = report.find(cell.model, cell.label, cell.width, cell.height, "fp32")
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
    rates = {window.get("round", index): window_rate(window) for index, window in enumerate(reference.windows)}
    return [
        window_rate(window) / rates[round_index]
        for index, window in enumerate(cell.windows)
        if (round_index := window.get("round", index)) in rates
    ]


def rate_text(cell: Cell | None) -> str:
    if cell is None:
        return "–"
    if cell.status != "ok" or cell.stats is None:
        return f"{cell.status}: {cell.reason}" if cell.reason else cell.status
    return f"{cell.stats['median']:,.1f} ±{100 * cell.spread:.0f}%" + (" noisy" if cell.noisy else "")


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


def cell_size_text(cell: Cell) -> str:
    return f"{cell.width}x{cell.height}" + (f" tiled {cell.tile}" if cell.tile else "") + (" cuda-graph" if cell.cuda_graph else "")


def gigabytes_text(value: int | None) -> str:
    return "–" if value is None else f"{value / 2**30:.2f}"


def size_text(width: int, height: int) -> str:
    return f"{width} px" if width == height else f"{width}x{height}"
