"""Decode steps: linear_attention_step and ssd_step run token by token equal the chunkwise ops
(outputs and final states) from the same initial state; state pools addressed by
state_indices; GVA; bad arguments."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from seqtune.kernels.linear_attention.op import linear_attention
from seqtune.kernels.linear_attention.ssd import ssd
from seqtune.kernels.linear_attention.step import linear_attention_step, ssd_step
from seqtune.launch import capture_launches
from seqtune.registry import get_spec
from seqtune.agreement import check_case, compare

LA = get_spec("linear_attention")
SPEC_NAMES = ("linear_attention_step", "ssd_step")


@pytest.mark.parametrize("name,problem", [(n, c) for n in SPEC_NAMES
                                          for c in get_spec(n).verify_cases],
                         ids=lambda p: p if isinstance(p, str) else "-".join(map(str, p.values())))
def test_verify_cases_agree_with_reference(name, problem):
    spec = get_spec(name)
    agreement = check_case(spec, problem, dict(spec.default_config))
    assert agreement.ok, agreement.detail


def _la_inputs(gate, dtype, B=2, T=13, H=2, GV=2, K=24, V=40, seed=0):
    gen = torch.Generator().manual_seed(seed)
    HV = H * GV
    q, k = (torch.randn(B, T, H, K, generator=gen).to(dtype) for _ in range(2))
    v = torch.randn(B, T, HV, V, generator=gen).to(dtype)
    g = None
    if gate != "none":
        shape = (B, T, HV) if gate == "scalar" else (B, T, HV, K)
        g = F.logsigmoid(torch.randn(*shape, generator=gen) + 2)
    state = torch.randn(B, HV, K, V, generator=gen)
    return q, k, v, g, state


@pytest.mark.parametrize("gate", ["none", "scalar", "channel"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_token_by_token_equals_chunkwise(gate, dtype):
    q, k, v, g, state = _la_inputs(gate, dtype)
    expected = linear_attention(q, k, v, g, initial_state=state, output_final_state=True)
    running = state.clone()
    outs = [linear_attention_step(q[:, t], k[:, t], v[:, t], None if g is None else g[:, t],
                                  state=running) for t in range(q.shape[1])]
    got = (torch.stack(outs, dim=1), running)
    # both round each output once to the input dtype; the chunkwise op also rounds its dot
    # operands (chunk states, scores) to it, hence the dtype's tolerance
    tol = LA.tolerances[str(dtype).removeprefix("torch.")]
    assert compare(got, expected, tol).ok, compare(got, expected, tol).detail


def test_shuffled_state_pool():
    q, k, v, g, state = _la_inputs("channel", torch.float32, B=3, T=5)
    expected = linear_attention(q, k, v, g, initial_state=state, output_final_state=True)
    rows = torch.tensor([4, 0, 2])  # element i owns row rows[i] of a pool of 6
    pool = torch.randn(6, *state.shape[1:])
    untouched = pool[[1, 3, 5]].clone()
    pool[rows] = state
    for t in range(q.shape[1]):
        o = linear_attention_step(q[:, t], k[:, t], v[:, t], g[:, t], state=pool,
                                  state_indices=rows.to(torch.int32))
        assert compare((o,), (expected[0][:, t],), LA.tolerances["float32"]).ok
    assert compare((pool[rows],), (expected[1],), LA.tolerances["float32"]).ok
    assert torch.equal(pool[[1, 3, 5]], untouched)


@pytest.mark.parametrize("indexed", [False, True])
def test_ssd_token_by_token_equals_chunkwise(indexed):
    gen = torch.Generator().manual_seed(1)
    b, T, h, g, n, p = 2, 11, 4, 2, 16, 24
    x = torch.randn(b, T, h, p, generator=gen)
    B, C = (torch.randn(b, T, g, n, generator=gen) for _ in range(2))
    dt = torch.randn(b, T, h, generator=gen) * 0.5
    A, D = -(1 + 7 * torch.rand(h, generator=gen)), torch.randn(h, generator=gen)
    bias = torch.rand(h, generator=gen) - 1
    state = torch.randn(b, h, n, p, generator=gen)
    y, final = ssd(x, dt, A, B, C, D=D, dt_bias=bias, dt_softplus=True, initial_state=state,
                   output_final_state=True)
    rows = torch.tensor([3, 1]) if indexed else torch.arange(b)
    pool = torch.randn(5 if indexed else b, h, n, p)
    pool[rows] = state
    steps = [ssd_step(x[:, t], dt[:, t], A, B[:, t], C[:, t], state=pool, D=D, dt_bias=bias,
                      dt_softplus=True, state_indices=rows if indexed else None)
             for t in range(T)]
    agreement = compare((torch.stack(steps, 1), pool[rows]), (y, final),
                        LA.tolerances["float32"])
    assert agreement.ok, agreement.detail


def _step_args():
    return (torch.randn(2, 1, 16), torch.randn(2, 1, 16), torch.randn(2, 2, 8))


STEP_BAD = [
    ({"state": torch.zeros(2, 2, 16, 8, dtype=torch.bfloat16)}, TypeError,
     "state has dtype bfloat16, expected float32"),
    ({"state": torch.zeros(3, 2, 16, 8)}, ValueError, "state must have 2 rows"),
    ({"state": torch.zeros(2, 2, 8, 16)}, ValueError, "state must have shape"),
    ({"state": torch.zeros(4, 2, 16, 8), "state_indices": torch.tensor([0, 4])}, ValueError,
     "state_indices must be < N=4"),
    ({"state": torch.zeros(4, 2, 16, 8), "state_indices": torch.tensor([0.0, 1.0])}, TypeError,
     "state_indices has dtype float32"),
    ({"state": torch.zeros(2, 2, 16, 8), "g": torch.zeros(2, 1)}, ValueError, "g must have shape"),
]


@pytest.mark.parametrize("kwargs,error,message", STEP_BAD)
def test_step_bad_arguments(kwargs, error, message):
    with capture_launches() as launched, pytest.raises(error, match=message):
        linear_attention_step(*_step_args(), **kwargs)
    assert not launched
