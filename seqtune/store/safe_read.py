"""Reading files that anyone may have planted or damaged, without hanging or exhausting memory.

Profiles and other inputs are read only from regular files (a FIFO would block the reader
forever, ``/dev/zero`` never ends), at most ``MAX_FILE_BYTES``, and YAML is built from the
parser's events as the safe loader would build it, refusing anchors and aliases (a few lines of
aliases expand to billions of nodes for whatever walks the result) and nesting deeper than
``MAX_DEPTH`` (``safe_load`` recurses, so 20,000 levels are a RecursionError).
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
    yaml.YAMLError for text that is not YAML (or uses tags other than the core schema's).

    Built in one pass over the parser's events (libyaml's when present), iteratively, with each
    distinct plain scalar resolved once: several times faster than ``safe_load``, whose
    per-scalar resolution dominates on a profile (its thousands of entries repeat the same
    field names and values)."""
    builder = _Builder()
    for event in yaml.parse(text, Loader=_LOADER):
        builder.feed(event)
    return builder.root


class _Builder:
    """Python objects from YAML events, as the safe loader would construct them."""

    _SCALARS = _LOADER("")  # borrowed for its resolver and its core-schema constructors

    def __init__(self) -> None:
        self.root: Any = None
        self.documents = 0
        self.stack: list[list[Any]] = []  # [container, pending mapping key or _NO_KEY]
        self.plain: dict[str, Any] = {}

    def feed(self, event: yaml.Event) -> None:
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise UnsafeFile(f"YAML anchors and aliases are not allowed{_line(event)}: write "
                             "each value in full (yaml.safe_dump writes aliases for objects it "
                             "sees twice)")
        if isinstance(event, yaml.ScalarEvent):
            self._add(self._scalar(event), event)
        elif isinstance(event, yaml.CollectionStartEvent):
            self._require_core_tag(event, "seq" if isinstance(event, yaml.SequenceStartEvent)
                                   else "map")
            if len(self.stack) >= MAX_DEPTH:
                raise UnsafeFile(f"YAML nested deeper than {MAX_DEPTH} levels{_line(event)}")
            container = [] if isinstance(event, yaml.SequenceStartEvent) else {}
            self._add(container, event)
            self.stack.append([container, _NO_KEY])
        elif isinstance(event, yaml.CollectionEndEvent):
            self.stack.pop()
        elif isinstance(event, yaml.DocumentStartEvent):
            self.documents += 1
            if self.documents > 1:
                raise yaml.composer.ComposerError(
                    "expected a single document in the stream", None,
                    "but found another document", event.start_mark)

    def _add(self, value: Any, event: yaml.Event) -> None:
        if not self.stack:
            self.root = value
            return
        frame = self.stack[-1]
        container, key = frame
        if isinstance(container, list):
            container.append(value)
        elif key is _NO_KEY:
            try:
                hash(value)
            except TypeError:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", None, "found unhashable key",
                    event.start_mark) from None
            frame[1] = value
        else:
            container[key] = value
            frame[1] = _NO_KEY

    def _scalar(self, event: yaml.ScalarEvent) -> Any:
        if event.tag is None and event.implicit[0]:  # a plain scalar: resolved by its text
            if event.value not in self.plain:
                tag = self._SCALARS.resolve(yaml.ScalarNode, event.value, (True, False))
                self.plain[event.value] = self._construct(tag, event)
            return self.plain[event.value]
        if event.tag in (None, "!"):
            return event.value
        return self._construct(event.tag, event)

    def _construct(self, tag: str, event: yaml.ScalarEvent) -> Any:
        if tag not in _CORE_SCALAR_TAGS:
            raise yaml.constructor.ConstructorError(
                None, None, f"could not determine a constructor for the tag {tag!r}",
                event.start_mark)
        node = yaml.ScalarNode(tag, event.value, event.start_mark, event.end_mark, event.style)
        return self._SCALARS.yaml_constructors[tag](self._SCALARS, node)

    @staticmethod
    def _require_core_tag(event: yaml.CollectionStartEvent, kind: str) -> None:
        if event.tag not in (None, "!", f"tag:yaml.org,2002:{kind}"):
            raise yaml.constructor.ConstructorError(
                None, None, f"could not determine a constructor for the tag {event.tag!r}",
                event.start_mark)


_NO_KEY = object()
_CORE_SCALAR_TAGS = {f"tag:yaml.org,2002:{name}" for name in
                     ("null", "bool", "int", "float", "str", "timestamp")}


def _line(event: yaml.Event) -> str:
    mark = getattr(event, "start_mark", None)
    return f" (line {mark.line + 1})" if mark is not None else ""
