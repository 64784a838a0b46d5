"""The Gaussian process the model-based search fits over a space's candidates."""
from __future__ import annotations

import itertools
import math
from typing import Callable

import numpy as np


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
