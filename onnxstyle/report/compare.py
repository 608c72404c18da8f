"""Reports from several machines side by side: how the machines differ, and each cell's speed relative to a baseline."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from onnxstyle.files import write_atomic
from onnxstyle.report.plotting import pyplot, save
from onnxstyle.report.schema import Report
from onnxstyle.report.table import TableData

SYSTEM_KEYS = ("cpu", "cpu_affinity", "cpu_cores_logical", "ram_gb", "gpu", "os", "python", "torch", "onnxruntime", "onnxstyle", "cuda_torch", "cudnn_torch", "nvidia_tf32_override")


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


def differences_table(reports: list[Report], names: list[str]) -> TableData:
    """``machine_differences`` as a table, one column per report (no rows: identical fingerprints)."""
    return TableData(["fact", *names], machine_differences(reports), left=len(names) + 1)


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
        match = other.find(cell.model, cell.label, cell.width, cell.height, cell.precision)
        if match is None or match.median is None or cell.median is None:
            continue
        ratio = match.median / cell.median
        uncertainty = ratio * math.hypot(cell.spread, match.spread)
        ratios.append(Ratio(cell.key, cell.median, match.median, ratio, uncertainty))
    return ratios


def ratio_table(baseline: Report, other: Report, baseline_name: str, other_name: str) -> TableData:
    """Each cell measured in both reports: both it/min and other/baseline with its uncertainty."""
    table = TableData(["model", "runner", "precision", "size", f"it/min {baseline_name}", f"it/min {other_name}", "ratio"], left=3)
    for ratio in relative_speeds(baseline, other):
        runner, model, width, height, precision = ratio.key
        table.add(model, runner, precision, f"{width}x{height}", f"{ratio.baseline:,.1f}", f"{ratio.other:,.1f}", f"{ratio.ratio:.2f}× ±{ratio.uncertainty:.2f}")
    return table


PLOT_FORMATS = (".png", ".pdf", ".svg")
PLOT_TITLE = "onnxstyle report compare"  # in the chart file's metadata: a file holding it may be replaced by the next chart
PLOT_SCAN_BYTES = 64 * 2**20


def is_comparison_plot(path: Path) -> bool:
    """Whether ``path`` is a chart ``compare_plot`` wrote (its metadata title), which a rerun may replace."""
    try:
        if path.stat().st_size > PLOT_SCAN_BYTES:
            return False
        return PLOT_TITLE.encode() in path.read_bytes()
    except OSError:
        return False


def _label(ratio: Ratio) -> str:
    """A cell's name on the comparison chart: model, runner, size, and the precision when not fp32."""
    runner, model, width, height, precision = ratio.key
    return f"{model} {runner} {width}x{height}" + ("" if precision == "fp32" else f" {precision}")


def compare_plot(baseline: Report, others: list[Report], path: Path) -> Path:
    """Write the comparison chart to ``path`` (checked first with ``check_output``; its suffix picks the format)."""
    plt = pyplot()

    series = [(other, relative_speeds(baseline, other)) for other in others]
    labels = list(dict.fromkeys(_label(ratio) for _, ratios in series for ratio in ratios))
    figure, axis = plt.subplots(figsize=(8, 0.35 * max(4, len(labels)) + 1.5))
    height = 0.8 / max(1, len(series))
    for index, (other, ratios) in enumerate(series):
        by_label = {_label(ratio): ratio for ratio in ratios}
        positions = [i + index * height for i, label in enumerate(labels) if label in by_label]
        values = [by_label[label].ratio for label in labels if label in by_label]
        errors = [by_label[label].uncertainty for label in labels if label in by_label]
        axis.barh(positions, values, height=height, xerr=errors, label=Path(other.source).name or f"report {index + 2}")
    axis.axvline(1.0, color="black", linewidth=0.8)
    axis.set_yticks([i + 0.4 - height / 2 for i in range(len(labels))], labels, fontsize=8)
    axis.set_xscale("log")
    axis.set_xlabel(f"speed relative to {Path(baseline.source).name or 'baseline'} (×, log scale)")
    axis.legend(fontsize=8)
    write_atomic(path, lambda out: save(figure, out, path.suffix.lstrip(".").lower(), title=PLOT_TITLE))
    return path
