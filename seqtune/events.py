"""How long-running library calls (a tune, a fleet) tell a caller what they are doing without
printing: they call a ``Reporter``. The CLI passes one that draws progress bars and prints
status lines; library users get ``SILENT`` unless they pass their own.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator, Protocol


class Progress(Protocol):
    """The part of ``rich.progress.Progress`` a tune uses."""

    def add_task(self, description: str, total: float | None = None) -> Any: ...

    def advance(self, task: Any, advance: float = 1) -> None: ...

    def update(self, task: Any, total: float | None = None, completed: float | None = None,
               description: str | None = None) -> None: ...


class Reporter(Protocol):
    def message(self, text: str, error: bool = False) -> None:
        """A status line (``error``: something failed but the call goes on)."""

    def progress(self) -> contextlib.AbstractContextManager[Progress]:
        """A progress display for the duration of the ``with`` block."""


class _NoProgress:
    def add_task(self, description: str, total: float | None = None) -> int:
        return 0

    def advance(self, task: Any, advance: float = 1) -> None:
        pass

    def update(self, task: Any, total: float | None = None, completed: float | None = None,
               description: str | None = None) -> None:
        pass


class SilentReporter:
    """Reports nothing."""

    def message(self, text: str, error: bool = False) -> None:
        pass

    @contextlib.contextmanager
    def progress(self) -> Iterator[Progress]:
        yield _NoProgress()


SILENT = SilentReporter()
