"""The search space a strategy sees: the candidate configs, the stage structure, the budget, and
the geometry (value ranks, neighbours, code paths, features) strategies and the model share.

``evaluate(config)`` memoises (a config is never evaluated twice), returns the run time in µs
(``inf`` for a config that failed) and returns None once the budget is spent: a strategy stops
at the first None. ``evaluate(config, fidelity=f)`` with ``0 < f < 1`` asks for a cheaper,
noisier timing (fewer repetitions); only successive halving asks for one, and an evaluate may
ignore it.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence
from typing import Any, Callable

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
            can be compiled ahead (``seqtune.tuning.compiler.CompileAhead``); a hint: ignoring it changes
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
