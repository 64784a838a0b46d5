"""Search strategies: which configs of a space to evaluate, and in what order.

A strategy sees only a ``SearchSpace`` and an ``evaluate`` callback, so the same strategy drives
a real tune (evaluate = check against the reference, then time) and an offline replay of a
recorded tuning log (evaluate = look the time up). ``space.py`` holds the space and its
geometry, ``session.py`` the memoising view of ``evaluate``; each strategy has its own module,
and ``auto.py`` picks one and names them all.
"""
from seqtune.tuning.search.auto import (
                                        SMALL_SPACE,
                                        STRATEGIES,
                                        Auto,
                                        choose,
                                        make_strategy,
                                        planned_evaluations,
)
from seqtune.tuning.search.exhaustive import Exhaustive
from seqtune.tuning.search.gaussian_process import GaussianProcess
from seqtune.tuning.search.halving import SuccessiveHalving
from seqtune.tuning.search.local import LocalSearch
from seqtune.tuning.search.model import ModelBased, expected_improvement
from seqtune.tuning.search.random_search import RandomSearch
from seqtune.tuning.search.session import Session, Strategy
from seqtune.tuning.search.space import (
                                        FULL_FIDELITY,
                                        Evaluate,
                                        SearchSpace,
                                        SpaceGeometry,
                                        config_key,
)
from seqtune.tuning.search.stagewise import Stagewise

__all__ = ["FULL_FIDELITY", "SMALL_SPACE", "STRATEGIES", "Auto", "Evaluate", "Exhaustive",
           "GaussianProcess", "LocalSearch", "ModelBased", "RandomSearch", "SearchSpace",
           "Session", "SpaceGeometry", "Stagewise", "Strategy", "SuccessiveHalving", "choose",
           "config_key", "expected_improvement", "make_strategy", "planned_evaluations"]
