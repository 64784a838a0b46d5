"""attention at head dims over 256 (up to 512, Gemma-4 class; D != Dv too): forward and backward
against float64 autograd of the independent reference (Triton interpreter), and the configs the
untuned path picks for them on sm_80 and sm_90."""
from __future__ import annotations

import pytest
import torch

from seqtune.agreement import compare
from seqtune.kernels.attention.op import MAX_HEAD_DIM, attention
from seqtune.kernels.attention.reference import attention_math
from seqtune.kernels.attention.varlen import offsets_of, sequence_lengths
from seqtune.launch import capture_launches
from seqtune.registry import get_spec
from seqtune.spec import DeviceLimits, Tolerance

FORWARD = get_spec("attention")
BACKWARD = get_spec("attention_bwd")
A100 = DeviceLimits(backend="cuda", shared_memory_per_block=166912, compute_capability=(8, 0))
H100 = DeviceLimits(backend="cuda", shared_memory_per_block=232448, compute_capability=(9, 0))

# (B, T, S, Hq, Hkv, D, Dv, causal, packed): odd lengths both ways round, GQA, head dims padded
# to 512 (320) or exactly 512, D != Dv both ways; packed: five sequences with lengths 0 and 1.
CASES = {
    "d512-causal-T<S": (1, 37, 53, 4, 2, 512, 512, True, False),
    "d320-dv512-full": (1, 37, 53, 4, 2, 320, 512, False, False),
    "d512-dv256-causal-T>S": (1, 53, 37, 4, 2, 512, 256, True, False),
    "d320-packed-causal": (1, 45, 45, 4, 2, 320, 320, True, True),
}
# The interpreter runs float32 dots in full float32: 1e-4 leaves room for sums over 512 columns.
# bfloat16: P and dS are rounded to bfloat16 for the dots (see bwd_spec's tolerances).
TOLERANCES = {torch.float32: Tolerance(atol=1e-4, rtol=1e-4),
              torch.bfloat16: Tolerance(atol=2e-2, rtol=2e-2)}


def _inputs(case, dtype, seed=0):
    B, T, S, Hq, Hkv, D, Dv, causal, packed = case
    generator = torch.Generator().manual_seed(seed)
    shapes = ((B, T, Hq, D), (B, S, Hkv, D), (B, S, Hkv, Dv))
    leaves = [torch.randn(shape, generator=generator).to(dtype).requires_grad_()
              for shape in shapes]
    do = torch.randn(B, T, Hq, Dv, generator=generator).to(dtype)
    kwargs = {"causal": causal}
    if packed:
        lengths = sequence_lengths(T, 5)
        assert 0 in lengths and 1 in lengths
        kwargs["cu_seqlens"] = offsets_of(lengths, "cpu")
    return leaves, do, kwargs


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", list(CASES))
def test_forward_and_gradients_match_float64_autograd(name, dtype):
    """The untuned configs (what ``default_for`` picks at these head dims) run both passes."""
    leaves, do, kwargs = _inputs(CASES[name], dtype)
    out = attention(*leaves, **kwargs)
    out.backward(do)
    leaves64 = [leaf.detach().double().requires_grad_() for leaf in leaves]
    expected = attention_math(*leaves64, scale=None, sigmoid_bias=None, score="softmax",
                              **kwargs)
    grads = torch.autograd.grad(expected, leaves64, do.double())
    tolerance = TOLERANCES[dtype]
    assert out.dtype == dtype
    agreement = compare((out,), (expected,), tolerance)
    assert agreement.ok, f"o: {agreement.detail}"
    for label, leaf, want in zip("qkv", leaves, grads):
        agreement = compare((leaf.grad,), (want,), tolerance)
        assert agreement.ok, f"d{label}: {agreement.detail}"


@pytest.mark.parametrize("limits", [A100, H100], ids=["sm80", "sm90"])
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("D, Dv", [(512, 512), (320, 512), (512, 256), (320, 320)])
def test_wide_heads_get_the_measured_spill_free_configs(D, Dv, dtype, limits):
    """``seqtune check`` compiled these without spills on sm_80 and sm_90 (the defaults spill
    up to ~1 KB at D=512): 32 query rows in the forward and in dQ, eight dK/dV warps."""
    problem = {"B": 2, "T": 2048, "S": 2048, "Hq": 8, "Hkv": 8, "D": D, "Dv": Dv,
               "causal": True, "dtype": dtype, "score": "softmax"}
    forward = FORWARD.default_for(problem, limits)
    backward = BACKWARD.default_for(problem, limits)
    assert FORWARD.check(dict(FORWARD.default_config), problem, limits) is not None
    assert forward == {**FORWARD.default_config, "BLOCK_M": 32}
    assert backward == {**BACKWARD.default_config, "dkdv.num_warps": 8, "dq.BLOCK_M": 32}
    assert BACKWARD.check(backward, problem, limits) is None


@pytest.mark.parametrize("limits", [A100, H100], ids=["sm80", "sm90"])
@pytest.mark.parametrize("D, Dv", [(512, 512), (320, 512), (512, 256)])
def test_wide_float32_backward_takes_the_least_register_tiles(D, Dv, limits):
    """No config near the default fits float32 at these head dims; the smallest tiles with
    eight warps (and dK apart from dV) compiled without spills on sm_80 and sm_90."""
    problem = {"B": 2, "T": 2048, "S": 2048, "Hq": 8, "Hkv": 8, "D": D, "Dv": Dv,
               "causal": True, "dtype": "float32", "score": "softmax"}
    assert BACKWARD.check(dict(BACKWARD.default_config), problem, limits) is not None
    backward = BACKWARD.default_for(problem, limits)
    assert all(backward[f"{stage}.{knob}"] == 16 for stage in ("dkdv", "dq")
               for knob in ("BLOCK_M", "BLOCK_N"))
    assert backward["dkdv.num_warps"] == backward["dq.num_warps"] == 8
    assert BACKWARD.check(backward, problem, limits) is None


@pytest.mark.parametrize("dtype, launches", [(torch.float32, 2), (torch.bfloat16, 1)],
                         ids=["fp32", "bf16"])
def test_wide_float32_computes_dk_and_dv_in_launches_of_their_own(dtype, launches):
    leaves, do, kwargs = _inputs(CASES["d512-causal-T<S"], dtype)
    out = attention(*leaves, **kwargs)
    with capture_launches() as captured:
        out.backward(do)
    flags = [(launch.kwargs["GRAD_K"], launch.kwargs["GRAD_V"]) for launch in captured
             if launch.kernel.__name__ == "attention_bwd_dkdv_kernel"]
    assert flags == ([(True, False), (False, True)] if launches == 2 else [(True, True)])


@pytest.mark.parametrize("D", [64, 128, 192, 256])
def test_head_dims_up_to_256_keep_the_default(D):
    """bf16 keeps the defaults but where they spilled on sm_90, at head tiles of 256 (D=192 is
    padded to 256): dQ's 64 query rows (168 B), and with a window the forward's (32 B, Gemma 2)."""
    problem = {"B": 2, "T": 2048, "S": 2048, "Hq": 8, "Hkv": 8, "D": D, "causal": True,
               "dtype": "bfloat16", "score": "softmax"}
    for windowed in (False, True):
        problem = {**problem, "window": 1024} if windowed else problem
        for spec in (FORWARD, BACKWARD):
            spilled = D >= 192 and (windowed or spec is BACKWARD)
            expected = {**spec.default_config,
                        **({"dq.BLOCK_M": 32} if spec is BACKWARD else {"BLOCK_M": 32})}
            for limits in (A100, H100):
                assert spec.default_for(problem, limits) == (
                    expected if spilled else dict(spec.default_config)), (D, windowed)


def test_head_dims_over_512_are_refused_in_one_line():
    q = torch.zeros(1, 4, 2, MAX_HEAD_DIM + 1)
    v = torch.zeros(1, 4, 2, 64)
    with pytest.raises(ValueError, match=f"D={MAX_HEAD_DIM + 1} is not supported") as raised:
        attention(q, q, v)
    assert "\n" not in str(raised.value) and MAX_HEAD_DIM == 512
    with pytest.raises(ValueError, match="Dv=513"):
        attention(v, v, torch.zeros(1, 4, 2, 513))
