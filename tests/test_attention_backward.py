"""attention's backward (Triton kernels through autograd) against float64 autograd of the
independent reference, and the attention_bwd spec (Triton interpreter)."""
from __future__ import annotations

import pytest
import torch

from seqtune.agreement import check_case, compare
from seqtune.kernels.attention.op import attention
from seqtune.kernels.attention.reference import attention_math
from seqtune.kernels.attention.varlen import key_lengths, offsets_of, sequence_lengths
from seqtune.launch import capture_launches
from seqtune.registry import get_spec
from seqtune.spec import INTERPRETER_LIMITS, Tolerance

SPEC = get_spec("attention_bwd")
SMALL = {"dkdv.BLOCK_M": 16, "dkdv.BLOCK_N": 16, "dq.BLOCK_M": 16, "dq.BLOCK_N": 16}
# The interpreter runs float32 dots in full float32: beyond rounding, any error is a bug.
EXACT = Tolerance(atol=1e-5, rtol=1e-5)

# (B, T, S, Hq, Hkv, D, Dv, causal, score, packed): odd T, T != S both ways, GQA and MQA,
# padded head dims with Dv != D, packed batches (lengths 0, 1 and uneven; keys packed apart).
CASES = {
    "gqa-causal-T<S": (2, 37, 53, 4, 2, 32, 32, True, "softmax", False),
    "mqa-causal-T>S": (1, 45, 19, 3, 1, 16, 16, True, "softmax", False),
    "full-odd-dims": (1, 21, 37, 2, 2, 3, 5, False, "softmax", False),
    "sigmoid-causal": (1, 37, 29, 4, 2, 16, 24, True, "sigmoid", False),
    "sigmoid-full": (1, 29, 37, 2, 1, 32, 32, False, "sigmoid", False),
    "packed-causal": (1, 45, 45, 4, 2, 16, 16, True, "softmax", True),
    "packed-keys-apart": (1, 37, 53, 2, 1, 80, 48, True, "softmax", True),
    "packed-sigmoid": (1, 53, 37, 2, 2, 16, 16, False, "sigmoid", True),
}


def _leaves(case, dtype, seed=0, wanted=(True, True, True)):
    B, T, S, Hq, Hkv, D, Dv, causal, score, packed = case
    generator = torch.Generator().manual_seed(seed)
    shapes = ((B, T, Hq, D), (B, S, Hkv, D), (B, S, Hkv, Dv))
    leaves = [torch.randn(shape, generator=generator).to(dtype).requires_grad_(want)
              for shape, want in zip(shapes, wanted)]
    do = torch.randn(B, T, Hq, Dv, generator=generator).to(dtype)
    kwargs = {"causal": causal, "score": score}
    if packed:
        kwargs["cu_seqlens"] = offsets_of(sequence_lengths(T, 5), "cpu")
        if S != T:
            kwargs["cu_seqlens_k"] = offsets_of(key_lengths(S, 5), "cpu")
    return leaves, do, kwargs


def _reference_grads(leaves, do, kwargs):
    leaves64 = [leaf.detach().double().requires_grad_() for leaf in leaves]
    out = attention_math(*leaves64, scale=None, sigmoid_bias=None, **kwargs)
    return torch.autograd.grad(out, leaves64, do.double())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", list(CASES))
def test_gradients_match_float64_autograd(name, dtype):
    leaves, do, kwargs = _leaves(CASES[name], dtype)
    out = attention(*leaves, **kwargs, config={"BLOCK_M": 16, "BLOCK_N": 16}, bwd_config=SMALL)
    out.backward(do)
    expected = _reference_grads(leaves, do, kwargs)
    # fp32: exact in the interpreter. bf16: the spec's bound (rounded P and dS, see bwd_spec).
    tolerance = EXACT if dtype == torch.float32 else SPEC.tolerances["bfloat16"]
    for label, leaf, want in zip("qkv", leaves, expected):
        assert leaf.grad.dtype == dtype and leaf.grad.shape == leaf.shape
        agreement = compare((leaf.grad,), (want,), tolerance)
        assert agreement.ok, f"d{label}: {agreement.detail}"


@pytest.mark.parametrize("wanted", [(True, False, False), (False, True, False),
                                    (False, False, True), (False, True, True)],
                         ids=["q", "k", "v", "kv"])
def test_only_inputs_that_require_grad_get_one(wanted):
    leaves, do, kwargs = _leaves(CASES["gqa-causal-T<S"], torch.float32, wanted=wanted)
    out = attention(*leaves, **kwargs)
    with capture_launches() as launches:
        out.backward(do)
    kernels = {launch.kernel.__name__ for launch in launches}
    assert ("attention_bwd_dq_kernel" in kernels) == wanted[0]
    assert ("attention_bwd_dkdv_kernel" in kernels) == (wanted[1] or wanted[2])
    for leaf, want in zip(leaves, wanted):
        assert (leaf.grad is not None) == want


def test_no_grad_needed_runs_the_plain_forward():
    leaves, _, kwargs = _leaves(CASES["gqa-causal-T<S"], torch.float32, wanted=(False,) * 3)
    assert attention(*leaves, **kwargs).grad_fn is None
    leaves, _, kwargs = _leaves(CASES["gqa-causal-T<S"], torch.float32)
    with torch.no_grad():
        assert attention(*leaves, **kwargs).grad_fn is None


@pytest.mark.parametrize("packed", [False, True], ids=["dense", "packed"])
def test_saved_tensors_hold_no_scores(packed):
    """T x S x 4 bytes (36 KiB) outweighs q, k, v, o and lse together (~2 KiB): the forward
    saves those five (lse: one float per query row and head), never a T x S tensor."""
    T = S = 97
    leaves, do, kwargs = _leaves((1, T, S, 2, 1, 1, 1, True, "softmax", packed), torch.float32)
    saved = []

    def pack(tensor):
        saved.append(tuple(tensor.shape))
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = attention(*leaves, **kwargs)
    assert sorted(saved) == sorted([(1, T, 2, 1), (1, S, 1, 1), (1, S, 1, 1), (1, T, 2, 1),
                                    (1, 2, T)])
    assert sum(torch.Size(shape).numel() for shape in saved) * 4 < T * S
    out.backward(do)
    assert all(leaf.grad is not None for leaf in leaves)


def test_bad_bwd_config_raises_one_line_at_the_call():
    leaves, _, kwargs = _leaves(CASES["gqa-causal-T<S"], torch.float32)
    for bad, message in (({"dq.BLOCK_K": 16}, "unknown config"),
                         ({"dkdv.BLOCK_N": 128}, "dkdv.BLOCK_N=128 exceeds S=53")):
        with capture_launches() as launches, pytest.raises(ValueError, match=message) as raised:
            attention(*leaves, **kwargs, bwd_config=bad)
        assert launches == [] and "\n" not in str(raised.value)


@pytest.mark.parametrize("lengths", [(0, 9), (9, 0)], ids=["T=0", "S=0"])
def test_empty_sides_give_zero_gradients(lengths):
    T, S = lengths
    leaves, do, kwargs = _leaves((1, T, S, 2, 1, 16, 16, True, "softmax", False),
                                 torch.float32)
    attention(*leaves, **kwargs).backward(do)
    for leaf in leaves:
        assert torch.equal(leaf.grad, torch.zeros_like(leaf))


@pytest.mark.parametrize("problem", SPEC.verify_cases,
                         ids=lambda p: "-".join(f"{k}{v}" for k, v in p.items()))
def test_spec_verify_cases_agree(problem):
    agreement = check_case(SPEC, problem, SPEC.default_for(problem, INTERPRETER_LIMITS))
    assert agreement.ok, agreement.detail


@pytest.mark.parametrize("stage", ["dkdv", "dq"])
def test_every_tile_shape_of_each_stage_agrees(stage):
    problem = SPEC.presets["tiny"][4]  # packed, causal, GQA
    inputs = SPEC.make_inputs(problem, "cpu", 0)
    reference = SPEC.reference(inputs)
    rows, keys = f"{stage}.BLOCK_M", f"{stage}.BLOCK_N"
    configs = [config for config in ({**SPEC.default_config, rows: m, keys: n}
                                     for m in SPEC.space[rows] for n in SPEC.space[keys])
               if SPEC.check(config, problem, INTERPRETER_LIMITS) is None]
    assert len(configs) >= 9
    for config in configs:
        agreement = check_case(SPEC, problem, config, inputs=inputs, reference=reference)
        assert agreement.ok, f"{config}: {agreement.detail}"


def test_spec_run_returns_what_autograd_gives():
    problem = SPEC.verify_cases[7]  # packed bf16 softmax
    inputs = SPEC.make_inputs(problem, "cpu", 3)
    grads = SPEC.run(inputs, SPEC.default_for(problem, INTERPRETER_LIMITS))
    leaves = [inputs[name].detach().clone().requires_grad_() for name in "qkv"]
    forward = {k: inputs[k] for k in ("causal", "score", "cu_seqlens") if k in inputs}
    attention(*leaves, **forward).backward(inputs["do"])
    for grad, leaf in zip(grads, leaves):
        # The spec's o comes from the float64 formula, the op's from the Triton forward (one
        # bf16 rounding apart), so delta and the gradients differ by about one rounding.
        assert compare((grad,), (leaf.grad.double(),), SPEC.tolerances["bfloat16"]).ok


@pytest.mark.parametrize("baseline", ["torch_sdpa", "torch"])
def test_backward_baselines_compute_the_same_gradients(baseline):
    problem = SPEC.verify_cases[0]  # fp32, GQA, T < S
    inputs = SPEC.make_inputs(problem, "cpu", 5)
    run = SPEC.baselines[baseline]
    assert compare(run(inputs), SPEC.reference(inputs), EXACT).ok
    packed = SPEC.make_inputs(SPEC.verify_cases[8], "cpu", 5)
    with pytest.raises(ValueError, match="packed sequences"):
        run(packed)


def test_sdpa_training_baseline_refuses_rows_without_keys():
    inputs = SPEC.make_inputs(SPEC.verify_cases[2], "cpu", 5)  # causal, T=53 > S=37
    with pytest.raises(ValueError, match="causal T > S"):
        SPEC.baselines["torch_sdpa"](inputs)


def test_broadcast_upstream_gradient_of_a_sum():
    """``out.sum().backward()`` hands the backward a dO with all strides 0."""
    leaves, _, kwargs = _leaves(CASES["packed-causal"], torch.float32)
    out = attention(*leaves, **kwargs)
    out.sum().backward()
    expected = _reference_grads(leaves, torch.ones_like(out), kwargs)
    for leaf, want in zip(leaves, expected):
        assert compare((leaf.grad,), (want,), EXACT).ok


@pytest.mark.parametrize("score, bias", [("softmax", None), ("sigmoid", 0.5)])
def test_explicit_scale_and_sigmoid_bias_reach_the_backward(score, bias):
    leaves, do, kwargs = _leaves(CASES["mqa-causal-T>S"], torch.float32)
    kwargs = {**kwargs, "score": score}
    attention(*leaves, **kwargs, scale=0.3, sigmoid_bias=bias).backward(do)
    leaves64 = [leaf.detach().double().requires_grad_() for leaf in leaves]
    out = attention_math(*leaves64, scale=0.3, sigmoid_bias=bias, **kwargs)
    expected = torch.autograd.grad(out, leaves64, do.double())
    for leaf, want in zip(leaves, expected):
        assert compare((leaf.grad,), (want,), EXACT).ok


@pytest.mark.parametrize("shift", range(-17, 17), ids=lambda shift: f"S-T={shift}")
def test_causal_gradients_at_offsets_around_the_blocks(shift):
    """Residues of S - T modulo the 16-row blocks, both signs: the boundaries between the
    masked diagonal, the unmasked blocks and the ragged last block of each kernel."""
    T = 24
    score = "softmax" if shift % 2 else "sigmoid"
    leaves, do, kwargs = _leaves((1, T, T + shift, 1, 1, 16, 16, True, score, False),
                                 torch.float32, seed=shift + 17)
    attention(*leaves, **kwargs, config={"BLOCK_M": 16, "BLOCK_N": 16},
              bwd_config=SMALL).backward(do)
    for label, leaf, want in zip("qkv", leaves, _reference_grads(leaves, do, kwargs)):
        agreement = compare((leaf.grad,), (want,), EXACT)
        assert agreement.ok, f"d{label}: {agreement.detail}"
