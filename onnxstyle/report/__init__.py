"""Every report a command writes — bench, converge, parity, cluster-scale — as data, JSON, tables and files.

A bench report has a versioned JSON schema, tables in the 2016 study's shape, CSV/Markdown/PNG and comparisons.
The JSON is the source of truth (raw per-iteration times, windows, statistics, options, system
fingerprint); every other format, and ``onnxstyle report show``, is rendered from it, so a report
from another machine re-renders and compares exactly like a fresh one. Nothing here imports torch or
ONNX Runtime: reading a report is instant and works on a machine without them.

- ``checks``: reading a report file as untrusted input (size limits, printable text, typed checks of every figure).
- ``converge``, ``parity``, ``scale``: the other kinds' results models, readers and files; ``loading`` reads any
  kind by the schema it names.
- ``schema``: the report, its JSON, loading, and the trust verdict it carries.
- ``metrics``: figures derived per cell (×eager, ×fp32, the 2016 figure, CPUs used) and their text.
- ``table`` and ``views``: one plain table model, and the bench's tables and header lines in it.
- ``formats``: the files (JSON, CSV, Markdown, PNG), rewritten together after every cell.
- ``compare``: reports from several machines side by side.
- ``quality``: converge's reports; ``loading``: either kind, read by the schema it names (``report show``).
- ``parity`` and ``scale``: the results models and files of ``parity`` and ``cluster-scale``.
- ``run``: one report-writing run (name, writer, live saves, the lines it ends with) for every command that writes one.
"""

from onnxstyle.errors import ReportError
from onnxstyle.report.compare import (
    PLOT_FORMATS,
    compare_plot,
    differences_table,
    machine_differences,
    ratio_table,
    relative_speeds,
)
from onnxstyle.report.formats import (
    LiveReport,
    ReportWriter,
    check_directory,
    check_stem,
    to_csv,
    to_markdown,
    write_report,
)
from onnxstyle.report.metrics import paired_ratios, precision_speedup, speedup, study_figure
from onnxstyle.report.schema import (
    SCHEMA,
    SCHEMA_VERSION,
    Report,
    load_report,
    new_report,
    noisy_cells,
    trust_line,
    trusted,
)
from onnxstyle.report.table import TableData, markdown_lines, to_rich
from onnxstyle.report.views import detail_table, noise_lines, speed_table, system_lines

__all__ = [
    "PLOT_FORMATS", "SCHEMA", "SCHEMA_VERSION", "LiveReport", "Report", "ReportError", "ReportWriter", "TableData", "check_directory", "check_stem",
    "compare_plot", "detail_table", "differences_table", "load_report", "machine_differences", "markdown_lines", "new_report",
    "noise_lines", "noisy_cells", "paired_ratios", "precision_speedup", "ratio_table", "relative_speeds", "speed_table", "speedup",
    "study_figure", "system_lines", "to_csv", "to_markdown", "to_rich", "trust_line", "trusted", "write_report",
]
