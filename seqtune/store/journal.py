"""The tuning log: one JSON line per evaluated config, appended and flushed to disk as each
candidate finishes, so a killed tune loses at most the candidate in flight.

Lines live in ``<profile-dir>/logs/<device-key>.jsonl``; each carries the tune's ``run`` id, the
kernel, its source hash, the problem's bucket key, the config, the status ("ok" or a failure
kind), the timing (µs), its fidelity (below 1: a cheap timing of successive halving; a config
timed again more precisely gets a later line) and the error. ``seqtune replay`` replays them;
``seqtune tune --resume`` skips what they already measured.
"""
from __future__ import annotations

import datetime
import errno
import json
import os
from pathlib import Path
from typing import Any, Iterator

from seqtune.errors import Failure


def log_path(profile_dir: Path, device_key: str) -> Path:
    return Path(profile_dir) / "logs" / f"{device_key}.jsonl"


class TuningLog:
    """Appends candidate records to a JSON-lines file, one ``write`` + fsync each."""

    def __init__(self, path: Path, run_id: str):
        self.path = Path(path)
        self.run_id = run_id
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.is_symlink():  # refused before the tune starts; record() checks again
            raise _symlink_refused(self.path)

    def record(self, kernel: str, source_hash: str, problem: dict[str, Any],
               candidate: Any) -> None:
        line = {
            "run": self.run_id, "kernel": kernel, "source_hash": source_hash,
            "problem": problem, "config": candidate.config, "status": candidate.status,
            "time_us": candidate.timing.as_dict() if candidate.timing else None,
            "max_rel_err": candidate.agreement.max_rel_err if candidate.agreement else None,
            "error": candidate.error or None, "reused": candidate.reused,
            "fidelity": candidate.fidelity,
            "at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        # One write of one line with O_APPEND: concurrent tunes never interleave inside a line.
        data = (json.dumps(line, default=str) + "\n").encode()
        # O_NOFOLLOW: a symlink planted at the log's place must not make a tune append to (or
        # create) a file outside the profile dir.
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise _symlink_refused(self.path) from None
            raise
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)


def _symlink_refused(path: Path) -> Failure:
    return Failure(f"{path}: the tuning log is a symbolic link; seqtune does not follow links "
                   "for its log (remove it)")


def read_log(path: Path) -> Iterator[dict[str, Any]]:
    """The records of a log; a torn last line (a tune killed mid-write) is skipped, and so is
    any other line that is not a JSON object (or nests too deep to parse)."""
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            try:
                record = json.loads(line)
            except (json.JSONDecodeError, RecursionError):
                continue
            if isinstance(record, dict):
                yield record
