"""seqtune.compat.mamba_ssm against independent float64 recurrences written here, token by
token (mamba_ssm needs CUDA and is not installed on the CPU machines)."""
from __future__ import annotations

import inspect

import pytest
import torch
import torch.nn.functional as F

from seqtune.compat import mamba_ssm
from seqtune.compat.mamba_ssm import (mamba_chunk_scan_combined, selective_scan_fn,
                                      selective_state_update)

# SSD runs on the linear-attention kernels (kernels/linear_attention/spec.py): fp32 differs from
# float64 by accumulation order (1e-4); bf16 rounds the dot operands to 8 significant bits over
# a chunk (6e-2 on O(1) outputs). The selective scan has no dot: fp32 to a few ulp (2e-5),
# bf16 inputs are exact for the reference and only the stored output rounds (1e-2).
SSD_TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 6e-2}
SCAN_TOLERANCE = {torch.float32: 2e-5, torch.bfloat16: 1e-2}


def assert_close(actual, expected, tolerance):
    torch.testing.assert_close(actual.double(), expected.double(), atol=tolerance,
                               rtol=tolerance)


def ssd_recurrence(x, dt, A, B, C, *, D=None, z=None, dt_bias=None, softplus=False,
                   limit=(0.0, float("inf")), h0=None, seq_idx=None):
    """(out [b, T, h, p], final [b, h, p, n]) float64; the state restarts where seq_idx
    changes; head i reads group i // (h / g)."""
    batch, length, heads, headdim = x.shape
    group = heads // B.shape[2]
    x, A = x.double(), A.double()
    B, C = (t.double().repeat_interleave(group, 2) for t in (B, C))
    step = dt.double() + (0 if dt_bias is None else dt_bias.double())
    step = (F.softplus(step) if softplus else step).clamp(*limit)
    out = torch.zeros(x.shape, dtype=torch.float64)
    finals = torch.zeros(batch, heads, headdim, B.shape[-1], dtype=torch.float64)
    for r in range(batch):
        state = finals[r] if h0 is None else h0[r].double().clone()
        for t in range(length):
            if seq_idx is not None and t > 0 and seq_idx[r, t] != seq_idx[r, t - 1]:
                state = torch.zeros_like(state)
            decay = (step[r, t] * A).exp()[:, None, None]
            state = decay * state + (step[r, t][:, None, None] * x[r, t][:, :, None]
                                     * B[r, t][:, None, :])
            out[r, t] = torch.einsum("hpn,hn->hp", state, C[r, t])
        finals[r] = state
    if D is not None:
        out = out + x * (D.double()[:, None] if D.dim() == 1 else D.double())
    if z is not None:
        out = out * F.silu(z.double())
    return out, finals


def ssd_inputs(dtype, batch=2, length=37, seed=0):
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=generator)

    heads, groups, headdim, state_dim = 4, 2, 16, 16
    return {"x": randn(batch, length, heads, headdim).to(dtype),
            "dt": randn(batch, length, heads) * 0.5 - 1,
            "A": -torch.rand(heads, generator=generator) - 0.5,
            "B": randn(batch, length, groups, state_dim).to(dtype),
            "C": randn(batch, length, groups, state_dim).to(dtype),
            "D": randn(heads, headdim), "z": randn(batch, length, heads, headdim).to(dtype),
            "dt_bias": randn(heads) * 0.3,
            "h0": randn(batch, heads, headdim, state_dim)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("variant", ["D per channel, z", "D per head, dt_limit"])
def test_chunk_scan_matches_the_recurrence(dtype, variant):
    a = ssd_inputs(dtype)
    D = a["D"] if variant.startswith("D per channel") else a["D"][:, 0]
    z = a["z"] if "z" in variant else None
    limit = (0.05, 0.4) if "dt_limit" in variant else (0.0, float("inf"))
    out, final = mamba_chunk_scan_combined(a["x"], a["dt"], a["A"], a["B"], a["C"], 64, D, z,
                                           a["dt_bias"], a["h0"], dt_softplus=True,
                                           dt_limit=limit, return_final_states=True)
    expected, expected_final = ssd_recurrence(a["x"], a["dt"], a["A"], a["B"], a["C"], D=D, z=z,
                                              dt_bias=a["dt_bias"], softplus=True, limit=limit,
                                              h0=a["h0"])
    assert out.dtype == dtype and final.dtype == torch.float32
    assert final.shape == a["h0"].shape
    assert_close(out, expected, SSD_TOLERANCE[dtype])
    assert_close(final, expected_final, SSD_TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_seq_idx_restarts_the_state(dtype):
    a = ssd_inputs(dtype, seed=1)
    seq_idx = torch.zeros(2, 37, dtype=torch.int32)
    seq_idx[0, 10:], seq_idx[1, 36:] = 1, 4
    out, final = mamba_chunk_scan_combined(a["x"], a["dt"], a["A"], a["B"], a["C"], 16,
                                           initial_states=a["h0"], seq_idx=seq_idx,
                                           dt_softplus=True, return_final_states=True)
    expected, expected_final = ssd_recurrence(a["x"], a["dt"], a["A"], a["B"], a["C"],
                                              softplus=True, h0=a["h0"], seq_idx=seq_idx)
    assert_close(out, expected, SSD_TOLERANCE[dtype])
    assert_close(final, expected_final, SSD_TOLERANCE[dtype])


def test_varlen_states_are_each_sequences_last_state():
    a = ssd_inputs(torch.bfloat16, batch=1, seed=2)
    cu_seqlens = torch.tensor([0, 0, 1, 20, 37])
    seq_idx = torch.tensor([[1] + [2] * 19 + [3] * 17], dtype=torch.int32)
    out, final, varlen = mamba_chunk_scan_combined(
        a["x"], a["dt"], a["A"], a["B"], a["C"], 64, initial_states=a["h0"][:1],
        seq_idx=seq_idx, cu_seqlens=cu_seqlens, dt_softplus=True, return_final_states=True,
        return_varlen_states=True)
    assert varlen.shape == (4, 4, 16, 16) and varlen.dtype == torch.bfloat16
    assert torch.equal(varlen[0], torch.zeros_like(varlen[0]))  # the empty sequence
    for n in range(1, 4):
        steps = slice(cu_seqlens[n], cu_seqlens[n + 1])
        h0 = a["h0"][:1] if n == 1 else None
        expected, state = ssd_recurrence(*(a[k][:, steps] for k in ("x", "dt")), a["A"],
                                         *(a[k][:, steps] for k in ("B", "C")), softplus=True,
                                         h0=h0)
        assert_close(out[:, steps], expected, SSD_TOLERANCE[torch.bfloat16])
        assert_close(varlen[n], state[0], SSD_TOLERANCE[torch.bfloat16])
    assert_close(final[0], varlen[3].float(), 1e-2)  # varlen states are rounded to C's dtype


def mamba2_step_arguments(a, t, rows, tied=True):
    """One token of ssd_inputs in selective_state_update's per-head layout. Tied: dt, A and
    dt_bias expanded over the head dim, as Mamba-2 passes them (ssd_step); else materialised,
    as a model with per-channel values would pass them (the selective-scan path)."""
    heads, headdim, state_dim = a["x"].shape[2], a["x"].shape[3], a["B"].shape[3]
    arguments = dict(dt=a["dt"][:, t, :, None].expand(-1, heads, headdim),
                     A=a["A"][:, None, None].expand(heads, headdim, state_dim),
                     dt_bias=a["dt_bias"][:, None].expand(heads, headdim))
    if not tied:
        arguments = {name: value.contiguous() for name, value in arguments.items()}
    return dict(x=a["x"][:, t], B=a["B"][:, t], C=a["C"][:, t], D=a["D"], z=a["z"][:, t],
                dt_softplus=True, state_batch_indices=rows, **arguments)


@pytest.mark.parametrize("tied", [True, False])
def test_state_update_per_head_steps_equal_the_chunk_scan_with_a_shuffled_pool(tied):
    a = ssd_inputs(torch.float32, length=7, seed=3)
    rows = torch.tensor([3, 0], dtype=torch.int32)
    pool = torch.randn(5, *a["h0"].shape[1:], generator=torch.Generator().manual_seed(4))
    pool[rows.long()] = a["h0"]
    untouched = pool[[1, 2, 4]].clone()
    steps = [selective_state_update(pool, **mamba2_step_arguments(a, t, rows, tied))
             for t in range(7)]
    out, final = mamba_chunk_scan_combined(a["x"], a["dt"], a["A"], a["B"], a["C"], 64, a["D"],
                                           a["z"], a["dt_bias"], a["h0"], dt_softplus=True,
                                           return_final_states=True)
    torch.testing.assert_close(torch.stack(steps, 1), out, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(pool[rows.long()], final, atol=1e-4, rtol=1e-4)
    assert torch.equal(pool[[1, 2, 4]], untouched)


@pytest.mark.parametrize("tied, state_dtype", [(True, torch.float32), (False, torch.float32),
                                               (True, torch.bfloat16), (False, torch.bfloat16)])
def test_state_update_writes_into_strided_and_half_states(tied, state_dtype):
    """A state whose (h, p) do not merge into one view, and a bfloat16 state (the step kernels
    keep float32 states: a copy is stepped and written back), with D per head (expanded)."""
    a = ssd_inputs(torch.float32, length=1, seed=5)
    storage = a["h0"].permute(0, 2, 1, 3).contiguous().to(state_dtype)  # [b, p, h, n]
    state = storage.permute(0, 2, 1, 3)  # [b, h, p, n]
    h0 = state.clone()
    D = a["D"][:, :1].expand(-1, a["x"].shape[3])
    out = selective_state_update(state, **(mamba2_step_arguments(a, 0, None, tied) | {"D": D}))
    expected, final = ssd_recurrence(a["x"], a["dt"], a["A"], a["B"], a["C"], D=D, z=a["z"],
                                     dt_bias=a["dt_bias"], softplus=True, h0=h0)
    tolerance = 1e-5 if state_dtype == torch.float32 else 1e-2  # bf16: the stored state rounds
    assert out.dtype == torch.float32 and state.dtype == state_dtype
    assert_close(out, expected[:, 0], 1e-5)
    assert_close(state, final, tolerance)


def scan_recurrence(u, delta, A, B, C, D=None, z=None, delta_bias=None, softplus=False, h0=None):
    """(y [b, d, L], last state [b, d, n]) float64 of Mamba-1's selective scan."""
    u, A = u.double(), A.double()
    step = delta.double() + (0 if delta_bias is None else delta_bias.double()[:, None])
    step = F.softplus(step) if softplus else step
    if B.dim() == 4:  # grouped: channel c reads group c // (d / g)
        B, C = (t.repeat_interleave(u.shape[1] // t.shape[1], 1) for t in (B, C))
    else:
        B, C = (t[:, None].expand(-1, u.shape[1], -1, -1) for t in (B, C))
    state = torch.zeros(*u.shape[:2], A.shape[1], dtype=torch.float64) if h0 is None else (
        h0.double().clone())
    ys = []
    for t in range(u.shape[2]):
        state = ((step[..., t, None] * A).exp() * state
                 + step[..., t, None] * B[..., t].double() * u[..., t, None])
        ys.append((state * C[..., t].double()).sum(-1))
    y = torch.stack(ys, -1)
    if D is not None:
        y = y + D.double()[:, None] * u
    return (y if z is None else y * F.silu(z.double())), state


def scan_inputs(dtype, length=37, grouped=False, seed=6):
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=generator)

    bc = (2, 2, 8, length) if grouped else (2, 8, length)
    return {"u": randn(2, 6, length).to(dtype), "delta": (randn(2, 6, length) * 0.5).to(dtype),
            "A": -torch.rand(6, 8, generator=generator) - 0.2, "B": randn(*bc).to(dtype),
            "C": randn(*bc).to(dtype), "D": randn(6), "z": randn(2, 6, length).to(dtype),
            "delta_bias": randn(6) * 0.3}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("grouped", [False, True])
def test_selective_scan_fn_matches_the_recurrence(dtype, grouped):
    a = scan_inputs(dtype, grouped=grouped)
    y, last = selective_scan_fn(a["u"], a["delta"], a["A"], a["B"], a["C"], a["D"], a["z"],
                                a["delta_bias"], True, True)
    expected, expected_last = scan_recurrence(**a, softplus=True)
    assert y.dtype == dtype and last.dtype == torch.float32 and last.shape == (2, 6, 8)
    assert_close(y, expected, SCAN_TOLERANCE[dtype])
    assert_close(last, expected_last, SCAN_TOLERANCE[torch.float32])
    assert selective_scan_fn(a["u"], a["delta"], a["A"], a["B"], a["C"]).shape == (2, 6, 37)


def test_state_update_mamba1_steps_equal_the_scan_with_a_shuffled_pool():
    a = scan_inputs(torch.bfloat16, length=7)
    rows = torch.tensor([2, 0], dtype=torch.int64)
    pool = torch.zeros(3, 6, 8)
    y, last = selective_scan_fn(**a, delta_softplus=True, return_last_state=True)
    steps = []
    for t in range(7):  # delta in float32 beside bfloat16 x: computed in float32, as mamba_ssm
        steps.append(selective_state_update(
            pool, a["u"][..., t], a["delta"][..., t].float(), a["A"], a["B"][..., t],
            a["C"][..., t], a["D"], a["z"][..., t], a["delta_bias"], True, rows))
    assert steps[0].dtype == torch.bfloat16
    expected, expected_last = scan_recurrence(**a, softplus=True)
    assert_close(torch.stack(steps, -1), expected, SCAN_TOLERANCE[torch.bfloat16])
    assert_close(pool[rows], expected_last, 1e-5)
    assert torch.equal(pool[1], torch.zeros(6, 8))


@pytest.mark.parametrize("call, error, message", [
    (lambda a, s: selective_scan_fn(a["u"], a["delta"], a["A"].cfloat(), a["B"], a["C"]),
     NotImplementedError, "A="),
    (lambda a, s: selective_scan_fn(a["u"], a["delta"], a["A"], a["B"][0, :, :6].T, a["C"]),
     NotImplementedError, "B="),
    (lambda a, s: mamba_chunk_scan_combined(s["x"], s["dt"], s["A"], s["B"], s["C"], 0),
     ValueError, "chunk_size"),
    (lambda a, s: mamba_chunk_scan_combined(s["x"], s["dt"], s["A"], s["B"], s["C"], 64,
                                            dt_limit=(1.0, 0.5)), ValueError, "dt_limit"),
    (lambda a, s: mamba_chunk_scan_combined(s["x"], s["dt"], s["A"], s["B"], s["C"], 64,
                                            seq_idx=torch.tensor([[1, 0, 0, 0, 0]] * 2)),
     ValueError, "seq_idx"),
    (lambda a, s: mamba_chunk_scan_combined(s["x"][:1], s["dt"][:1], s["A"], s["B"][:1],
                                            s["C"][:1], 64, cu_seqlens=torch.tensor([0, 2, 5]),
                                            return_varlen_states=True), ValueError, "seq_idx"),
    (lambda a, s: mamba_chunk_scan_combined(s["x"], s["dt"], s["A"], s["B"], s["C"], 64,
                                            return_varlen_states=True), ValueError,
     "cu_seqlens"),
    (lambda a, s: mamba_chunk_scan_combined(s["x"], s["dt"], s["A"], s["B"], s["C"], 64,
                                            initial_states=s["h0"][..., :8]),
     ValueError, "initial_states"),
    (lambda a, s: selective_state_update(torch.zeros(2, 6, 8), a["u"][..., 0],
                                         a["delta"][..., 0], a["A"], a["B"][..., 0],
                                         a["C"][..., 0], D=torch.ones(3)), ValueError, "D"),
    (lambda a, s: selective_state_update(torch.zeros(3, 6, 8), a["u"][..., 0],
                                         a["delta"][..., 0], a["A"], a["B"][..., 0],
                                         a["C"][..., 0]), ValueError, "state_batch_indices"),
    (lambda a, s: selective_state_update(torch.zeros(3, 6, 8), a["u"][..., 0],
                                         a["delta"][..., 0], a["A"], a["B"][..., 0],
                                         a["C"][..., 0], state_batch_indices=torch.tensor([0, 3])),
     ValueError, "state_batch_indices"),
])
def test_bad_arguments_give_one_line_errors(call, error, message):
    with pytest.raises(error, match=message) as raised:
        call(scan_inputs(torch.float32, length=5), ssd_inputs(torch.float32, length=5))
    assert "\n" not in str(raised.value)


def _leaves(tensors):
    """fp32 leaves requiring grad, and their float64 twins for the reference."""
    ours = {name: t.detach().clone().requires_grad_() for name, t in tensors.items()}
    ref = {name: t.detach().double().requires_grad_() for name, t in tensors.items()}
    return ours, ref


def _assert_same_gradients(ours, ref, loss, expected_loss):
    """Gradients of every leaf against float64 autograd; fp32 backward kernels accumulate in
    fp32 over the sequence and the chunks, so 1e-3 (relative to O(1) gradients)."""
    names = sorted(ours)
    grads = torch.autograd.grad(loss, [ours[n] for n in names])
    expected = torch.autograd.grad(expected_loss, [ref[n] for n in names])
    for name, grad, want in zip(names, grads, expected):
        torch.testing.assert_close(grad.double(), want, atol=1e-3, rtol=1e-3, msg=name)


def test_chunk_scan_gradients_match_float64_autograd():
    a = ssd_inputs(torch.float32, length=13, seed=8)
    ours, ref = _leaves({k: a[k] for k in ("x", "dt", "A", "B", "C", "D", "z", "dt_bias", "h0")})
    weights = torch.randn(2, 13, 4, 16, generator=torch.Generator().manual_seed(9))
    out, final = mamba_chunk_scan_combined(
        *(ours[k] for k in ("x", "dt", "A", "B", "C")), 64, ours["D"], ours["z"],
        ours["dt_bias"], ours["h0"], dt_softplus=True, return_final_states=True)
    expected, expected_final = ssd_recurrence(
        *(ref[k] for k in ("x", "dt", "A", "B", "C")), D=ref["D"], z=ref["z"],
        dt_bias=ref["dt_bias"], softplus=True, h0=ref["h0"])
    _assert_same_gradients(ours, ref, (out * weights).sum() + final.square().sum(),
                           (expected * weights).sum() + expected_final.square().sum())


def test_selective_scan_fn_gradients_match_float64_autograd():
    a = scan_inputs(torch.float32, length=13, grouped=True)
    ours, ref = _leaves(a)
    y = selective_scan_fn(**ours, delta_softplus=True)
    expected, _ = scan_recurrence(**ref, softplus=True)
    weights = torch.randn(2, 6, 13, generator=torch.Generator().manual_seed(10))
    _assert_same_gradients(ours, ref, (y * weights).sum(), (expected * weights).sum())


# The originals' signatures, as mamba_ssm 2.3 defines them (ops/triton/ssd_combined.py,
# selective_state_update.py, ops/selective_scan_interface.py): same names, order, defaults;
# selective_state_update with the pad_slot_id of vLLM's and SGLang's copies (PAD_SLOT_ID = -1).
ORIGINAL_SIGNATURES = {
    "mamba_chunk_scan_combined":
        "(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, initial_states=None, "
        "seq_idx=None, cu_seqlens=None, dt_softplus=False, dt_limit=(0.0, inf), "
        "return_final_states=False, return_varlen_states=False)",
    "selective_state_update":
        "(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False, "
        "state_batch_indices=None, pad_slot_id=-1)",
    "selective_scan_fn":
        "(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, "
        "return_last_state=False)",
}


@pytest.mark.parametrize("name", sorted(ORIGINAL_SIGNATURES))
def test_signature_is_the_originals(name):
    assert str(inspect.signature(getattr(mamba_ssm, name))) == ORIGINAL_SIGNATURES[name]
