"""What every command shares: the Typer app, the two consoles, JSON output, the progress bar
and the reporter that draws it."""
from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Any, Iterator

import typer
import typer.core
from rich.console import Console
from rich.table import Column
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

# Commands in the order people use them; one not listed here comes after these, by name.
COMMAND_ORDER = ("tune", "record", "verify", "report", "bench", "check", "merge", "replay",
                 "list", "info")


class _UsageOrder(typer.core.TyperGroup):
    def list_commands(self, ctx) -> list[str]:
        rank = {name: index for index, name in enumerate(COMMAND_ORDER)}
        return sorted(self.commands, key=lambda name: (rank.get(name, len(rank)), name))


# rich_markup_mode=None: click's formatter rewraps each docstring paragraph at the terminal's
# width (rich mode keeps the source's line breaks, breaking sentences mid-line) and gives the
# option descriptions the width the type column took.
app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode=None, cls=_UsageOrder,
                  help="Autotune, verify and profile the Triton kernels of sequence models.")
out = Console()
err = Console(stderr=True)


def folder(value: str) -> Path:
    """The ``--profile-dir`` parser: an empty string would silently mean the current folder."""
    if not value.strip():
        raise typer.BadParameter("must name a folder, not an empty string")
    return Path(value)


def emit_json(payload: Any) -> None:
    sys.stdout.write(json.dumps(payload, indent=2, default=str) + "\n")


def progress_bar(console: Console) -> Progress:
    # A long problem description is cut, never wrapped: each bar stays on one line.
    return Progress(TextColumn("{task.description}", markup=False,
                               table_column=Column(no_wrap=True, overflow="ellipsis")),
                    BarColumn(bar_width=20), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, transient=False)


class ConsoleReporter:
    """A ``seqtune.events.Reporter`` that prints status lines and draws progress bars."""

    def __init__(self, console: Console):
        self.console = console

    def message(self, text: str, error: bool = False) -> None:
        self.console.print(text, style="red" if error else None, markup=False, highlight=False)

    @contextlib.contextmanager
    def progress(self) -> Iterator[Progress]:
        with progress_bar(self.console) as bar:
            yield bar
