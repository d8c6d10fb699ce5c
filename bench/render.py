"""Output: progress notes on stderr; tables on stdout (rich) and as Markdown (RESULTS.md)."""

from __future__ import annotations

import sys
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table as RichTable
from rich.text import Text

err = Console(stderr=True, highlight=False)
out = Console(highlight=False, width=None if sys.stdout.isatty() else 200)


@dataclass(frozen=True)
class Table:
    """A result table, rendered the same way to the terminal and to Markdown."""

    title: str
    columns: list[str]
    rows: list[list[str]]
    note: str = ""


def say(message: str) -> None:
    err.print(Text(f"bench: {message}", style="cyan"), soft_wrap=True)


def warn(message: str) -> None:
    err.print(Text(f"bench: {message}", style="bold red"), soft_wrap=True)


def to_rich(table: Table) -> RichTable:
    t = RichTable(title=table.title, title_justify="left", caption=table.note or None,
                  caption_justify="left")
    for col in table.columns:
        t.add_column(col, overflow="fold")
    for row in table.rows:
        t.add_row(*row)
    return t


def show(tables: list[Table]) -> None:
    for table in tables:
        out.print(to_rich(table))
        out.print()


def _cell(value: str) -> str:
    return value.replace("|", "\\|").replace("\n", " ")


def to_markdown(table: Table) -> str:
    lines = [f"### {table.title}", "",
             "| " + " | ".join(_cell(c) for c in table.columns) + " |",
             "|" + "|".join("---" for _ in table.columns) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in table.rows]
    if table.note:
        lines += ["", table.note]
    return "\n".join(lines) + "\n"


def markdown(tables: list[Table]) -> str:
    return "\n".join(to_markdown(t) for t in tables)
