"""Typed errors: every failure a user can cause maps to one line and a distinct exit code.

The classes below are the single source of the exit codes: ``exit_code_table()`` lists them, the exit-code
table is generated from it (``python -m onnxstyle.errors``), and a test keeps the two equal.
"""

from __future__ import annotations


def first_line(error: BaseException) -> str:
    """The first non-empty line of an error; another library's is cut to 300 characters (what a table cell or a log
    line can hold), ours never: it is written as one line, and the path it names and what is wrong come whole."""
    text = str(error).strip() or type(error).__name__
    limit = None if isinstance(error, OnnxstyleError) else 300
    for line in text.splitlines():
        line = line.strip()
        if line:
            return line[:limit]
    return text[:limit]


class OnnxstyleError(Exception):
    """Base class: the CLI prints ``str(error)`` as one line and exits with ``exit_code``."""

    exit_code: int = 2
    meaning: str = "usage: inconsistent or out-of-range options"


class UsageError(OnnxstyleError):
    """Inconsistent or out-of-range options."""

    exit_code = 2
    meaning = "usage: an option or argument is invalid or inconsistent"


class ImageError(OnnxstyleError):
    """An image is missing, unreadable, corrupt or too small."""

    exit_code = 3
    meaning = "image: missing, unreadable, corrupt, too large to open, or too small for the layers"


class OutputError(OnnxstyleError):
    """An output path cannot be written."""

    exit_code = 4
    meaning = "output: a path that cannot or must not be written (missing folder, a directory, an input, a full disk)"


class WeightsError(OnnxstyleError):
    """A weights file has the wrong hash, keys or shapes."""

    exit_code = 5
    meaning = "weights: wrong hash, keys or shapes, or unreadable"


class WeightsNotFoundError(WeightsError):
    """Weights are neither cached nor downloadable; the message is a whole screen of instructions."""

    exit_code = 6
    meaning = "weights: not cached and not downloadable (offline)"


class ExportValidationError(OnnxstyleError):
    """An exported graph disagrees with torch beyond the stated tolerance."""

    exit_code = 7
    meaning = "export validation: a graph disagrees with torch beyond its tolerance"


class ProviderError(OnnxstyleError):
    """An execution provider or device asked for cannot be used here."""

    exit_code = 8
    meaning = "provider: an execution provider or device that cannot run here"


class NumericalError(OnnxstyleError):
    """The loss became NaN or Inf."""

    exit_code = 9
    meaning = "numerical: the loss or gradient became NaN or Inf"


class ReportError(OnnxstyleError):
    """A file given to ``report`` is not an onnxstyle bench report (or is damaged)."""

    exit_code = 10
    meaning = "report: a file that is not an onnxstyle bench report, or a damaged one"


class WorkerError(OnnxstyleError):
    """A worker process crashed, hung, ran out of memory or raised: its cell fails, the run goes on."""

    exit_code = 11
    meaning = "worker: a bench worker process crashed, hung or was killed (only when no cell was measured)"


class Interrupted(OnnxstyleError):
    """Ctrl-C or SIGTERM: what was done so far was kept, and the message says what."""

    exit_code = 130
    meaning = "interrupted (Ctrl-C or SIGTERM): what was finished is kept"


# What interrupted this process: the CLI turns SIGTERM into KeyboardInterrupt (every command then keeps what it
# finished), so the exception cannot tell; messages and cell reasons read the signal from here.
_interruption = "Ctrl-C"


def note_interruption(cause: str) -> None:
    """Record what is about to interrupt this process ("Ctrl-C", "SIGTERM"), before KeyboardInterrupt is raised."""
    global _interruption
    _interruption = cause


def interruption() -> str:
    """What interrupted this process: "SIGTERM" when the CLI's handler said so, else "Ctrl-C"."""
    return _interruption


def exit_code_table() -> list[tuple[int, str, str]]:
    """(code, error class, meaning) for every exit code the CLI uses; 0 is success."""
    classes: list[type[OnnxstyleError]] = []
    pending = [OnnxstyleError]
    while pending:
        current = pending.pop()
        classes.append(current)
        pending.extend(current.__subclasses__())
    rows = {(cls.exit_code, cls.__name__, cls.meaning) for cls in classes if cls is not OnnxstyleError and cls.__module__ == __name__}
    return sorted(rows)


def exit_code_markdown() -> str:
    """The exit-code table of docs/reliability.md, generated from the classes above."""
    lines = ["| code | meaning | error |", "|---|---|---|", "| 0 | success | – |"]
    lines += [f"| {code} | {meaning} | `{name}` |" for code, name, meaning in exit_code_table()]
    return "\n".join(lines)


if __name__ == "__main__":
    print(exit_code_markdown())
