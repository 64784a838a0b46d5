"""What the CLI commands do, apart from printing: tune, verify, report, info."""
from __future__ import annotations

import dataclasses
import os
import time
import uuid
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from seqtune.device import DeviceInfo, detect_device, runtime_device
from seqtune.store.journal import TuningLog, log_path, read_log
from seqtune.tuning.runner import CandidateWorker, IsolatedRunner, WorkerSetup
from seqtune.tuning.search import Auto, config_key, make_strategy, planned_evaluations
from seqtune.fleet.shard import shard_work
from seqtune.store.profile_file import (profile_path, read_profile, resolve_profile_dir,
                             save_entries, shipped_profile_dir, software_versions)
from seqtune.analysis.report import entry_rows, format_config, format_problem
from seqtune.spec import KernelSpec
from seqtune.tuning.timing import INTERPRETER_NOTE, Timing, timer_for
from seqtune.tuning.tuner import Budget, Candidate, Tuner, entry_for, problem_key
from seqtune.tuning.warmstart import tuned_starts
from seqtune.agreement import Agreement


@dataclasses.dataclass(frozen=True)
class TuneOptions:
    """How a tune runs (the ``seqtune tune`` flags)."""

    preset: str
    profile_dir: Path | None = None
    max_configs: int | None = None
    budget_s: float | None = None
    seed: int = 0
    keep_spilling: bool = False
    isolate: bool = True
    timeout_s: float = 600.0
    resume: bool = False
    strategy: str | None = None
    jobs: int = dataclasses.field(default_factory=lambda: os.cpu_count() or 1)
    compile_target: str | None = None
    shard: tuple[int, int] | None = None  # (index, count): tune only this shard of the work
    run_id: str | None = None  # shared by the workers of a fleet, so --resume sees them as one


def run_tune(specs: list[KernelSpec], device: DeviceInfo, options: TuneOptions,
             console: Console) -> dict[str, Any]:
    """Tune every problem of the preset for each kernel. Every candidate is journaled as it
    finishes and each problem's entry is merged into the profile as soon as it is tuned, so an
    interrupted tune keeps what it measured and ``--resume`` skips it."""
    from seqtune.cli import progress_bar

    timer, label = timer_for(device.backend)
    folder = resolve_profile_dir(options.profile_dir)
    path = profile_path(folder, device.key)
    log = TuningLog(log_path(folder, device.key), run_id=options.run_id or uuid.uuid4().hex[:12])
    known = resumable_candidates(log.path, skip_run=log.run_id) if options.resume else {}
    budget = Budget(options.budget_s, options.max_configs)
    worker = (CandidateWorker(WorkerSetup(device, options.seed), options.timeout_s)
              if options.isolate else None)
    compile_ahead = _compile_ahead(device, options)
    tuner = Tuner(device, timer, budget, seed=options.seed,
                  make_runner=(lambda spec, problem: IsolatedRunner(worker, spec, problem))
                  if worker else None, known=known, compile_ahead=compile_ahead,
                  tuned_starts=lambda spec, problem: tuned_starts(
                      spec, problem, device, [folder, shipped_profile_dir()]))
    problems = []
    try:
        with progress_bar(console) as progress:
            for spec, problem in shard_work(specs, options.preset, options.max_configs,
                                            options.shard):
                problems.append(_tune_problem(tuner, spec, problem, device, options, log,
                                              path, progress, label))
    finally:
        if worker is not None:
            worker.close()
        if compile_ahead is not None:
            compile_ahead.close()
    console.print(_summary_table(problems, label))
    console.print(f"profile: {path}")
    console.print(f"tuning log: {log.path}")
    return {"profile": str(path), "log": str(log.path), "device": device.as_dict(),
            "timer": label, "preset": options.preset, "problems": problems}


def _tune_problem(tuner: Tuner, spec: KernelSpec, problem: dict, device: DeviceInfo,
                  options: TuneOptions, log: TuningLog, path: Path, progress: Any,
                  label: str) -> dict[str, Any]:
    """Tune one problem with a progress bar; journal each candidate; save the entry."""
    import triton

    from seqtune.registry import source_hash

    strategy = make_strategy(options.strategy) if options.strategy else Auto()
    total = planned_evaluations(strategy, tuner.space(spec, problem))
    task = progress.add_task(f"{spec.name} {format_problem(problem)}", total=total)

    counted: set[tuple] = set()

    def journal(candidate: Candidate) -> None:
        log.record(spec.name, source_hash(spec.name), spec.bucket(problem), candidate)
        if config_key(candidate.config) not in counted:  # not again when timed more precisely
            counted.add(config_key(candidate.config))
            progress.advance(task)

    tuner.on_candidate = journal
    ahead = tuner.compile_ahead
    waited_before, compiled_before = (ahead.compile_s, ahead.compiled) if ahead else (0.0, 0)
    started = time.perf_counter()
    result = tuner.tune(spec, problem, strategy)
    # The compiler's share of the wall time is what the tune waited on it; compiles that ran
    # while a config was being timed cost no wall time.
    compile_s = ahead.compile_s - waited_before if ahead else 0.0
    progress.update(task, total=len(result.candidates))
    summary = {"kernel": spec.name, "problem": spec.bucket(problem), "winner": None,
               "tried": len(result.candidates), "failed": result.failed,
               "compiled": ahead.compiled - compiled_before if ahead else 0,
               "compile_s": round(compile_s, 3),
               "benchmark_s": round(time.perf_counter() - started - compile_s, 3)}
    if result.winner is not None:
        entry = entry_for(spec, result, label, triton.__version__, source_hash(spec.name))
        save_entries(path, device.as_dict(), spec.name, source_hash(spec.name), [entry])
        summary.update(winner=entry["config"], time_us=entry["time_us"],
                       speedup_vs_default=entry["speedup_vs_default"])
    return summary


def _compile_ahead(device: DeviceInfo, options: TuneOptions):
    """Parallel compilation ahead of timing: always on a GPU (for its own target); on the
    interpreter only when asked (``--compile-target``), to prune by a real GPU's limits."""
    from seqtune.tuning.compiler import CompileAhead, target_named, target_of_device

    if device.backend == "cuda":
        target = target_of_device(device.name, device.compute_capability,
                                  device.shared_memory_per_block)
    elif options.compile_target:
        target = target_named(options.compile_target)
    else:
        return None
    return CompileAhead(target, options.jobs, options.keep_spilling)


def resumable_candidates(path: Path, skip_run: str | None = None
                         ) -> dict[tuple, dict[tuple, Candidate]]:
    """The candidates journaled by the latest tune in the log (other than ``skip_run``: the
    fleet workers of this tune may already be logging) whose kernel source is unchanged,
    by (kernel, problem key) then config key."""
    from seqtune.registry import all_specs, source_hash

    if not path.exists():
        return {}
    records = list(read_log(path))
    if not records:
        return {}
    latest = next((r.get("run") for r in reversed(records) if r.get("run") != skip_run), None)
    if latest is None:
        return {}
    specs = all_specs()
    known: dict[tuple, dict[tuple, Candidate]] = {}
    for record in records:
        kernel = record.get("kernel")
        if (record.get("run") != latest or kernel not in specs
                or record.get("source_hash") != source_hash(kernel)):
            continue
        candidate = candidate_from_record(record)
        known.setdefault((kernel, problem_key(record["problem"])), {})[
            config_key(candidate.config)] = candidate
    return known


def candidate_from_record(record: dict[str, Any]) -> Candidate:
    timing = record.get("time_us")
    agreement = None
    if record.get("max_rel_err") is not None:
        agreement = Agreement(record["status"] != "mismatch", float("nan"),
                              record["max_rel_err"])
    return Candidate(dict(record["config"]), record["status"],
                     Timing(timing["median"], timing["p20"], timing["p80"], 1) if timing else None,
                     agreement, record.get("error") or "", reused=True,
                     fidelity=record.get("fidelity", 1.0))


def _summary_table(problems: list[dict[str, Any]], label: str) -> Table:
    from seqtune.tuning.timing import INTERPRETER_LABEL

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


def run_verify(specs: list[KernelSpec], profile_dir: Path | None) -> list[dict[str, Any]]:
    """Each verify case of each kernel, with the default config, the config the loader picks
    from the profile, and every other tuned config of the profile that is valid for the case."""
    from seqtune.loader import load_profile
    from seqtune.agreement import check_case

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
    from seqtune.analysis.report import comparison_rows

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
