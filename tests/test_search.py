"""Search strategies on small synthetic spaces: budgets, no repeated work, optima found, and
the choice ``auto`` makes."""
import itertools
import math
import random

import pytest

from seqtune.tuning.search.model import MAX_POOL
from seqtune.tuning.search import (STRATEGIES, Exhaustive, LocalSearch, ModelBased,
                            SearchSpace, Stagewise, choose, config_key, make_strategy)

PARAMS = {"BLOCK": (16, 32, 64, 128, 256), "TILE": (1, 2, 3, 4), "SHARED": (False, True),
          "ORDER": ("row", "col", "zigzag")}
BEST = {"BLOCK": 64, "TILE": 3, "SHARED": True, "ORDER": "col"}


def cost(config):
    """A unique optimum at BEST on a rugged surface: BLOCK=128 is a bad value between good ones,
    so no strategy gets there by following a smooth trend."""
    block = {16: 4.0, 32: 2.0, 64: 1.0, 128: 3.5, 256: 1.5}[config["BLOCK"]]
    tile = 1.0 + 0.6 * abs(config["TILE"] - 3)
    shared = 1.0 if config["SHARED"] else 1.7
    order = {"row": 1.3, "col": 1.0, "zigzag": 1.2}[config["ORDER"]]
    return 10.0 * block * tile * shared * order


def make_space(max_evaluations=None, failing=lambda c: c["TILE"] == 4 and c["BLOCK"] == 256):
    """All configs except the constraint violations (BLOCK=16 with TILE=1): failing ones stay
    candidates and run as inf."""
    keys = list(PARAMS)
    configs = [dict(zip(keys, v)) for v in itertools.product(*PARAMS.values())]
    candidates = [c for c in configs if not (c["BLOCK"] == 16 and c["TILE"] == 1)]
    default = {"BLOCK": 32, "TILE": 1, "SHARED": False, "ORDER": "row"}
    candidates.remove(default)
    candidates.insert(0, default)
    space = SearchSpace(PARAMS, candidates, [default], max_evaluations=max_evaluations)
    return space, failing


class Recorder:
    """An evaluate that allows ``budget`` distinct configs and records every call."""

    def __init__(self, space, failing, budget=None):
        self.space, self.failing, self.budget = space, failing, budget
        self.calls = []  # (config key, fidelity, answered)
        self.measured = {}

    def __call__(self, config, fidelity=1.0):
        assert self.space.is_candidate(config), f"not a candidate: {config}"
        key = config_key(config)
        if key not in self.measured and self.budget is not None and \
                len(self.measured) >= self.budget:
            self.calls.append((key, fidelity, False))
            return None
        self.calls.append((key, fidelity, True))
        self.measured[key] = math.inf if self.failing(config) else cost(config)
        return self.measured[key]

    def best(self):
        return min(self.measured.values())


def optimum(space, failing):
    return min(cost(c) for c in space.candidates if not failing(c))


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_budget_is_respected_and_the_search_stops_at_the_first_none(name):
    space, failing = make_space(max_evaluations=12)
    evaluate = Recorder(space, failing, budget=12)
    make_strategy(name).search(space, evaluate, random.Random(1))
    assert len(evaluate.measured) == 12
    refused = [i for i, call in enumerate(evaluate.calls) if not call[2]]
    assert refused == [len(evaluate.calls) - 1]  # one None, and nothing asked after it


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_no_config_is_asked_twice_at_the_same_fidelity(name):
    space, failing = make_space()
    evaluate = Recorder(space, failing)
    make_strategy(name).search(space, evaluate, random.Random(2))
    asked = [(key, fidelity) for key, fidelity, _ in evaluate.calls]
    assert len(asked) == len(set(asked))
    assert len(evaluate.measured) == len(space.candidates)  # unlimited budget: all measured
    if name != "halving":  # only halving re-times a config, at a higher fidelity
        assert all(fidelity == 1.0 for _, fidelity in asked)


@pytest.mark.parametrize("name", ["random", "halving", "local", "model"])
def test_the_default_is_measured_first(name):
    space, failing = make_space(max_evaluations=5)
    evaluate = Recorder(space, failing, budget=5)
    make_strategy(name).search(space, evaluate, random.Random(3))
    assert evaluate.calls[0][0] == config_key(space.starts[0])


@pytest.mark.parametrize("name", ["local", "model"])
def test_guided_strategies_find_the_optimum_with_a_third_of_the_space(name):
    space, failing = make_space()
    budget = len(space.candidates) // 3
    best = optimum(space, failing)
    found = 0
    for seed in range(5):
        evaluate = Recorder(space, failing, budget=budget)
        make_strategy(name).search(space, evaluate, random.Random(seed))
        found += evaluate.best() == best
    assert found >= 4


@pytest.mark.parametrize("name", ["random", "halving", "exhaustive", "stagewise"])
def test_unguided_strategies_find_the_optimum_given_the_whole_space(name):
    space, failing = make_space()
    evaluate = Recorder(space, failing)
    make_strategy(name).search(space, evaluate, random.Random(4))
    assert evaluate.best() == optimum(space, failing)


def test_halving_times_cheaply_first_and_fully_only_the_leaders():
    space, failing = make_space()
    evaluate = Recorder(space, failing)
    make_strategy("halving").search(space, evaluate, random.Random(5))
    fidelities = [fidelity for _, fidelity, _ in evaluate.calls]
    assert fidelities[0] < 1.0
    cheap = sum(f < 1.0 for f in fidelities)
    full = sum(f == 1.0 for f in fidelities)
    assert full < cheap / 2


def test_strategies_other_than_halving_work_with_a_one_argument_evaluate():
    space, failing = make_space(max_evaluations=20)
    for name in sorted(set(STRATEGIES) - {"halving"}):
        seen = []

        def evaluate(config):
            seen.append(config)
            return cost(config) if len(seen) <= 20 else None

        make_strategy(name).search(space, evaluate, random.Random(6))
        assert len(seen) == 21, name


def test_model_survives_a_start_where_everything_fails():
    space, _ = make_space(max_evaluations=30)
    evaluate = Recorder(space, lambda c: not c["SHARED"], budget=30)  # half the space fails
    ModelBased(max_initial=5).search(space, evaluate, random.Random(7))
    assert len(evaluate.measured) == 30
    assert math.isfinite(evaluate.best())


def test_model_scores_a_sample_of_a_very_large_space():
    params = {"a": tuple(range(40)), "b": tuple(range(30)), "c": tuple(range(20))}
    candidates = [dict(zip(params, v)) for v in itertools.product(*params.values())]
    assert len(candidates) > MAX_POOL
    space = SearchSpace(params, candidates, candidates[:1], max_evaluations=25)
    seen = []

    def evaluate(config):
        if len(seen) == 25:
            return None
        seen.append(config)
        return (config["a"] - 31) ** 2 + (config["b"] - 7) ** 2 + config["c"] + 1.0

    ModelBased().search(space, evaluate, random.Random(8))
    assert len({config_key(c) for c in seen}) == 25


def test_path_leaders_are_the_fastest_configs_of_the_other_code_paths():
    params = {"X": (1, 2, 3), "SHARED": (False, True), "ORDER": ("row", "col", "zigzag")}
    candidates = [dict(zip(params, v)) for v in itertools.product(*params.values())]
    geometry = SearchSpace(params, candidates, []).geometry()
    index = {config_key(c): i for i, c in enumerate(candidates)}

    def at(x, shared, order):
        return index[config_key({"X": x, "SHARED": shared, "ORDER": order})]

    times = {at(1, True, "row"): 1.0, at(2, True, "col"): 2.0, at(3, False, "col"): 3.0,
             at(1, False, "row"): 4.0, at(2, False, "row"): 5.0, at(1, False, "zigzag"): math.inf}
    # X is a size, not a switch: the paths are (SHARED, ORDER). (True, row) is the incumbent's;
    # (False, row) is led by its faster config; (False, zigzag) has only a failed config, so no
    # leader. (False, row) gets a leader although neither of its values leads on its own.
    assert geometry.path_leaders(times) == [at(2, True, "col"), at(3, False, "col"),
                                            at(1, False, "row")]
    assert geometry.path_leaders({}) == []


def pocket_cost(config):
    """Shared memory helps every config but the best few: the optimum (1.0) is in a narrow
    pocket without it, while the shared-memory configs are 2.0 and up."""
    if config["SHARED"]:
        return 2.0 + 0.25 * (abs(config["X"] - 10) + abs(config["Y"] - 3))
    return 1.0 + 0.5 * (abs(config["X"] - 2) + abs(config["Y"] - 6))


def test_model_refines_the_other_branch_and_finds_a_pocket_off_the_incumbents_branch():
    params = {"X": tuple(range(16)), "Y": tuple(range(8)), "SHARED": (False, True)}
    candidates = [dict(zip(params, v)) for v in itertools.product(*params.values())]
    found = 0
    for seed in range(20):
        space = SearchSpace(params, candidates, [], max_evaluations=24)
        measured = {}

        def evaluate(config):
            key = config_key(config)
            if key not in measured and len(measured) == 24:
                return None
            measured[key] = pocket_cost(config)
            return measured[key]

        ModelBased().search(space, evaluate, random.Random(seed))
        found += min(measured.values()) == 1.0
    # 15 of 20 as built; refining only the fastest config so far finds it in 6
    assert found >= 12


def test_neighbours_step_to_adjacent_ordinal_values_and_any_categorical_value():
    space, _ = make_space()
    geometry = space.geometry()
    index = geometry.indices_of([{"BLOCK": 32, "TILE": 1, "SHARED": False, "ORDER": "row"}])[0]
    adjacent = [space.candidates[i] for i in geometry.neighbours(index, adjacent_only=True)]
    changed = sorted((k, c[k]) for c in adjacent for k in c if c[k] != space.candidates[index][k])
    # BLOCK=16 with TILE=1 violates the constraint: the nearest smaller BLOCK is absent
    assert changed == [("BLOCK", 64), ("ORDER", "col"), ("ORDER", "zigzag"), ("SHARED", True),
                       ("TILE", 2)]
    assert len(geometry.neighbours(index)) == 3 + 3 + 1 + 2  # BLOCK, TILE, SHARED, ORDER


def test_local_search_restarts_instead_of_stopping_at_a_local_optimum():
    space, failing = make_space()
    evaluate = Recorder(space, failing, budget=len(space.candidates) - 1)
    LocalSearch().search(space, evaluate, random.Random(9))
    assert len(evaluate.measured) == len(space.candidates) - 1


def test_auto_picks_by_stages_space_size_and_budget():
    space, _ = make_space()
    large = len(space.candidates)
    assert isinstance(choose(space), Exhaustive)  # no budget: everything is measured anyway
    space.max_evaluations = large // 4
    assert isinstance(choose(space), ModelBased)
    space.max_evaluations = None
    space.limited_by_time = True  # a deadline may cut the search: order matters
    assert isinstance(choose(space), ModelBased)
    small = SearchSpace(PARAMS, space.candidates[:20], space.starts, max_evaluations=10)
    assert isinstance(choose(small), Exhaustive)
    staged = SearchSpace(PARAMS, space.candidates, space.starts, stages=("a",), stagewise=True,
                         max_evaluations=10)
    assert isinstance(choose(staged), Stagewise)


def test_tuner_passes_the_budget_and_stagewise_flag_to_the_strategy(toy_registry):
    from seqtune.device import interpreter_device
    from seqtune.tuning.timing import Timing
    from seqtune.tuning.tuner import Budget, Tuner

    seen = {}

    class Spy:
        name = "spy"

        def search(self, space, evaluate, rng):
            seen["space"] = space
            seen["time"] = evaluate(space.candidates[0], fidelity=0.25)

    def timer(run, config, fidelity=1.0):
        seen["fidelity"] = fidelity
        return Timing(5.0, 4.9, 5.1, samples=3)

    tuner = Tuner(interpreter_device(), timer, Budget(None, 3))
    tuner.tune(toy_registry, {"N": 64, "dtype": "float32"}, Spy())
    assert seen["space"].max_evaluations == 3
    assert seen["space"].stagewise is False and not seen["space"].limited_by_time
    assert seen["time"] == 5.0 and seen["fidelity"] == 0.25


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_strategies_announce_most_of_what_they_ask_before_asking_it(name):
    """What compile-ahead compiles in the background: a config asked unannounced is compiled
    while the GPU waits."""
    space, failing = make_space(max_evaluations=60)
    announced = set()
    space.expect = lambda configs: announced.update(config_key(c) for c in configs)
    surprises = []

    def evaluate(config, fidelity=1.0):
        surprises.append(config_key(config) not in announced)
        return recorder(config, fidelity)

    recorder = Recorder(space, failing, budget=60)
    make_strategy(name).search(space, evaluate, random.Random(7))
    assert sum(surprises) <= 0.1 * len(surprises), f"{sum(surprises)} of {len(surprises)}"


def test_stagewise_spreads_a_cut_budget_over_every_setting_and_stage():
    values = (1, 2, 3)
    params = {"BT": (16, 32), **{f"{stage}.{knob}": values
                                 for stage in ("a", "b", "c") for knob in ("x", "y")}}
    candidates = [dict(zip(params, v)) for v in itertools.product(*params.values())]
    space = SearchSpace(params, candidates, candidates[:1], ("a", "b", "c"), stagewise=True,
                        max_evaluations=18)  # a third of the 2 settings x 3 stages x 9 options
    asked = []

    def evaluate(config):
        asked.append(config)
        return None if len({config_key(c) for c in asked}) > 18 else sum(config.values())

    Stagewise().search(space, evaluate, random.Random(8))
    measured = {config_key(c): c for c in asked}.values()
    assert len(measured) <= 18  # the budget was never hit: the search planned within it
    start = candidates[0]
    for setting in (16, 32):
        for stage in ("a", "b", "c"):
            moved = [c for c in measured if c["BT"] == setting
                     and any(c[f"{stage}.{k}"] != start[f"{stage}.{k}"] for k in ("x", "y"))]
            assert moved, f"stage {stage} of BT={setting} never tuned"


def test_stagewise_skips_a_setting_without_candidates_and_repairs_one_needing_every_stage():
    # Six stages of 3 knobs x 4 values: a product of 4**18 configs that must never be walked.
    params = {"BT": (16, 32, 64), **{f"{stage}.{knob}": (1, 2, 4, 8)
                                     for stage in "abcdef" for knob in ("x", "y", "num_warps")}}
    start = {p: values[-1] for p, values in params.items()} | {"BT": 16}
    asked = []

    def contains(config):  # BT=64 has no candidate; BT=32 needs every stage's tiles small
        asked.append(config)
        tiles = [config[p] for p in params if p.endswith((".x", ".y"))]
        warps_pinned = all(config[f"{s}.num_warps"] == 8 for s in "abcdef")
        return warps_pinned and (config["BT"] == 16 or config["BT"] == 32 and max(tiles) <= 2)

    space = SearchSpace(params, (), [start], tuple("abcdef"), stagewise=True, contains=contains)
    settings = [c["BT"] for c in Stagewise._setting_starts(space)]
    assert settings == [16, 32]
    assert len(asked) < 10_000
