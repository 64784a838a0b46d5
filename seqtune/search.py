"""Search strategies: which configs of a space to evaluate, and in what order.

A strategy sees only a ``SearchSpace`` and an ``evaluate`` callback, so the same strategy drives
a real tune (evaluate = check against the reference, then time) and an offline replay of a
recorded tuning log (evaluate = look the time up). ``evaluate`` memoises (a config is never
evaluated twice), returns the run time in µs (``inf`` for a config that failed) and returns None
once the budget is spent: a strategy stops at the first None.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
import random
from typing import Any, Callable, Protocol

from seqtune.spec import Config

Evaluate = Callable[[Config], "float | None"]


def config_key(config: Config) -> tuple:
    return tuple(sorted(config.items()))


@dataclasses.dataclass
class SearchSpace:
    """What a strategy may search.

    Attributes:
        params: parameter -> allowed values (the whole space, for neighbourhoods).
        candidates: the valid configs of this problem, the default first.
        starts: where local searches begin (the default, then nearest tuned configs).
        stages: per-stage namespaces, for stagewise search.
    """

    params: dict[str, tuple]
    candidates: list[Config]
    starts: list[Config]
    stages: tuple[str, ...] = ()

    def stage_of(self, param: str) -> str | None:
        prefix, dot, _ = param.partition(".")
        return prefix if dot and prefix in self.stages else None

    def is_candidate(self, config: Config) -> bool:
        if not hasattr(self, "_keys"):
            self._keys = {config_key(c) for c in self.candidates}
        return config_key(config) in self._keys


class Strategy(Protocol):
    name: str

    def search(self, space: SearchSpace, evaluate: Evaluate, rng: random.Random) -> None:
        ...


class Exhaustive:
    """Every candidate, in the given order (default first)."""

    name = "exhaustive"

    def search(self, space: SearchSpace, evaluate: Evaluate, rng: random.Random) -> None:
        for config in space.candidates:
            if evaluate(config) is None:
                return


class Stagewise:
    """For each setting of the shared knobs, tune one stage at a time with the other stages held
    at their best so far: the sum of the stage spaces instead of their product. Right when the
    stages are nearly independent once the shared knobs (e.g. the chunk size) are fixed."""

    name = "stagewise"

    def search(self, space: SearchSpace, evaluate: Evaluate, rng: random.Random) -> None:
        shared = [p for p in space.params if space.stage_of(p) is None]
        settings = list(dict.fromkeys(tuple(c[p] for p in shared) for c in space.candidates))
        for setting in settings:
            current = next(c for c in space.candidates
                           if tuple(c[p] for p in shared) == setting)
            for stage in space.stages:
                current = self._tune_stage(space, evaluate, current, stage)
                if current is None:
                    return

    @staticmethod
    def _tune_stage(space: SearchSpace, evaluate: Evaluate, current: Config,
                    stage: str) -> Config | None:
        params = [p for p in space.params if space.stage_of(p) == stage]
        best, best_time = current, math.inf
        for values in itertools.product(*(space.params[p] for p in params)):
            option = {**current, **dict(zip(params, values))}
            if not space.is_candidate(option):
                continue
            elapsed = evaluate(option)
            if elapsed is None:
                return None
            if elapsed < best_time:
                best, best_time = option, elapsed
        return best


STRATEGIES: dict[str, Any] = {"exhaustive": Exhaustive, "stagewise": Stagewise}


def make_strategy(name: str) -> Strategy:
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; expected one of {', '.join(STRATEGIES)}")
    return STRATEGIES[name]()
