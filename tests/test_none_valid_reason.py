"""When every config of a problem is rejected, ``seqtune tune`` says why in one line under its
table: the output, the elements and the worst error against its tolerance (issue 34)."""
from __future__ import annotations

import dataclasses

from test_cli_views import assert_fits, render, tune_results

from seqtune.device import interpreter_device
from seqtune.tuning.timing import Timing
from seqtune.tuning.tuner import Budget, Tuner


def _timer(run, config):
    return Timing(10.0, 9.9, 10.1, samples=10)


def test_a_problem_without_a_valid_config_says_which_output_fails_and_by_how_much(toy_registry):
    # a reference 1.6 x where the kernel computes 1.5 x: every config disagrees
    wrong = dataclasses.replace(toy_registry,
                                reference=lambda inputs: (inputs["x"].double() * 1.6,))
    result = Tuner(interpreter_device(), _timer, Budget(None, None)).tune(
        wrong, {"N": 64, "dtype": "float32"})
    assert result.winner is None
    reason = result.reason
    assert "\n" not in reason
    assert reason.startswith(f"{len(result.candidates)} configs rejected (mismatch ")
    assert "default: output 0: " in reason and "elements outside atol=" in reason
    assert "worst |err| " in reason and " allowed (ref " in reason and "max |ref| " in reason


def test_a_problem_with_a_winner_has_no_reason(toy_registry):
    result = Tuner(interpreter_device(), _timer, Budget(None, None)).tune(
        toy_registry, {"N": 64, "dtype": "float32"})
    assert result.winner is not None and result.reason is None


def test_the_tune_table_prints_the_reason_under_it():
    from seqtune.cli.render import show_tune

    results = tune_results("interpreter-wall-clock", 1.5)
    reason = ("6 configs rejected (mismatch 6); default: output 3: 7/128 elements outside "
              "atol=0.4 rtol=0.06, worst |err| 0.611 where 0.43 allowed")
    results["problems"][3]["reason"] = reason
    text = render(show_tune, results)
    assert_fits(text)
    lines = text.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("none valid "))
    assert "output 3: 7/128 elements" in " ".join(lines[at:at + 2])
    assert at > next(i for i, line in enumerate(lines) if "none valid" in line and
                     not line.startswith("none valid "))  # below the table's row
