"""Profile reports: rows for JSON and rich tables, roofline figures, and profile comparison."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from seqtune.device import peak_for
from seqtune.errors import Failure
from seqtune.spec import format_problem
from seqtune.store.validate import InvalidEntry, check_shape, check_timing, entry_name


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
    """One flat row per entry, as shown and as written by ``--json``; Failure naming the file and
    the entry for one that is malformed (not a mapping, a config that is not, a timing that is
    not a number)."""
    device = profile.get("device") or {}
    rows = []
    for name, section in (profile.get("kernels") or {}).items():
        if kernel and name != kernel:
            continue
        for index, entry in enumerate(section.get("entries", [])):
            try:
                check_shape(entry)
                check_timing(entry)
            except InvalidEntry as exc:
                raise Failure(f"{entry_name(path, name, index)}: {exc}") from None
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


def comparison_rows(rows_by_file: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Problems present in the first profile and another, both timed: time ratio (other / first)."""
    first, *others = rows_by_file
    base = {(r["kernel"], format_problem(r["problem"] or {})): r for r in first if r["time_us"]}
    compared = []
    for rows in others:
        for row in rows:
            key = (row["kernel"], format_problem(row["problem"] or {}))
            if key in base and row["time_us"]:
                a, b = base[key], row
                compared.append({
                    "kernel": key[0], "problem": key[1], "base_file": a["file"],
                    "file": b["file"], "base_config": a["config"], "config": b["config"],
                    "base_time_us": a["time_us"]["median"], "time_us": b["time_us"]["median"],
                    "ratio": b["time_us"]["median"] / a["time_us"]["median"],
                })
    return compared
