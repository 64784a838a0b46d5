"""Compile-ahead compiles what the search announces, a few at a time, and never the whole space.

A fake pool stands in for the compile processes (real compilation is tested in test_check.py):
it records what it was asked to compile and answers at once.
"""
import itertools
import random
from concurrent.futures import Future

import pytest

from seqtune.tuning.compiler import TARGETS, CheckResult, CompileAhead
from seqtune.device import interpreter_device
from seqtune.tuning.runner import Candidate
from seqtune.tuning.search import Exhaustive, SearchSpace, Stagewise
from seqtune.tuning.timing import Timing
from seqtune.tuning.tuner import Budget, Deferred, Tuner

PROBLEM = {"N": 64, "dtype": "float32"}


class FakePool:
    """Compiles nothing: every config compiles, except that BLOCK=64 does not fit."""

    def __init__(self):
        self.submitted = []

    def submit(self, function, work):
        name, problem, config, target = work
        self.submitted.append(config)
        future = Future()
        too_big = ["shared memory 300000 B > 232448 B"] if config.get("BLOCK") == 64 else []
        future.set_result(CheckResult(name, target.name, problem, config, compiled=True,
                                      reasons=too_big))
        return future

    def shutdown(self, cancel_futures=False):
        pass


def compile_ahead(jobs):
    pool = FakePool()
    return CompileAhead(TARGETS["sm_90"], jobs, make_pool=lambda n: pool), pool


def toy_configs(spec):
    return [dict(zip(spec.space, values)) for values in itertools.product(*spec.space.values())]


def test_announced_configs_are_compiled_in_order_a_worker_at_a_time(toy_registry):
    ahead, pool = compile_ahead(jobs=2)
    configs = toy_configs(toy_registry)
    ahead.expect(toy_registry, PROBLEM, configs)
    assert pool.submitted == configs[:2]  # not all twelve
    assert ahead.verdict(toy_registry, PROBLEM, configs[0]) is None
    assert pool.submitted == configs[:4]  # the two done are collected, two more started


def test_a_config_asked_before_it_was_announced_is_compiled_at_once(toy_registry):
    ahead, pool = compile_ahead(jobs=2)
    configs = toy_configs(toy_registry)
    big = next(c for c in configs if c["BLOCK"] == 64)
    kind, reason = ahead.verdict(toy_registry, PROBLEM, big)
    assert kind == "resources" and "shared memory" in reason
    assert pool.submitted == [big] and ahead.compiled == 1
    ahead.verdict(toy_registry, PROBLEM, big)
    assert ahead.compiled == 1  # answered from the result, not compiled again


class FixedTimes:
    """A runner that times every config at 1 µs without running it."""

    def evaluate(self, config, fidelity=1.0):
        return Candidate(config, "ok", self.retime(config))

    def retime(self, config, fidelity=1.0):
        return Timing(1.0, 1.0, 1.0, 1)


def test_a_budgeted_tune_compiles_about_what_it_measures(toy_registry):
    ahead, pool = compile_ahead(jobs=1)
    tuner = Tuner(interpreter_device(), lambda run, config: pytest.fail("timed"),
                  Budget(None, 2), compile_ahead=ahead)
    tuner.make_runner = lambda spec, problem: FixedTimes()
    result = tuner.tune(toy_registry, PROBLEM, Exhaustive())
    assert len(result.candidates) == 2
    space_size = len(tuner.space(toy_registry, PROBLEM).candidates)
    assert space_size == 6 and ahead.compiled == 3  # the two measured and the next announced


def test_stagewise_search_never_enumerates_the_space():
    stage_values = (1, 2, 3)
    params = {"BT": (16, 32), **{f"{stage}.{knob}": stage_values
                                 for stage in ("a", "b", "c") for knob in ("x", "y", "z")}}
    start = {p: values[0] for p, values in params.items()}
    announced = []
    space = SearchSpace(params, Deferred(lambda: pytest.fail("enumerated 39366 configs")),
                        [start], ("a", "b", "c"), stagewise=True,
                        contains=lambda config: config["a.x"] <= config["b.x"],
                        expect=lambda configs: announced.append(len(configs)))
    seen = []
    Stagewise().search(space, lambda config: seen.append(config) or sum(config.values()),
                       random.Random(0))
    assert len(seen) == sum(announced) and len(seen) < 2 * 3 * 27
    assert all(c["a.x"] <= c["b.x"] for c in seen)
