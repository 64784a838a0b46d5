"""Gradients of linear_attention and ssd (Triton backward through autograd) against float64
autograd of the independent recurrences: odd T, K != V, with and without initial state, every
gate kind, GVA, packed sequences, fp32 and bf16, and a long strong-decay sequence."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from seqtune.kernels.linear_attention.op import linear_attention
from seqtune.kernels.linear_attention.reference import (varlen_linear_attention_reference,
                                                        varlen_ssd_reference)
from seqtune.kernels.linear_attention.ssd import ssd
from seqtune.registry import get_spec
from seqtune.agreement import check_case, compare

LA_BWD, SSD_BWD = get_spec("linear_attention_bwd"), get_spec("ssd_bwd")


# one fp32 and one bf16 case (the cheapest); `seqtune verify` runs them all
@pytest.mark.parametrize("name,problem", [("linear_attention_bwd", LA_BWD.verify_cases[2]),
                                          ("ssd_bwd", SSD_BWD.verify_cases[1])],
                         ids=lambda p: p if isinstance(p, str) else "-".join(map(str, p.values())))
def test_bwd_spec_verify_cases(name, problem):
    spec = get_spec(name)
    agreement = check_case(spec, problem, dict(spec.default_config))
    assert agreement.ok, agreement.detail


def _grads(outputs, upstream, leaves):
    out, final = outputs
    loss = (out.double() * upstream[0].double()).sum()
    if upstream[1] is not None:
        loss = loss + (final.double() * upstream[1].double()).sum()
    return torch.autograd.grad(loss, [t for t in leaves if t is not None])


def _la_leaves(gate, dtype, B, T, H, GV, K, V, initial, N, gen, strength=2.0):
    HV = H * GV
    q, k = (torch.randn(B, T, H, K, generator=gen).to(dtype) for _ in range(2))
    v = torch.randn(B, T, HV, V, generator=gen).to(dtype)
    g = None
    if gate != "none":
        shape = (B, T, HV) if gate == "scalar" else (B, T, HV, K)
        g = F.logsigmoid(torch.randn(*shape, generator=gen) + strength)
    state = torch.randn(N, HV, K, V, generator=gen) if initial else None
    return [t if t is None else t.requires_grad_() for t in (q, k, v, g, state)]


def _check_la(leaves, cu, tol, use_final=True, config=None):
    q, k, v, g, state = leaves
    gen = torch.Generator().manual_seed(9)
    out, final = linear_attention(q, k, v, g, initial_state=state, output_final_state=True,
                                  cu_seqlens=cu, config=config, bwd_config=config)
    upstream = (torch.randn(out.shape, generator=gen),
                torch.randn(final.shape, generator=gen) if use_final else None)
    got = _grads((out, final), upstream, leaves)
    ref_leaves = [None if t is None else t.detach().double().requires_grad_() for t in leaves]
    expected = _grads(varlen_linear_attention_reference(*ref_leaves[:4],
                                                        initial_state=ref_leaves[4],
                                                        cu_seqlens=cu),
                      upstream, ref_leaves)
    assert all(a.dtype == t.dtype for a, t in zip(got, [t for t in leaves if t is not None]))
    agreement = compare(got, expected, tol)
    assert agreement.ok, agreement.detail


@pytest.mark.parametrize("gate", ["none", "scalar", "channel"])
@pytest.mark.parametrize("dtype,initial,GV,BT", [(torch.float32, True, 1, 16),
                                                  (torch.float32, False, 2, 32),
                                                  (torch.bfloat16, True, 2, 64)])
def test_linear_attention_gradients(gate, dtype, initial, GV, BT):
    gen = torch.Generator().manual_seed(0)
    leaves = _la_leaves(gate, dtype, 2, 37, 1, GV, 24, 40, initial, 2, gen)
    _check_la(leaves, None, LA_BWD.tolerances[str(dtype).removeprefix("torch.")],
              use_final=initial, config={"BT": BT})


@pytest.mark.parametrize("gate", ["scalar", "channel"])
def test_packed_gradients(gate):
    """Lengths 0, 1 and non-multiples of every chunk: no gradient crosses a sequence."""
    gen = torch.Generator().manual_seed(1)
    lengths = [0, 19, 1, 33]
    cu = torch.tensor([0] + lengths).cumsum(0).to(torch.int32)
    leaves = _la_leaves(gate, torch.float32, 1, sum(lengths), 2, 2, 16, 24, True, 4, gen)
    _check_la(leaves, cu, LA_BWD.tolerances["float32"], config={"BT": 16})


def test_only_inputs_that_require_grad_get_one():
    gen = torch.Generator().manual_seed(2)
    q, k, v, g, state = _la_leaves("scalar", torch.float32, 1, 21, 1, 1, 16, 16, True, 1, gen)
    k.requires_grad_(False)
    state.requires_grad_(False)
    out, _ = linear_attention(q, k, v, g, initial_state=state)
    out.sum().backward()
    assert k.grad is None and state.grad is None
    assert all(t.grad is not None for t in (q, v, g))
    with torch.no_grad():
        assert linear_attention(q, k, v, g)[0].grad_fn is None


@pytest.mark.parametrize("gate", ["scalar", "channel"])
def test_long_strong_decay_gradients_are_finite_and_exact(gate):
    """T in the thousands with log decays down to -30 per step: exp(-cumulative decay)
    overflows fp32 within a chunk, so every exponent of the backward must stay <= 0."""
    gen = torch.Generator().manual_seed(3)
    T = 1100 if gate == "channel" else 2000
    leaves = _la_leaves(gate, torch.float32, 1, T, 1, 1, 16, 16, True, 1, gen)
    with torch.no_grad():
        shape = leaves[3].shape
        leaves[3].copy_(-torch.exp(torch.empty(shape).uniform_(-7, 3.4, generator=gen)))
    assert leaves[3].min() < -29 and (-leaves[3][:, :64].sum(1)).max() > 88.8
    _check_la(leaves, None, LA_BWD.tolerances["float32"], config={"BT": 64})


def _ssd_leaves(dtype, T, initial, N, gen, D=True):
    b, h, g, n, p = 1, 4, 2, 16, 24
    x = torch.randn(b, T, h, p, generator=gen).to(dtype)
    B, C = (torch.randn(b, T, g, n, generator=gen).to(dtype) for _ in range(2))
    dt = torch.randn(b, T, h, generator=gen) * 0.5
    A = -(1 + 7 * torch.rand(h, generator=gen))
    skip = torch.randn(h, generator=gen) if D else None
    # steps softplus(dt + bias) of ~0.02-0.2 as in Mamba-2: dg, a small difference of large
    # terms (q dq - k dk), reaches dA and dt_bias multiplied by A and summed over T, so larger
    # steps would amplify its bf16 rounding beyond the dtype's tolerance
    bias = torch.rand(h, generator=gen) - 3
    state = torch.randn(N, h, n, p, generator=gen) if initial else None
    return [t if t is None else t.requires_grad_() for t in (x, dt, A, B, C, skip, bias, state)]


@pytest.mark.parametrize("dtype,initial,D,lengths", [
    (torch.float32, True, True, None), (torch.float32, False, False, [0, 20, 1, 24]),
    (torch.bfloat16, True, True, [7, 38])])
def test_ssd_gradients(dtype, initial, D, lengths):
    gen = torch.Generator().manual_seed(4)
    cu = None if lengths is None else torch.tensor([0] + lengths).cumsum(0).to(torch.int32)
    T = 45 if lengths is None else sum(lengths)
    leaves = _ssd_leaves(dtype, T, initial, 1 if lengths is None else len(lengths), gen, D)
    x, dt, A, B, C, skip, bias, state = leaves
    y, final = ssd(x, dt, A, B, C, D=skip, dt_bias=bias, dt_softplus=True, initial_state=state,
                   output_final_state=True, cu_seqlens=cu, config={"BT": 16},
                   bwd_config={"BT": 32})
    upstream = (torch.randn(y.shape, generator=gen), torch.randn(final.shape, generator=gen))
    got = _grads((y, final), upstream, leaves)
    ref = [None if t is None else t.detach().double().requires_grad_() for t in leaves]
    expected = _grads(varlen_ssd_reference(*ref[:7], True, ref[7], cu), upstream, ref)
    agreement = compare(got, expected, SSD_BWD.tolerances[str(dtype).removeprefix("torch.")])
    assert agreement.ok, agreement.detail
