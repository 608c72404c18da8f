"""``parity``'s results model and its files: one row per runner, model and size, against torch autograd."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from onnxstyle.report.formats import FileContent


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
    document = {"kind": "gradient-parity", "reference": "torch autograd, cpu, fp32", "system": system, "rows": [asdict(row) for row in rows]}
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
