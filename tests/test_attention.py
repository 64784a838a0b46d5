"""attention (softmax and sigmoid) against the independent float64 reference, in the Triton
interpreter (run with TRITON_INTERPRET=1)."""
from __future__ import annotations

import math

import pytest
import torch

from seqtune.kernels.attention.op import attention
from seqtune.kernels.attention.reference import attention_reference
from seqtune.kernels.attention.problems import visible_pairs
from seqtune.kernels.attention.spec import shared_memory_estimate
from seqtune.launch import capture_launches
from seqtune.registry import get_spec
from seqtune.spec import INTERPRETER_LIMITS, DeviceLimits, Tolerance
from seqtune.agreement import check_case, compare, tolerance_for

SPEC = get_spec("attention")
A100 = DeviceLimits(backend="cuda", shared_memory_per_block=166912, compute_capability=(8, 0))
H100 = DeviceLimits(backend="cuda", shared_memory_per_block=232448, compute_capability=(9, 0))
SMALL_TILES = {"BLOCK_M": 16, "BLOCK_N": 16}


def _case_id(problem: dict) -> str:
    return "-".join(f"{key}{value}" for key, value in problem.items())


def _tile_configs(problem: dict) -> list[dict]:
    """Valid configs of the problem, one per tile shape: num_warps and num_stages do not change
    what the interpreter computes."""
    seen, configs = set(), []
    for config in SPEC.configs():
        tiles = (config["BLOCK_M"], config["BLOCK_N"])
        if tiles not in seen and SPEC.check(config, problem, INTERPRETER_LIMITS) is None:
            seen.add(tiles)
            configs.append(config)
    return configs


@pytest.mark.parametrize("tiles", [None, SMALL_TILES], ids=["default", "16x16"])
@pytest.mark.parametrize("problem", SPEC.verify_cases, ids=_case_id)
def test_verify_cases_agree_with_reference(problem, tiles):
    config = dict(SPEC.default_for(problem, INTERPRETER_LIMITS), **(tiles or {}))
    agreement = check_case(SPEC, problem, config)
    assert agreement.ok, agreement.detail


FLOAT32_CASES = [case for case in SPEC.verify_cases if case["dtype"] == "float32"]


@pytest.mark.parametrize("problem", FLOAT32_CASES, ids=_case_id)
def test_float32_is_exact_in_the_interpreter(problem):
    """The spec's float32 tolerance allows for TF32 on GPUs; the interpreter computes float32
    dots in full float32, so any error beyond rounding is a bug."""
    inputs = SPEC.make_inputs(problem, "cpu", seed=2)
    agreement = compare(SPEC.run(inputs, dict(SPEC.default_config, **SMALL_TILES)),
                        SPEC.reference(inputs), Tolerance(atol=1e-5, rtol=1e-5))
    assert agreement.ok, agreement.detail


@pytest.mark.parametrize("problem", SPEC.presets["tiny"], ids=_case_id)
def test_every_tile_config_of_tiny_preset_agrees(problem):
    inputs = SPEC.make_inputs(problem, "cpu", seed=1)
    reference = SPEC.reference(inputs)
    configs = _tile_configs(problem)
    assert len(configs) >= 4
    for config in configs:
        agreement = check_case(SPEC, problem, config, inputs=inputs, reference=reference)
        assert agreement.ok, f"{config}: {agreement.detail}"


def _qkv(B=1, T=37, S=53, Hq=4, Hkv=2, D=32, dtype=torch.float32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, Hq, D, generator=generator).to(dtype)
    k = torch.randn(B, S, Hkv, D, generator=generator).to(dtype)
    v = torch.randn(B, S, Hkv, D, generator=generator).to(dtype)
    return q, k, v


@pytest.mark.parametrize("shift", range(-17, 17), ids=lambda shift: f"S-T={shift}")
def test_causal_alignment_at_every_offset_within_a_block(shift):
    """Every residue of S - T modulo the 16-key block, both signs: off-by-one errors at the
    boundary between the unmasked and the masked key blocks show at some offset."""
    queries = 24
    q, k, v = _qkv(T=queries, S=queries + shift, Hq=1, Hkv=1, D=16, seed=shift + 17)
    score = "softmax" if shift % 2 else "sigmoid"
    out = attention(q, k, v, causal=True, score=score, config=SMALL_TILES)
    expected = attention_reference(q, k, v, causal=True, score=score)
    assert compare((out,), (expected,), Tolerance(atol=1e-5, rtol=1e-5)).ok


@pytest.mark.parametrize("score", ["softmax", "sigmoid"])
def test_causal_rows_that_see_no_key_are_zero(score):
    q, k, v = _qkv(T=45, S=19, Hq=2, Hkv=1, D=16)
    out = attention(q, k, v, causal=True, score=score, config=SMALL_TILES)
    blind_rows = 45 - 19  # query i sees keys j <= i - 26
    assert torch.equal(out[:, :blind_rows], torch.zeros_like(out[:, :blind_rows]))
    assert out[:, blind_rows:].abs().amax() > 0


def test_explicit_scale_and_sigmoid_bias():
    q, k, v = _qkv(T=21, S=40, D=16)
    for score, bias in (("softmax", None), ("sigmoid", 0.5)):
        out = attention(q, k, v, causal=True, scale=0.3, score=score, sigmoid_bias=bias,
                        config=SMALL_TILES)
        expected = attention_reference(q, k, v, causal=True, scale=0.3, score=score,
                                       sigmoid_bias=bias)
        assert compare((out,), (expected,), SPEC.tolerances["float32"]).ok, score


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_non_contiguous_inputs(dtype):
    B, T, S, Hq, Hkv, D = 2, 37, 29, 4, 2, 32
    generator = torch.Generator().manual_seed(3)
    # Heads-major q, k and v sliced out of one packed tensor, v with every other element of D.
    q = torch.randn(B, Hq, T, D, generator=generator).to(dtype).transpose(1, 2)
    kv = torch.randn(B, S, 2, Hkv, 2 * D, generator=generator).to(dtype)
    k, v = kv[:, :, 0, :, :D], kv[:, :, 1, :, ::2]
    assert not (q.is_contiguous() or k.is_contiguous() or v.is_contiguous())
    out = attention(q, k, v, causal=True)
    expected = attention_reference(q, k, v, causal=True)
    problem = {"dtype": str(dtype).removeprefix("torch.")}
    assert out.dtype == dtype and out.shape == (B, T, Hq, D)
    assert compare((out,), (expected,), tolerance_for(SPEC, problem)).ok


@pytest.mark.parametrize("shape", [(2, 0, 4, 32, 16), (2, 8, 4, 32, 0), (0, 8, 4, 32, 16)],
                         ids=["T=0", "S=0", "B=0"])
def test_empty_problems_launch_nothing(shape):
    B, T, Hq, D, S = shape
    q, k, v = _qkv(B=B, T=T, S=S, Hq=Hq, Hkv=2, D=D)
    with capture_launches() as launches:
        out = attention(q, k, v, causal=True)
    assert launches == []
    assert out.shape == (B, T, Hq, D) and out.dtype == q.dtype
    assert torch.equal(out, torch.zeros_like(out))


def _bad_arguments():
    q, k, v = _qkv()
    meta_k = torch.empty(k.shape, device="meta")
    return {
        "Hq % Hkv": ((q[:, :, :3], k, v), {}, ValueError, "multiple of key/value heads"),
        "D zero": ((q[..., :0], k[..., :0], v), {}, ValueError, "head dim D=0"),
        "D above 512": ((*_qkv(T=1, S=1, D=520),), {}, ValueError, "head dim D=520"),
        "Dv above 512": ((q[:, :, :, :16], k[..., :16], torch.zeros(1, 53, 2, 600)), {},
                         ValueError, "head dim Dv=600"),
        "B mismatch": ((q, k[:1].repeat(2, 1, 1, 1), v[:1].repeat(2, 1, 1, 1)), {}, ValueError,
                       r"k must have shape \[B=1"),
        "D mismatch": ((q, k[..., :16], v[..., :16]), {}, ValueError, "D=32"),
        "k v mismatch": ((q, k, v[:, :7]), {}, ValueError, r"k and v must share \[B, S, Hkv\]"),
        "integer dtype": ((q.to(torch.int32), k, v), {}, TypeError, "q has dtype int32"),
        "mixed dtypes": ((q, k.bfloat16(), v), {}, TypeError, "mixed dtypes"),
        "wrong rank": ((q[0], k, v), {}, ValueError, "q must have 4 dimensions"),
        "not a tensor": ((q, k.tolist(), v), {}, TypeError, "k must be a torch.Tensor"),
        "devices": ((q, meta_k, v), {}, ValueError, "different devices"),
        "unknown score": ((q, k, v), {"score": "relu"}, ValueError, "score must be one of"),
        "bias without sigmoid": ((q, k, v), {"sigmoid_bias": 1.0}, ValueError,
                                 "sigmoid_bias applies only"),
        "config key": ((q, k, v), {"config": {"BLOCK_K": 16}}, ValueError, "unknown config"),
        "tile over T": ((q[:, :9], k, v), {"config": {"BLOCK_M": 64}}, ValueError,
                        "BLOCK_M=64 exceeds T=9"),
    }


BAD_ARGUMENTS = _bad_arguments()


@pytest.mark.parametrize("name", list(BAD_ARGUMENTS))
def test_bad_arguments_raise_one_line_before_launch(name):
    args, kwargs, error, message = BAD_ARGUMENTS[name]
    with capture_launches() as launches, pytest.raises(error, match=message) as raised:
        attention(*args, **kwargs)
    assert launches == []
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("limits", [A100, H100], ids=["sm80", "sm90"])
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("D", [1, 16, 32, 64, 80, 128, 192, 256])
def test_default_config_fits_every_head_dim_and_dtype(D, dtype, limits):
    problem = {"B": 1, "T": 4096, "S": 4096, "Hq": 8, "Hkv": 8, "D": D, "causal": True,
               "dtype": dtype, "score": "softmax"}
    assert SPEC.check(dict(SPEC.default_config), problem, limits) is None


def test_check_rejects_what_cannot_run():
    problem = {"B": 1, "T": 4096, "S": 4096, "Hq": 8, "Hkv": 8, "D": 256, "causal": False,
               "dtype": "float32", "score": "sigmoid"}
    biggest = {"BLOCK_M": 128, "BLOCK_N": 128, "num_warps": 8, "num_stages": 4}
    assert shared_memory_estimate(biggest, problem) > H100.shared_memory_per_block
    assert "shared memory" in SPEC.check(biggest, problem, H100)
    assert "BLOCK_N=128 exceeds S=40" in SPEC.check(biggest, {**problem, "S": 40}, H100)
    assert "head dim D=600" in SPEC.check(biggest, {**problem, "D": 600}, H100)
    assert "head dim Dv=0" in SPEC.check(biggest, {**problem, "Dv": 0}, H100)


def test_presets_and_verify_cases_accept_the_default():
    """The default itself up to head dims of 128; over them (where register budgets apply), the
    one ``default_for`` picks."""
    for problem in [*SPEC.verify_cases, *(p for ps in SPEC.presets.values() for p in ps)]:
        for limits in (A100, H100):
            wide = max(problem["D"], problem.get("Dv", 0)) > 128
            config = SPEC.default_for(problem, limits) if wide else dict(SPEC.default_config)
            assert SPEC.check(config, problem, limits) is None, problem


@pytest.mark.parametrize("T, S", [(5, 9), (9, 5), (7, 7), (1, 6), (6, 1)])
def test_visible_pairs_counts_the_causal_mask(T, S):
    mask = torch.arange(S)[None, :] <= torch.arange(T)[:, None] + S - T
    problem = {"T": T, "S": S, "causal": True}
    assert visible_pairs(problem) == int(mask.sum())
    assert visible_pairs({**problem, "causal": False}) == T * S


@pytest.mark.parametrize("causal", [False, True])
def test_sdpa_baseline_computes_the_same_op(causal):
    problem = {"B": 1, "T": 21, "S": 40, "Hq": 4, "Hkv": 2, "D": 16, "causal": causal,
               "dtype": "float32", "score": "softmax"}
    inputs = SPEC.make_inputs(problem, "cpu", seed=4)
    baseline = SPEC.baselines["torch_sdpa"]
    assert compare(baseline(inputs), SPEC.reference(inputs), Tolerance(1e-5, 1e-5)).ok
    with pytest.raises(ValueError, match="softmax attention only"):
        baseline({**inputs, "score": "sigmoid"})


def test_default_sigmoid_bias_is_minus_log_keys():
    q, k, v = _qkv(T=16, S=24, D=16)
    default = attention(q, k, v, score="sigmoid", config=SMALL_TILES)
    explicit = attention(q, k, v, score="sigmoid", sigmoid_bias=-math.log(24), config=SMALL_TILES)
    # The kernel takes the log of S in float32, the explicit bias is rounded from float64.
    torch.testing.assert_close(default, explicit, rtol=1e-6, atol=1e-6)
