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


def save(figure: Any, out: BinaryIO, fmt: str = "png", title: str | None = None) -> None:
    """Lay out, write and close ``figure`` (closed even when writing fails, so figures never pile up).

    ``title`` goes into the file's metadata (PNG, PDF and SVG all carry one), so the file can be recognised later.
    """
    try:
        figure.tight_layout()
        figure.savefig(out, dpi=DPI, format=fmt, metadata={"Title": title} if title else None)
    finally:
        pyplot().close(figure)
