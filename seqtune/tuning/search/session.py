"""A search's view of ``evaluate`` (asks each candidate once) and the strategy protocol."""
from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Protocol

from seqtune.tuning.search.space import FULL_FIDELITY, Evaluate, SearchSpace


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
