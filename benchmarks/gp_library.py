"""Replay the model-based search with its hand-written Gaussian process and with scikit-learn's
GaussianProcessRegressor behind the same interface (issue 22: prefer a well-kept library unless
a benchmark shows it worse).

The adapter keeps everything around the regression as the hand-written GP does it (log times
capped at their median, failures at the cap, the candidate pool, hyperparameters re-chosen only
when the observations double and otherwise a refit with the kernel fixed), so the two differ
only in the regression: kernel, hyperparameter choice and posterior.

    pip install scikit-learn   # for this benchmark only
    OPENBLAS_NUM_THREADS=1 python -W ignore benchmarks/gp_library.py [--gp G,...] [--seeds 50]
        [--budget 5%] [--json F]   (results: benchmarks/results/gp_library.md)
"""
from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy.optimize import minimize
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

import seqtune.tuning.search.model as model_search
from seqtune.analysis.replay import budget_for, load, replay_runs, summarise
from seqtune.tuning.search.gaussian_process import GaussianProcess

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "tuning-spaces"
FILES = [f"convolution/{device}.json.gz" for device in ("A100", "A4000", "MI250X", "W7800")]


class GroupedMatern(Matern):
    """Matérn kernel with one length scale per group of feature columns (a one-hot block
    shares one, as in the hand-written GP), so a parameter counts as one relevance, not one per
    value. Evaluated by scikit-learn's anisotropic Matérn; the gradient per group is the sum of
    its columns' gradients (chain rule for tied log length scales)."""

    def __init__(self, groups=(), length_scale=1.0, length_scale_bounds=(1e-5, 1e5), nu=2.5):
        self.groups = groups
        super().__init__(length_scale=length_scale, length_scale_bounds=length_scale_bounds,
                         nu=nu)

    def _per_column(self) -> np.ndarray:
        lengths = np.broadcast_to(np.asarray(self.length_scale, float), (len(self.groups),))
        width = max(max(g) for g in self.groups) + 1
        columns = np.ones(width)
        for group, length in zip(self.groups, lengths):
            columns[list(group)] = length
        return columns

    def __call__(self, X, Y=None, eval_gradient=False):
        bounds = "fixed" if self.hyperparameter_length_scale.fixed else (1e-5, 1e5)
        columns = Matern(self._per_column(), bounds, self.nu)
        if not eval_gradient:
            return columns(X, Y)
        value, gradient = columns(X, Y, eval_gradient=True)
        if self.hyperparameter_length_scale.fixed:
            return value, gradient
        grouped = np.stack([gradient[..., list(g)].sum(-1) for g in self.groups], axis=-1)
        if not self.anisotropic:
            grouped = grouped.sum(-1, keepdims=True)
        return value, grouped


class SklearnGaussianProcess:
    """The interface ``ModelBased`` uses (update, observed, targets, predict, predict_at, pool,
    pool_position) over scikit-learn's GaussianProcessRegressor: a constant times a Matérn-5/2
    with per-group length scales plus a WhiteKernel for the noise, normalize_y."""

    CAP_QUANTILE = GaussianProcess.CAP_QUANTILE
    REFIT_GROWTH = GaussianProcess.REFIT_GROWTH
    RESTARTS = 2  # extra optimiser starts per hyperparameter refit (seeded, so runs repeat)

    def __init__(self, features_of: Callable[[np.ndarray], np.ndarray],
                 groups: list[np.ndarray], pool: Callable[[], np.ndarray]):
        self.features_of = features_of
        self.draw_pool = pool
        unit = math.sqrt(max(len(groups), 1))
        self.kernel = (ConstantKernel(1.0, (1e-3, 1e3))
                       * GroupedMatern(tuple(tuple(int(c) for c in g) for g in groups),
                                       np.full(len(groups), 0.35 * unit), (1e-2, 1e4))
                       + WhiteKernel(1e-4, (1e-6, 1e-1)))
        self.observed: list[int] = []
        self.targets: list[float] = []
        self.fitted_at = 0
        self.regressor: GaussianProcessRegressor | None = None

    def update(self, times: dict[int, float]) -> None:
        finite = [math.log(t) for t in times.values() if math.isfinite(t) and t > 0]
        if not finite:
            return
        seen = set(self.observed)
        new = [i for i in times if i not in seen]
        if not new and self.regressor is not None:
            return
        refit = not self.observed or len(self.observed) + len(new) >= (
            self.REFIT_GROWTH * self.fitted_at)
        if refit:
            self.cap = float(np.quantile(finite, self.CAP_QUANTILE))
            self.observed = self.observed + new
            self.targets = [self._target(times[i]) for i in self.observed]
        else:
            self.observed = self.observed + new
            self.targets = self.targets + [self._target(times[i]) for i in new]
        self._fit(refit)

    def _target(self, elapsed: float) -> float:
        if not (math.isfinite(elapsed) and elapsed > 0):
            return self.cap
        return min(math.log(elapsed), self.cap)

    def _optimizer(self):
        return "fmin_l_bfgs_b"  # scikit-learn's default

    def _fit(self, choose_hyperparameters: bool) -> None:
        features = self.features_of(np.array(self.observed))
        if choose_hyperparameters:
            regressor = GaussianProcessRegressor(
                self.kernel, normalize_y=True, n_restarts_optimizer=self.RESTARTS,
                random_state=len(self.observed), optimizer=self._optimizer())
            regressor.fit(features, np.asarray(self.targets))
            self.kernel = regressor.kernel_
            self.fitted_at = len(self.observed)
            self.pool = self.draw_pool()
            self.pool_position = {int(i): k for k, i in enumerate(self.pool)}
            self.pool_features = self.features_of(self.pool)
        else:
            regressor = GaussianProcessRegressor(self.kernel, normalize_y=True, optimizer=None)
            regressor.fit(features, np.asarray(self.targets))
        self.regressor = regressor

    def predict(self) -> tuple[np.ndarray, np.ndarray]:
        return self.regressor.predict(self.pool_features, return_std=True)

    def predict_at(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.regressor.predict(self.features_of(indices), return_std=True)


class SklearnGaussianProcessWithPrior(SklearnGaussianProcess):
    """A diagnostic variant: scikit-learn's GP with the hand-written GP's log-normal prior on
    the group length scales (sd: a factor e² around their geometric mean), added to the
    marginal likelihood through a custom optimizer (L-BFGS-B of scipy, as the default)."""

    PRIOR = GaussianProcess.RELEVANCE_PRIOR

    def _optimizer(self):
        groups = slice(1, 1 + len(self.kernel.k1.k2.groups))  # theta: constant, lengths, noise

        def optimise(objective, theta, bounds):
            def penalised(point):
                value, gradient = objective(point, eval_gradient=True)
                lengths = point[groups]
                deviation = (lengths - lengths.mean()) / self.PRIOR
                gradient = gradient.copy()
                gradient[groups] += deviation / self.PRIOR
                return value + 0.5 * float(deviation @ deviation), gradient

            result = minimize(penalised, theta, jac=True, method="L-BFGS-B", bounds=bounds)
            return result.x, result.fun

        return optimise


GPS = {"hand-written": GaussianProcess, "scikit-learn": SklearnGaussianProcess,
       "scikit-learn+prior": SklearnGaussianProcessWithPrior}


def replay(path: Path, gp: str, budget: str, seeds: int) -> dict:
    """One file with one GP: the replay row of ``seqtune replay`` plus the wall time per run."""
    recorded = load(path)[0]
    count = budget_for(budget, len(recorded.configs))
    model_search.GaussianProcess = GPS[gp]
    try:
        start = time.perf_counter()
        outcomes = replay_runs(recorded, "model", count, seeds)
        elapsed = time.perf_counter() - start
    finally:
        model_search.GaussianProcess = GaussianProcess
    row = summarise(recorded, "model", count, outcomes)
    return {**row, "gp": gp, "seconds_per_run": round(elapsed / seeds, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path,
                        default=[DATASETS / name for name in FILES])
    parser.add_argument("--gp", default="hand-written,scikit-learn", help=", ".join(GPS))
    parser.add_argument("--budget", default="5%")
    parser.add_argument("--seeds", type=int, default=50, help="seeds 0..N-1")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    rows = []
    print("| file | GP | reached ≤3% | median configs to reach | mean final gap | s per run |")
    print("|---|---|---|---|---|---|")
    for path in args.files:
        for gp in args.gp.split(","):
            row = replay(path, gp, args.budget, args.seeds)
            rows.append(row)
            median = row["median_evaluations"]
            print(f"| {'/'.join(path.parts[-2:])} | {gp} | {row['reached_share']:.0%} | "
                  f"{'-' if median is None else median} | {row['mean_final_gap']:.2%} | "
                  f"{row['seconds_per_run']} |", flush=True)
            if args.json:
                args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
