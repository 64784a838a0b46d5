"""``seqtune bench`` rendered: one table per kernel, and time-vs-length sparkline charts."""
from __future__ import annotations

import math
from typing import Any, Iterable

from seqtune.analysis.bench import LENGTH_FIELDS
from seqtune.spec import format_config, format_problem


def bench_tables(payload: dict[str, Any]) -> list:
    """One rich table per kernel: a row per implementation and problem."""
    from rich.table import Table

    caption = (f"times are {payload['timing_note']}" if not payload["gpu_timings"]
               else payload["timing_note"])
    tables = []
    for kernel, records in _by_kernel(payload["results"]).items():
        baselines = sorted({i["name"] for r in records for i in r["implementations"]
                            if i["kind"] == "baseline"})
        table = Table(title=f"seqtune bench: {kernel} on {payload['device']['name']}",
                      caption=caption)
        for column in ("problem", "implementation", "config", "time [p20 - p80]", "TFLOP/s",
                       "GB/s", "% peak", *(f"vs {b}" for b in baselines), "note"):
            table.add_column(column, overflow="fold", no_wrap=column.startswith("time"))
        for record in records:
            for row in _rows(record, baselines):
                table.add_row(*row)
            table.add_section()
        tables.append(table)
    return tables


def _by_kernel(results: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = {}
    for record in results:
        grouped.setdefault(record["kernel"], []).append(record)
    return grouped


def _rows(record: dict[str, Any], baselines: list[str]) -> Iterable[list[str]]:
    implementations = record["implementations"]
    default = next(i["config"] for i in implementations if i["kind"] == "default")
    for index, impl in enumerate(implementations):
        problem = format_problem(record["problem"]) if index == 0 else ""
        config = ("-" if impl["config"] is None else
                  "= default" if impl["kind"] == "tuned" and impl["config"] == default else
                  format_config(impl["config"]))
        if impl["status"] != "ok":
            colour = "yellow" if impl["status"] == "unavailable" else "red"
            note = f"[{colour}]{impl['status']}[/]: {impl['reason']}"
            yield [problem, impl["name"], config, "-", "-", "-", "-", *("-" for _ in baselines),
                   note]
            continue
        median, p20, p80 = (_time(impl["time_us"][q]) for q in ("median", "p20", "p80"))
        ratios = [_ratio(impl["vs_baselines"].get(b)) for b in baselines]
        yield [problem, impl["name"], config, f"{median} [{p20} - {p80}]",
               _number(impl["tflops"]), _number(impl["gbps"]),
               "n/a" if impl["percent_of_peak"] is None else f"{impl['percent_of_peak']:.1f}%",
               *ratios, ""]


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def _time(microseconds: float) -> str:
    """A duration in the unit that keeps it short: ``"12.3 µs"``, ``"197 ms"``, ``"1.20 s"``."""
    for unit, size in (("s", 1e6), ("ms", 1e3)):
        if microseconds >= size:
            return f"{microseconds / size:.3g} {unit}"
    return f"{microseconds:.3g} µs"


SPARK_LEVELS = "▁▂▃▄▅▆▇█"


def chart_lines(payload: dict[str, Any]) -> list[str]:
    """Time against length, one line per kernel problem and implementation: a sparkline on one
    log scale shared by every line (so steeper growth shows as a steeper climb), the first and
    last times, and the exponent k of a least-squares fit time ~ length^k (about 2 for
    attention prefill, 1 for the recurrent and scan kernels once past launch overheads)."""
    series = _series(payload["results"])
    times = [t for points in series.values() for _, t in points if t > 0]
    if not times:
        return ["nothing to chart: no timed kernel has a sequence length (T, S or L)"]
    low, high = math.log(min(times)), math.log(max(times))
    width = max(len(impl) for _, _, impl in series)
    lines, previous = [], None
    for (kernel, problem, impl), points in series.items():
        if (kernel, problem) != previous:
            lines.append(f"{kernel} {problem}  lengths "
                         f"{', '.join(_length(n) for n in _lengths(series, kernel, problem))}")
            previous = (kernel, problem)
        lengths = _lengths(series, kernel, problem)
        by_length = dict(points)
        spark = "".join(_spark(by_length.get(n), low, high) for n in lengths)
        ends = (f"{_time(points[0][1])} -> {_time(points[-1][1])}" if len(points) > 1
                else _time(points[0][1]))
        lines.append(f"  {impl:<{width}} {spark:<{len(lengths)}}  {ends}  {_exponent(points)}")
    return lines


def _series(results: list[dict[str, Any]]) -> dict[tuple[str, str, str], list[tuple[int, float]]]:
    """(kernel, problem without its length fields, implementation) -> [(length, median µs)]."""
    series: dict[tuple[str, str, str], list[tuple[int, float]]] = {}
    for record in results:
        if record["length"] is None:
            continue
        fixed = {k: v for k, v in record["problem"].items() if k not in LENGTH_FIELDS}
        for impl in record["implementations"]:
            key = (record["kernel"], format_problem(fixed), impl["name"])
            points = series.setdefault(key, [])
            if impl["status"] == "ok":
                points.append((record["length"], impl["time_us"]["median"]))
    return {key: sorted(points) for key, points in series.items() if points}


def _lengths(series: dict, kernel: str, problem: str) -> list[int]:
    return sorted({n for (k, p, _), points in series.items() if (k, p) == (kernel, problem)
                   for n, _ in points})


def _spark(time_us: float | None, low: float, high: float) -> str:
    if time_us is None or time_us <= 0:
        return " "
    share = 0.0 if high == low else (math.log(time_us) - low) / (high - low)
    return SPARK_LEVELS[min(len(SPARK_LEVELS) - 1, int(share * len(SPARK_LEVELS)))]


def _exponent(points: list[tuple[int, float]]) -> str:
    """``"~length^1.97"`` from a least-squares fit in log-log space; blank for one length."""
    if len({n for n, _ in points}) < 2:
        return ""
    xs = [math.log(n) for n, _ in points]
    ys = [math.log(t) for _, t in points]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = (sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys))
             / sum((x - mean_x) ** 2 for x in xs))
    return f"~length^{slope:.2f}"


def _length(n: int) -> str:
    return f"{n // 1024}k" if n % 1024 == 0 else str(n)
