"""The sliding window as a tuning problem field (issue 30, point 6): ``attention``'s problems
carry the window's band bucketed to a power of two, profiles match it, old entries keep serving
dense calls, decode steps carry it through S, and a model config's problems equal what its
patched layers look up."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import types

import pytest
import torch
import triton

import seqtune.loader
from seqtune.integrations.hf_attention import _options, seqtune_attention
from seqtune.integrations.model_config import problems_for_model
from seqtune.integrations.model_families import model_layers
from seqtune.kernels.attention import op as attention_op
from seqtune.kernels.attention.op import prepare, problem_of
from seqtune.kernels.attention.problems import PRESETS, VERIFY_CASES, make_inputs, visible_pairs
from seqtune.kernels.attention.window import window_field
from seqtune.kernels.attention_decode import op as decode_op
from seqtune.kernels.attention_decode.op import attention_decode
from seqtune.loader import config_for
from seqtune.registry import get_spec, source_hash
from seqtune.store.profile_file import profile_path, save_entries
from seqtune.device import interpreter_device, runtime_device


def meta(batch, length, heads, dim, dtype=torch.bfloat16):
    return torch.empty(batch, length, heads, dim, device="meta", dtype=dtype)


@pytest.mark.parametrize("window, causal, expected", [
    ((4095, 4095), True, 4096),   # transformers' sliding_window=4096
    ((4096, -1), True, 4096),
    ((3000, 0), True, 4096),
    ((4097, 4097), True, 8192),
    ((0, 0), True, 1),            # the diagonal alone
    ((8, 8), False, 16),          # a symmetric band: both sides
    ((-1, 100), False, 16384),    # one side bounded: 8191 keys on the left, 100 on the right
    ((-1, -1), True, None),
    ((8191, 5), True, None),      # reaches key 0 from the last query: hides nothing
    ((8191, 8191), False, None),
])
def test_problem_of_a_windowed_call_has_the_bucketed_window(window, causal, expected):
    q, k = meta(1, 8192, 32, 128), meta(1, 8192, 8, 128)
    problem = problem_of(q, k, k, causal, "softmax", None, window)
    assert problem.get("window") == expected
    # the op's own call (prepare) keys its lookups by it
    assert prepare(q, k, k, causal=causal, window=window).problem == problem
    without = problem_of(q, k, k, causal, "softmax")
    assert {key: value for key, value in problem.items() if key != "window"} == without


def test_a_window_longer_than_the_sequence_keeps_the_dense_problem():
    q, k = meta(2, 3000, 32, 128), meta(2, 3000, 8, 128)
    assert "window" not in prepare(q, k, k, causal=True, window=(4095, 4095)).problem
    # decoding one token against 3000 keys: the window of 4096 hides none either
    assert "window" not in problem_of(meta(2, 1, 32, 128), k, k, True, "softmax", None,
                                      (4095, 4095))
    assert problem_of(meta(2, 1, 32, 128), k, k, True, "softmax", None, (1023, 1023))[
        "window"] == 1024


def test_windowed_presets_and_verify_cases_give_their_own_problem_back():
    """make_inputs passes the window, and the op's call of those inputs has the same problem
    (so tuning and verify run the windowed kernels under the key they are stored with)."""
    windowed = [p for p in list(PRESETS["tiny"]) + list(VERIFY_CASES) if "window" in p]
    assert len(windowed) >= 3 and {p["causal"] for p in windowed} == {True, False}
    assert any(p["varlen"] for p in windowed)
    for problem in windowed:
        inputs = make_inputs(problem, "cpu", 0)
        assert inputs["window"][0] >= 0
        assert prepare(**inputs).problem == problem
    for problem in PRESETS["full"]:  # the large ones by the same arithmetic
        if "window" in problem:
            left = problem["window"]
            assert window_field((left, left), True, problem["T"], problem["S"]) == left
    assert sum("window" in p for p in PRESETS["full"]) == 3


def test_attention_bwd_runs_and_checks_windowed_problems_with_their_window():
    """attention_bwd's inputs (lse), run and float64 reference all take the problem's window:
    its kernels agree with its reference, which differs from the windowless gradients."""
    spec = get_spec("attention_bwd")
    for problem in [p for p in VERIFY_CASES if "window" in p]:
        inputs = spec.make_inputs(problem, "cpu", 0)
        got, want = spec.run(inputs, spec.default_config), spec.reference(inputs)
        tolerance = spec.tolerances[problem["dtype"]]
        for out, ref in zip(got, want):
            torch.testing.assert_close(out.double(), ref, atol=tolerance.atol,
                                       rtol=tolerance.rtol)
        windowless = spec.reference({k: v for k, v in inputs.items() if k != "window"})
        assert not torch.allclose(windowless[0], want[0], atol=1e-3)


def test_windowed_work_counts_the_band():
    """FLOPs count the pairs inside the window: checked against counting every pair."""
    for problem in [p for p in VERIFY_CASES if "window" in p and not p["varlen"]]:
        inputs = make_inputs(problem, "cpu", 0)
        left, right = inputs["window"]
        rows = torch.arange(problem["T"])[:, None] + problem["S"] - problem["T"]
        keys = torch.arange(problem["S"])[None, :]
        seen = keys >= rows - left
        seen &= keys <= rows if problem["causal"] else keys <= rows + right
        assert visible_pairs(problem) == int(seen.sum())
        dense = {key: value for key, value in problem.items() if key != "window"}
        assert visible_pairs(problem) < visible_pairs(dense)


# ---- profiles ----

DENSE = {"B": 1, "T": 8192, "S": 8192, "Hq": 32, "Hkv": 8, "D": 128, "causal": True,
         "dtype": "bfloat16", "score": "softmax"}  # an entry from before N, varlen and window
OLD_CONFIG = {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 2}
WINDOW_CONFIG = {"BLOCK_M": 64, "BLOCK_N": 128, "num_warps": 4, "num_stages": 3}


def timed(problem, config):
    return {"problem": problem, "config": config, "triton": triton.__version__,
            "time_us": {"median": 1.0, "p20": 0.9, "p80": 1.1}}


@pytest.fixture
def windowed_profile(tmp_path):
    path = profile_path(tmp_path, "cpu-interpreter")
    save_entries(path, interpreter_device().as_dict(), "attention", source_hash("attention"),
                 [timed(DENSE, OLD_CONFIG),
                  timed({**DENSE, "N": 1, "varlen": False, "window": 4096}, WINDOW_CONFIG)])
    seqtune.loader.load_profile(path)
    return path


def lookup(length, window=(-1, -1)):
    q, k = meta(1, length, 32, 128), meta(1, length, 8, 128)
    return config_for("attention", prepare(q, k, k, causal=True, window=window).problem, None)


def test_an_entry_tuned_for_a_window_serves_nearby_windows_only(windowed_profile):
    assert lookup(8192, (4095, 4095)) == WINDOW_CONFIG   # Mistral's 4096
    assert lookup(6000, (3500, 3500)) == WINDOW_CONFIG   # same bucket, nearby length
    assert lookup(8192) == OLD_CONFIG                    # dense: the old entry, as before
    # a window that hides no key is a dense call
    assert lookup(4000, (4095, 4095)) == OLD_CONFIG
    # another bucket: neither entry (the untuned default)
    default = get_spec("attention").default_for(
        prepare(meta(1, 8192, 32, 128), meta(1, 8192, 8, 128), meta(1, 8192, 8, 128),
                causal=True, window=(511, 511)).problem, runtime_device()[1])
    assert lookup(8192, (511, 511)) == default != WINDOW_CONFIG


def test_old_entries_without_the_window_still_serve_dense_calls(windowed_profile):
    profile = seqtune.loader.active_profile()
    old, windowed = profile.entries["attention"]
    assert old.problem["window"] == 0 and windowed.problem["window"] == 4096
    assert lookup(2048) == OLD_CONFIG  # nearest in size, like before windows existed


# ---- decode ----

def decode_problems(monkeypatch):
    seen = []
    original = decode_op.config_for

    def recording(kernel, problem, config):
        seen.append(dict(problem))
        return original(kernel, problem, config)

    monkeypatch.setattr(decode_op, "config_for", recording)
    return seen


def test_a_decode_step_carries_the_window_in_its_key_count(monkeypatch):
    seen = decode_problems(monkeypatch)
    q = torch.randn(2, 4, 16)
    cache = torch.randn(2, 64, 2, 16)
    lengths = torch.tensor([64, 40], dtype=torch.int32)
    attention_decode(q, cache, cache, lengths)
    attention_decode(q, cache, cache, lengths, window=(15, 15))
    attention_decode(q, cache, cache, lengths, window=(100, 100))
    assert [p["S"] for p in seen] == [64, 16, 64]


# ---- model configs ----

SIZES = {"hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
         "head_dim": 16, "num_hidden_layers": 4, "sliding_window": 16,
         "torch_dtype": "float32"}
CONFIGS = {
    "mistral": {"model_type": "mistral", **SIZES},
    "gemma2": {"model_type": "gemma2", **SIZES, "attn_logit_softcapping": 50.0},
    "gemma2-layer-types": {"model_type": "gemma2", **SIZES, "attn_logit_softcapping": 50.0,
                           "layer_types": ["sliding_attention", "full_attention"] * 2},
}
# Per config: the sliding window of each layer, as transformers builds the attention modules.
LAYER_WINDOWS = {"mistral": [16] * 4, "gemma2": [16, None] * 2,
                 "gemma2-layer-types": [16, None] * 2}


def layer_calls(name, lengths, monkeypatch):
    """The problems the patched layers of the model look up, prefill at each length and a
    decode step against a cache of each length: seqtune_attention run on CPU tensors as
    transformers calls it (its sliding_window and softcap), problems recorded at the lookup."""
    prefill, decode = [], decode_problems(monkeypatch)
    original = attention_op.forward_config

    def recording(kernel, problem, config, bwd_config):
        prefill.append(dict(problem))
        return original(kernel, problem, config, bwd_config)

    monkeypatch.setattr(attention_op, "forward_config", recording)
    module = types.SimpleNamespace(is_causal=True)
    softcap = CONFIGS[name].get("attn_logit_softcapping")
    for window in LAYER_WINDOWS[name]:
        for length in lengths:
            for queries in (length, 1):
                q = torch.randn(1, 4, queries, 16)
                k = torch.randn(1, 2, length, 16)
                seqtune_attention(module, q, k, k, None, sliding_window=window,
                                  softcap=softcap)
    return prefill, decode


def same_problems(these, those) -> bool:
    """The same problems, each counted once, in any order."""
    return sorted({repr(p) for p in these}) == sorted({repr(p) for p in those})


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_model_config_problems_equal_the_patched_layers_lookups(name, tmp_path, monkeypatch):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(CONFIGS[name]))
    lengths = (8, 64)  # the window of 16 hides keys at 64 only
    derived = problems_for_model(path, lengths=lengths, decode=True)
    prefill, decode = layer_calls(name, lengths, monkeypatch)
    assert same_problems(derived["attention"], prefill)
    # the decode op names its contiguous cache's block size, which model problems leave out
    assert same_problems([{**p, "block_size": 0} for p in derived["attention_decode"]], decode)
    assert {p.get("window") for p in derived["attention"]} == {None, 16}
    assert any(p.get("window") == 16 and p["T"] == 64 for p in derived["attention"])
    assert {p["S"] for p in derived["attention_decode"]} == (
        {8, 16, 64} if None in LAYER_WINDOWS[name] else {8, 16})


def test_which_layers_slide():
    def layers(config):
        return [(layer.count, layer.dims.get("window")) for layer in model_layers(config)]

    assert layers(CONFIGS["mistral"]) == [(4, 16)]
    assert layers(CONFIGS["gemma2"]) == [(2, None), (2, 16)]
    assert layers({**CONFIGS["gemma2"], "model_type": "gemma3_text",
                   "num_hidden_layers": 12}) == [(2, None), (10, 16)]
    qwen = {**SIZES, "model_type": "qwen2", "sliding_window": 32768}
    assert layers({**qwen, "use_sliding_window": False}) == [(4, None)]
    assert layers({**qwen, "use_sliding_window": True, "max_window_layers": 1}) == [
        (1, None), (3, 32768)]
    assert layers({**SIZES, "model_type": "llama", "sliding_window": None}) == [(4, None)]
    with pytest.raises(ValueError, match="sliding_window.*-4"):
        model_layers({**CONFIGS["mistral"], "sliding_window": -4})


def test_check_lists_a_models_windowed_problems(tmp_path):
    """``seqtune check --model-config`` compiles the sliding layers' windowed problems."""
    path = tmp_path / "config.json"
    path.write_text(json.dumps(CONFIGS["mistral"]))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-m", "seqtune", "check", "attention",
                           "--model-config", str(path), "--lengths", "64", "--target", "sm_90",
                           "--json"], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(done.stdout)
    assert results and all(r["compiled"] for r in results)
    assert {r["problem"].get("window") for r in results} == {16}
