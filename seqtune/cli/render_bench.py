"""``seqtune bench`` rendered: one table per kernel (fitting 80 columns), and time-vs-length
sparkline charts."""
from __future__ import annotations

import math
from typing import Any

from rich.console import Console

from seqtune.analysis.bench import LENGTH_FIELDS
from seqtune.cli.cells import (
    config_legend,
    config_text,
    count_text,
    number_text,
    percent_text,
    problem_text,
    ratio_text,
    shorten,
    time_range_text,
    time_text,
)
from seqtune.cli.layout import (
    Column,
    heading,
    print_lines,
    print_path,
    print_table,
    with_problem,
)
from seqtune.cli.render import NOTE_LENGTH, by_kernel, fixed_line


def show_bench(console: Console, payload: dict[str, Any]) -> None:
    """Per kernel a table (a row per problem and implementation; the time, % of the roofline
    where the device's peak is known, and each baseline's time over it), why any implementation
    has no time below it, then the time-vs-length chart when lengths vary."""
    interpreter = not payload["gpu_timings"]
    print_lines(console, [f"seqtune bench on {payload['device']['name']}: "
                          + (f"times are {payload['timing_note']}" if interpreter
                             else payload["timing_note"])])
    if payload["profile"]:
        print_path(console, "tuned configs from", payload["profile"])
    else:
        print_lines(console, ["no profile for this device: tuned = default (run `seqtune "
                              "tune` first)"])
    for kernel, records in by_kernel(payload["results"]).items():
        heading(console, f"{kernel}: {count_text(len(records), 'problem')}")
        _kernel_table(console, records)
    if any(r["length"] is not None for r in payload["results"]) and payload["lengths"]:
        console.print()
        print_lines(console, [f"time against length ({payload['timer']}; one log scale for "
                              "all lines)", *chart_lines(payload)])


def _kernel_table(console: Console, records: list[dict[str, Any]]) -> None:
    rows = [(record, impl) for record in records for impl in record["implementations"]]
    impls = [impl for _, impl in rows]
    ok = [impl["status"] == "ok" for impl in impls]
    # a baseline that never ran (not installed here) gets no column, only its note
    baselines = sorted({i["name"] for i, good in zip(impls, ok)
                        if i["kind"] == "baseline" and good})
    firsts = [i == 0 or rows[i - 1][0] is not record for i, (record, _) in enumerate(rows)]
    line = fixed_line([r["problem"] for r in records])
    if line:
        print_lines(console, [line])
    peaks = [impl["percent_of_peak"] for impl in impls]
    blank = [i for i, first in enumerate(firsts) if not first]
    columns = with_problem([record["problem"] for record, _ in rows], console.width,
                           blank=blank, rest=[
        Column("impl", [impl["name"] for impl in impls]),
        Column("config", [_config(record, impl) for record, impl in rows], priority=2),
        Column("time", [time_text(impl["time_us"]["median"]) if good else
                        _STATUS[impl["status"]] for impl, good in zip(impls, ok)],
               justify="right"),
        Column("±", [_spread(impl["time_us"]) if good else "" for impl, good in zip(impls, ok)],
               priority=2, justify="right"),
        Column("% peak", [percent_text(p) for p in peaks] if any(p is not None for p in peaks)
               else [], priority=1, justify="right"),
        *(Column(f"vs\n{b}", [ratio_text(impl["vs_baselines"].get(b)) if good else "-"
                              for impl, good in zip(impls, ok)], priority=1, justify="right")
          for b in baselines),
        Column("TFLOP/s", [number_text(impl["tflops"]) for impl in impls], priority=3,
               justify="right"),
        Column("GB/s", [number_text(impl["gbps"]) for impl in impls], priority=4,
               justify="right"),
        Column("p20-p80", [time_range_text(impl["time_us"], spread=True).partition(" ")[2]
                           if good else "" for impl, good in zip(impls, ok)], priority=5,
               justify="right"),
    ])
    sections = [i - 1 for i, first in enumerate(firsts) if first and i > 0]
    shown = print_table(console, columns, sections)
    legends = [SPREAD_LEGEND if "±" in shown else ""]
    if "config" in shown:
        legends.append(config_legend(next((i["config"] for i in impls if i["config"]), None)))
    if any(header.startswith("vs\n") for header in shown):
        legends.append("vs X: X's time over this one's (above 1x: faster than X)")
    print_lines(console, [text for text in legends if text])
    print_lines(console, _missing_notes(rows) + _noise_warnings(rows))


_STATUS = {"unavailable": "[yellow]n/a[/]", "failed": "[red]failed[/]"}
SPREAD_LEGEND = "±: half the p20-p80 spread of the runs, relative to the median time"


def _spread(time_us: dict[str, float] | None) -> str:
    """``"±4%"``: how far the middle of the runs strays from the median."""
    time_us = time_us or {}
    median, low, high = time_us.get("median"), time_us.get("p20"), time_us.get("p80")
    if low is None or high is None or not median:
        return ""
    return f"±{percent_text(50 * (high - low) / median)}"


def _noise_warnings(rows: list[tuple[dict[str, Any], dict[str, Any]]]) -> list[str]:
    """One line per implementation whose p20-p80 spread exceeds its median on some problem:
    its figures say more about the machine's noise than about the code."""
    noisy: dict[str, int] = {}
    for _, impl in rows:
        time_us = impl["time_us"] or {}
        if impl["status"] == "ok" and time_us.get("p80") is not None and (
                time_us["p80"] - time_us["p20"] > time_us["median"]):
            noisy[impl["name"]] = noisy.get(impl["name"], 0) + 1
    return [f"warning: {name}'s spread exceeds its median on {count} "
            f"problem{'s' if count > 1 else ''}: its times are noise, not a measurement"
            for name, count in noisy.items()]


def _config(record: dict[str, Any], impl: dict[str, Any]) -> str:
    default = next(i["config"] for i in record["implementations"] if i["kind"] == "default")
    if impl["config"] is None:
        return "-"
    if impl["kind"] == "tuned" and impl["config"] == default:
        return "= default"
    return config_text(impl["config"])


def _missing_notes(rows: list[tuple[dict[str, Any], dict[str, Any]]]) -> list[str]:
    """``"fla_chunk unavailable (2 problems): RuntimeError: ..."``: why implementations have
    no time, once per distinct reason (shortened; ``--json`` has it in full)."""
    counts: dict[tuple[str, str, str], int] = {}
    for _, impl in rows:
        if impl["status"] != "ok":
            key = (impl["name"], impl["status"], impl["reason"] or "")
            counts[key] = counts.get(key, 0) + 1
    return [f"{name} {status} ({count} problem{'s' if count > 1 else ''}): "
            f"{shorten(reason, NOTE_LENGTH)}" for (name, status, reason), count in counts.items()]


SPARK_LEVELS = "▁▂▃▄▅▆▇█"
MIN_FIT_LENGTHS = 4


def chart_lines(payload: dict[str, Any]) -> list[str]:
    """Time against length, one line per kernel problem and implementation: a sparkline on one
    log scale shared by every line (so steeper growth shows as a steeper climb), the first and
    last times, and, from four lengths on, the exponent k of a least-squares fit time ~
    length^k (about 2 for attention prefill, 1 for the recurrent and scan kernels once past
    launch overheads)."""
    series = _series(payload["results"])
    times = [t for points in series.values() for _, t, _ in points if t > 0]
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
        by_length = {n: t for n, t, _ in points}
        spark = "".join(_spark(by_length.get(n), low, high) for n in lengths)
        ends = " -> ".join(_timed(point) for point in (points[0], points[-1])[:len(points)])
        lines.append(f"  {impl:<{width}} {spark:<{len(lengths)}}  {ends}  {_exponent(points)}")
    return lines


def _series(results: list[dict[str, Any]]
            ) -> dict[tuple[str, str, str], list[tuple[int, float, str]]]:
    """(kernel, problem without its length fields, implementation) -> [(length, median µs,
    its spread)]."""
    series: dict[tuple[str, str, str], list[tuple[int, float, str]]] = {}
    for record in results:
        if record["length"] is None:
            continue
        fixed = {k: v for k, v in record["problem"].items() if k not in LENGTH_FIELDS}
        for impl in record["implementations"]:
            key = (record["kernel"], problem_text(fixed), impl["name"])
            points = series.setdefault(key, [])
            if impl["status"] == "ok":
                points.append((record["length"], impl["time_us"]["median"],
                               _spread(impl["time_us"])))
    return {key: sorted(points) for key, points in series.items() if points}


def _lengths(series: dict, kernel: str, problem: str) -> list[int]:
    return sorted({n for (k, p, _), points in series.items() if (k, p) == (kernel, problem)
                   for n, _, _ in points})


def _spark(time_us: float | None, low: float, high: float) -> str:
    if time_us is None or time_us <= 0:
        return " "
    share = 0.0 if high == low else (math.log(time_us) - low) / (high - low)
    return SPARK_LEVELS[min(len(SPARK_LEVELS) - 1, int(share * len(SPARK_LEVELS)))]


def _timed(point: tuple[int, float, str]) -> str:
    """``"250µs ±4%"``: a point's median time and its spread."""
    return " ".join(text for text in (time_text(point[1]), point[2]) if text)


def _exponent(points: list[tuple[int, float, str]]) -> str:
    """``"~length^1.97"`` from a least-squares fit in log-log space; blank below
    ``MIN_FIT_LENGTHS`` lengths, where a slope is more noise than growth."""
    if len({n for n, _, _ in points}) < MIN_FIT_LENGTHS:
        return ""
    xs = [math.log(n) for n, _, _ in points]
    ys = [math.log(t) for _, t, _ in points]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = (sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys))
             / sum((x - mean_x) ** 2 for x in xs))
    return f"~length^{slope:.2f}"


def _length(n: int) -> str:
    return f"{n // 1024}k" if n % 1024 == 0 else str(n)
