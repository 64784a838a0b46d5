"""Tables the commands print: each turns what a ``seqtune.api`` call returned into rich
renderables, and computes nothing of its own."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.table import Table

from seqtune.spec import format_config, format_problem
from seqtune.tuning.timing import INTERPRETER_LABEL, INTERPRETER_NOTE


def tune_summaries(results: dict[str, Any]) -> list:
    """A summary table with its profile and log paths per profile a tune wrote (one for a
    single process, one per device type for a fleet)."""
    summaries = results.get("summaries") or [results]
    renderables = []
    for summary in summaries:
        renderables += [summary_table(summary["problems"], summary["timer"]),
                        f"profile: {summary['profile']}", f"tuning log: {summary['log']}"]
    return renderables


def summary_table(problems: list[dict[str, Any]], label: str) -> Table:
    caption = f"times are {INTERPRETER_NOTE}" if label == INTERPRETER_LABEL else "do_bench median"
    compile_s = sum(p["compile_s"] for p in problems)
    benchmark_s = sum(p["benchmark_s"] for p in problems)
    compiled = sum(p["compiled"] for p in problems)
    caption += (f"; waiting on the compiler {compile_s:.1f} s ({compiled} configs compiled "
                f"ahead), benchmarking {benchmark_s:.1f} s")
    table = Table(title="seqtune tune: summary", caption=caption)
    for column in ("kernel", "problem", "best config", "median µs", "vs default", "tried",
                   "failed", "compile s", "bench s"):
        table.add_column(column, overflow="fold")
    for p in problems:
        failed = ", ".join(f"{k} {v}" for k, v in p["failed"].items() if v) or "-"
        seconds = (f"{p['compile_s']:.1f}", f"{p['benchmark_s']:.1f}")
        if p["winner"] is None:
            table.add_row(p["kernel"], format_problem(p["problem"]), "[red]no valid config[/]",
                          "-", "-", str(p["tried"]), failed, *seconds)
            continue
        speedup = p["speedup_vs_default"]
        table.add_row(p["kernel"], format_problem(p["problem"]), format_config(p["winner"]),
                      f"{p['time_us']['median']:.1f}",
                      "n/a" if speedup is None else f"{speedup:.2f}x", str(p["tried"]), failed,
                      *seconds)
    return table


def verify_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="seqtune verify")
    for column in ("kernel", "case", "config", "max abs err", "max rel err", "result"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(row["kernel"], row["case"], row["config_source"],
                      f"{row['max_abs_err']:.2e}", f"{row['max_rel_err']:.2e}",
                      "[green]ok[/]" if row["ok"] else f"[red]FAIL[/] {row['detail']}")
    return table


def merge_table(summary) -> Table:
    table = Table(title=f"seqtune merge: {summary.device_key}")
    for column in ("kernel", "entries", "in several files", "stale kept"):
        table.add_column(column)
    for kernel, count in summary.entries.items():
        table.add_row(kernel, str(count), str(summary.contested[kernel]),
                      str(summary.stale_kept[kernel]))
    return table


def kernels_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="seqtune kernels")
    for column in ("kernel", "family", "space", "stages", "search", "presets", "description"):
        table.add_column(column, overflow="fold")
    for r in rows:
        table.add_row(r["kernel"], r["family"], str(r["space_size"]),
                      ", ".join(r["stages"]) or "-", r["search"],
                      " ".join(f"{k}:{v}" for k, v in r["presets"].items()), r["description"])
    return table


def info_table(facts: dict[str, Any]) -> Table:
    table = Table(title="seqtune info", show_header=False)
    for key, value in facts.items():
        table.add_row(key, json.dumps(value, default=str) if isinstance(value, (dict, list))
                      else str(value))
    return table


def profile_table(profile: dict[str, Any], path: Path, rows: list[dict[str, Any]]) -> Table:
    device = profile.get("device") or {}
    software = profile.get("software") or {}
    interpreter = any(r["timer"] == INTERPRETER_LABEL for r in rows)
    title = (f"{path}\n{device.get('name', '?')} ({device.get('key', '?')}, "
             f"{device.get('backend', '?')}) · triton {software.get('triton', '?')} · "
             f"torch {software.get('torch', '?')}")
    caption = f"times are {INTERPRETER_NOTE}" if interpreter else "times: do_bench median [p20-p80]"
    table = Table(title=title, caption=caption, show_lines=False)
    for column in ("kernel", "problem", "best config", "time µs", "TFLOP/s", "GB/s",
                   "% peak", "vs default", "max rel err", "tried/failed", "note"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*_cells(row))
    return table


def _cells(row: dict[str, Any]) -> list[str]:
    time_us = row["time_us"] or {}
    failed = sum((row["failed"] or {}).values())
    speedup = row["speedup_vs_default"]
    peak = row["percent_of_peak"]
    return [
        row["kernel"], format_problem(row["problem"] or {}), format_config(row["config"] or {}),
        f"{time_us.get('median', float('nan')):.1f} [{time_us.get('p20', float('nan')):.1f}-"
        f"{time_us.get('p80', float('nan')):.1f}]",
        _num(row["tflops"]), _num(row["gbps"]), "n/a" if peak is None else f"{peak:.1f}%",
        "n/a" if speedup is None else f"{speedup:.2f}x", _num(row["max_rel_err"], "{:.1e}"),
        f"{row['tried']}/{failed}", f"STALE: {row['stale']}" if row["stale"] else "",
    ]


def _num(value: Any, fmt: str = "{:.3g}") -> str:
    return "n/a" if value is None else fmt.format(value)



def comparison_table(compared: list[dict[str, Any]]) -> Table:
    table = Table(title="comparison (ratio = time / time in the first profile)")
    for column in ("kernel", "problem", "file", "config", "base µs", "µs", "ratio"):
        table.add_column(column, overflow="fold")
    for row in compared:
        table.add_row(row["kernel"], row["problem"], row["file"], format_config(row["config"]),
                      f"{row['base_time_us']:.1f}", f"{row['time_us']:.1f}", f"{row['ratio']:.2f}")
    return table

def replay_table(payload: dict[str, Any]) -> Table:
    """The rich table of a replay payload."""
    table = Table(title=f"seqtune replay: budget {payload['budget']}, {payload['repeats']} "
                        f"seeded runs each", caption=f"reached: the share of runs whose pick is "
                  f"within {payload['tolerance']:.0%} of the best valid config; evaluations: "
                  "the median configs measured to get there; final gap: how much slower than the best "
                  "the final picks are, on average")
    for column in ("source", "problem", "strategy", "space", "budget", "reached",
                   "median evaluations", "final gap", "beats random"):
        table.add_column(column, overflow="fold")
    for row in payload["results"]:
        strategy = row["strategy"] + (f" ({row['runs_as']})" if row["runs_as"] != row["strategy"]
                                      else "")
        median = row["median_evaluations"]
        verdict = {None: "-", True: "[green]yes[/]", False: "[red]no[/]"}[row["beats_random"]]
        table.add_row("/".join(Path(row["source"]).parts[-2:]), row["problem"], strategy,
                      str(row["space"]),
                      f"{row['budget']} ({row['budget_share']:.1%})",
                      f"{row['reached_share']:.0%}", "-" if median is None else f"{median:g}",
                      f"{row['mean_final_gap']:.2%}", verdict)
    return table


def check_table(results) -> Table:
    table = Table(title="seqtune check (compiled for GPU targets, no GPU needed)")
    for column in ("kernel", "target", "problem", "config", "regs", "spill B", "smem B",
                   "result"):
        table.add_column(column, overflow="fold")
    for r in results:
        info = r.as_dict()
        verdict = ("[red]does not fit[/] " + "; ".join(r.reasons) if r.reasons else
                   "[red]compile error[/] " + (r.error or "") if not r.compiled else
                   "[yellow]spills[/]" if r.spills else "[green]ok[/]")
        label = "default" if r.is_default else format_config(r.config)
        table.add_row(r.kernel, r.target, format_problem(r.problem), label,
                      str(info["registers"]), str(info["spill_bytes"]),
                      str(info["shared_bytes"]), verdict)
    return table
