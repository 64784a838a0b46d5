"""Local search: hill climbs over neighbouring configs with random restarts."""
from __future__ import annotations

import itertools
import random

from seqtune.tuning.search.session import Session
from seqtune.tuning.search.space import Evaluate, SearchSpace, SpaceGeometry

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
