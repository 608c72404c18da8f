"""``parity``'s results model and its files: one row per runner, model and size, against torch autograd."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from onnxstyle.report.checks import Problem, build, check_kind, damaged, mapping
from onnxstyle.report.formats import FileContent

SCHEMA = "onnxstyle.parity"
SCHEMA_VERSION = 1
LEGACY_KIND = "gradient-parity"  # what reports said before they named a schema


@dataclass
class ParityRow:
    """One runner at one model and size: its errors against the reference, or why it has none."""

    model: str
    width: int
    height: int
    runner: str
    precision: str
    status: str = "ok"  # ok | failed | skipped
    loss_error: float | None = None
    grad_error: float | None = None
    seconds: float | None = None
    error: str = ""  # why the row failed or was skipped
    error_code: int | None = None  # the exit code of the failure's error class

    @property
    def reason(self) -> str:
        """``error`` by the name bench cells use, so the bench's "nothing measured" rule reads rows too."""
        return self.error


@dataclass
class ParityReport:
    """A parity run as saved: its rows and the machine they were measured on."""

    rows: list[ParityRow]
    system: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Any, source: str = "") -> ParityReport:
        """The report in ``data``, every row checked; a damaged one is refused naming its first problem."""
        where = source or "report"
        raw_rows = check_kind(legacy_schema(data, LEGACY_KIND, SCHEMA), where, SCHEMA, SCHEMA_VERSION, "parity", "rows")
        try:
            system = mapping("the report", "system", data.get("system") or {})
            return cls([build(ParityRow, raw, f"row {index}") for index, raw in enumerate(raw_rows, 1)], system)
        except Problem as problem:
            raise damaged(where, problem) from None

    def to_markdown(self) -> str:
        return parity_markdown(self.rows, self.system)


def legacy_schema(data: Any, kind: str, schema: str) -> Any:
    """A report written before reports named their schema carried only its ``kind``: read it as schema version 1."""
    if isinstance(data, dict) and "schema" not in data and data.get("kind") == kind:
        return {**data, "schema": schema, "schema_version": 1}
    return data


def parity_markdown(rows: list[ParityRow], system: dict[str, object]) -> str:
    lines = [
        "# Gradient parity against torch autograd (CPU, fp32)",
        "",
        f"{system.get('cpu', '?')}; GPU {system.get('gpu', 'none')}; {system.get('onnxruntime', '?')}; torch {system.get('torch', '?')}",
        "",
        "| model | size | runner | precision | grad rel. error | loss rel. error | s |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if row.status != "ok":
            lines.append(f"| {row.model} | {row.width}x{row.height} | {row.runner} | {row.precision} | {row.status}: {row.error} | – | – |")
        else:
            lines.append(
                f"| {row.model} | {row.width}x{row.height} | {row.runner} | {row.precision} | {row.grad_error:.1e} | {row.loss_error:.1e} | {row.seconds:.1f} |"
            )
    return "\n".join(lines) + "\n"


def parity_files(rows: list[ParityRow], system: dict[str, object]) -> dict[str, FileContent]:
    document = {
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION, "kind": LEGACY_KIND, "reference": "torch autograd, cpu, fp32", "system": system,
        "rows": [asdict(row) for row in rows],
    }
    return {"json": json.dumps(document, indent=1) + "\n", "md": parity_markdown(rows, system)}


def measured(rows: list[ParityRow]) -> int:
    """Rows that measured something: what decides whether a report may replace another, and the exit code."""
    return sum(row.status == "ok" for row in rows)


def rows_in(path: Path) -> float:
    """Measured rows an existing parity report holds (unreadable: never replaced)."""
    try:
        return sum(not row.get("error") for row in json.loads(path.read_text())["rows"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return float("inf")
