"""Profile reports: rows for JSON and rich tables, roofline figures, and profile comparison."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table

from seqtune.device import peak_for
from seqtune.tuning.timing import INTERPRETER_LABEL, INTERPRETER_NOTE


def format_problem(problem: dict[str, Any]) -> str:
    parts = []
    for key, value in problem.items():
        if isinstance(value, bool):
            parts.append(key if value else f"no-{key}")
        else:
            parts.append(f"{key}={value}")
    return " ".join(parts)


def format_config(config: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in config.items())


def percent_of_peak(entry: dict[str, Any], device_name: str) -> float | None:
    """Share of the roofline-attainable speed: the time the device's peak compute or bandwidth
    (whichever binds) would need, over the measured time. None where the peak is unknown."""
    problem = entry.get("problem", {})
    return roofline_percent(entry.get("tflops"), entry.get("gbps"),
                            problem.get("dtype", "bfloat16"), device_name)


def roofline_percent(tflops: float | None, gbps: float | None, dtype: Any,
                     device_name: str) -> float | None:
    """``percent_of_peak`` from achieved TFLOP/s and GB/s of a ``dtype`` problem (shared with
    ``seqtune bench``)."""
    peak = peak_for(device_name)
    if peak is None or not tflops or not gbps:
        return None
    peak_tflops = peak.tflops.get(str(dtype), peak.tflops["bfloat16"])
    # tflops/peak and gbps/peak are each "achieved over peak"; the binding one is the larger.
    return 100.0 * max(tflops / peak_tflops, gbps / peak.gbps)


def entry_rows(profile: dict[str, Any], path: Path, kernel: str | None,
               stale: dict[tuple[str, int], str]) -> list[dict[str, Any]]:
    """One flat row per entry, as shown and as written by ``--json``."""
    device = profile.get("device") or {}
    rows = []
    for name, section in (profile.get("kernels") or {}).items():
        if kernel and name != kernel:
            continue
        for index, entry in enumerate(section.get("entries", [])):
            rows.append({
                "file": str(path), "kernel": name, "problem": entry.get("problem"),
                "config": entry.get("config"), "time_us": entry.get("time_us"),
                "default_time_us": entry.get("default_time_us"),
                "speedup_vs_default": entry.get("speedup_vs_default"),
                "tflops": entry.get("tflops"), "gbps": entry.get("gbps"),
                "percent_of_peak": percent_of_peak(entry, str(device.get("name", ""))),
                "max_rel_err": entry.get("max_rel_err"), "tried": entry.get("tried"),
                "failed": entry.get("failed"), "timer": entry.get("timer"),
                "stale": stale.get((name, index)),
            })
    return rows


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


def comparison_rows(rows_by_file: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Problems present in the first profile and another: time ratio (other / first)."""
    first, *others = rows_by_file
    base = {(r["kernel"], format_problem(r["problem"] or {})): r for r in first}
    compared = []
    for rows in others:
        for row in rows:
            key = (row["kernel"], format_problem(row["problem"] or {}))
            if key in base:
                a, b = base[key], row
                compared.append({
                    "kernel": key[0], "problem": key[1], "base_file": a["file"],
                    "file": b["file"], "base_config": a["config"], "config": b["config"],
                    "base_time_us": a["time_us"]["median"], "time_us": b["time_us"]["median"],
                    "ratio": b["time_us"]["median"] / a["time_us"]["median"],
                })
    return compared


def comparison_table(compared: list[dict[str, Any]]) -> Table:
    table = Table(title="comparison (ratio = time / time in the first profile)")
    for column in ("kernel", "problem", "file", "config", "base µs", "µs", "ratio"):
        table.add_column(column, overflow="fold")
    for row in compared:
        table.add_row(row["kernel"], row["problem"], row["file"], format_config(row["config"]),
                      f"{row['base_time_us']:.1f}", f"{row['time_us']:.1f}", f"{row['ratio']:.2f}")
    return table
