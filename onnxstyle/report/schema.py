"""The bench report's JSON schema: the source of truth every format and comparison is rendered from."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from onnxstyle import __version__
from onnxstyle.bench.records import Cell, GemmRate
from onnxstyle.report.checks import Problem, check_kind, damaged, figure, kind, mapping, read_json, series, short, strings
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
        """The report in ``data`` (JSON read by ``read_json``), checked whole first: a damaged one is refused."""
        where = source or "report"
        raw_cells = check_kind(data, where, SCHEMA, SCHEMA_VERSION, "bench", "cells")
        try:
            _check_header(data)
            cells = [_cell(raw, index) for index, raw in enumerate(raw_cells, 1)]
        except Problem as problem:
            raise damaged(where, problem) from None
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


# ---------------------------------------------------------------- checks on reading (see ``checks``)


def _check_header(data: dict[str, Any]) -> None:
    owner = "the report"
    for name in ("options", "system", "gemm", "weights", "nodes", "tool"):
        kind(owner, name, data.get(name), dict, optional=True)
    kind(owner, "created", data.get("created"), str, optional=True)
    kind(owner, "interrupted", data.get("interrupted"), bool, optional=True)
    if data.get("command") is not None:
        strings(owner, "command", data["command"])
    for model, label in (data.get("weights") or {}).items():
        kind(owner, f"weights of {model}", label, str)
    environment = (data.get("options") or {}).get("environment")
    if environment is not None:
        mapping(owner, "options.environment", environment)
    for device, rate in (data.get("gemm") or {}).items():
        mapping(owner, f"GEMM roof for {device}", rate)
        figure(owner, f"GEMM rate for {device}", rate.get("gflops"))
        if rate.get("others_gflops") is not None:
            mapping(owner, f"other GEMM rates for {device}", rate["others_gflops"], lambda name, value, device=device: figure(owner, f"{name} GEMM rate for {device}", value))
    for label, node in (data.get("nodes") or {}).items():
        mapping(owner, f"node {label}", node)
        kind(owner, f"fingerprint of node {label}", node.get("fingerprint"), dict, optional=True)


_CELL_FIGURES = (
    "setup_seconds", "first_iteration_seconds", "gflop_per_iteration", "gflops", "roof_share", "estimate_bytes",
    "rss_before_bytes", "peak_rss_bytes", "device_peak_bytes", "device_used_bytes",
)
_CELL_TEXTS = ("precision", "status", "reason", "weights", "inputs_sha256", "node")
_CELL_FLAGS = ("cuda_graph", "interleaved", "noisy")
_STATS = ("median", "q1", "q3", "min", "max")


def _cell(raw: Any, index: int) -> Cell:
    """One cell of the JSON, checked: what any table, ratio or chart reads from it has the type and range it needs."""
    if not isinstance(raw, dict):
        raise Problem(f"cell {index} is not an object")
    owner = f"cell {index} ({short(raw.get('model', '?'))} {short(raw.get('runner', '?'))} {short(raw.get('width', '?'))}x{short(raw.get('height', '?'))})"
    for name in ("runner", "model"):
        kind(owner, name, raw.get(name), str)
    for name in ("width", "height"):
        figure(owner, name, raw.get(name), positive=True, whole=True)
    for name in _CELL_TEXTS:  # null is no text: only the fields whose default is None may be null
        kind(owner, name, raw.get(name, ""), str)
    for name in _CELL_FLAGS:
        kind(owner, name, raw.get(name, False), bool)
    kind(owner, "device_memory_source", raw.get("device_memory_source"), str, optional=True)
    for name in _CELL_FIGURES:
        figure(owner, name, raw.get(name), optional=True)
    figure(owner, "overhead", raw.get("overhead"), optional=True, signed=True)
    for name in ("first_loss", "final_loss", "error_code"):
        kind(owner, name, raw.get(name), (int, float), optional=True)
    figure(owner, "tile", raw.get("tile"), optional=True, positive=True, whole=True)
    figure(owner, "threads", raw.get("threads"), optional=True, whole=True)
    figure(owner, "warmup", raw.get("warmup", 0), whole=True)
    for name in ("engine", "thread_counts", "environment"):
        kind(owner, name, raw.get(name, {}), dict)
    build = (raw.get("engine") or {}).get("build_seconds")
    figure(owner, "build_seconds", build, optional=True)
    series(owner, "iteration_seconds", raw.get("iteration_seconds", []))
    stats = raw.get("stats")
    if stats is None and raw.get("status") == "ok":
        raise Problem(f"{owner} is marked measured but has no stats")
    if stats is not None:
        mapping(owner, "stats", stats)
        figure(owner, "median", stats.get("median"), positive=True)
        for name in _STATS[1:]:
            figure(owner, name, stats.get(name))
        for name in ("mean", "stdev", "n"):
            figure(owner, name, stats.get(name), optional=True)
        ordered = [stats[name] for name in ("min", "q1", "median", "q3", "max")]
        if any(later < earlier * (1 - 1e-9) for earlier, later in zip(ordered, ordered[1:])):
            raise Problem(f"{owner} has stats out of order (min ≤ q1 ≤ median ≤ q3 ≤ max fails: {', '.join(f'{value:g}' for value in ordered)})")
    kind(owner, "windows", raw.get("windows", []), list)
    for number, window in enumerate(raw.get("windows", []), 1):
        _window(f"{owner} window {number}", window)
    kind(owner, "noise", raw.get("noise", []), list)
    for reason in raw.get("noise", []):
        mapping(owner, "noise reason", reason)
        kind(owner, "noise kind", reason.get("kind"), str)
        kind(owner, "noise text", reason.get("text"), str)
    check = raw.get("check")
    if check is not None:
        mapping(owner, "check", check)
        figure(owner, "gradient error", check.get("grad_error"), optional=True)
    known = {item.name for item in fields(Cell)}
    return Cell(**{key: value for key, value in raw.items() if key in known})


def _window(owner: str, window: Any) -> None:
    mapping(owner, "window", window)
    figure(owner, "iterations", window.get("iterations"))
    figure(owner, "seconds", window.get("seconds"), positive=True)
    figure(owner, "round", window.get("round"), optional=True, whole=True)
    figure(owner, "cpu_seconds", window.get("cpu_seconds"), optional=True)


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
