"""Reading a model's ``config.json`` as hostile input, and the limits its fields must respect.

A config is read like a profile (``seqtune.store.safe_read``): a regular file only (a FIFO or a
symlink to ``/dev/zero`` would block or never end), at most ``MAX_CONFIG_BYTES`` (a real
config.json is a few KB), JSON nested at most ``MAX_DEPTH`` levels (``json.loads`` recurses).
Every size a problem takes from it is a positive integer within what the kernels run, checked
before anything imports torch or allocates: a bad value is a one-line ValueError naming the
field and the value. The kernel limits are copied here so that this check needs no torch;
tests/test_model_config_hardening.py holds them equal to the kernels' own.
"""
from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from seqtune.store.safe_read import UnsafeFile, read_regular_file

MAX_CONFIG_BYTES = 1024 * 1024
MAX_DEPTH = 32  # transformers' configs nest 3-4 levels (text_config.rope_parameters....)

# What the kernels take (each kernel's op checks the same at run time):
ATTENTION_HEAD_DIMS = (1, 512)        # attention.op.MAX_HEAD_DIM
DELTA_RULE_HEAD_DIMS = (16, 256)      # delta_rule.op.MIN_HEAD_DIM, MAX_HEAD_DIM
SSD_HEAD_DIMS = (1, 512)              # linear_attention.op.MAX_HEAD_DIM (ssd's n and p)
SELECTIVE_SCAN_STATES = (1, 256)      # selective_scan.op.MAX_BWD_STATE_DIM
CONV_WIDTHS = (2, 8)                  # causal_conv1d.op.WIDTHS
# Model sizes far beyond any model, so that a typo or a hostile file cannot ask for terabytes:
MAX_COUNT = 4096                      # layers, heads, groups, expand
MAX_WIDTH = 1 << 20                   # hidden and intermediate sizes, channels
MAX_BATCH = 4096
MAX_LENGTH = 1 << 20
MAX_ELEMENTS = (1 << 31) - 1          # one tensor's elements: the kernels index with int32
# seqtune.spec.dtype_name's names and aliases (spec imports torch)
DTYPE_NAMES = {"float32": "float32", "float16": "float16", "bfloat16": "bfloat16",
               "fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "half": "float16",
               "float": "float32"}


def read_config(path: str | Path) -> dict[str, Any]:
    """A ``config.json`` as a dict; a one-line ValueError naming the file otherwise."""
    path = Path(path)
    try:
        raw = read_regular_file(path, MAX_CONFIG_BYTES)
    except UnsafeFile as exc:
        raise ValueError(f"model config {path} is not read: {exc}") from None
    except OSError as exc:
        raise ValueError(f"cannot read model config {path}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"model config {path} is not UTF-8 text") from None
    if _depth(text) > MAX_DEPTH:
        raise ValueError(f"model config {path} is JSON nested deeper than {MAX_DEPTH} levels")
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"model config {path} is not valid JSON: {exc.msg} (line "
                         f"{exc.lineno})") from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise ValueError(f"model config {path} is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise ValueError(f"model config {path} must hold a JSON object, got "
                         f"{type(config).__name__}")
    return config


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')


def _depth(text: str) -> int:
    """The deepest nesting of ``[``/``{`` outside strings, without recursion."""
    depth = deepest = 0
    for bracket in re.findall(r"[][{}]", _STRING.sub("", text)):
        depth += 1 if bracket in "[{" else -1
        deepest = max(deepest, depth)
    return deepest


def positive(config: Mapping[str, Any], name: str, default: Any = None,
             limits: tuple[int, int] = (1, MAX_WIDTH), prefix: str = "") -> int:
    """``config[name]`` (or ``default``): an integer within ``limits``; a one-line ValueError
    naming the field (``prefix`` for a nested one) and the value otherwise."""
    return in_range(f"{prefix}{name}", config.get(name, default), limits)


def in_range(name: str, value: Any, limits: tuple[int, int]) -> int:
    low, high = limits
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        what = "a positive integer" if low == 1 else f"an integer from {low}"
        raise ValueError(f"{name} must be {what} up to {high}, got {shown(value)}")
    return value


def shown(value: Any, limit: int = 60) -> str:
    """``repr(value)``, shortened to keep an error on one short line."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def count_of(config: Mapping[str, Any], name: str, default: Any = None, prefix: str = "") -> int:
    """A number of layers, heads or groups."""
    return positive(config, name, default, (1, MAX_COUNT), prefix)


def parse_sizes(text: str, flag: str) -> tuple[int, ...]:
    """``"1k,4k,512"`` -> ``(512, 1024, 4096)`` (``k`` = 1024), sorted, without repeats; a
    one-line ValueError naming ``flag`` and the first item that is not a positive integer."""
    sizes = set()
    for item in text.split(","):
        match = re.fullmatch(r"\s*(\d{1,12})\s*([kK]?)\s*", item)
        size = int(match.group(1)) * (1024 if match.group(2) else 1) if match else 0
        if size <= 0:
            raise ValueError(f"{flag}: {shown(item.strip())} is not a positive integer (expected "
                             "e.g. 1, 8, 512, 1k)")
        sizes.add(size)
    return tuple(sorted(sizes))


def config_dtype_name(name: Any) -> str:
    """A dtype as a config names it (``"bfloat16"``, ``"torch.float16"``, ``"bf16"``) ->
    seqtune's name; a one-line ValueError otherwise."""
    if isinstance(name, str) and name.removeprefix("torch.") in DTYPE_NAMES:
        return DTYPE_NAMES[name.removeprefix("torch.")]
    raise ValueError(f"model config: dtype {shown(name)} is not one seqtune runs (float32, "
                     f"float16, bfloat16)")

