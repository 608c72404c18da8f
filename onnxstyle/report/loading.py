"""Any saved report, read by the schema it names: one reader for ``report show`` whatever wrote the file."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from onnxstyle.errors import ReportError
from onnxstyle.report import converge, parity, scale, schema
from onnxstyle.report.checks import read_json

AnyReport = schema.Report | converge.QualityReport | parity.ParityReport | scale.ScaleReport
READERS: dict[str, Callable[[Any, str], AnyReport]] = {
    schema.SCHEMA: schema.Report.from_json, converge.SCHEMA: converge.QualityReport.from_json, parity.SCHEMA: parity.ParityReport.from_json,
    scale.SCHEMA: scale.ScaleReport.from_json,
}
LEGACY_KINDS = {parity.LEGACY_KIND: parity.SCHEMA, scale.LEGACY_KIND: scale.SCHEMA}  # reports that named only a kind


def load_any(path: str | Path) -> AnyReport:
    """A bench, quality, parity or cluster-scale report, checked as its own reader checks it (size, version, every figure)."""
    data = read_json(Path(path))
    named = None
    if isinstance(data, dict):
        named = data.get("schema") or LEGACY_KINDS.get(str(data.get("kind")))
    reader = READERS.get(named) if isinstance(named, str) else None
    if reader is None:
        kinds = " or ".join(f'"{name}"' for name in READERS)
        raise ReportError(f"{path} is not an onnxstyle report (no \"schema\": {kinds})")
    return reader(data, str(path))
