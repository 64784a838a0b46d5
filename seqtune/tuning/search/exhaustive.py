"""Exhaustive search: every candidate, default first."""
from __future__ import annotations

import random

from seqtune.tuning.search.space import Evaluate, SearchSpace


class Exhaustive:
    """Every candidate, in the given order (default first)."""

    name = "exhaustive"

    def search(self, space: SearchSpace, evaluate: Evaluate, rng: random.Random) -> None:
        space.expect(space.candidates)
        for config in space.candidates:
            if evaluate(config) is None:
                return
