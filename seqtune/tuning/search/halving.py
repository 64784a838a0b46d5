"""Successive halving: cheap timings of many candidates, full timings of the few best."""
from __future__ import annotations

import math
import random

from seqtune.tuning.search.session import Session
from seqtune.tuning.search.space import Evaluate, SearchSpace


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
