"""The tuner: for one kernel and one problem, check every candidate config against the reference,
time the survivors, and pick a winner that does not flip on noise.

It knows kernels only through ``KernelSpec``; timing is injected (``seqtune.tuning.timing``).
"""
from __future__ import annotations

import dataclasses
import datetime
import math
import random
import time
from collections.abc import Sequence
from typing import Any, Callable

from seqtune.device import DeviceInfo
from seqtune.spec import Config, KernelSpec, Problem
from seqtune.tuning.runner import Candidate, InProcessRunner, Pruner, Runner, one_line
from seqtune.tuning.search import Auto, SearchSpace, Strategy, config_key
from seqtune.tuning.timing import Timer, Timing

# Relative differences below this are never trusted as real, however tight the spread.
MIN_NOISE = 0.03
RETIME_ROUNDS = 3
FAILURE_KINDS = ("compile", "resources", "mismatch", "runtime", "timeout")
TUNED_PER_INTERPRETER = ("num_warps", "num_stages")


@dataclasses.dataclass
class ProblemResult:
    kernel: str
    problem: Problem
    winner: Candidate | None
    default: Candidate | None
    candidates: list[Candidate]
    ties: int
    noise: float

    @property
    def failed(self) -> dict[str, int]:
        counts = {kind: 0 for kind in FAILURE_KINDS}
        for candidate in self.candidates:
            if candidate.status in counts:
                counts[candidate.status] += 1
        return counts

    @property
    def reason(self) -> str | None:
        """Why no config won, in one line (None when one did): how many were rejected and for
        what, and the first error of the default (else of the most common failure), e.g. the
        output, the elements and the worst error against its tolerance of a mismatch."""
        if self.winner is not None:
            return None
        if not self.candidates:
            return "no config was evaluated (the budget ran out first)"
        failed = {kind: n for kind, n in self.failed.items() if n}
        common = max(failed, key=failed.get) if failed else None
        shown = (self.default if self.default is not None and self.default.status != "ok"
                 else next((c for c in self.candidates if c.status == common), None))
        counts = ", ".join(f"{kind} {n}" for kind, n in failed.items())
        head = f"{len(self.candidates)} configs rejected ({counts})"
        if shown is None or not shown.error:
            return head
        which = "default" if shown is self.default else shown.status
        return f"{head}; {which}: {shown.error.splitlines()[0]}"


def problem_key(problem: Problem) -> tuple:
    return tuple(sorted((str(k), str(v)) for k, v in problem.items()))


def complexity(config: Config) -> float:
    """Smaller tiles, fewer warps and stages are simpler: the tie-break after the default."""
    return sum(math.log2(v) for v in config.values()
               if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0)


def pinned_params(spec: KernelSpec, device: DeviceInfo) -> set[str]:
    """Knobs held at their default: on the interpreter warps and stages change nothing."""
    if device.backend != "interpreter":
        return set()
    return {p for p in spec.space if p.rpartition(".")[2] in TUNED_PER_INTERPRETER}


def candidate_test(spec: KernelSpec, problem: Problem,
                   device: DeviceInfo) -> Callable[[Config], bool]:
    """Whether a config is a candidate of the problem on the device: valid, with the pinned
    knobs at their default. One check, so a search can ask without enumerating the space."""
    pinned = pinned_params(spec, device)
    default = spec.default_for(problem, device.limits)

    def is_candidate(config: Config) -> bool:
        return (all(config[p] == default[p] for p in pinned)
                and spec.check(config, problem, device.limits) is None)
    return is_candidate


def candidate_order(spec: KernelSpec, problem: Problem, device: DeviceInfo,
                    seed: int = 0) -> list[Config]:
    """Valid configs: the default first, then the rest in a seeded shuffle, so that a
    ``--max-configs`` cut samples the whole space rather than one corner of it."""
    is_candidate = candidate_test(spec, problem, device)
    default = spec.default_for(problem, device.limits)
    valid = [c for c in spec.configs(device.limits) if is_candidate(c)]
    head, rest = [c for c in valid if c == default], [c for c in valid if c != default]
    random.Random(seed).shuffle(rest)
    return head + rest


class Deferred(Sequence):
    """A list built on first use: the candidates of a space too large to enumerate for a
    search that never reads them (stagewise asks ``is_candidate`` only)."""

    def __init__(self, build: Callable[[], list]):
        self._build = build
        self._items: list | None = None

    @property
    def items(self) -> list:
        if self._items is None:
            self._items = self._build()
        return self._items

    def __getitem__(self, index):
        return self.items[index]

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self):
        return iter(self.items)


class Budget:
    """Wall-clock and per-problem config-count limits shared by a whole tune."""

    def __init__(self, budget_s: float | None, max_configs: int | None,
                 clock: Callable[[], float] = time.monotonic):
        self.deadline = None if budget_s is None else clock() + budget_s
        self.max_configs = max_configs
        self.clock = clock

    def expired(self) -> bool:
        return self.deadline is not None and self.clock() >= self.deadline

    def allows(self, evaluated: int) -> bool:
        """One more evaluation? The default (the first) is always evaluated."""
        if evaluated == 0:
            return True
        if self.max_configs is not None and evaluated >= self.max_configs:
            return False
        return not self.expired()


class Tuner:
    """Tunes problems of kernels on one device with one timer."""

    def __init__(self, device: DeviceInfo, timer: Timer, budget: Budget,
                 on_candidate: Callable[[Candidate], None] | None = None, seed: int = 0,
                 prune: Pruner | None = None,
                 make_runner: Callable[[KernelSpec, Problem], Runner] | None = None,
                 known: dict[tuple, dict[tuple, Candidate]] | None = None,
                 compile_ahead: Any = None,
                 tuned_starts: Callable[[KernelSpec, Problem], list[Config]] | None = None):
        """``make_runner`` decides where candidates run (default: in this process, timed by
        ``timer``); ``prune`` skips configs before they are launched; ``known`` holds candidates
        measured by an earlier, interrupted tune, keyed by ``(kernel, problem key)`` then config
        key: they are reused, not measured again; ``compile_ahead`` (a
        ``seqtune.tuning.compiler.CompileAhead``) compiles in parallel the configs the search announces
        it will ask for next, and prunes by what the compiler says; ``tuned_starts`` gives
        configs tuned for nearby problems (``seqtune.tuning.warmstart``): searches start there after
        the default."""
        self.device = device
        self.budget = budget
        self.on_candidate = on_candidate or (lambda candidate: None)
        self.seed = seed
        self.make_runner = make_runner or (lambda spec, problem: InProcessRunner(
            spec, problem, device, timer, seed))
        self.known = known or {}
        self.prunes = [p for p in (prune, compile_ahead and compile_ahead.verdict) if p]
        self.compile_ahead = compile_ahead
        self.tuned_starts = tuned_starts or (lambda spec, problem: [])
        self._spaces: dict[tuple, SearchSpace] = {}  # the latest problem's space

    def space(self, spec: KernelSpec, problem: Problem) -> SearchSpace:
        """What a search of the problem sees: candidates enumerated only if a strategy reads
        them, and its announcements of what it will ask next passed to the compile-ahead."""
        key = (spec.name, problem_key(problem))
        if key not in self._spaces:
            is_candidate = candidate_test(spec, problem, self.device)
            ahead = self.compile_ahead
            self._spaces = {key: SearchSpace(
                spec.space_for(self.device.limits),  # with AMD's compile knobs on HIP
                Deferred(lambda: candidate_order(spec, problem, self.device, self.seed)),
                self._starts(spec, problem, is_candidate), tuple(spec.stages),
                stagewise=spec.stagewise, max_evaluations=self.budget.max_configs,
                limited_by_time=self.budget.deadline is not None, contains=is_candidate,
                expect=(lambda configs: ahead.expect(spec, problem, configs)) if ahead
                else (lambda configs: None))}
        return self._spaces[key]

    def _starts(self, spec: KernelSpec, problem: Problem,
                is_candidate: Callable[[Config], bool]) -> list[Config]:
        """The default, then the tuned starts that are candidates here (a start from an older
        profile may lack a knob added since: it takes the default's value)."""
        starts = []
        for config in [spec.default_for(problem, self.device.limits),
                       *self.tuned_starts(spec, problem)]:
            try:
                config = spec.validate_config(config)
            except ValueError:
                continue
            if is_candidate(config) and config not in starts:
                starts.append(config)
        return starts

    def tune(self, spec: KernelSpec, problem: Problem,
             strategy: Strategy | None = None) -> ProblemResult:
        """Search the problem's valid configs with ``strategy`` (default: ``auto``, which picks
        stagewise for specs that allow it, exhaustive where the budget covers the space, else a
        model-based search) and select the winner."""
        runner = self.make_runner(spec, problem)
        evaluated: dict[tuple, Candidate] = {}
        known = self.known.get((spec.name, problem_key(spec.bucket(problem))), {})

        def evaluate(config: Config, fidelity: float = 1.0) -> float | None:
            key = config_key(config)
            candidate = evaluated.get(key)
            if candidate is None:
                if not self.budget.allows(len(evaluated)):
                    return None
                candidate = evaluated[key] = (known.get(key) or self._pruned(spec, problem, config)
                                              or runner.evaluate(config, fidelity))
            elif candidate.status == "ok" and candidate.fidelity < fidelity:
                # A leader of successive halving, timed again with more repetitions: still one
                # config of --max-configs, but it takes wall time.
                if self.budget.expired():
                    return None
                try:
                    candidate.timing = runner.retime(config, fidelity)
                    candidate.fidelity = fidelity
                except Exception as exc:  # it ran once: a failure now is the config's, recorded
                    candidate.status, candidate.timing = "runtime", None
                    candidate.error = one_line(exc)
            else:
                return candidate.median
            self.on_candidate(candidate)
            return candidate.median

        (strategy or Auto()).search(self.space(spec, problem), evaluate, random.Random(self.seed))
        candidates = list(evaluated.values())
        winner, ties, noise = self._select(spec.default_for(problem, self.device.limits), runner,
                                           candidates)
        default = evaluated.get(config_key(spec.default_for(problem, self.device.limits)))
        return ProblemResult(spec.name, problem, winner, default, candidates, ties, noise)

    def _pruned(self, spec: KernelSpec, problem: Problem, config: Config) -> Candidate | None:
        """A failed candidate for a config that must not be launched, else None."""
        for prune in self.prunes:
            verdict = prune(spec, problem, config)
            if verdict is not None:  # never launched: it would not compile, fit or run well
                return Candidate(config, verdict[0], error=verdict[1])
        return None

    def _select(self, default: Config, runner: Runner,
                candidates: list[Candidate]) -> tuple[Candidate | None, int, float]:
        """The fastest config, unless others are within the noise: then re-time those near-ties
        (interleaved, so drift hits all alike) and prefer the default, then the simplest."""
        ok = [c for c in candidates if c.status == "ok"]
        if not ok:
            return None, 0, 0.0
        near, noise = _near_ties(ok)
        if len(near) > 1:
            for _ in range(RETIME_ROUNDS):
                for candidate in near:
                    candidate.timing = _combine(candidate.timing, runner.retime(candidate.config))
            near, noise = _near_ties(ok)
        winner = min(near, key=lambda c: (c.config != default, complexity(c.config), c.median))
        return winner, len(near), noise


def _near_ties(ok: list[Candidate]) -> tuple[list[Candidate], float]:
    best = min(ok, key=lambda c: c.median)
    noise = max(best.timing.spread, MIN_NOISE)
    return [c for c in ok if c.median <= best.median * (1 + noise)], noise


def _combine(first: Timing, extra: Timing) -> Timing:
    """Pool two measurements of one config: medians and quantiles averaged by sample weight."""
    weights = (max(first.samples, 1), max(extra.samples, 1))
    pairs = ((first.median_us, extra.median_us), (first.p20_us, extra.p20_us),
             (first.p80_us, extra.p80_us))
    median, p20, p80 = (sum(w * v for w, v in zip(weights, pair)) / sum(weights) for pair in pairs)
    return Timing(median, p20, p80, first.samples + extra.samples)


def entry_for(spec: KernelSpec, result: ProblemResult, timer_label: str, triton_version: str,
              source_hash: str) -> dict[str, Any]:
    """The profile entry (YAML mapping) of a tuned problem."""
    winner = result.winner
    seconds = winner.median / 1e6
    problem = result.problem
    default_us = result.default.median if result.default and result.default.status == "ok" else None
    return {
        "problem": spec.bucket(problem),
        "config": dict(winner.config),
        "time_us": winner.timing.as_dict(),
        "default_time_us": None if default_us is None else round(default_us, 3),
        "speedup_vs_default": None if default_us is None else round(default_us / winner.median, 4),
        "tflops": _significant(spec.flops(problem) / seconds / 1e12),
        "gbps": _significant(spec.bytes_moved(problem) / seconds / 1e9),
        "max_rel_err": _significant(winner.agreement.max_rel_err, 3),
        "tried": len(result.candidates),
        "failed": result.failed,
        "ties": result.ties,
        "noise": round(result.noise, 4),
        "timer": timer_label,
        "telemetry": winner.telemetry,
        "triton": triton_version,
        "source_hash": source_hash,
        "tuned_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _significant(value: float, digits: int = 4) -> float:
    return float(f"{value:.{digits}g}")
