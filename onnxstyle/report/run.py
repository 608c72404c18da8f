"""One report-writing run: its name, its writer, a save after every unit, and the lines a command ends with.

Every command that writes a report (``bench``, ``bench --cluster``, ``parity``, ``converge``, ``cluster-scale``)
goes through ``ReportRun``, so the default name, the "could not write" line, the printed paths and what an
interruption kept are said one way. Nothing here prints: the command passes callbacks and prints the lines.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from onnxstyle.bench.records import Cell, GemmRate
from onnxstyle.errors import Interrupted, OutputError
from onnxstyle.report.formats import FileContent, LiveReport, ReportWriter, check_directory, check_stem
from onnxstyle.report.schema import Report

Say = Callable[[str], None]


def _silent(text: str) -> None:
    """The default callback: a command that does not say a line."""


def default_stem(prefix: str) -> str:
    """``PREFIX-YYYYmmdd-HHMMSS``: a report name that sorts by when it was started."""
    return time.strftime(f"{prefix}-%Y%m%d-%H%M%S")


class ReportRun:
    """The report of one command run, rewritten after every cell, row or configuration (see ``ReportWriter``).

    ``on_moved`` hears the line for a name another live run holds (this run then writes ``NAME-2.*``…),
    ``on_failure`` the first failed write (the run goes on; ``check_written`` ends the command with it).
    """

    def __init__(
        self, directory: Path, name: str | None, *, command: str, prefix: str | None = None, report: Report | None = None,
        measured_in: Callable[[Path], float] | None = None, unit: str = "measured cells", holder: str = "run that is still going",
        on_moved: Say = _silent, on_failure: Say = _silent,
    ) -> None:
        """``holder`` names the other run in the ``on_moved`` line; ``report`` is a bench report that ``update`` refreshes."""
        check_directory(directory)
        self.command = command
        self.requested = check_stem(name) if name else default_stem(prefix or command)
        self.writer = ReportWriter(directory, self.requested, measured_in=measured_in, unit=unit)
        self.live = LiveReport(self.writer, report)
        self._on_failure = on_failure
        if self.writer.stem != self.requested:
            on_moved(f"{directory / self.requested}.* is being written by another {holder}; this run writes {self.writer.stem}.*")

    @property
    def report(self) -> Report:
        assert self.live.report is not None, "a bench ReportRun holds its report"
        return self.live.report

    def save(self, measured: float, contents: dict[str, FileContent]) -> None:
        """Write the files as they are now; the first failure is said once and the run goes on."""
        if (failure := self.live.save(measured, contents)) is not None:
            self._on_failure(f"could not write the report: {failure}")

    def update(self, cells: list[Cell], roofs: dict[str, GemmRate], interrupted: bool, *, final: bool = False) -> None:
        """A bench report refreshed from the run and written; a failed final write ends the command in ``check_written``."""
        failure = self.live.update(cells, roofs, interrupted, final=final)
        if failure is not None and not final:
            self._on_failure(f"could not write the report: {failure}")

    def path_lines(self) -> list[str]:
        """``json reports/NAME.json``…: one line per file written."""
        return [f"{kind:4} {path}" for kind, path in self.writer.paths.items()]

    @property
    def kept(self) -> str | None:
        """The line for a fuller earlier report this run left in place (see ``ReportWriter.kept``)."""
        return self.writer.kept

    def check_written(self, *, lost: bool = True) -> None:
        """End the command with the last failed write; ``lost`` adds that the measurements are gone with it."""
        if self.live.errors:
            note = f"; the measurements are lost unless an earlier write of {self.writer.stem}.json survived" if lost else ""
            raise OutputError(f"{self.live.errors[-1]}{note}")

    def interrupted(self, kept: str, nothing: str) -> Interrupted:
        """``COMMAND interrupted; kept PATH with KEPT``, or ``…; NOTHING`` when no report was written."""
        paths = self.writer.paths
        return Interrupted(f"{self.command} interrupted; " + (f"kept {paths['json']} with {kept}" if paths else nothing))

    def close(self) -> None:
        self.writer.close()

    def __enter__(self) -> ReportRun:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None) -> None:
        self.close()
