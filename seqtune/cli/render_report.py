"""``seqtune report`` rendered: per profile a table per kernel, and for two or more profiles the
per-problem speedup of each later profile over the first as a table with a bar chart."""
from __future__ import annotations

import math
from typing import Any

from rich.console import Console

from seqtune.cli.cells import (
    config_legend,
    config_text,
    count_text,
    number_text,
    percent_text,
    problem_text,
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
from seqtune.cli.render import (
    INTERPRETER_SPEEDUPS,
    by_kernel,
    fixed_line,
    speedup_cell,
    speedup_header,
)
from seqtune.tuning.timing import INTERPRETER_LABEL

BAR_HALF = 10  # characters on each side of the 1x axis


def show_report(console: Console, report) -> None:
    """Every profile of an ``api.report`` result, then the comparison."""
    if report.folder is not None:
        print_path(console, "profiles read from", report.folder)
    for (path, profile), rows in zip(report.profiles, report.rows_by_file):
        show_profile(console, path, profile, rows)
    if report.comparison:
        show_comparison(console, report)
    elif len(report.profiles) > 1:
        console.print()
        print_lines(console, [f"nothing to compare: the profiles share no problem with "
                              f"{report.profiles[0][0]} (kernel, categorical fields and size "
                              "buckets must all match)"])


def show_profile(console: Console, path, profile: dict[str, Any],
                 rows: list[dict[str, Any]]) -> None:
    device = profile.get("device") or {}
    software = profile.get("software") or {}
    console.print()
    print_path(console, "profile", path)
    print_lines(console, [f"{device.get('name', '?')} ({device.get('key', '?')}, "
                          f"{device.get('backend', '?')}) · triton {software.get('triton', '?')}"
                          f" · torch {software.get('torch', '?')}"])
    interpreter = any(r["timer"] == INTERPRETER_LABEL for r in rows)
    print_lines(console, [INTERPRETER_SPEEDUPS if interpreter
                          else "times: do_bench median [p20-p80]"])
    if not rows:
        print_lines(console, ["no entries"])
    for kernel, kernel_rows in by_kernel(rows).items():
        heading(console, f"{kernel}: {count_text(len(kernel_rows), 'entry')}")
        _kernel_table(console, kernel_rows, interpreter)


def _kernel_table(console: Console, rows: list[dict[str, Any]], interpreter: bool) -> None:
    problems = [r["problem"] or {} for r in rows]
    line = fixed_line(problems)
    if line:
        print_lines(console, [line])
    peaks = [r["percent_of_peak"] for r in rows]
    columns = with_problem(problems, console.width, [
        Column("best config", [config_text(r["config"]) for r in rows]),
        Column("time", [time_text((r["time_us"] or {}).get("median")) for r in rows],
               justify="right"),
        Column(speedup_header(interpreter),
               [speedup_cell(r["speedup_vs_default"], interpreter) for r in rows],
               justify="right"),
        Column("% peak", [percent_text(p) for p in peaks] if any(p is not None for p in peaks)
               else [], priority=1, justify="right"),
        Column("stale", ["[yellow]yes[/]" if r["stale"] else "" for r in rows]
               if any(r["stale"] for r in rows) else [], priority=1),
        Column("TFLOP/s", [number_text(r["tflops"]) for r in rows], priority=2,
               justify="right"),
        Column("GB/s", [number_text(r["gbps"]) for r in rows], priority=3, justify="right"),
        Column("max rel err", [number_text(r["max_rel_err"], "{:.1e}") for r in rows],
               priority=3, justify="right"),
        Column("p20-p80", [time_range_text(r["time_us"], spread=True).partition(" ")[2]
                           for r in rows], priority=4, justify="right"),
        Column("tried/failed", [f"{r['tried']}/{sum((r['failed'] or {}).values())}"
                                for r in rows], priority=4, justify="right"),
    ])
    print_table(console, columns)
    legend = config_legend(rows[0]["config"])
    if legend:
        print_lines(console, [legend])
    reasons: dict[str, int] = {}
    for r in rows:
        if r["stale"]:
            reasons[r["stale"]] = reasons.get(r["stale"], 0) + 1
    for reason, count in reasons.items():
        print_lines(console, [f"stale ({count_text(count, 'entry')}): {reason}"])


# ------------------------------------------------------------------------------ comparison

def show_comparison(console: Console, report) -> None:
    """Per kernel and later profile: the time of each shared problem in the first profile and
    in that one, the speedup (time in the first / time in this one) and a bar on a log scale
    centred on 1x: right of the axis faster, left slower."""
    from seqtune.spec import format_problem

    base_path = report.profiles[0][0]
    problems = {(r["kernel"], format_problem(r["problem"] or {})): r["problem"] or {}
                for r in report.rows_by_file[0]}
    interpreter = any(r["timer"] == INTERPRETER_LABEL for rows in report.rows_by_file
                      for r in rows)
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in report.comparison:
        groups.setdefault((row["kernel"], row["file"]), []).append(row)
    console.print()
    print_lines(console, [f"speedup over {base_path} (time there / time here)"
                          + ("; CPU wall-clock, not GPU timings" if interpreter else "")])
    for (kernel, path), rows in groups.items():
        heading(console, f"{kernel}: speedup of {path}")
        shown = [problems[(kernel, r["problem"])] for r in rows]
        speedups = [r["base_time_us"] / r["time_us"] if r["time_us"] else None for r in rows]
        line = fixed_line(shown)
        if line:
            print_lines(console, [line])
        scale = max([abs(math.log2(s)) for s in speedups if s] + [1.0])
        print_table(console, with_problem(shown, console.width, [
            Column("first", [time_text(r["base_time_us"]) for r in rows], justify="right",
                   priority=1),
            Column("this", [time_text(r["time_us"]) for r in rows], justify="right",
                   priority=1),
            Column("speedup", [f"{s:.2f}x" if s else "-" for s in speedups], justify="right"),
            Column(f"{'slower':>{BAR_HALF}}│faster",
                   [speedup_bar(s, scale, interpreter) for s in speedups]),
            Column("configs", [_config_change(r) for r in rows], priority=2, wrap=True,
                   min_width=16),
        ]))


def speedup_bar(speedup: float | None, scale: float, muted: bool = False) -> str:
    """A bar of ``BAR_HALF`` characters at most either side of a ``│`` axis: its length is
    |log2 speedup| over ``scale`` (so 2x and 0.5x are equally long), right when faster."""
    if not speedup:
        return ""
    length = min(BAR_HALF, round(abs(math.log2(speedup)) / scale * BAR_HALF))
    colour = "dim" if muted else "green" if speedup >= 1 else "red"
    bar = f"[{colour}]{'█' * length}[/]" if length else ""
    if speedup >= 1:
        return " " * BAR_HALF + "│" + bar
    return " " * (BAR_HALF - length) + bar + "│"


def _config_change(row: dict[str, Any]) -> str:
    if row["config"] == row["base_config"]:
        return "same config"
    return config_text(row["config"]).replace("\n", "; ")



def show_coverage(console: Console, model_config, rows: list[dict[str, Any]]) -> None:
    """Per kernel: each problem the model runs and whether the profile has it tuned (in its
    own buckets), has a nearer or farther entry the loader would use instead, or nothing."""
    tuned = sum(r["status"] == "tuned" for r in rows)
    heading(console, f"{model_config}: {tuned} of {count_text(len(rows), 'problem')} tuned")
    origins = list(dict.fromkeys(r["origin"] for r in rows if r["origin"]))
    for origin in origins:
        print_path(console, "tuned configs from", origin)
    if not origins:
        print_lines(console, ["no profile entry applies: every problem runs its kernel's "
                              "default config"])
    for kernel, kernel_rows in by_kernel(rows).items():
        heading(console, kernel)
        problems = [r["problem"] for r in kernel_rows]
        line = fixed_line(problems)
        if line:
            print_lines(console, [line])
        status = {"tuned": "[green]tuned[/]", "nearest": "[yellow]nearest[/]",
                  "default": "[red]default[/]"}
        columns = with_problem(problems, console.width, rest=[
            Column("runs with", [status[r["status"]] for r in kernel_rows]),
            Column("config", [config_text(r["config"]) for r in kernel_rows], priority=2),
            Column("log2 away", ["-" if r["distance"] is None or r["status"] == "tuned"
                                 else f"{r['distance']:g}" for r in kernel_rows],
                   justify="right", priority=1),
        ])
        print_table(console, columns)
    if tuned < len(rows):
        print_lines(console, ["nearest: the loader uses the closest tuned entry of another size "
                              "bucket; default: no usable entry. Tune them with `seqtune tune "
                              "--model-config` and the same size flags."])

