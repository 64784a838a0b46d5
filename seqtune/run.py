"""What the CLI commands do, apart from printing: tune, verify, report, info."""
from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from seqtune.device import DeviceInfo, detect_device, runtime_device
from seqtune.journal import TuningLog, log_path
from seqtune.profile import (profile_path, read_profile, resolve_profile_dir,
                             save_entries, shipped_profile_dir, software_versions)
from seqtune.report import entry_rows, format_config, format_problem
from seqtune.spec import KernelSpec
from seqtune.timing import INTERPRETER_NOTE, timer_for
from seqtune.tuner import Budget, Candidate, Tuner, candidate_order, entry_for


def run_tune(specs: list[KernelSpec], preset: str, device: DeviceInfo, profile_dir: Path | None,
             max_configs: int | None, budget_s: float | None, seed: int,
             console: Console, keep_spilling: bool = False) -> dict[str, Any]:
    """Tune every problem of the preset for each kernel; each problem's entry is merged into the
    profile as soon as it is tuned, so an interrupted tune keeps what it finished."""
    import triton

    from seqtune.cli import progress_bar
    from seqtune.registry import source_hash

    timer, label = timer_for(device.backend)
    folder = resolve_profile_dir(profile_dir)
    path = profile_path(folder, device.key)
    log = TuningLog(log_path(folder, device.key), run_id=uuid.uuid4().hex[:12])
    budget = Budget(budget_s, max_configs)
    pruner = _gpu_pruner(device, keep_spilling)
    problems = []
    with progress_bar(console) as progress:
        for spec in specs:
            for problem in spec.presets.get(preset, ()):
                total = len(candidate_order(spec, problem, device, seed))
                if max_configs is not None:
                    total = min(total, max_configs)
                task = progress.add_task(f"{spec.name} {format_problem(problem)}", total=total)

                def advance(candidate: Candidate, task=task, spec=spec, problem=problem) -> None:
                    log.record(spec.name, source_hash(spec.name), spec.bucket(problem), candidate)
                    progress.advance(task)

                tuner = Tuner(device, timer, budget, on_candidate=advance, seed=seed,
                              prune=pruner)
                result = tuner.tune(spec, problem)
                progress.update(task, total=len(result.candidates))
                summary = {"kernel": spec.name, "problem": spec.bucket(problem),
                           "winner": None, "tried": len(result.candidates),
                           "failed": result.failed}
                if result.winner is not None:
                    entry = entry_for(spec, result, label, triton.__version__,
                                      source_hash(spec.name))
                    save_entries(path, device.as_dict(), spec.name, source_hash(spec.name),
                                 [entry])
                    summary.update(winner=entry["config"], time_us=entry["time_us"],
                                   speedup_vs_default=entry["speedup_vs_default"])
                problems.append(summary)
    console.print(_summary_table(problems, label))
    console.print(f"profile: {path}")
    console.print(f"tuning log: {log.path}")
    return {"profile": str(path), "log": str(log.path), "device": device.as_dict(), "timer": label,
            "preset": preset, "problems": problems}


def _gpu_pruner(device: DeviceInfo, keep_spilling: bool):
    """On a GPU, configs are compiled (cached) and checked against the device before launch;
    the interpreter has no resources to exceed."""
    if device.backend != "cuda":
        return None
    from seqtune.check import resource_pruner, target_of_device

    target = target_of_device(device.name, device.compute_capability,
                              device.shared_memory_per_block)
    return resource_pruner(target, keep_spilling)


def _summary_table(problems: list[dict[str, Any]], label: str) -> Table:
    from seqtune.timing import INTERPRETER_LABEL

    caption = f"times are {INTERPRETER_NOTE}" if label == INTERPRETER_LABEL else "do_bench median"
    table = Table(title="seqtune tune: summary", caption=caption)
    for column in ("kernel", "problem", "best config", "median µs", "vs default", "tried",
                   "failed"):
        table.add_column(column, overflow="fold")
    for p in problems:
        failed = ", ".join(f"{k} {v}" for k, v in p["failed"].items() if v) or "-"
        if p["winner"] is None:
            table.add_row(p["kernel"], format_problem(p["problem"]), "[red]no valid config[/]",
                          "-", "-", str(p["tried"]), failed)
            continue
        speedup = p["speedup_vs_default"]
        table.add_row(p["kernel"], format_problem(p["problem"]), format_config(p["winner"]),
                      f"{p['time_us']['median']:.1f}",
                      "n/a" if speedup is None else f"{speedup:.2f}x", str(p["tried"]), failed)
    return table


def run_verify(specs: list[KernelSpec], profile_dir: Path | None) -> list[dict[str, Any]]:
    """Each verify case of each kernel, with the default config, the config the loader picks
    from the profile, and every other tuned config of the profile that is valid for the case."""
    from seqtune.loader import load_profile
    from seqtune.verify import check_case

    key, limits = runtime_device()
    path = profile_path(resolve_profile_dir(profile_dir), key)
    if path.exists():
        read_profile(path)  # an unreadable profile is an error here, not a silent fallback
    profile = load_profile(path) if path.exists() else None
    device = "cpu" if limits.backend == "interpreter" else "cuda"
    rows = []
    for spec in specs:
        tuned = [e.config for e in profile.entries.get(spec.name, [])] if profile else []
        for case in spec.verify_cases:
            configs = {"default": dict(spec.default_config)}
            if profile is not None:
                configs["loader"] = profile.best_config(spec.name, case)
            for index, config in enumerate(tuned):
                configs.setdefault(f"tuned #{index}", config)
            seen: list[dict] = []
            inputs = spec.make_inputs(case, device, 0)
            reference = spec.reference(inputs)
            for source, config in configs.items():
                full = spec.validate_config(config)
                if full in seen or spec.check(full, case, limits) is not None:
                    continue
                seen.append(full)
                agreement = check_case(spec, case, full, inputs=inputs, reference=reference)
                rows.append({"kernel": spec.name, "case": format_problem(case),
                             "config_source": f"{source}: {format_config(full)}",
                             "config": full, "ok": agreement.ok,
                             "max_abs_err": agreement.max_abs_err,
                             "max_rel_err": agreement.max_rel_err, "detail": agreement.detail})
    return rows


def load_report(files: list[Path] | None, profile_dir: Path | None, kernel: str | None):
    """(path, profile) pairs, their rows, and the comparison of the later ones to the first."""
    import triton

    from seqtune.cli import Failure
    from seqtune.loader import stale_reason
    from seqtune.registry import all_specs, source_hash
    from seqtune.report import comparison_rows

    if not files:
        folder = resolve_profile_dir(profile_dir)
        files = sorted(folder.glob("*.yaml"))
        if not files:
            raise Failure(f"no profiles in {folder}; run `seqtune tune` first")
    profiles, rows_by_file = [], []
    specs = all_specs()
    for path in files:
        profile = read_profile(path)
        software_triton = (profile.get("software") or {}).get("triton")
        stale = {}
        for name, section in (profile.get("kernels") or {}).items():
            for index, entry in enumerate(section.get("entries", [])):
                reason = ("unknown kernel" if name not in specs else
                          stale_reason(entry, section, software_triton, triton.__version__,
                                       source_hash(name)))
                if reason:
                    stale[(name, index)] = reason
        profiles.append((path, profile))
        rows_by_file.append(entry_rows(profile, path, kernel, stale))
    compared = comparison_rows(rows_by_file) if len(rows_by_file) > 1 else []
    return profiles, rows_by_file, compared


def describe_environment() -> dict[str, Any]:
    from seqtune.loader import active_profile

    device = detect_device()
    profile = active_profile()
    return {
        "device": dataclasses.asdict(device),
        "software": software_versions(),
        "profile_dir": str(resolve_profile_dir()),
        "shipped_profiles": str(shipped_profile_dir()),
        "active_profile_files": [str(p) for p in profile.sources] or "none (defaults)",
        "active_entries": {k: len(v) for k, v in profile.entries.items()},
        "timings": "do_bench on the GPU" if device.backend == "cuda" else INTERPRETER_NOTE,
    }
