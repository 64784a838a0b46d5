"""Short cell text for tables that fit 80 columns: times with units, compact configs (``64x32
w8 s1``, one line per stage), the problem fields that vary, ratios, and shortened reasons.
Pure string work: nothing here imports torch or Triton."""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

DTYPE_SHORT = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "float64": "fp64"}
LAUNCH_KNOBS = {"num_warps": "w", "num_stages": "s"}


def time_text(microseconds: float | None) -> str:
    """A duration in the unit that keeps it short: ``"12.3µs"``, ``"197ms"``, ``"1.20s"``."""
    if microseconds is None or not math.isfinite(microseconds):
        return "-"
    for unit, size in (("s", 1e6), ("ms", 1e3)):
        if microseconds >= size:
            return f"{microseconds / size:.3g}{unit}"
    return f"{microseconds:.3g}µs"


def time_range_text(time_us: Mapping[str, float] | None, spread: bool = False) -> str:
    """The median time, with ``[p20-p80]`` after it when ``spread``."""
    time_us = time_us or {}
    median = time_text(time_us.get("median"))
    if not spread or time_us.get("p20") is None:
        return median
    return f"{median} [{time_text(time_us['p20'])}-{time_text(time_us['p80'])}]"


def count_text(count: int, noun: str, plural: str | None = None) -> str:
    """``"1 entry"``, ``"2 entries"``, ``"3 problems"``: a count with its noun agreeing."""
    if count == 1:
        return f"1 {noun}"
    return f"{count} {plural or (noun[:-1] + 'ies' if noun.endswith('y') else noun + 's')}"


def number_text(value: float | None, fmt: str = "{:.3g}") -> str:
    return "-" if value is None else fmt.format(value)


def ratio_text(value: float | None) -> str:
    """``"1.25x"``; two significant digits below 0.1 (``"0.0017x"``, not ``"0.00x"``)."""
    if value is None:
        return "-"
    return f"{value:.2f}x" if value >= 0.1 else f"{value:.2g}x"


def percent_text(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}%" if value >= 10 else f"{value:.1f}%"


def value_text(value: Any) -> str:
    """A problem value as a cell: dtypes short, booleans as yes/no, multiples of 1024 in k."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int) and value >= 1024 and value % 1024 == 0:
        return f"{value // 1024}k"  # lengths and sizes: 4k = 4096, as `--lengths` reads them
    return DTYPE_SHORT.get(str(value), str(value))


def field_text(key: str, value: Any) -> str:
    """``T=64``, ``causal`` / ``no-causal``, ``dtype=bf16``: one problem field as one word."""
    if isinstance(value, bool):
        return key if value else f"no-{key}"
    return f"{key}={value_text(value)}"


def problem_text(problem: Mapping[str, Any], keys: Iterable[str] | None = None) -> str:
    """The named fields (all when None) as words separated by spaces."""
    keys = list(problem) if keys is None else list(keys)
    return " ".join(field_text(k, problem[k]) for k in keys if k in problem)


def varying_fields(problems: list[Mapping[str, Any]]) -> list[str]:
    """The fields whose value differs between the problems (in the first problem's order),
    fields missing from some problems included."""
    keys: list[str] = []
    for problem in problems:
        keys += [k for k in problem if k not in keys]
    return [k for k in keys
            if len({repr(p.get(k, "-")) for p in problems}) > 1]


def fixed_fields(problems: list[Mapping[str, Any]]) -> dict[str, Any]:
    """The fields every problem shares with one value."""
    if not problems:
        return {}
    varying = set(varying_fields(problems))
    return {k: v for k, v in problems[0].items() if k not in varying}


def is_tile(key: str, value: Any) -> bool:
    """Block sizes: ``BLOCK_M``, ``BT``, ``BK``, ... (an upper-case B name with an int)."""
    name = key.upper() == key and (key.startswith("BLOCK") or
                                   (key.startswith("B") and 2 <= len(key) <= 3))
    return name and isinstance(value, int) and not isinstance(value, bool)


def _group(config: Mapping[str, Any]) -> str:
    tiles = [str(v) for k, v in config.items() if is_tile(k, v)]
    words = ["x".join(tiles)] if tiles else []
    words += [f"{LAUNCH_KNOBS[k]}{v}" for k, v in config.items() if k in LAUNCH_KNOBS]
    words += [field_text(k, v) for k, v in config.items()
              if not is_tile(k, v) and k not in LAUNCH_KNOBS]
    return " ".join(words)


def _stages(config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``{"": shared knobs, "wy": {"BK": 32, ...}, ...}`` in the config's order."""
    groups: dict[str, dict[str, Any]] = {"": {}}
    for key, value in config.items():
        stage, dot, name = key.rpartition(".")
        groups.setdefault(stage if dot else "", {})[name if dot else key] = value
    return groups


def config_lines(config: Mapping[str, Any] | None) -> list[str]:
    """A config compactly: ``["64x32 w8 s1"]``; with stages one line per stage,
    ``["BT=32", "wy 32x32 w8 s2", "h 32 w4 s2"]`` (shared knobs first)."""
    if not config:
        return ["-"]
    lines = []
    for stage, knobs in _stages(config).items():
        if not knobs:
            continue
        if stage:
            lines.append(f"{stage} {_group(knobs)}")
        else:  # shared knobs of a staged config keep their names: they are not one kernel's
            shared = " ".join(field_text(k, v) for k, v in knobs.items())
            lines.append(_group(knobs) if len(_stages(config)) == 1 else shared)
    return lines


def config_text(config: Mapping[str, Any] | None) -> str:
    return "\n".join(config_lines(config))


def config_legend(config: Mapping[str, Any] | None) -> str:
    """How to read ``config_text`` of a kernel's configs: ``"config: BLOCK_M x BLOCK_N, w =
    num_warps, s = num_stages"`` (per stage for a staged config)."""
    if not config:
        return ""
    stages = _stages(config)
    staged = len(stages) > 1
    parts, launch = [], False
    for stage, knobs in stages.items():
        launch = launch or any(k in LAUNCH_KNOBS for k in knobs)
        tiles = [k for k, v in knobs.items() if is_tile(k, v)]
        if tiles and (stage or not staged):  # a staged config's shared knobs keep their names
            parts.append(f"{stage + ': ' if stage else ''}{' x '.join(tiles)}")
    if launch:
        parts.append("w = num_warps, s = num_stages")
    return "config: " + "; ".join(parts) if parts else ""


def shorten(text: str | None, limit: int) -> str:
    """``text`` on one line, cut at a word boundary to at most ``limit`` characters with an
    ellipsis (the full text stays in ``--json``)."""
    if not text:
        return ""
    line = " ".join(str(text).split())
    if len(line) <= limit:
        return line
    cut = line[:limit - 1]
    if " " in cut and line[limit - 1] != " ":  # end on a whole word
        cut = cut[:cut.rindex(" ")]
    return cut.rstrip(" ,;:") + "…"
