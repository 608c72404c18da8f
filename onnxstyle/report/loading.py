"""Any saved report, read by the schema it names: one reader for ``report show`` whatever wrote the file."""

from __future__ import annotations

from pathlib import Path

from onnxstyle.errors import ReportError
from onnxstyle.report import quality, schema
from onnxstyle.report.checks import read_json

READERS = {schema.SCHEMA: schema.Report.from_json, quality.SCHEMA: quality.QualityReport.from_json}


def load_any(path: str | Path) -> schema.Report | quality.QualityReport:
    """A bench or quality report, checked as its own reader checks it (size, version, every figure)."""
    data = read_json(Path(path))
    reader = READERS.get(data.get("schema")) if isinstance(data, dict) else None
    if reader is None:
        kinds = " or ".join(f'"{name}"' for name in READERS)
        raise ReportError(f"{path} is not an onnxstyle report (no \"schema\": {kinds})")
    return reader(data, str(path))
