"""Matplotlib without a screen: one way for every report's chart to be drawn and written."""

from __future__ import annotations

from typing import Any, BinaryIO

DPI = 110


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (imported on first use: a report without a chart never pays for it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(figure: Any, out: BinaryIO, fmt: str = "png") -> None:
    """Lay out, write and close ``figure`` (closed even when writing fails, so figures never pile up)."""
    try:
        figure.tight_layout()
        figure.savefig(out, dpi=DPI, format=fmt)
    finally:
        pyplot().close(figure)
