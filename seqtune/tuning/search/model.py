"""Model-based search: a Gaussian process of log time, expected improvement, local refinement of
every code path's leader."""
from __future__ import annotations

import itertools
import math
import random

import numpy as np

from seqtune.tuning.search.gaussian_process import GaussianProcess
from seqtune.tuning.search.session import Session
from seqtune.tuning.search.space import Evaluate, SearchSpace, SpaceGeometry

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
