"""Offline replay: run search strategies on recorded tuning spaces instead of running kernels.

A recorded space is every measured config of one problem with its time: a seqtune tuning log
(JSON lines, one space per (kernel, problem)) or a Kernel Tuner cache file (``.json`` or
``.json.gz``, one space per file; failed configs, whose time is a string such as
"RuntimeFailedConfig", count as infinitely slow; configs absent from the cache violate the
kernel's constraints and are no candidates). Each strategy runs ``repeats`` times with seeds
0..repeats-1 and a budget of N distinct configs; a run *reaches* the optimum when the config it
would pick (the fastest it measured) is truly within 3% of the best valid config.
"""
from __future__ import annotations

import dataclasses
import gzip
import io
import json
import math
import os
import random
import stat
import statistics
import zlib
from pathlib import Path
from typing import Any

from seqtune.spec import Config
from seqtune.store.journal import read_log
from seqtune.store.safe_read import UnsafeFile, read_regular_file
from seqtune.tuning.search import STRATEGIES, SearchSpace, choose, config_key, make_strategy

TOLERANCE = 0.03
# Mean final gaps closer than this (0.01% of the optimum's time) are a tie.
GAP_RESOLUTION = 1e-4
# Kernel Tuner caches are read whole: larger than any shared space (the largest are ~10 MB)
MAX_RECORD_BYTES = 256 * 2**20


class ReplayError(Exception):
    """A file that is neither a tuning log nor a Kernel Tuner cache, or holds no valid config."""


@dataclasses.dataclass
class RecordedSpace:
    """One problem's recorded configs.

    Attributes:
        source: the file it came from.
        label: the problem, as shown in reports.
        params: parameter -> values seen.
        configs: every recorded config (the candidates of a replay).
        times_us: each config's full-fidelity time (inf where it failed).
        samples_us: each config's individual repetitions, where recorded ([] otherwise).
        starts: where local searches start (the default, where the record knows it).
    """

    source: str
    label: str
    params: dict[str, tuple]
    configs: list[Config]
    times_us: list[float]
    samples_us: list[list[float]]
    starts: list[Config]

    def __post_init__(self) -> None:
        self.index = {config_key(c): i for i, c in enumerate(self.configs)}
        self._spaces: dict[int, SearchSpace] = {}

    @property
    def best_us(self) -> float:
        return min(self.times_us)

    @property
    def valid(self) -> int:
        return sum(math.isfinite(t) for t in self.times_us)

    def search_space(self, max_evaluations: int) -> SearchSpace:
        """The space strategies see (cached, so its geometry is built once)."""
        if max_evaluations not in self._spaces:
            self._spaces[max_evaluations] = SearchSpace(
                self.params, self.configs, self.starts, max_evaluations=max_evaluations)
        return self._spaces[max_evaluations]

    def time_at(self, index: int, fidelity: float) -> float:
        """The time a measurement at ``fidelity`` reports: the mean of the first repetitions
        when they were recorded, else the full-fidelity time."""
        samples = self.samples_us[index]
        if fidelity >= 1.0 or not samples or not math.isfinite(self.times_us[index]):
            return self.times_us[index]
        count = max(1, round(fidelity * len(samples)))
        return sum(samples[:count]) / count


def load(path: Path) -> list[RecordedSpace]:
    """The recorded spaces of a tuning log or a Kernel Tuner cache file; ReplayError naming the
    file for anything else (not a regular file, too large, truncated, not JSON, another shape)."""
    path = Path(path)
    try:
        if path.suffix in (".gz", ".json"):
            return [kernel_tuner_space(json.loads(_cache_text(path)), str(path))]
        _require_regular(path)
        return journal_spaces(path)
    except ReplayError:
        raise
    except FileNotFoundError:
        raise ReplayError(f"{path}: no such file") from None
    except UnsafeFile as exc:
        raise ReplayError(f"{path}: {exc}") from None
    except (OSError, EOFError, zlib.error, ValueError, RecursionError) as exc:
        # EOFError: a truncated .gz; ValueError: not JSON or not UTF-8; RecursionError: JSON
        # nested too deep to parse
        detail = str(exc).splitlines()[0] if str(exc) else ""
        raise ReplayError(f"{path}: cannot read it ({type(exc).__name__}: {detail})") from None


def _require_regular(path: Path) -> None:
    info = os.stat(path)
    if not stat.S_ISREG(info.st_mode):  # a FIFO would block the replay forever
        raise ReplayError(f"{path}: not a regular file")


def _cache_text(path: Path) -> str:
    """A Kernel Tuner cache's text, gunzipped for ``.gz``, at most MAX_RECORD_BYTES either way
    (so a small .gz cannot expand to fill the memory)."""
    data = read_regular_file(path, MAX_RECORD_BYTES)
    if path.suffix == ".gz":
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as handle:
            data = handle.read(MAX_RECORD_BYTES + 1)
        if len(data) > MAX_RECORD_BYTES:
            raise UnsafeFile(f"decompresses to over {MAX_RECORD_BYTES >> 20} MB")
    return data.decode("utf-8")


def kernel_tuner_space(document: Any, source: str) -> RecordedSpace:
    """A Kernel Tuner cache: ``tune_params_keys`` order the values; ``time`` and ``times`` are
    in ms (a string time marks a failed config). ReplayError for another shape."""
    if not isinstance(document, dict):
        raise ReplayError(f"{source}: not a Kernel Tuner cache (a {type(document).__name__}, "
                          "not a mapping)")
    keys, cache = document.get("tune_params_keys"), document.get("cache")
    if not (isinstance(keys, list) and keys and all(isinstance(k, str) for k in keys)):
        raise ReplayError(f"{source}: not a Kernel Tuner cache (no list of names "
                          "'tune_params_keys')")
    if not isinstance(cache, dict):
        raise ReplayError(f"{source}: not a Kernel Tuner cache ('cache' is "
                          f"{type(cache).__name__}, not a mapping)")
    configs, times, samples = [], [], []
    for name, entry in cache.items():
        if not (isinstance(entry, dict) and all(_is_value(entry.get(k)) for k in keys)):
            raise ReplayError(f"{source}: cache entry {name!r} lacks a plain value for one of "
                              f"{keys}")
        configs.append({k: entry[k] for k in keys})
        elapsed = entry.get("time")
        valid = _is_time(elapsed)
        times.append(elapsed * 1e3 if valid else math.inf)
        runs = entry.get("times") if valid else None
        samples.append([t * 1e3 for t in runs]
                       if isinstance(runs, list) and all(map(_is_time, runs)) else [])
    tune_params = document.get("tune_params")
    tune_params = tune_params if isinstance(tune_params, dict) else {}
    params = {k: tuple(v for v in (tune_params.get(k) if isinstance(tune_params.get(k), list)
                                   else ()) if _is_value(v)) for k in keys}
    label = " ".join(str(part) for part in (document.get("kernel_name"),
                                             document.get("device_name")) if part)
    return _checked(RecordedSpace(source, label or Path(source).name, params, configs, times,
                                  samples, starts=[]))


def _is_value(value: Any) -> bool:
    """A plain config value (hashable, comparable with its kind)."""
    return isinstance(value, (str, int, float)) and value == value  # not NaN


def _is_time(value: Any) -> bool:
    """A usable measured time: a positive finite number (0 would make every gap infinite)."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value) and value > 0)


def journal_spaces(path: Path) -> list[RecordedSpace]:
    """One space per (kernel, problem) of a seqtune tuning log; a config measured twice keeps
    its latest record, and the first config recorded (the default) is the start."""
    groups: dict[tuple[str, str], dict[tuple, dict[str, Any]]] = {}
    for record in read_log(path):
        config = record.get("config")
        if not (isinstance(config, dict) and all(map(_is_value, config.values()))
                and "kernel" in record):
            continue
        group_key = (str(record["kernel"]), json.dumps(record.get("problem"), sort_keys=True))
        groups.setdefault(group_key, {})[config_key(config)] = record
    if not groups:
        raise ReplayError(f"{path}: no tuning-log records")
    return [_checked(_journal_space(str(path), kernel, json.loads(problem), list(records.values())))
            for (kernel, problem), records in groups.items()]


def _journal_space(source: str, kernel: str, problem: Any,
                   records: list[dict[str, Any]]) -> RecordedSpace:
    from seqtune.spec import format_problem

    configs = [dict(r["config"]) for r in records]
    params: dict[str, tuple] = {}
    for config in configs:
        for key, value in config.items():
            params[key] = tuple(dict.fromkeys(params.get(key, ()) + (value,)))
    times = [_journal_time(r) for r in records]
    label = f"{kernel} {format_problem(problem) if isinstance(problem, dict) else problem}"
    return RecordedSpace(source, label, params, configs, times, [[] for _ in configs],
                         starts=configs[:1])


def _journal_time(record: dict[str, Any]) -> float:
    timing = record.get("time_us")
    if record.get("status") != "ok" or not isinstance(timing, dict):
        return math.inf
    median = timing.get("median")
    return float(median) if _is_time(median) else math.inf


def _checked(space: RecordedSpace) -> RecordedSpace:
    if not space.configs or not math.isfinite(space.best_us):
        raise ReplayError(f"{space.source}: {space.label}: no valid config recorded")
    return space


class ReplayEvaluate:
    """``evaluate`` for one replay run: looks times up, allows ``budget`` distinct configs, and
    notes how many configs had been measured when the pick (the fastest measured so far) came
    within the tolerance of the optimum and stayed there."""

    def __init__(self, recorded: RecordedSpace, budget: int, tolerance: float = TOLERANCE):
        self.recorded = recorded
        self.budget = budget
        self.target = recorded.best_us * (1.0 + tolerance)
        self.measured: dict[int, float] = {}
        self.pick: int | None = None
        self.reached_at: int | None = None

    def __call__(self, config: Config, fidelity: float = 1.0) -> float | None:
        index = self.recorded.index.get(config_key(config))
        if index is None:
            raise KeyError(f"not a recorded config: {config}")
        if index not in self.measured and len(self.measured) >= self.budget:
            return None
        elapsed = self.recorded.time_at(index, fidelity)
        self.measured[index] = elapsed
        self._follow_pick(index)
        return elapsed

    def _follow_pick(self, index: int) -> None:
        if index == self.pick:  # re-measured: the pick may now be slower than another
            self.pick = min(self.measured, key=self.measured.__getitem__)
        elif self.pick is None or self.measured[index] < self.measured[self.pick]:
            self.pick = index
        within = self.recorded.times_us[self.pick] <= self.target
        if not within:
            self.reached_at = None
        elif self.reached_at is None:
            self.reached_at = len(self.measured)


def budget_for(budget: str, size: int) -> int:
    """Configs per run: a count ("200") or a share of the space ("5%", rounded down, at least
    one), never more than the space; ValueError for anything else, or a count or share that is
    not positive."""
    text = budget.strip()
    try:
        share = float(text[:-1]) if text.endswith("%") else None
        count = int(text) if share is None else None
    except ValueError:
        raise ValueError(f"budget {budget!r} is neither a count nor a percentage") from None
    if share is not None:
        if not (math.isfinite(share) and share > 0):
            raise ValueError(f"budget {budget!r} must be a positive percentage")
        count = math.floor(min(share, 100.0) / 100.0 * size)
    elif count < 1:
        raise ValueError(f"budget {budget!r} must be at least 1")
    return min(max(count, 1), size)


@dataclasses.dataclass(frozen=True)
class RunOutcome:
    """One seeded run: the configs measured when the pick reached the optimum (None: never),
    and how much slower than the optimum the final pick is (0.0 for the optimum itself)."""

    reached_at: int | None
    final_gap: float


def replay_runs(recorded: RecordedSpace, strategy: str, budget: int,
                repeats: int) -> list[RunOutcome]:
    """The outcome of each seeded run (seeds 0..repeats-1)."""
    space = recorded.search_space(budget)
    outcomes = []
    for seed in range(repeats):
        evaluate = ReplayEvaluate(recorded, budget)
        make_strategy(strategy).search(space, evaluate, random.Random(seed))
        gap = (math.inf if evaluate.pick is None
               else recorded.times_us[evaluate.pick] / recorded.best_us - 1.0)
        outcomes.append(RunOutcome(evaluate.reached_at, gap))
    return outcomes


def summarise(recorded: RecordedSpace, strategy: str, budget: int,
              outcomes: list[RunOutcome]) -> dict[str, Any]:
    """One result row: the share of runs that reached the optimum, the median configs they
    needed (over the runs that reached it) and the mean gap of the final picks."""
    reached = [o.reached_at for o in outcomes if o.reached_at is not None]
    space = recorded.search_space(budget)
    return {
        "source": recorded.source, "problem": recorded.label, "strategy": strategy,
        "runs_as": choose(space).name if strategy == "auto" else strategy,
        "space": len(recorded.configs), "valid": recorded.valid, "budget": budget,
        "budget_share": round(budget / len(recorded.configs), 4), "repeats": len(outcomes),
        "reached": len(reached), "reached_share": round(len(reached) / len(outcomes), 4),
        "median_evaluations": statistics.median(reached) if reached else None,
        "mean_final_gap": round(statistics.fmean(o.final_gap for o in outcomes), 6),
        "best_us": round(recorded.best_us, 4),
    }


def strategy_names(text: str) -> list[str]:
    """"all", one name, or a comma-separated list of names."""
    names = list(STRATEGIES) if text.strip() == "all" else [
        n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in STRATEGIES]
    if unknown or not names:
        raise ValueError(f"unknown strategy {', '.join(unknown) or text!r}; expected 'all' or "
                         f"some of {', '.join(STRATEGIES)}")
    return names


def run_replay(paths: list[Path], strategies: list[str], budget: str,
               repeats: int) -> dict[str, Any]:
    """Replays every strategy on every recorded space of the files: the stable JSON payload.
    With random search among the strategies, each row says whether it beats random search."""
    spaces = [space for path in paths for space in load(path)]
    rows = []
    for recorded in spaces:
        count = budget_for(budget, len(recorded.configs))
        runs: dict[str, list[RunOutcome]] = {}
        for strategy in strategies:
            # auto replays exactly as the strategy it picks (same seeds): measured once
            picked = choose(recorded.search_space(count)).name if strategy == "auto" else strategy
            if picked not in runs:
                runs[picked] = replay_runs(recorded, picked, count, repeats)
            runs[strategy] = runs[picked]
        group = [summarise(recorded, strategy, count, runs[strategy]) for strategy in strategies]
        baseline = next((r for r in group if r["strategy"] == "random"), None)
        for row in group:
            row["beats_random"] = (None if baseline is None or row is baseline
                                   else beats(row, baseline))
        rows.extend(group)
    return {"tolerance": TOLERANCE, "budget": budget, "repeats": repeats, "results": rows}


def beats(row: dict[str, Any], other: dict[str, Any]) -> bool:
    """Whether a result is better than another at the same budget: reaches the optimum in more
    runs; as often, with final picks closer to the optimum on average (by more than rounding);
    or as close, with a smaller median of configs."""
    if row["reached_share"] != other["reached_share"]:
        return row["reached_share"] > other["reached_share"]
    if abs(row["mean_final_gap"] - other["mean_final_gap"]) > GAP_RESOLUTION:
        return row["mean_final_gap"] < other["mean_final_gap"]
    if row["median_evaluations"] is None or other["median_evaluations"] is None:
        return False
    return row["median_evaluations"] < other["median_evaluations"]
