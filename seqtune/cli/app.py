"""What every command shares: the Typer app, the two consoles, JSON output, the progress bar
and the reporter that draws it."""
from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Any, Iterator

import typer
from rich.console import Console
from rich.table import Column
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
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
