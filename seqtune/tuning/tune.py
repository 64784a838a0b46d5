"""A tune of a list of (kernel, problem) work items on one device: the search of each problem,
the tuning log, resuming, and the entries saved into the profile. Prints nothing: progress goes
to a ``Reporter``."""
from __future__ import annotations

import dataclasses
import os
import time
import uuid
from pathlib import Path
from typing import Any

from seqtune.agreement import Agreement
from seqtune.device import DeviceInfo
from seqtune.events import SILENT, Reporter
from seqtune.spec import KernelSpec, format_problem
from seqtune.store.journal import TuningLog, log_path, read_log
from seqtune.store.profile_file import (
    profile_path,
    resolve_profile_dir,
    save_entries,
    shipped_profile_dir,
)
from seqtune.tuning.runner import CandidateWorker, IsolatedRunner, WorkerSetup
from seqtune.tuning.search import Auto, config_key, make_strategy, planned_evaluations
from seqtune.tuning.timing import Timing, timer_for
from seqtune.tuning.tuner import Budget, Candidate, Tuner, entry_for, problem_key
from seqtune.tuning.warmstart import tuned_starts

Work = list  # of (KernelSpec, problem) pairs: what a tune, a shard or a rank tunes


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


def run_tune(work: Work, device: DeviceInfo, options: TuneOptions,
             reporter: Reporter = SILENT) -> dict[str, Any]:
    """Tune each (kernel, problem) of ``work``. Every candidate is journaled as it finishes and
    each problem's entry is merged into the profile as soon as it is tuned, so an interrupted
    tune keeps what it measured and ``--resume`` skips it."""
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
        with reporter.progress() as progress:
            for spec, problem in work:
                problems.append(_tune_problem(tuner, spec, problem, device, options, log,
                                              path, progress, label))
    finally:
        if worker is not None:
            worker.close()
        if compile_ahead is not None:
            compile_ahead.close()
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
    else:
        summary["reason"] = result.reason
    return summary


def _compile_ahead(device: DeviceInfo, options: TuneOptions):
    """Parallel compilation ahead of timing: always on a GPU (for its own target); on the
    interpreter only when asked (``--compile-target``), to prune by a real GPU's limits."""
    from seqtune.tuning.compiler import (CompileAhead, target_named, target_of_device,
                                         target_of_hip_device)

    if device.backend == "hip":
        target = target_of_hip_device(device.arch, device.shared_memory_per_block)
        if target is None:  # an architecture seqtune has no limits for: nothing to prune by
            return None
    elif device.backend == "cuda":
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
