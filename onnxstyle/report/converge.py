"""Quality reports (``onnxstyle converge``): the runs and their yardstick scores, bands, tables and files.

Plain data like the bench's reports, without torch: ``onnxstyle report show`` renders either kind.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO

from onnxstyle.errors import ReportError
from onnxstyle.report.checks import Problem, check_kind, damaged, figure, kind, mapping, read_json, series, short, strings
from onnxstyle.report.formats import FileContent, ReportWriter
from onnxstyle.report.plotting import pyplot, save
from onnxstyle.report.table import TableData, markdown_lines

SCHEMA = "onnxstyle.quality"
SCHEMA_VERSION = 1
BANDS = (0.05, 0.01)


@dataclass
class QualityRun:
    """One configuration at one size: its snapshots scored by the yardstick, and the seconds to each band."""

    config: str
    size: int
    status: str = "ok"  # ok | skipped | failed
    reason: str = ""
    setup_seconds: float | None = None
    seconds: float | None = None
    evaluations: int | None = None
    times: list[float] = field(default_factory=list)
    iterations: list[int] = field(default_factory=list)
    own_losses: list[float] = field(default_factory=list)
    yardstick: list[float] = field(default_factory=list)
    to_band: dict[str, float | None] = field(default_factory=dict)  # "5%" → seconds, or None when never reached
    note: str = ""  # what the run said of itself: auto's choice, a budget that ended before an improvement
    image: str = ""  # where converge --images wrote its final picture

    @property
    def final(self) -> float | None:
        return self.yardstick[-1] if self.yardstick else None


@dataclass
class QualityReport:
    runs: list[QualityRun]
    options: dict[str, Any]
    system: dict[str, Any]
    weights: str
    created: str = ""
    interrupted: bool = False
    not_run: list[str] = field(default_factory=list)  # "CONFIG @ SIZE px" never started: the run was stopped first
    timing_only: bool = False  # synthetic weights: the losses say nothing about image quality

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA, "schema_version": SCHEMA_VERSION, "created": self.created, "options": self.options,
            "system": self.system, "weights": self.weights, "timing_only": self.timing_only, "interrupted": self.interrupted,
            "not_run": self.not_run,
            "runs": [asdict(run) for run in self.runs],
        }

    def sizes(self) -> list[int]:
        return sorted({run.size for run in self.runs})

    @classmethod
    def from_json(cls, data: Any, source: str = "") -> QualityReport:
        """The report in ``data`` (JSON read by ``read_json``), checked whole first: a damaged one is refused."""
        where = source or "report"
        raw_runs = check_kind(data, where, SCHEMA, SCHEMA_VERSION, "quality", "runs")
        try:
            _check_header(data)
            runs = [_run(raw, index) for index, raw in enumerate(raw_runs, 1)]
        except Problem as problem:
            raise damaged(where, problem) from None
        return cls(
            runs, dict(data.get("options") or {}), dict(data.get("system") or {}), str(data.get("weights", "")), str(data.get("created", "")),
            bool(data.get("interrupted", False)), list(data.get("not_run") or []), _timing_only(data),
        )


def _timing_only(data: dict[str, Any]) -> bool:
    """The report's flag; reports written before it existed said so only in the weights label."""
    flag = data.get("timing_only")
    return "timing only" in str(data.get("weights", "")) if flag is None else bool(flag)


def _check_header(data: dict[str, Any]) -> None:
    owner = "the report"
    for name in ("options", "system"):
        kind(owner, name, data.get(name), dict, optional=True)
    for name in ("weights", "created"):
        kind(owner, name, data.get(name), str, optional=True)
    for name in ("interrupted", "timing_only"):
        kind(owner, name, data.get(name), bool, optional=True)
    if data.get("not_run") is not None:
        strings(owner, "not_run", data["not_run"])
    options = data.get("options") or {}
    if options.get("command") is not None:
        strings(owner, "options.command", options["command"])
    if options.get("seconds") is not None:
        mapping(owner, "options.seconds", options["seconds"], lambda size, value: figure(owner, f"budget for {size} px", value))


def _run(raw: Any, index: int) -> QualityRun:
    """One run of the JSON, checked: its series line up and hold finite figures, as the table and chart need."""
    if not isinstance(raw, dict):
        raise Problem(f"run {index} is not an object")
    owner = f"run {index} ({short(raw.get('config', '?'))} @ {short(raw.get('size', '?'))} px)"
    kind(owner, "config", raw.get("config"), str)
    figure(owner, "size", raw.get("size"), positive=True, whole=True)
    kind(owner, "status", raw.get("status", "ok"), str)
    kind(owner, "reason", raw.get("reason", ""), str)
    kind(owner, "note", raw.get("note", ""), str)
    kind(owner, "image", raw.get("image", ""), str)
    for name in ("setup_seconds", "seconds"):
        figure(owner, name, raw.get(name), optional=True)
    figure(owner, "evaluations", raw.get("evaluations"), optional=True, whole=True)
    lengths = {
        "times": len(series(owner, "times", raw.get("times", []))),
        "iterations": len(series(owner, "iterations", raw.get("iterations", []), whole=True)),
        "own_losses": len(series(owner, "own_losses", raw.get("own_losses", []), signed=True)),
        "yardstick": len(series(owner, "yardstick", raw.get("yardstick", []))),  # empty until scored
    }
    recorded = {length for length in lengths.values() if length}  # an empty series was not recorded (times are, with any)
    if len(recorded) > 1 or (recorded and not lengths["times"]):
        raise Problem(f"{owner} has series of unequal length ({', '.join(f'{name} {length}' for name, length in lengths.items())})")
    mapping(owner, "to_band", raw.get("to_band", {}), lambda band, value: figure(owner, f"time to {band}", value, optional=True))
    known = {item.name for item in fields(QualityRun)}
    return QualityRun(**{key: value for key, value in raw.items() if key in known})


def band_times(runs: Sequence[QualityRun]) -> None:
    """Per size: the best final yardstick loss of any run, and when each run first came within each band of it."""
    for size in {run.size for run in runs}:
        scored = [run for run in runs if run.size == size and run.status == "ok" and run.yardstick]
        if not scored:
            continue
        best = min(min(run.yardstick) for run in scored)
        for run in scored:
            for band in BANDS:
                reached = next((time for time, loss in zip(run.times, run.yardstick, strict=True) if loss <= best * (1 + band)), None)
                run.to_band[f"{100 * band:g}%"] = reached


def speedup_to_band(report: QualityReport, run: QualityRun, band: str = "5%") -> tuple[float, bool] | None:
    """How many times sooner than the plain eager fp32 loop ``run`` reached ``band`` (same size), and whether
    that is only a lower bound (the eager loop never got there: its whole run time is taken as its time)."""
    reference = _eager_reference(report, run)
    own = run.to_band.get(band)
    if reference is None or reference is run or own is None or not own > 0:
        return None
    theirs = reference.to_band.get(band)
    if theirs is None:
        return (reference.seconds or 0.0) / own, True
    return theirs / own, False


def _eager_reference(report: QualityReport, run: QualityRun) -> QualityRun | None:
    """The plain eager fp32 Adam run at ``run``'s size, the baseline every ×eager is against."""
    return next((other for other in report.runs if other.size == run.size and other.config.startswith("eager-cpu fp32") and other.status == "ok"), None)


def speedup_to_eager_final(report: QualityReport, run: QualityRun) -> tuple[float, float] | None:
    """(seconds ``run`` took to reach the loss the eager loop ended its run with, eager's run time / those seconds).

    The band figures are relative to the best loss any configuration reached, which a slow loop may never
    approach within the budget; this one asks the user's question directly: how much sooner do I get the
    picture the plain loop would have given me?
    """
    reference = _eager_reference(report, run)
    if reference is None or reference is run or reference.final is None or run.status != "ok" or not run.yardstick:
        return None
    reached = next((time for time, loss in zip(run.times, run.yardstick, strict=True) if loss <= reference.final), None)
    if reached is None or not reached > 0:
        return None
    return reached, (reference.seconds or 0.0) / reached


def eager_time_to(report: QualityReport, run: QualityRun) -> tuple[float, bool] | None:
    """(seconds the plain eager loop took to reach ``run``'s final loss, whether that is only a lower bound: it never
    did within its run, so its whole run time is given). A run on its own budget (``auto@60``) is judged by this:
    how much of the plain loop's time its picture is worth."""
    reference = _eager_reference(report, run)
    if reference is None or reference is run or run.final is None or not reference.yardstick:
        return None
    reached = next((time for time, loss in zip(reference.times, reference.yardstick, strict=True) if loss <= run.final), None)
    return (reference.seconds or 0.0, True) if reached is None else (reached, False)


def fastest_lines(report: QualityReport) -> list[str]:
    """Per size, the configuration that reached the plain loop's final picture soonest, and when it came within each band."""
    lines = []
    for size in report.sizes():
        timed = [(found, run) for run in report.runs if run.size == size and (found := speedup_to_eager_final(report, run)) is not None]
        if not timed:
            continue
        (seconds, ratio), run = min(timed, key=lambda item: item[0][0])
        bands = ", ".join(_band_phrase(run, f"{100 * value:g}%") for value in BANDS)
        lines.append(f"fastest at {size} px: {run.config} gave the plain loop's final picture in {seconds:.1f} s, {ratio:.2f}× sooner; {bands}")
    return lines


def _band_phrase(run: QualityRun, band: str) -> str:
    reached = run.to_band.get(band)
    if reached is None:
        return f"never within {band} of the best final loss"
    share = f" ({reached / run.seconds:.0%} of its {run.seconds:.0f} s)" if run.seconds else ""
    return f"within {band} of the best final loss at {reached:.1f} s{share}"


COLUMNS = (
    "size", "configuration", "evaluations", "eval/min", "final loss", "s to 5%", "s to 1%", "×eager (5%)", "s to eager's final",
    "×eager (its final)", "eager s to this", "setup s",
)


def quality_table(report: QualityReport) -> TableData:
    """One row per configuration and size: evaluations, final loss, seconds to each band, ×eager."""
    title = f"time to quality (weights {report.weights})" + (" — interrupted" if report.interrupted else "")
    table = TableData(list(COLUMNS), title=title, left=2)
    rows = table.rows
    for run in sorted(report.runs, key=lambda item: (item.size, item.config)):
        if run.status != "ok" or run.final is None:
            rows.append([f"{run.size} px", run.config, f"{run.status}: {run.reason}" if run.reason else run.status, *["–"] * (len(COLUMNS) - 3)])
            continue
        ratio = speedup_to_band(report, run)
        to_eager = speedup_to_eager_final(report, run)
        rows.append([
            f"{run.size} px", run.config, _figure(run.evaluations, ","), f"{60 * (run.evaluations or 0) / (run.seconds or 1):,.0f}",
            f"{run.final:.4g}", *(_seconds(run.to_band.get(f"{100 * band:g}%")) for band in BANDS),
            "–" if ratio is None else f"{'> ' if ratio[1] else ''}{ratio[0]:.2f}×",
            "–" if to_eager is None else f"{to_eager[0]:.1f}", "–" if to_eager is None else f"{to_eager[1]:.2f}×",
            "–" if (worth := eager_time_to(report, run)) is None else f"{'> ' if worth[1] else ''}{worth[0]:.1f}",
            _figure(run.setup_seconds, ".1f"),
        ])
    for label in report.not_run:
        config, _, size = label.rpartition(" @ ")
        rows.append([size, config, "not run: interrupted before it started", *["–"] * (len(COLUMNS) - 3)])
    return table


def summary_lines(report: QualityReport) -> list[str]:
    """Under the table on a terminal: the fastest configuration per size, then what runs said of themselves."""
    return [*fastest_lines(report), *(f"{run.config} at {run.size} px: {run.note}" for run in report.runs if run.note)]


def notes_lines(report: QualityReport) -> list[str]:
    """What runs said of themselves (auto's choice), under the table."""
    notes = [f"- {run.config} at {run.size} px: {run.note}" for run in report.runs if run.note]
    return ["", *notes] if notes else []


def interrupted_line(report: QualityReport) -> str | None:
    """What an interrupted run never got to, in one line (None for a run that finished)."""
    if not report.interrupted:
        return None
    if not report.not_run:
        return "interrupted: every configuration started; unfinished ones are marked"
    return f"interrupted: these configurations never ran: {', '.join(report.not_run)}"


def _figure(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def _seconds(value: float | None) -> str:
    return "not reached" if value is None else f"{value:.1f}"


def to_markdown(report: QualityReport) -> str:
    lines = [f"# onnxstyle converge — {report.created}", "", "```", " ".join(report.options.get("command", [])), "```", ""]
    lines += [
        f"- machine: {report.system.get('cpu', '?')}, {report.system.get('cpu_affinity', '?')} CPUs, torch {report.system.get('torch', '?')}, {report.system.get('onnxruntime', '?')}",
        f"- weights: {report.weights}",
        f"- method: each configuration alone in a worker for the same wall time per size ({', '.join(f'{size} px: {value:g} s' for size, value in report.options.get('seconds', {}).items())}) from the same random start "
        "(seed 0); its best image snapshotted as time passes; every snapshot scored by the fp32 torch loss (same targets, same weights); "
        "bands relative to the best final loss of any configuration at that size",
        *([f"- **{line}**"] if (line := interrupted_line(report)) else []),
        *(f"- **{line}**" for line in fastest_lines(report)),
        "",
        *markdown_lines(quality_table(report)),
        *notes_lines(report),
    ]
    lines += [
        "",
        "×eager (5%): how many times sooner than the plain eager fp32 Adam loop the configuration came within 5% of the best final "
        "loss; \"> N×\" where the eager loop did not get there within its run (its whole run time taken as its time). "
        "s to eager's final: when the configuration's best image first scored the loss the eager loop ended its run with; "
        "×eager (its final): the eager run's time over that — how much sooner the configuration gives the picture the plain loop "
        "would have given. eager s to this: when the plain loop's best image first scored this configuration's final loss "
        "(\"> N\": not within its N-s run) — what a run on a budget of its own (`auto@60`) is worth in the plain loop's time. "
        "auto: what `stylize --max-time SECONDS` runs with no other flags, its probe and set-up inside the budget; other "
        "configurations start their clock once their engine is built (setup s). c2f: coarse to fine, "
        "128 → 256 → … px, each scale given the share of the time left that its planned work is of the work left.",
        "",
    ]
    return "\n".join(lines)


def plot(report: QualityReport, out: BinaryIO) -> None:
    """Yardstick loss against wall time, one line per configuration, one panel per size."""
    plt = pyplot()

    sizes = report.sizes()
    figure, axes = plt.subplots(1, max(1, len(sizes)), figsize=(6.5 * max(1, len(sizes)), 4.5), squeeze=False)
    for axis, size in zip(axes[0], sizes, strict=False):
        for run in (run for run in report.runs if run.size == size and run.yardstick):
            axis.plot(run.times, run.yardstick, label=run.config, marker=".", markersize=3)
        axis.set_yscale("log")
        axis.set_xlabel("seconds of wall time (after set-up)")
        axis.set_ylabel("fp32 torch loss of the best image so far")
        axis.set_title(f"VGG19 at {size} px")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=7)
    figure.suptitle(f"onnxstyle converge — {report.system.get('cpu', '')}", fontsize=10)
    save(figure, out)


def measured_in(path: Path) -> float:
    """Configurations measured in an existing quality report; an unreadable file counts as unbounded (never replaced)."""
    try:
        return sum(1 for run in read_json(path)["runs"] if run.get("status") == "ok" and run.get("yardstick"))
    except (ReportError, KeyError, TypeError, AttributeError):
        return math.inf


def scored(report: QualityReport) -> int:
    """Configurations measured and scored: what decides whether a report may replace an older one of its name."""
    return sum(1 for run in report.runs if run.status == "ok" and run.yardstick)


def quality_files(report: QualityReport) -> dict[str, FileContent]:
    """JSON, Markdown and (once something was scored) the PNG, by suffix, for ``ReportWriter.write_files``."""
    files: dict[str, FileContent] = {"json": json.dumps(report.to_json(), indent=1) + "\n", "md": to_markdown(report)}
    if any(run.yardstick for run in report.runs):
        files["png"] = partial(plot, report)
    return files


def write_quality(report: QualityReport, directory: Path, stem: str) -> dict[str, Path]:
    """All formats at once, never replacing a report of that name that holds more scored configurations."""
    with ReportWriter(directory, stem, measured_in=measured_in, unit="scored configurations") as writer:
        return writer.write_files(scored(report), quality_files(report))
