"""Tuner selection and failure handling, driven by an injected timer."""
import pytest

from seqtune.device import interpreter_device
from seqtune.tuning.timing import Timing, wall_clock_timer
from seqtune.tuning.tuner import Budget, Tuner, candidate_order, complexity, entry_for


class FakeTimer:
    """Times from a table keyed by (BLOCK, num_warps); counts calls per config."""

    def __init__(self, times_us, spread=0.01, later=None):
        self.times_us = times_us
        self.spread = spread
        self.later = later or {}
        self.calls = {}

    def __call__(self, run, config):
        key = (config["BLOCK"], config["num_warps"])
        self.calls[key] = self.calls.get(key, 0) + 1
        value = self.times_us[key] if self.calls[key] == 1 else self.later.get(key, self.times_us[key])
        return Timing(value, value * (1 - self.spread), value * (1 + self.spread), samples=10)


DEVICE = interpreter_device()
PROBLEM = {"N": 64, "dtype": "float32"}


def tuner(timer, max_configs=None, budget_s=None, clock=None):
    budget = Budget(budget_s, max_configs, **({"clock": clock} if clock else {}))
    return Tuner(DEVICE, timer, budget)


def test_candidate_order_puts_the_default_first_and_keeps_only_valid(toy_registry):
    order = candidate_order(toy_registry, {"N": 20, "dtype": "float32"}, DEVICE)
    assert order[0] == toy_registry.default_config
    assert all(c["BLOCK"] <= 32 for c in order)  # 64 > padded N=32
    # warps are pinned to the default in the interpreter
    assert {c["num_warps"] for c in order} == {1}


def test_clear_winner_is_chosen(toy_registry):
    timer = FakeTimer({(16, 1): 100.0, (32, 1): 50.0, (64, 1): 10.0})
    result = tuner(timer).tune(toy_registry, PROBLEM)
    assert result.winner.config == {"BLOCK": 64, "SKIP_TAIL": False, "num_warps": 1}
    assert result.ties == 1


def test_noise_tie_prefers_the_default(toy_registry):
    # BLOCK=64 looks 1% faster than the default: within noise, so the default wins.
    timer = FakeTimer({(16, 1): 100.0, (32, 1): 20.0, (64, 1): 19.8})
    result = tuner(timer).tune(toy_registry, PROBLEM)
    assert result.winner.config == toy_registry.default_config
    assert result.ties == 2
    # the near-ties were re-timed, the far one was not
    assert timer.calls[(32, 1)] > 1 and timer.calls[(64, 1)] > 1 and timer.calls[(16, 1)] == 1


def test_noise_tie_without_default_prefers_the_simplest(toy_registry):
    timer = FakeTimer({(16, 1): 10.1, (32, 1): 50.0, (64, 1): 10.0})
    result = tuner(timer).tune(toy_registry, PROBLEM)
    assert result.winner.config["BLOCK"] == 16
    assert complexity({"BLOCK": 16}) < complexity({"BLOCK": 64})


def test_retiming_separates_a_lucky_first_measurement(toy_registry):
    # BLOCK=64 first looks tied with the default, re-timing shows it is really slower.
    timer = FakeTimer({(16, 1): 100.0, (32, 1): 20.0, (64, 1): 19.9}, later={(64, 1): 30.0})
    result = tuner(timer).tune(toy_registry, PROBLEM)
    assert result.winner.config == toy_registry.default_config
    assert result.ties == 1


def test_partial_write_is_a_mismatch_and_tuning_goes_on(toy_registry):
    timer = FakeTimer({(16, 1): 30.0, (32, 1): 20.0, (64, 1): 25.0})
    result = tuner(timer).tune(toy_registry, PROBLEM)
    statuses = {(c.config["BLOCK"], c.config["SKIP_TAIL"]): c.status for c in result.candidates}
    assert statuses[(32, True)] == "mismatch"
    assert statuses[(32, False)] == "ok"
    assert result.failed["mismatch"] == 3
    assert result.winner.config["SKIP_TAIL"] is False


def test_crashing_config_is_recorded_as_runtime_failure(toy_registry, monkeypatch):
    import dataclasses

    def run(inputs, config):
        if config["BLOCK"] == 16:
            raise RuntimeError("illegal memory access\nat somewhere")
        return toy_registry.run(inputs, config)

    spec = dataclasses.replace(toy_registry, run=run)
    result = tuner(FakeTimer({(16, 1): 1.0, (32, 1): 20.0, (64, 1): 25.0})).tune(spec, PROBLEM)
    crashed = [c for c in result.candidates if c.config["BLOCK"] == 16]
    assert {c.status for c in crashed} == {"runtime"}
    assert crashed[0].error == "RuntimeError: at somewhere"  # one line: the last
    assert result.winner.config["BLOCK"] == 32


def test_max_configs_bounds_the_work_and_always_runs_the_default(toy_registry):
    result = tuner(FakeTimer({(16, 1): 1.0, (32, 1): 2.0, (64, 1): 3.0}), max_configs=2).tune(
        toy_registry, PROBLEM)
    assert len(result.candidates) == 2
    assert result.candidates[0].config == toy_registry.default_config


def test_expired_budget_still_measures_the_default(toy_registry):
    ticks = iter(range(0, 1000, 100))
    result = tuner(FakeTimer({(16, 1): 1.0, (32, 1): 2.0, (64, 1): 3.0}), budget_s=50,
                   clock=lambda: next(ticks)).tune(toy_registry, PROBLEM)
    assert [c.config for c in result.candidates] == [toy_registry.default_config]
    assert result.winner.config == toy_registry.default_config


def test_entry_records_speedup_spread_and_failures(toy_registry):
    timer = FakeTimer({(16, 1): 40.0, (32, 1): 20.0, (64, 1): 10.0})
    result = tuner(timer).tune(toy_registry, PROBLEM)
    entry = entry_for(toy_registry, result, "fake", "3.x", "abc")
    assert entry["problem"] == {"N": 64, "dtype": "float32"}
    assert entry["speedup_vs_default"] == pytest.approx(2.0)
    assert entry["time_us"] == {"median": 10.0, "p20": 9.9, "p80": 10.1}
    assert entry["failed"]["mismatch"] == 3 and entry["tried"] == 6
    assert entry["tflops"] == pytest.approx(64 / 10e-6 / 1e12, rel=1e-3)


def test_wall_clock_timer_measures_real_calls():
    calls = []
    timing = wall_clock_timer(lambda: calls.append(1), {}, repeats=4)
    assert len(calls) == 5 and timing.samples == 4
    assert timing.p20_us <= timing.median_us <= timing.p80_us


def test_halving_times_cheaply_first_and_retimes_only_the_leaders(toy_registry):
    from seqtune.tuning.search import make_strategy

    calls = []

    def timer(run, config, fidelity=1.0):
        calls.append((config["BLOCK"], fidelity))
        return Timing(config["BLOCK"], config["BLOCK"], config["BLOCK"], samples=1)

    journaled = []
    tuning = Tuner(DEVICE, timer, Budget(None, None), on_candidate=journaled.append)
    result = tuning.tune(toy_registry, PROBLEM, make_strategy("halving"))
    # three configs pass the check (SKIP_TAIL=True is a mismatch): all timed at a ninth of the
    # repetitions, the fastest third of the six again at a third, the fastest at full fidelity
    assert calls == [(b, 1 / 9) for b in (32, 16, 64)] + [(16, 1 / 3), (32, 1 / 3), (16, 1.0)]
    assert result.winner.config["BLOCK"] == 16 and result.winner.fidelity == 1.0
    assert len(result.candidates) == 6 and len(journaled) == 9  # re-timings journaled too


def test_wall_clock_timer_repeats_less_at_a_lower_fidelity():
    runs = []
    timing = wall_clock_timer(lambda: runs.append(1), {}, repeats=6, fidelity=0.5)
    assert timing.samples == 3 and len(runs) == 4  # one warm-up


def test_stagewise_search_evaluates_the_sum_of_stage_spaces_not_the_product():
    from seqtune.tuning.search import SearchSpace, Stagewise
    import itertools
    import random

    params = {"BT": (16, 32), "a.x": (1, 2, 3), "b.y": (1, 2, 3)}
    candidates = [dict(zip(params, v)) for v in itertools.product(*params.values())]
    seen = []

    def cost(config):
        # the best of stage a is x=3, of stage b is y=1, for BT=32
        return 10 * (config["BT"] == 16) + (3 - config["a.x"]) + config["b.y"]

    def evaluate(config):
        seen.append(config)
        return cost(config)

    Stagewise().search(SearchSpace(params, candidates, candidates[:1], ("a", "b")), evaluate,
                       random.Random(0))
    assert len(seen) == 2 * (3 + 3)  # not 2 * 3 * 3
    best = min(seen, key=cost)
    assert best == {"BT": 32, "a.x": 3, "b.y": 1}


def test_exhaustive_stops_when_the_budget_says_so():
    from seqtune.tuning.search import Exhaustive, SearchSpace
    import random

    candidates = [{"x": i} for i in range(10)]
    seen = []

    def evaluate(config):
        seen.append(config)
        return None if len(seen) == 3 else 1.0

    Exhaustive().search(SearchSpace({"x": tuple(range(10))}, candidates, candidates[:1]),
                        evaluate, random.Random(0))
    assert len(seen) == 3


def test_pruned_configs_are_recorded_and_never_launched(toy_registry):
    import dataclasses

    launched = []

    def run(inputs, config):
        launched.append(config["BLOCK"])
        return toy_registry.run(inputs, config)

    def prune(spec, problem, config):
        return ("resources", "shared memory 300000 B > 232448 B") if config["BLOCK"] == 64 else None

    spec = dataclasses.replace(toy_registry, run=run)
    result = Tuner(DEVICE, FakeTimer({(16, 1): 1.0, (32, 1): 2.0, (64, 1): 0.5}),
                   Budget(None, None), prune=prune).tune(spec, PROBLEM)
    assert 64 not in launched
    assert result.failed["resources"] == 2
    assert result.winner.config["BLOCK"] == 16


def test_large_problems_are_checked_against_the_verified_untuned_config(toy_registry):
    import dataclasses
    import torch
    from seqtune.agreement import reference_outputs

    big = dataclasses.replace(toy_registry, flops=lambda problem: 1e15)
    problem = {"N": 4096, "dtype": "bfloat16"}
    inputs = big.make_inputs(problem, "cpu", 0)
    reference, tolerance = reference_outputs(big, problem, inputs, DEVICE.limits, "cpu")
    assert reference[0].dtype == torch.float64
    assert tolerance.rtol == 2 * big.tolerances["bfloat16"].rtol
    # the untuned output on bf16 inputs, not the float64 product
    expected = big.run(inputs, big.default_for(problem, DEVICE.limits))[0].double()
    assert torch.equal(reference[0], expected)


def test_a_wrong_untuned_config_stops_a_large_problem(toy_registry):
    import dataclasses
    from seqtune.agreement import ReferenceError, reference_outputs

    broken = dataclasses.replace(toy_registry, flops=lambda problem: 1e15,
                                 default_config={**toy_registry.default_config, "SKIP_TAIL": True})
    problem = {"N": 4096, "dtype": "float32"}
    with pytest.raises(ReferenceError, match="disagrees with the float64 reference"):
        reference_outputs(broken, problem, broken.make_inputs(problem, "cpu", 0), DEVICE.limits,
                          "cpu")
