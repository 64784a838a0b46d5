"""``auto``: picks a strategy from the space and the budget; the strategy registry."""
from __future__ import annotations

import random
from typing import Any

from seqtune.tuning.search.exhaustive import Exhaustive
from seqtune.tuning.search.halving import SuccessiveHalving
from seqtune.tuning.search.local import LocalSearch
from seqtune.tuning.search.model import ModelBased
from seqtune.tuning.search.random_search import RandomSearch
from seqtune.tuning.search.session import Strategy
from seqtune.tuning.search.space import Evaluate, SearchSpace
from seqtune.tuning.search.stagewise import Stagewise


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
