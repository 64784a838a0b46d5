"""The ``seqtune`` command line: a thin layer that parses arguments, calls ``seqtune.api`` and
renders what it returns (``render.py``, ``render_bench.py``). Commands: ``tune.py`` (tune),
``profiles.py`` (verify, report, merge, list, info), ``tools.py`` (check, bench, replay),
``record.py`` (record).

Exit codes: 0 ok, 1 failures (a kernel disagrees, a profile cannot be read, nothing tunable),
2 bad usage. Every error is one line on stderr, never a traceback (``SEQTUNE_DEBUG=1`` shows it).
"""
from __future__ import annotations

import os
import sys

from seqtune.cli import profiles, record, tools, tune  # noqa: F401  (they register their commands)
from seqtune.cli.app import app, err
from seqtune.errors import Failure, UsageError

__all__ = ["app", "main"]


def main() -> None:
    """Entry point: runs the app, turning known errors into one line and an exit code."""
    from seqtune.store.profile_file import ProfileError

    try:
        app(standalone_mode=True)
    except UsageError as exc:
        # soft_wrap: an error is one line however long its paths, not wrapped at the width
        err.print(f"seqtune: error: {exc}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
    except (Failure, ProfileError) as exc:
        err.print(f"seqtune: error: {exc}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        err.print("seqtune: interrupted")
        sys.exit(130)
    except Exception as exc:  # the last line of defence: one line, unless debugging
        if os.environ.get("SEQTUNE_DEBUG"):
            raise
        err.print(f"seqtune: error: {type(exc).__name__}: {exc} (SEQTUNE_DEBUG=1 for a "
                  "traceback)", markup=False, highlight=False, soft_wrap=True)
        sys.exit(1)
