"""Search strategies: which configs of a space to evaluate, and in what order.

A strategy sees only a ``SearchSpace`` and an ``evaluate`` callback, so the same strategy drives
a real tune (evaluate = check against the reference, then time) and an offline replay of a
recorded tuning log (evaluate = look the time up). ``evaluate(config)`` memoises (a config is
never evaluated twice), returns the run time in µs (``inf`` for a config that failed) and returns
None once the budget is spent: a strategy stops at the first None.

``evaluate(config, fidelity=f)`` with ``0 < f < 1`` asks for a cheaper, noisier timing (fewer
repetitions); only successive halving asks for one, and an evaluate may ignore it. Every other
strategy calls ``evaluate(config)`` alone, so a one-argument evaluate still drives them.

Strategies: exhaustive, stagewise, random, halving, local, model, and auto (which picks one of
the others from the space's size and the budget). Every strategy remembers what it asked, so it
never spends budget on a config twice.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
import random
from collections.abc import Iterator, Sequence
from typing import Any, Callable, Protocol

import numpy as np

from seqtune.spec import Config

Evaluate = Callable[..., "float | None"]
FULL_FIDELITY = 1.0


def config_key(config: Config) -> tuple:
    return tuple(sorted(config.items()))


@dataclasses.dataclass
class SearchSpace:
    """What a strategy may search.

    Attributes:
        params: parameter -> allowed values (the whole space, for neighbourhoods).
        candidates: the valid configs of this problem, the default first (any sequence: a tuner
            passes one that is enumerated only when a strategy first reads it).
        starts: where local searches begin (the default, then nearest tuned configs).
        stages: per-stage namespaces, for stagewise search.
        stagewise: the kernel's stages may be tuned one at a time (``KernelSpec.stagewise``).
        max_evaluations: the most configs the budget allows (None: no count limit).
        limited_by_time: the budget also ends at a wall-clock deadline, so the search may stop
            before ``max_evaluations``. ``auto`` reads both to pick a strategy.
        contains: whether a config is a candidate, without enumerating them (None: look it up
            in ``candidates``); stagewise search asks only this.
        expect: told the configs a strategy will likely ask for next, likeliest first, so they
            can be compiled ahead (``seqtune.check.CompileAhead``); a hint: ignoring it changes
            nothing but speed.
    """

    params: dict[str, tuple]
    candidates: Sequence[Config]
    starts: list[Config]
    stages: tuple[str, ...] = ()
    stagewise: bool = False
    max_evaluations: int | None = None
    limited_by_time: bool = False
    contains: Callable[[Config], bool] | None = None
    expect: Callable[[Sequence[Config]], None] = lambda configs: None

    def stage_of(self, param: str) -> str | None:
        prefix, dot, _ = param.partition(".")
        return prefix if dot and prefix in self.stages else None

    def is_candidate(self, config: Config) -> bool:
        if self.contains is not None:
            return self.contains(config)
        if not hasattr(self, "_keys"):
            self._keys = {config_key(c) for c in self.candidates}
        return config_key(config) in self._keys

    def geometry(self) -> "SpaceGeometry":
        """The candidates as numbers (built once per space, shared by every search of it)."""
        if not hasattr(self, "_geometry"):
            self._geometry = SpaceGeometry(self)
        return self._geometry


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class SpaceGeometry:
    """Candidates as arrays: each varying parameter's value rank, the features a surrogate model
    reads, and one-parameter neighbourhoods.

    A parameter whose values are all numbers is ordinal (its values sorted; neighbours are the
    nearest smaller and larger value); any other (bools, strings) is categorical (every other
    value is a neighbour). Ranks, not raw values, are the coordinates, so 16..256 in steps of 16
    and 1, 2, 4, ... 32 are both evenly spaced. Memory is O(candidates × parameters): features
    are built only for the configs a model asks about.
    """

    def __init__(self, space: SearchSpace):
        candidates = space.candidates
        self.params: list[str] = []
        self.ordinal: list[bool] = []
        self.ranking: list[dict[Any, int]] = []
        self.constants: dict[str, Any] = {}
        columns = []
        for param in dict.fromkeys(itertools.chain(space.params, *candidates)):
            values = list(dict.fromkeys(
                itertools.chain(space.params.get(param, ()), (c[param] for c in candidates))))
            seen = {c[param] for c in candidates}
            if len(seen) < 2:  # a constant parameter neither separates nor connects configs
                self.constants.update((param, v) for v in seen)
                continue
            ordinal = all(_is_number(v) for v in values)
            rank = {v: r for r, v in enumerate(sorted(values) if ordinal else values)}
            self.params.append(param)
            self.ordinal.append(ordinal)
            self.ranking.append(rank)
            columns.append(np.fromiter((rank[c[param]] for c in candidates), np.int32,
                                       count=len(candidates)))
        self.ranks = (np.stack(columns, axis=1) if columns
                      else np.zeros((len(candidates), 0), np.int32))
        self.levels = [len(rank) for rank in self.ranking]
        self.feature_groups = self._feature_groups()
        self._lines: list | None = None  # built on the first neighbourhood asked for

    def __len__(self) -> int:
        return len(self.ranks)

    def _one_hot(self, j: int) -> bool:
        """Whether parameter j gets one-hot features: every categorical one, and every ordinal
        one with more than two values, whose values may matter each on its own (a block size
        that fits the hardware) beyond the smooth trend of its rank."""
        return not self.ordinal[j] or self.levels[j] > 2

    def _feature_groups(self) -> list[np.ndarray]:
        """The feature columns of each length scale of the model: a rank column per ordinal
        parameter, a block of one-hot columns per ``_one_hot`` parameter."""
        groups, used = [], 0
        for j, ordinal in enumerate(self.ordinal):
            if ordinal:
                groups.append(np.arange(used, used + 1))
                used += 1
            if self._one_hot(j):
                groups.append(np.arange(used, used + self.levels[j]))
                used += self.levels[j]
        return groups

    def features(self, indices: np.ndarray) -> np.ndarray:
        """Features of the given candidates: ordinal ranks scaled to [0, 1]; one-hot values
        scaled so that two different values are as far apart as the ends of an ordinal axis."""
        parts = []
        for j, ordinal in enumerate(self.ordinal):
            column = self.ranks[indices, j]
            if ordinal:
                parts.append((column / max(self.levels[j] - 1, 1))[:, None])
            if self._one_hot(j):
                parts.append(np.eye(self.levels[j])[column] / math.sqrt(2))
        return np.concatenate(parts, axis=1) if parts else np.zeros((len(indices), 0))

    def _line(self, j: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Candidates that differ only in parameter j, grouped into lines sorted by its rank:
        (candidates in line order, each candidate's position in it, line start, line end)."""
        others = [self.ranks[:, k] for k in range(self.ranks.shape[1]) if k != j]
        order = np.lexsort([self.ranks[:, j]] + others[::-1])
        if others:
            sorted_others = np.stack(others, axis=1)[order]
            new_line = np.any(sorted_others[1:] != sorted_others[:-1], axis=1)
        else:
            new_line = np.zeros(max(len(order) - 1, 0), bool)
        line = np.concatenate([[0], np.cumsum(new_line)]) if len(order) else np.zeros(0, int)
        position = np.empty_like(order)
        position[order] = np.arange(len(order))
        starts = np.searchsorted(line, line, side="left")
        ends = np.searchsorted(line, line, side="right")
        return order, position, starts, ends

    def neighbours(self, i: int, adjacent_only: bool = False) -> list[int]:
        """Candidates that differ from candidate i in one parameter: any other value of it, or
        (``adjacent_only``) the nearest smaller and larger value of an ordinal one."""
        if self._lines is None:
            self._lines = [self._line(j) for j in range(len(self.params))]
        result = []
        for j, (order, position, starts, ends) in enumerate(self._lines):
            at = position[i]
            low, high = starts[at], ends[at]
            if adjacent_only and self.ordinal[j]:
                result.extend(int(order[p]) for p in (at - 1, at + 1) if low <= p < high)
            else:
                result.extend(int(order[p]) for p in range(low, high) if p != at)
        return result

    def switches(self) -> list[int]:
        """The parameters that pick a code path rather than a size: categorical ones and
        two-valued ones (shared memory on or off, a read-only cache or not)."""
        return [j for j, ordinal in enumerate(self.ordinal) if not ordinal or self.levels[j] == 2]

    def path_leaders(self, times: dict[int, float]) -> list[int]:
        """The fastest measured config of every code path but the fastest config's own, fastest
        first (failed configs never lead). A code path is one combination of the switches'
        values, not one value of one switch: switches interact (shared memory may pay only
        with a read-only cache and without padding), so the best config of each value of each
        switch alone can miss the one path whose best sizes are fastest."""
        switches = self.switches()
        finite = sorted((i for i in times if math.isfinite(times[i])), key=times.__getitem__)
        leaders: dict[tuple, int] = {}
        for index in finite:
            leaders.setdefault(tuple(self.ranks[index, switches]), index)
        return list(leaders.values())[1:]

    def distances(self, indices: np.ndarray, center: int) -> np.ndarray:
        """How many parameters each of the given candidates sets differently from ``center``."""
        return (self.ranks[indices] != self.ranks[center]).sum(axis=1)

    def indices_of(self, configs: list[Config]) -> list[int]:
        """The candidate indices of those configs that are candidates, in order, once each
        (a scan per config: meant for the few starts, not for every lookup)."""
        found = []
        for config in configs:
            if any(config.get(p) != v for p, v in self.constants.items()):
                continue
            try:
                row = [rank[config[p]] for p, rank in zip(self.params, self.ranking)]
            except (KeyError, TypeError):
                continue
            match = np.flatnonzero((self.ranks == np.asarray(row, np.int32)).all(axis=1))
            found.extend(int(i) for i in match[:1])
        return list(dict.fromkeys(found))


class Session:
    """One search's view of ``evaluate``: asks each (candidate, fidelity) once, remembers the
    latest time of every candidate, and notices when the budget is spent."""

    def __init__(self, space: SearchSpace, evaluate: Evaluate):
        self.space = space
        self.evaluate = evaluate
        self.times: dict[int, float] = {}
        self.fidelity: dict[int, float] = {}
        self.spent = False

    def ask(self, index: int, fidelity: float = FULL_FIDELITY) -> float | None:
        """The time of candidate ``index`` at least at ``fidelity``; None once the budget ends."""
        if self.spent:
            return None
        if self.fidelity.get(index, 0.0) >= fidelity:
            return self.times[index]
        config = self.space.candidates[index]
        value = (self.evaluate(config) if fidelity >= FULL_FIDELITY
                 else self.evaluate(config, fidelity=fidelity))
        if value is None:
            self.spent = True
            return None
        self.times[index] = float(value)
        self.fidelity[index] = fidelity
        return self.times[index]

    def asked(self, index: int) -> bool:
        return index in self.times

    def expect(self, indices: Sequence[int]) -> None:
        """Tells the space which candidates will likely be asked next, likeliest first."""
        self.space.expect([self.space.candidates[i] for i in indices if not self.asked(i)])

    def best(self) -> tuple[int | None, float]:
        """The fastest candidate measured so far and its time (None, inf before any)."""
        if not self.times:
            return None, math.inf
        index = min(self.times, key=self.times.__getitem__)
        return index, self.times[index]

    def random_order(self, rng: random.Random) -> list[int]:
        """The starts first, then every other candidate in a seeded random order."""
        starts = self.space.geometry().indices_of(self.space.starts)
        rest = rng.sample(range(len(self.space.candidates)), len(self.space.candidates))
        return list(dict.fromkeys(starts + rest))


class Strategy(Protocol):
    name: str

    def search(self, space: SearchSpace, evaluate: Evaluate, rng: random.Random) -> None:
        ...


class Exhaustive:
    """Every candidate, in the given order (default first)."""

    name = "exhaustive"

    def search(self, space: SearchSpace, evaluate: Evaluate, rng: random.Random) -> None:
        space.expect(space.candidates)
        for config in space.candidates:
            if evaluate(config) is None:
                return


class Stagewise:
    """For each setting of the shared knobs, tune one stage at a time with the other stages held
    at their best so far: the sum of the stage spaces instead of their product. Right when the
    stages are nearly independent once the shared knobs (e.g. the chunk size) are fixed. A
    ``max_evaluations`` below that sum is spread over every setting and stage (``_share``). A
    space without stages is searched exhaustively."""

    name = "stagewise"

    def search(self, space: SearchSpace, evaluate: Evaluate, rng: random.Random) -> None:
        if not space.stages:
            Exhaustive().search(space, evaluate, rng)
            return
        share = self._share(space)
        for current in self._setting_starts(space):
            for stage in space.stages:
                current = self._tune_stage(space, evaluate, current, stage, share, rng)
                if current is None:
                    return

    @classmethod
    def _share(cls, space: SearchSpace) -> float:
        """The share of each stage's options a ``max_evaluations`` budget pays for: spread
        over every setting and stage, so a cut budget still tunes each stage a little rather
        than the first stage of the first setting fully and the rest not at all."""
        if space.max_evaluations is None:
            return 1.0
        return min(1.0, space.max_evaluations / max(cls.planned(space), 1))

    @classmethod
    def planned(cls, space: SearchSpace) -> int:
        """The configs this search will ask about, counted as if each stage kept the start's
        values for the other stages."""
        return sum(len(cls._stage_options(space, current, stage))
                   for current in cls._setting_starts(space) for stage in space.stages)

    @classmethod
    def _setting_starts(cls, space: SearchSpace) -> Iterator[Config]:
        """For every setting of the shared knobs (the start's first), the candidate a search of
        that setting starts from: the start with the setting, or the first candidate that
        has it."""
        start = space.starts[0] if space.starts else next(iter(space.candidates), None)
        if start is None:
            return
        shared = [p for p in space.params if space.stage_of(p) is None]
        first = {p: start[p] for p in shared}
        settings = (dict(zip(shared, values))
                    for values in itertools.product(*(space.params[p] for p in shared)))
        for setting in itertools.chain([first], (s for s in settings if s != first)):
            current = cls._first_candidate(space, {**start, **setting})
            if current is not None:
                yield current

    @staticmethod
    def _first_candidate(space: SearchSpace, config: Config) -> Config | None:
        """``config`` if it is a candidate, else the first candidate with its shared knobs (stage
        knobs in the space's order), else None. Asks only ``is_candidate``, so a stagewise
        search never enumerates the whole product space."""
        if space.is_candidate(config):
            return config
        free = [p for p in space.params if space.stage_of(p) is not None]
        for values in itertools.product(*(space.params[p] for p in free)):
            option = {**config, **dict(zip(free, values))}
            if space.is_candidate(option):
                return option
        return None

    @staticmethod
    def _stage_options(space: SearchSpace, current: Config, stage: str) -> list[Config]:
        """The candidates that differ from ``current`` only in the stage's knobs."""
        params = [p for p in space.params if space.stage_of(p) == stage]
        return [option for values in itertools.product(*(space.params[p] for p in params))
                if space.is_candidate(option := {**current, **dict(zip(params, values))})]

    @classmethod
    def _tune_stage(cls, space: SearchSpace, evaluate: Evaluate, current: Config, stage: str,
                    share: float, rng: random.Random) -> Config | None:
        """The best of the stage's options (``current`` and a random ``share`` of the others);
        None once the budget is spent."""
        options = cls._stage_options(space, current, stage)
        if share < 1.0:
            others = [o for o in options if o != current]
            kept = rng.sample(others, min(len(others), max(1, round(share * len(options))) - 1))
            options = [current, *kept]
        space.expect(options)
        best, best_time = current, math.inf
        for option in options:
            elapsed = evaluate(option)
            if elapsed is None:
                return None
            if elapsed < best_time:
                best, best_time = option, elapsed
        return best


class RandomSearch:
    """The starts (the default), then candidates uniformly at random without repetition: the
    baseline every other strategy must beat."""

    name = "random"

    def search(self, space: SearchSpace, evaluate: Evaluate, rng: random.Random) -> None:
        session = Session(space, evaluate)
        order = session.random_order(rng)
        session.expect(order)
        for index in order:
            if session.ask(index) is None:
                return


class SuccessiveHalving:
    """Successive halving in brackets: time a batch of fresh candidates cheaply (few
    repetitions), keep the fastest third, time those more precisely, and so on up to full
    fidelity; then start the next bracket. Cheap timings cost wall time, not configs: a config
    re-timed at a higher fidelity is still one config of ``--max-configs``."""

    name = "halving"

    def __init__(self, eta: int = 3, rungs: int = 3):
        self.eta = eta
        self.rungs = rungs

    def search(self, space: SearchSpace, evaluate: Evaluate, rng: random.Random) -> None:
        session = Session(space, evaluate)
        order = session.random_order(rng)
        session.expect(order)
        bracket_size = self.eta ** self.rungs
        for first in range(0, len(order), bracket_size):
            if not self._bracket(session, order[first:first + bracket_size]):
                return

    def _bracket(self, session: Session, survivors: list[int]) -> bool:
        """Runs one bracket; False once the budget is spent."""
        for rung in range(self.rungs):
            fidelity = float(self.eta) ** (rung + 1 - self.rungs)
            for index in survivors:
                if session.ask(index, fidelity) is None:
                    return False
            keep = max(1, math.ceil(len(survivors) / self.eta))
            survivors = sorted(survivors, key=session.times.__getitem__)[:keep]
        return True


RESTARTS_AHEAD = 4  # restart points local search draws (and announces) at once


class LocalSearch:
    """Iterated local search: first-improvement hill climbing over one-parameter moves from each
    start (the default, then the nearest tuned configs); at a local optimum (no untried neighbour
    is faster), restart from a perturbation of the best config so far: a few of its parameters
    set to random values. Neighbours already measured cost nothing to compare against."""

    name = "local"

    def __init__(self, perturbed_params: int = 2, adjacent_only: bool = False):
        self.perturbed_params = perturbed_params
        self.adjacent_only = adjacent_only

    def search(self, space: SearchSpace, evaluate: Evaluate, rng: random.Random) -> None:
        if not space.candidates:
            return
        session = Session(space, evaluate)
        geometry = space.geometry()
        starts = geometry.indices_of(space.starts)
        shuffled = session.random_order(rng)
        while not session.spent:
            start = next((s for s in starts if not session.asked(s)), None)
            if start is None:
                start = self._restart(session, geometry, rng, shuffled)
            if start is None:
                return
            self._climb(session, geometry, start, rng)

    def _climb(self, session: Session, geometry: SpaceGeometry, current: int,
               rng: random.Random) -> None:
        """Hill-climbs from ``current`` until no neighbour is faster or the budget ends."""
        current_time = session.ask(current)
        while current_time is not None:
            neighbours = geometry.neighbours(current, self.adjacent_only)
            known = [n for n in neighbours if session.asked(n)]
            better_known = min(known, key=session.times.__getitem__, default=None)
            if better_known is not None and session.times[better_known] < current_time:
                current, current_time = better_known, session.times[better_known]
                continue
            untried = [n for n in neighbours if not session.asked(n)]
            rng.shuffle(untried)
            session.expect(untried)
            for neighbour in untried:
                elapsed = session.ask(neighbour)
                if elapsed is None:
                    return
                if elapsed < current_time:
                    current, current_time = neighbour, elapsed
                    break
            else:
                return  # a local optimum: every neighbour is known and none is faster

    def _restart(self, session: Session, geometry: SpaceGeometry, rng: random.Random,
                 shuffled: list[int]) -> int | None:
        """An untried candidate near the best so far, else any untried candidate. A few such
        jumps are drawn and announced at once: restarts often follow each other (a jump whose
        neighbours are all measured is a local optimum at once), so the next ones compile while
        this one is timed."""
        best, _ = session.best()
        jumps = []
        if best is not None and geometry.params:
            for _ in range(64):
                jump = self._perturb(geometry, best, rng)
                if jump is not None and not session.asked(jump) and jump not in jumps:
                    jumps.append(jump)
                    if len(jumps) == RESTARTS_AHEAD:
                        break
        if not jumps:
            jumps = list(itertools.islice((i for i in shuffled if not session.asked(i)),
                                          RESTARTS_AHEAD))
        session.expect(jumps)
        return jumps[0] if jumps else None

    def _perturb(self, geometry: SpaceGeometry, index: int, rng: random.Random) -> int | None:
        """Candidate ``index`` with a few parameters moved, one neighbour step at a time."""
        for _ in range(min(self.perturbed_params, len(geometry.params))):
            neighbours = geometry.neighbours(index)
            if not neighbours:
                return None
            index = rng.choice(neighbours)
        return index


# The most candidates a model scores at once: larger spaces are scored on a random sample of
# this many untried candidates, drawn afresh at each refit (plus the best config's neighbours).
MAX_POOL = 20000


class ModelBased:
    """Bayesian optimisation over the finite candidate set, numpy only: a Gaussian process on
    log run times (``GaussianProcess``) proposes the untried candidate of largest expected
    improvement. Every ``local_period``-th proposal is local instead: the best one among the
    neighbours of a centre, which refines a good config even where the model is unsure of it.

    Local centres alternate between the fastest config so far and the path leaders
    (``SpaceGeometry.path_leaders``), in turn: the switches (shared memory on or off, a
    read-only cache, padding) together pick a code path, which changes which sizes are best,
    so the best config of each path the incumbent is not on is refined too before the model
    writes that path off (on a space where shared memory helps most configs but the fastest
    few do without it, refining the incumbent alone settles on the best shared-memory config).

    Starts from the starts and random configs (a fifth of the budget, which keeps the model
    from settling on the first good region it sees); a failed config counts as the slowest time
    seen when it failed, so the model learns to avoid failing regions."""

    name = "model"

    def __init__(self, initial_fraction: float = 0.2, max_initial: int = 40,
                 min_initial: int = 5, local_period: int = 2):
        self.initial_fraction = initial_fraction
        self.max_initial = max_initial
        self.min_initial = min_initial
        self.local_period = local_period

    def initial_samples(self, space: SearchSpace) -> int:
        """How many configs to measure before trusting the model: ``initial_fraction`` of the
        budget, between ``min_initial`` and ``max_initial``."""
        budget = space.max_evaluations or len(space.candidates)
        return int(min(self.max_initial, max(self.min_initial, self.initial_fraction * budget)))

    def search(self, space: SearchSpace, evaluate: Evaluate, rng: random.Random) -> None:
        session = Session(space, evaluate)
        geometry = space.geometry()
        order = session.random_order(rng)
        initial = self.initial_samples(space)
        session.expect(order[:initial])
        for index in order[:initial]:
            if session.ask(index) is None:
                return
        sampler = np.random.default_rng(rng.getrandbits(64))

        def pool() -> np.ndarray:
            if len(geometry) <= MAX_POOL:
                return np.arange(len(geometry))
            untried = np.ones(len(geometry), bool)
            untried[list(session.times)] = False
            return np.sort(sampler.choice(np.flatnonzero(untried), MAX_POOL, replace=False))

        model = GaussianProcess(geometry.features, geometry.feature_groups, pool)
        untried = iter(order[initial:])
        local_steps = 0
        for step in itertools.count():
            if len(session.times) >= len(geometry):
                return
            centre = None
            if self.local_period > 0 and step % self.local_period == self.local_period - 1:
                centre = self._centre(session, geometry, local_steps)
                local_steps += 1
            proposal = self._propose(session, model, geometry, centre)
            if proposal is None:  # nothing to learn from yet, or nothing to gain: explore
                proposal = next((i for i in untried if not session.asked(i)), None)
            if proposal is None or session.ask(proposal) is None:
                return

    @staticmethod
    def _centre(session: Session, geometry: SpaceGeometry, local_steps: int) -> int | None:
        """Where the ``local_steps``-th local step looks: every other one at the fastest config,
        the rest at the path leaders in turn."""
        best = session.best()[0]
        leaders = geometry.path_leaders(session.times)
        if local_steps % 2 == 0 or not leaders:
            return best
        return leaders[(local_steps // 2) % len(leaders)]

    @staticmethod
    def _propose(session: Session, model: "GaussianProcess", geometry: SpaceGeometry,
                 centre: int | None) -> int | None:
        """The untried candidate of largest expected improvement of the log time: with a
        ``centre`` (a local step), among the nearest untried configs to it (its neighbours,
        else those differing in two parameters, ...), else among the model's pool. None before
        any config ran or when no candidate is expected to improve."""
        model.update(session.times)
        if not model.observed:
            return None
        best_target = min(model.targets)
        if centre is not None:
            neighbours = [n for n in geometry.neighbours(centre) if not session.asked(n)]
            if neighbours:
                improvement = expected_improvement(*model.predict_at(np.array(neighbours)),
                                                   best_target)
                session.expect(_likeliest(np.array(neighbours), improvement))
                return neighbours[int(np.argmax(improvement))]
        improvement = expected_improvement(*model.predict(), best_target)
        tried = [p for p in map(model.pool_position.get, session.times) if p is not None]
        improvement[tried] = -np.inf
        if centre is not None:
            distance = geometry.distances(model.pool, centre)
            untried = np.isfinite(improvement)
            if untried.any():
                nearest = untried & (distance == distance[untried].min())
                improvement = np.where(nearest, improvement, -np.inf)
        proposal = int(np.argmax(improvement))
        if improvement[proposal] <= 0.0:
            return None
        session.expect(_likeliest(model.pool, improvement))
        return int(model.pool[proposal])


# How many of the best-scored configs a model step announces (the proposal and the runners-up,
# which the next steps often pick) so that they compile while the proposal is timed.
EXPECT_AHEAD = 8


def _likeliest(indices: np.ndarray, improvement: np.ndarray) -> list[int]:
    """The ``EXPECT_AHEAD`` indices of largest positive improvement, largest first."""
    best = np.argsort(-improvement)[:EXPECT_AHEAD]
    return [int(indices[k]) for k in best if improvement[k] > 0.0]


def expected_improvement(mean: np.ndarray, std: np.ndarray, best: float) -> np.ndarray:
    """E[max(best - Y, 0)] for Y ~ N(mean, std²), elementwise (minimisation)."""
    gap = best - mean
    u = gap / std
    cdf = 0.5 * (1.0 + _erf(u / math.sqrt(2.0)))
    pdf = np.exp(-0.5 * u * u) / math.sqrt(2.0 * math.pi)
    return np.maximum(gap * cdf + std * pdf, 0.0)


def _erf(x: np.ndarray) -> np.ndarray:
    """erf to 1.5e-7 (Abramowitz & Stegun 7.1.26): numpy has none and scipy is not required."""
    sign = np.sign(x)
    x = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * x)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741
                                                        + t * (-1.453152027 + t * 1.061405429))))
    return sign * (1.0 - poly * np.exp(-x * x))


class GaussianProcess:
    """A Gaussian process on candidate indices, observed at a growing subset of them and
    predicting at a pool of them (every candidate, unless the space is very large).

    Matérn-5/2 kernel with one length scale per feature group (automatic relevance
    determination: a parameter that barely matters gets a long one). Keeps the Cholesky factor
    L of the observed kernel matrix and V = L⁻¹·K(observed, pool), so an observation adds one
    row to each (O(n·pool)); the length scales and noise are re-chosen by marginal likelihood,
    the pool redrawn and everything recomputed whenever the observation count doubles. The
    constant mean and the signal variance are their maximum-likelihood estimates.
    """

    LENGTH_SCALES = (0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5)  # per √(groups)
    NOISES = (1e-6, 1e-4, 1e-3, 1e-2, 1e-1)  # relative to the signal variance
    RELEVANCE_STEPS = (0.25, 0.5, 2.0, 4.0, 1e3)  # tried per group, on top of the shared one
    RELEVANCE_SWEEPS = 2
    RELEVANCE_PRIOR = 2.0  # sd of log(group length / shared length): a factor e² is 1 sd
    CAP_QUANTILE = 0.5
    REFIT_GROWTH = 2.0  # refit when the observations grow by this factor

    def __init__(self, features_of: Callable[[np.ndarray], np.ndarray],
                 groups: list[np.ndarray], pool: Callable[[], np.ndarray]):
        self.features_of = features_of
        self.groups = groups
        self.draw_pool = pool
        self.width = int(max((g.max() + 1 for g in groups), default=0))
        self.length_scales = np.full(len(groups), 0.35 * math.sqrt(max(len(groups), 1)))
        self.noise = 1e-4
        self.observed: list[int] = []
        self.targets: list[float] = []
        self.fitted_at = 0

    def _column_scales(self, lengths: np.ndarray) -> np.ndarray:
        per_column = np.ones(self.width)
        for group, length in zip(self.groups, lengths):
            per_column[group] = length
        return math.sqrt(5.0) / per_column

    @staticmethod
    def kernel(rows: np.ndarray, columns: np.ndarray,
               column_norms: np.ndarray | None = None) -> np.ndarray:
        """Matérn-5/2 correlation between two sets of already scaled feature rows."""
        if column_norms is None:
            column_norms = (columns * columns).sum(1)
        squared = (rows * rows).sum(1)[:, None] + column_norms[None, :] - 2.0 * rows @ columns.T
        r = np.sqrt(np.maximum(squared, 0.0))
        return (1.0 + r + r * r / 3.0) * np.exp(-r)

    def update(self, times: dict[int, float]) -> None:
        """Brings the model up to date with every measured time: log times, capped at a
        quantile of those measured (failures count as the cap)."""
        finite = [math.log(t) for t in times.values() if math.isfinite(t) and t > 0]
        if not finite:
            return
        seen = set(self.observed)
        new = [i for i in times if i not in seen]
        if not self.observed or len(self.observed) + len(new) >= self.REFIT_GROWTH * self.fitted_at:
            self.cap = float(np.quantile(finite, self.CAP_QUANTILE))
            everything = self.observed + new
            self._refit(everything, [self._target(times[i]) for i in everything])
            return
        for index in new:
            self._extend(index, self._target(times[index]))

    def _target(self, elapsed: float) -> float:
        # Capped: how slow a slow config is does not help find the fast ones, and an uncapped
        # bulk of slow configs would drown the differences among the fast in the likelihood.
        if not (math.isfinite(elapsed) and elapsed > 0):
            return self.cap
        return min(math.log(elapsed), self.cap)

    def _refit(self, observed: list[int], targets: list[float]) -> None:
        self.observed, self.targets = list(observed), list(targets)
        self.observed_features = self.features_of(np.array(observed))
        self._choose_hyperparameters()
        self._factorise()
        self.fitted_at = len(self.observed)

    def _likelihood(self, lengths: np.ndarray, noise: float) -> float:
        points = self.observed_features * self._column_scales(lengths)
        correlation = self.kernel(points, points) + noise * np.eye(len(points))
        return _profile_log_likelihood(correlation, np.asarray(self.targets))

    def _choose_hyperparameters(self) -> None:
        """A shared length scale and the noise on a grid by marginal likelihood, then each
        group's own length scale by coordinate search, by marginal likelihood plus a
        log-normal prior around the shared one (``RELEVANCE_PRIOR``): with a few dozen
        observations the likelihood alone readily calls a parameter irrelevant that only
        matters together with another (shared memory pays only with a read-only cache)."""
        unit = math.sqrt(max(len(self.groups), 1))
        best, lengths, noise = -math.inf, self.length_scales, self.noise
        for length, candidate_noise in itertools.product(self.LENGTH_SCALES, self.NOISES):
            trial = np.full(len(self.groups), length * unit)
            likelihood = self._likelihood(trial, candidate_noise)
            if likelihood > best:
                best, lengths, noise = likelihood, trial, candidate_noise
        shared = lengths.copy()

        def posterior(trial: np.ndarray) -> float:
            deviation = np.log(trial / shared) / self.RELEVANCE_PRIOR
            return self._likelihood(trial, noise) - 0.5 * float(deviation @ deviation)

        best = posterior(lengths)
        for _ in range(self.RELEVANCE_SWEEPS):
            for j in range(len(self.groups)):
                for step in self.RELEVANCE_STEPS:
                    trial = lengths.copy()
                    trial[j] *= step
                    score = posterior(trial)
                    if score > best:
                        best, lengths = score, trial
        self.length_scales, self.noise = lengths, noise
        self.scales = self._column_scales(lengths)

    def _factorise(self) -> None:
        self.pool = self.draw_pool()
        self.pool_position = {int(i): k for k, i in enumerate(self.pool)}
        self.pool_scaled = self.features_of(self.pool) * self.scales
        self.pool_norms = (self.pool_scaled * self.pool_scaled).sum(1)
        self.observed_scaled = self.observed_features * self.scales
        n = len(self.observed)
        correlation = self.kernel(self.observed_scaled, self.observed_scaled)
        self.cholesky = np.linalg.cholesky(correlation + (self.noise + 1e-10) * np.eye(n))
        self._projection = np.linalg.solve(
            self.cholesky, self.kernel(self.observed_scaled, self.pool_scaled, self.pool_norms))
        self.whitened_y = np.linalg.solve(self.cholesky, np.asarray(self.targets))
        self.whitened_one = np.linalg.solve(self.cholesky, np.ones(n))
        self.explained = np.einsum("ij,ij->j", self._projection, self._projection)

    @property
    def projection(self) -> np.ndarray:
        """V: one row per observation (the array beyond them is room to grow)."""
        return self._projection[:len(self.observed)]

    def _extend(self, index: int, target: float) -> None:
        """Adds one observation: a new last row of L, of V and of the whitened vectors."""
        point = self.features_of(np.array([index])) * self.scales
        position = self.pool_position.get(index)
        link = (self.projection[:, position] if position is not None else
                np.linalg.solve(self.cholesky, self.kernel(self.observed_scaled, point)[:, 0]))
        pivot = math.sqrt(max(1.0 + self.noise - float(link @ link), 1e-12))
        row = (self.kernel(point, self.pool_scaled, self.pool_norms)[0]
               - link @ self.projection) / pivot
        n = len(self.observed)
        grown = np.zeros((n + 1, n + 1))
        grown[:n, :n] = self.cholesky
        grown[n, :n] = link
        grown[n, n] = pivot
        self.cholesky = grown
        if len(self._projection) == n:  # room for the next rows, so a step costs O(n·pool)
            self._projection = np.concatenate([self._projection, np.empty_like(self._projection)])
        self._projection[n] = row
        self.whitened_y = np.append(self.whitened_y, (target - link @ self.whitened_y) / pivot)
        self.whitened_one = np.append(self.whitened_one, (1.0 - link @ self.whitened_one) / pivot)
        self.explained = self.explained + row * row
        self.observed.append(index)
        self.targets.append(target)
        self.observed_scaled = np.vstack([self.observed_scaled, point])

    def predict(self) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and standard deviation at every point of the pool."""
        return self._posterior(self.projection, self.explained)

    def predict_at(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and standard deviation at any candidates."""
        points = self.features_of(indices) * self.scales
        projection = np.linalg.solve(self.cholesky, self.kernel(self.observed_scaled, points))
        return self._posterior(projection, np.einsum("ij,ij->j", projection, projection))

    def _posterior(self, projection: np.ndarray,
                   explained: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        level = float(self.whitened_one @ self.whitened_y) / float(
            self.whitened_one @ self.whitened_one)
        residual = self.whitened_y - level * self.whitened_one
        variance = float(residual @ residual) / max(len(self.observed), 1)
        mean = level + residual @ projection
        std = np.sqrt(np.maximum(1.0 - explained, 1e-12) * max(variance, 1e-12))
        return mean, std


def _profile_log_likelihood(correlation: np.ndarray, y: np.ndarray) -> float:
    """Log marginal likelihood of y with the constant mean and signal variance profiled out."""
    try:
        lower = np.linalg.cholesky(correlation)
    except np.linalg.LinAlgError:
        return -math.inf
    n = len(y)
    whitened_y, whitened_one = np.linalg.solve(lower, np.stack([y, np.ones(n)], axis=1)).T
    level = float(whitened_one @ whitened_y) / float(whitened_one @ whitened_one)
    residual = whitened_y - level * whitened_one
    variance = max(float(residual @ residual) / n, 1e-300)
    return -0.5 * n * math.log(variance) - float(np.log(np.diag(lower)).sum())


class Auto:
    """Picks a strategy from the space and the budget (see ``choose``)."""

    name = "auto"

    def search(self, space: SearchSpace, evaluate: Evaluate, rng: random.Random) -> None:
        choose(space).search(space, evaluate, rng)


# Spaces this small are measured whole: a model or a walk cannot save enough configs to matter.
SMALL_SPACE = 32


def choose(space: SearchSpace) -> Strategy:
    """The strategy ``auto`` runs: stagewise where the kernel allows it; exhaustive when the
    space is small or the budget surely covers it (no deadline, enough configs); otherwise
    the model-based search, which spends a partial budget best (see
    benchmarks/results/replay.md)."""
    if space.stagewise and space.stages:
        return Stagewise()
    size = len(space.candidates)
    covered = (not space.limited_by_time
               and (space.max_evaluations is None or space.max_evaluations >= size))
    if covered or size <= SMALL_SPACE:
        return Exhaustive()
    return ModelBased()


def planned_evaluations(strategy: Strategy, space: SearchSpace) -> int:
    """About how many configs ``strategy`` will measure (for a progress bar): a stagewise
    search's stage options counted from the start, without enumerating the space; any other
    search, the candidates; both cut to ``max_evaluations``."""
    if isinstance(strategy, Auto):
        strategy = choose(space)
    if isinstance(strategy, Stagewise) and space.stages:
        count = Stagewise.planned(space)
    else:
        count = len(space.candidates)
    return count if space.max_evaluations is None else min(count, space.max_evaluations)


STRATEGIES: dict[str, Any] = {
    "auto": Auto, "exhaustive": Exhaustive, "stagewise": Stagewise, "random": RandomSearch,
    "halving": SuccessiveHalving, "local": LocalSearch, "model": ModelBased,
}


def make_strategy(name: str) -> Strategy:
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; expected one of {', '.join(STRATEGIES)}")
    return STRATEGIES[name]()
