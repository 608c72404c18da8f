"""One plain table model, rendered by rich for the terminal and as Markdown for files (never scraped back)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class TableData:
    """Text in rows and columns. A value's second line is a note: faint on the terminal, after a space in Markdown.

    The first ``left`` columns are labels (left-aligned); the rest are figures (right-aligned). ``faint`` rows
    are context rather than measurements (the 2016 study's figures beside ours).
    """

    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    title: str = ""
    left: int = 1
    faint: set[int] = field(default_factory=set)

    def add(self, *values: str, faint: bool = False) -> None:
        if faint:
            self.faint.add(len(self.rows))
        self.rows.append([str(value) for value in values])


def to_rich(table: TableData) -> Any:
    """A ``rich.table.Table`` of ``table`` (imported here: rendering files needs no terminal library)."""
    from rich.table import Table
    from rich.text import Text

    # Text, not str: a report or file name with brackets is shown as it is, not read as rich markup.
    rendered = Table(title=Text(table.title, style="table.title") if table.title else None, title_justify="left")
    for index, column in enumerate(table.columns):
        rendered.add_column(Text(column), justify="left" if index < table.left else "right")
    for index, row in enumerate(table.rows):
        cells = []
        for value in row:
            first, _, note = value.partition("\n")
            text = Text(first, style="dim" if index in table.faint else "")
            if note:
                text.append("\n" + note, style="dim")
            cells.append(text)
        rendered.add_row(*cells)
    return rendered


def markdown_lines(table: TableData) -> list[str]:
    """GitHub-flavoured Markdown rows (pipes escaped; notes joined onto their value)."""

    def escape(value: str) -> str:
        return value.replace("\n", " ").replace("|", "\\|")

    lines = ["| " + " | ".join(escape(column) for column in table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(escape(value) for value in row) + " |" for row in table.rows]
    return lines
