"""benchmarks/precision_grads.py's harness: seqtune's float32 gradients, taken the way the
script takes them, agree with its float64 truth (a wrong leaf, cotangent or reference would
not)."""
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks"))
import precision_grads  # noqa: E402


@pytest.mark.parametrize("label", ["gla (per-channel decay)", "kda"])
def test_seqtune_float32_gradients_match_the_truth(label):
    spec_name, inputs, do, dht, reference = precision_grads.case(label, 17, "float32", 2, 16, 0)
    grads = precision_grads.gradients(precision_grads.seqtune_run(spec_name), inputs, do, dht)
    figures = precision_grads.gradient_errors(grads, reference)
    assert {"q", "k", "v", "g", "initial_state"} <= set(figures)  # every leaf is checked
    for name, (_, rms) in figures.items():
        assert rms < 1e-5, (name, rms)
