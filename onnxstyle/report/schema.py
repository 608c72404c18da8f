"""The bench report's JSON schema: the source of truth every format and comparison is rendered from."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from onnxstyle import __version__
from onnxstyle.bench.records import Cell, GemmRate
from onnxstyle.errors import ReportError
from onnxstyle.sysinfo import fingerprint

SCHEMA = "onnxstyle.bench"
SCHEMA_VERSION = 2  # 2: runners in worker processes; per-window CPU accounting, noise verdicts, thread counts

# The 2016 study's iterations per minute (its results table, i5-4460 CPU and GTX 960 GPU): Chainer, square images; None = core dump.
STUDY_2016: dict[tuple[str, str], dict[int, float | None]] = {
    ("vgg19", "cpu"): {64: 94.2, 128: 71.4, 256: 32.0, 512: None},
    ("vgg19", "gpu"): {64: 847.8, 128: 721.9, 256: 286.7, 512: None},
    ("nin", "cpu"): {128: 108.9},
    ("nin", "gpu"): {128: 980.0},
}
STUDY_MACHINES = {"cpu": "2016 CPU (i5-4460, Chainer)", "gpu": "2016 GPU (GTX 960, Chainer)"}


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
    nodes: dict[str, Any] = field(default_factory=dict)  # bench --cluster: each node's resources and fingerprint, by label

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
            "nodes": self.nodes,
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
            nodes=dict(data.get("nodes") or {}),
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
        """(model, runner label, precision) in first-seen order (``Cell.label``: runner@node in cluster reports)."""
        return list(dict.fromkeys((cell.model, cell.label, cell.precision) for cell in self.cells))

    def find(self, model: str, runner: str, width: int, height: int, precision: str = "fp32") -> Cell | None:
        return next((cell for cell in self.cells if cell.key == (runner, model, width, height, precision)), None)


def new_report(cells: list[Cell], options: dict[str, Any], roofs: dict[str, GemmRate], weights: dict[str, str], command: list[str], interrupted: bool) -> Report:
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


def read_json(file: Path) -> Any:
    """A report file's JSON, or one line saying why it cannot be read."""
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ReportError(f"report {file} does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ReportError(f"cannot read report {file}: {error}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ReportError(f"{file} is not valid JSON ({error.msg} at line {error.lineno}); is it a damaged report?") from None


def load_report(path: str | Path) -> Report:
    return Report.from_json(read_json(Path(path)), str(path))


# ---------------------------------------------------------------- the verdict every report carries


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
