"""A bench report's tables and header lines as plain data (``TableData``), shared by the terminal and Markdown."""

from __future__ import annotations

from typing import Any

from onnxstyle.bench.records import Cell
from onnxstyle.report.metrics import (
    cell_size_text,
    cpus_used,
    device_class,
    gigabytes_text,
    noise_text,
    precision_speedup,
    rate_text,
    size_text,
    speedup,
    study_figure,
    threads_text,
)
from onnxstyle.report.schema import STUDY_2016, STUDY_MACHINES, Report, noisy_cells, trust_line
from onnxstyle.report.table import TableData


def speed_table(report: Report) -> TableData:
    """The study's table shape: rows model × runner, columns sizes, it/min; 2016 rows beside ours."""
    sizes = report.sizes()
    table = TableData(["model", "runner", *(size_text(width, height) for width, height in sizes)], title="iterations per minute (median ±½IQR) — higher is better", left=2)
    shown_study: set[tuple[str, str]] = set()
    for model, runner, precision in report.rows():
        texts = []
        for cell in (report.find(model, runner, w, h, precision) for w, h in sizes):
            text = rate_text(cell)
            if cell is not None and cell.median is not None:
                measured, figure = study_figure(model, runner, cell.width, cell.height)
                if measured:
                    text += f"\n×{cell.median / figure:.1f} vs 2016" if figure else "\n2016: core dump"
            texts.append(text)
        table.add(model, runner if precision == "fp32" else f"{runner} {precision}", *texts)
        for kind in ("cpu", "gpu"):
            key = (model, kind)
            if key in STUDY_2016 and key not in shown_study and device_class(runner) == kind:
                shown_study.add(key)
                row = STUDY_2016[key]
                figures = [("core dump" if row[w] is None else f"{row[w]:,.1f}") if w == h and w in row else "–" for w, h in sizes]
                table.add(model, STUDY_MACHINES[kind], *figures, faint=True)
    return table


DETAIL_COLUMNS = (
    "model", "runner", "prec.", "size", "it/min", "min–max", "µs/px", "×eager", "×fp32", "GFLOP/s", "roof",
    "memory GB", "setup s", "1st it s", "overhead", "threads", "CPUs", "grad err",
)


def microseconds_per_pixel(cell: Cell) -> float:
    """Time per pixel per iteration: what stays flat when only the image grows (tiling's target)."""
    assert cell.stats is not None
    return 60e6 / (cell.stats["median"] * cell.width * cell.height)


def detail_rows(report: Report) -> list[list[str]]:
    rows = []
    for cell in report.cells:
        if cell.status != "ok" or cell.stats is None:
            rows.append([cell.model, cell.label, cell.precision, cell_size_text(cell), rate_text(cell), *["–"] * (len(DETAIL_COLUMNS) - 5)])
            continue
        ratio = speedup(report, cell)
        check_text = _check_text(cell.check)
        rows.append([
            cell.model,
            cell.label,
            cell.precision,
            cell_size_text(cell),
            f"{cell.stats['median']:,.1f}",
            f"{cell.stats['min']:,.1f}–{cell.stats['max']:,.1f}",
            f"{microseconds_per_pixel(cell):.2f}",
            "–" if ratio is None else f"{ratio:.2f}×",
            "–" if (by_precision := precision_speedup(report, cell)) is None else f"{by_precision:.2f}×",
            "–" if cell.gflops is None else f"{cell.gflops:,.1f}",
            "–" if cell.roof_share is None else f"{100 * cell.roof_share:.0f}%",
            memory_text(cell),
            setup_text(cell),
            "–" if cell.first_iteration_seconds is None else f"{cell.first_iteration_seconds:.3f}",
            "–" if cell.overhead is None else f"{100 * cell.overhead:.1f}%",
            threads_text(cell),
            "–" if (used := cpus_used(cell)) is None else f"{used:.2f}",
            check_text,
        ])
    return rows


def setup_text(cell: Cell) -> str:
    """Set-up seconds, with the part ONNX Runtime spent building graphs and opening sessions (first-run costs such as
    cuDNN's plan choice and CUDA-graph capture are in the first iteration's time)."""
    if cell.setup_seconds is None:
        return "–"
    build = cell.engine.get("build_seconds")
    return f"{cell.setup_seconds:.2f}" + (f" (build {build:.2f})" if isinstance(build, (int, float)) else "")


def memory_text(cell: Cell) -> str:
    """GPU cells: the device memory the worker took, ORT's arena included ("GPU"); CPU cells: the worker's peak RSS.

    torch's allocator peak is in the JSON but never shown alone: it does not see ONNX Runtime's memory.
    """
    if cell.device_used_bytes is not None:
        return f"{gigabytes_text(cell.device_used_bytes)} GPU"
    return f"{gigabytes_text(cell.peak_rss_bytes)} RSS"


def _check_text(check: dict[str, Any] | None) -> str:
    if not check:
        return "–"
    if "error" in check:
        return "FAIL: " + str(check["error"])
    return f"{check.get('grad_error', float('nan')):.0e}" + ("" if check.get("ok") else " FAIL")


def noise_lines(report: Report) -> list[str]:
    """One line per noisy cell with its reasons, then the verdict."""
    lines = [f"noisy: {cell.model} {cell.label} {cell.precision} {cell_size_text(cell)}: {noise_text(cell)}" for cell in noisy_cells(report)]
    return [*lines, trust_line(report)]


def detail_table(report: Report) -> TableData:
    return TableData(list(DETAIL_COLUMNS), detail_rows(report), title="per cell", left=3)


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
        *node_lines(report),
    ]


def node_lines(report: Report) -> list[str]:
    """A cluster report's nodes: what each one is (the machine line above is the driver's)."""
    lines = []
    for label, node in report.nodes.items():
        facts = node.get("fingerprint") or {}
        measured = sum(1 for cell in report.cells if cell.node == label and cell.status == "ok")
        lines.append(
            f"node {label}: {facts.get('cpu', '?')}, {node.get('cpus', '?')} CPUs, {facts.get('ram_gb', '?')} GB RAM, "
            f"GPU {facts.get('gpu', 'none')}, {facts.get('onnxruntime', '?')}; {measured} cells measured"
        )
    return lines


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
