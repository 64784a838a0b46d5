"""Random search: candidates in a seeded random order (the baseline every strategy must beat)."""
from __future__ import annotations

import random

from seqtune.tuning.search.session import Session
from seqtune.tuning.search.space import Evaluate, SearchSpace


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
