"""Typed errors: every failure a user can cause maps to one line and a distinct exit code."""

from __future__ import annotations


class OnnxstyleError(Exception):
    """Base class: the CLI prints ``str(error)`` as one line and exits with ``exit_code``."""

    exit_code: int = 2


class UsageError(OnnxstyleError):
    """Inconsistent or out-of-range options."""

    exit_code = 2


class ImageError(OnnxstyleError):
    """An image is missing, unreadable, corrupt or too small."""

    exit_code = 3


class OutputError(OnnxstyleError):
    """An output path cannot be written."""

    exit_code = 4


class WeightsError(OnnxstyleError):
    """A weights file has the wrong hash, keys or shapes."""

    exit_code = 5


class WeightsNotFoundError(WeightsError):
    """Weights are neither cached nor downloadable; the message is a whole screen of instructions."""

    exit_code = 6


class ExportValidationError(OnnxstyleError):
    """An exported graph disagrees with torch beyond the stated tolerance."""

    exit_code = 7


class ProviderError(OnnxstyleError):
    """An execution provider or device asked for cannot be used here."""

    exit_code = 8


class NumericalError(OnnxstyleError):
    """The loss became NaN or Inf."""

    exit_code = 9


class WorkerError(OnnxstyleError):
    """A worker process crashed, hung, ran out of memory or raised: its cell fails, the run goes on."""

    exit_code = 11
