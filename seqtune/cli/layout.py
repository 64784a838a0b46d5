"""Tables that fit the console's width (80 columns in a standard terminal, and in a pipe, a CI
log or ``tee``, where rich has no terminal and uses ``$COLUMNS`` or 80).

A view lists its columns with a priority: when the table would be wider than the console, the
columns of the highest priority are left out first (wider terminals show more). No cell is ever
broken inside a word or number: one-line columns never wrap, and the text columns that may wrap
do so only between words; a word that still does not fit is shortened with an ellipsis.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable, Sequence

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

SEPARATOR = 2  # a column's right padding and the (blank) rule between columns


@dataclasses.dataclass
class Column:
    """A column of a view: its header, its cells (rich markup, or ``Text``), and how it fits.

    ``priority`` 0 is always shown; columns of a higher priority are dropped first.
    ``wrap``: the cells may wrap between words (long text such as reasons); the column is then
    at least ``min_width`` wide (or its longest word), else as wide as its longest line."""

    header: str
    cells: list
    priority: int = 0
    justify: str = "left"
    wrap: bool = False
    min_width: int = 12


def as_text(cell) -> Text:
    return cell if isinstance(cell, Text) else Text.from_markup(str(cell))


def needed_width(column: Column) -> int:
    """The width the column needs: its longest line, or for a wrapping column its longest word
    (at least ``min_width``, at most its longest line)."""
    texts = [as_text(c) for c in column.cells] + [Text(column.header)]
    lines = [line for t in texts for line in t.plain.splitlines()] or [""]
    longest_line = max(Text(line).cell_len for line in lines)
    if not column.wrap:
        return longest_line
    longest_word = max((Text(w).cell_len for line in lines for w in line.split()), default=0)
    return min(longest_line, max(longest_word, column.min_width))


def table_width(columns: Sequence[Column]) -> int:
    return sum(needed_width(c) for c in columns) + SEPARATOR * (len(columns) - 1)


def fitting_columns(columns: Sequence[Column], width: int) -> list[Column]:
    """The columns to show: all that fit in ``width``, leaving out the highest priorities first
    (a whole priority level at a time, so related columns go together)."""
    shown = [c for c in columns if c.cells or c.priority == 0]
    for level in sorted({c.priority for c in shown if c.priority > 0}, reverse=True):
        if table_width(shown) <= width:
            break
        shown = [c for c in shown if c.priority != level]
    return shown


def table(columns: Sequence[Column], width: int, sections: Iterable[int] = ()) -> Table:
    """A rich table of the columns that fit ``width``; a line is drawn after each row index in
    ``sections``."""
    shown = fitting_columns(columns, width)
    result = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, expand=False,
                   padding=(0, 1, 0, 0))
    for column in shown:
        result.add_column(column.header, justify=column.justify, no_wrap=not column.wrap,
                          overflow="ellipsis",
                          min_width=min(column.min_width, needed_width(column))
                          if column.wrap else None)
    rows = max((len(c.cells) for c in shown), default=0)
    ends = set(sections)
    for index in range(rows):
        result.add_row(*(as_text(c.cells[index]) if index < len(c.cells) else Text("")
                         for c in shown), end_section=index in ends)
    return result


def print_lines(console: Console, lines: Iterable[str]) -> None:
    """Plain lines (no markup), wrapped between words at the console's width."""
    for line in lines:
        console.print(Text(line), overflow="ellipsis")


def print_path(console: Console, label: str, path: object) -> None:
    """``label: path`` on one line: a path is never wrapped, so it can be copied."""
    console.print(f"{label}: {path}", markup=False, highlight=False, soft_wrap=True)


def heading(console: Console, text: str) -> None:
    console.print()
    console.print(Text(text, style="bold"), overflow="ellipsis")


def problem_columns(problems: Sequence[dict], width: int, rest: Sequence[Column] = (),
                    blank: Iterable[int] = ()) -> list[Column]:
    """The problem fields that vary between ``problems``, as columns to go before ``rest``:
    one column per field (values only) when the table's essential columns then fit
    ``width``; else one column per size field and a ``kind`` column naming the categorical
    values (a flag by its name when set); else one ``problem`` column of ``key=value`` words
    that wraps between them. Rows in ``blank`` show nothing (they continue the row above)."""
    from seqtune.cli.cells import field_text, value_text, varying_fields

    keys = varying_fields(list(problems))
    skip = set(blank)
    essential = [c for c in rest if c.priority == 0]

    def cells(text) -> list[str]:
        return ["" if i in skip else text(p) for i, p in enumerate(problems)]

    def fits(option: list[Column]) -> bool:
        return table_width([*option, *essential]) <= width

    separate = [Column(k, cells(lambda p, k=k: value_text(p.get(k, "-"))), justify="right")
                for k in keys]
    if not separate or fits(separate):
        return separate
    sizes = [k for k in keys if all(_is_size(p.get(k)) for p in problems)]
    kinds = [k for k in keys if k not in sizes]
    mixed = [c for c in separate if c.header in sizes]
    if kinds:
        mixed.append(Column("kind", cells(lambda p: _kind_text(p, kinds)), wrap=True,
                            min_width=10))
    if sizes and fits(mixed):
        return mixed
    return [Column("problem", cells(lambda p: " ".join(field_text(k, p[k]) for k in keys
                                                         if k in p)),
                   wrap=True, min_width=min(24, width // 3))]


def _is_size(value) -> bool:
    return value is None or (isinstance(value, int) and not isinstance(value, bool))


def _kind_text(problem: dict, kinds: list[str]) -> str:
    from seqtune.cli.cells import value_text

    words = [k if v is True else value_text(v) for k in kinds
             if (v := problem.get(k)) is not None and v is not False]
    return " ".join(words) or "-"


def with_problem(problems: Sequence[dict], width: int, rest: Sequence[Column],
                 before: Sequence[Column] = (), blank: Iterable[int] = ()) -> list[Column]:
    """``before``, the problem columns (see ``problem_columns``), then ``rest``."""
    shown = problem_columns(problems, width, [*before, *rest], blank)
    return [*before, *shown, *rest]


KIND_NOTE = ("kind: the problem's categorical fields that differ between rows (a flag is "
             "named when set)")


def print_table(console: Console, columns: Sequence[Column], sections: Iterable[int] = ()
                ) -> set[str]:
    """The table of the columns that fit the console, and what a ``kind`` column means; the
    headers shown (so that legends speak only of columns that are there)."""
    shown = fitting_columns(columns, console.width)
    console.print(table(shown, console.width, sections))
    if any(c.header == "kind" for c in shown):
        print_lines(console, [KIND_NOTE])
    return {c.header for c in shown}
