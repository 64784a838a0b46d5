"""Reading files that anyone may have planted or damaged, without hanging or exhausting memory.

Profiles and other inputs are read only from regular files (a FIFO would block the reader
forever, ``/dev/zero`` never ends), at most ``MAX_FILE_BYTES``, and YAML is parsed with the safe
constructors after a scan of its events that refuses anchors and aliases (a few lines of
aliases expand to billions of nodes for whatever walks the result) and nesting deeper than
``MAX_DEPTH`` (the constructors recurse, so 20,000 levels are a RecursionError).
"""
from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import yaml

MAX_FILE_BYTES = 16 * 1024 * 1024
MAX_DEPTH = 32  # a profile nests 5 levels (kernels.<name>.entries[i].time_us.median)

# libyaml's parser and composer when present: about four times faster than the pure-Python ones
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class UnsafeFile(ValueError):
    """A file that is not read: not a regular file, too large, or YAML that is refused. The
    message says why, without the file's name (the caller adds it)."""


def read_regular_file(path: Path, limit: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes; UnsafeFile otherwise. A FIFO or
    device is never opened for reading (and O_NONBLOCK keeps a FIFO swapped in between the check
    and the open from blocking); FileNotFoundError and other OSErrors pass through."""
    _require_regular(os.stat(path))
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        info = os.fstat(fd)
        _require_regular(info)
        if info.st_size > limit:
            raise UnsafeFile(_too_large(info.st_size, limit))
        chunks, size = [], 0
        while size <= limit:  # the file may grow after fstat: never read past the limit
            chunk = os.read(fd, min(1 << 20, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise UnsafeFile(_too_large(size, limit))
        return b"".join(chunks)
    finally:
        os.close(fd)


def _require_regular(info: os.stat_result) -> None:
    if not stat.S_ISREG(info.st_mode):
        kind = ("a FIFO" if stat.S_ISFIFO(info.st_mode) else
                "a directory" if stat.S_ISDIR(info.st_mode) else
                "a device" if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode) else
                "a socket" if stat.S_ISSOCK(info.st_mode) else "not a file")
        raise UnsafeFile(f"{kind}, not a regular file; only regular files are read")


def _too_large(size: int, limit: int) -> str:
    return (f"{size / 2**20:.1f} MB is over the {limit / 2**20:g} MB limit for a file seqtune "
            "reads")


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` without anchors, aliases or deep nesting: UnsafeFile for those,
    yaml.YAMLError for text that is not YAML (or uses tags the safe loader does not know)."""
    depth = 0
    for event in yaml.parse(text, Loader=_LOADER):
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise UnsafeFile(f"YAML anchors and aliases are not allowed{_line(event)}: write "
                             "each value in full (yaml.safe_dump writes aliases for objects it "
                             "sees twice)")
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                raise UnsafeFile(f"YAML nested deeper than {MAX_DEPTH} levels{_line(event)}")
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
    return yaml.load(text, Loader=_LOADER)


def _line(event: yaml.Event) -> str:
    mark = getattr(event, "start_mark", None)
    return f" (line {mark.line + 1})" if mark is not None else ""
