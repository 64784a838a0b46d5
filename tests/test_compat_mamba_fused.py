"""seqtune.compat.mamba_fused (mamba_ssm's ``mamba_inner_fn`` and
``mamba_split_conv1d_scan_combined``) against float64 references written here from
mamba_ssm's reference math (``mamba_inner_ref``, ``mamba_split_conv1d_scan_ref`` with the
grouped gated RMSNorm and the swiglu part of the fused function), using the float64
recurrences of test_compat_mamba_ssm.py; forward and backward."""
from __future__ import annotations

import inspect

import pytest
import torch
import torch.nn.functional as F
from test_compat_mamba_ssm import scan_recurrence, ssd_recurrence

from seqtune.compat import mamba_fused

TOLERANCE = 1e-4  # fp32 kernels against float64 (test_compat_mamba_ssm.py)
GRAD_TOLERANCE = 1e-3


def _randn(generator, *shape, scale=1.0):
    return torch.randn(*shape, generator=generator) * scale


def conv_reference(x, weight, bias, activation):
    """Depthwise causal conv of x [b, d, L] with weight [d, W], float64."""
    width = weight.shape[1]
    out = F.conv1d(x.double(), weight.double()[:, None], None if bias is None else bias.double(),
                   padding=width - 1, groups=x.shape[1])[..., :x.shape[2]]
    return F.silu(out) if activation in ("silu", "swish") else out


def rms_reference(x, weight, eps, z=None, group_size=None, norm_before_gate=True):
    x = x.double()
    if z is not None and not norm_before_gate:
        x = x * F.silu(z.double())
    grouped = x.unflatten(-1, (x.shape[-1] // (group_size or x.shape[-1]), -1))
    out = (grouped / (grouped.square().mean(-1, keepdim=True) + eps).sqrt()).flatten(-2)
    out = out * weight.double()
    return out * F.silu(z.double()) if z is not None and norm_before_gate else out


# Mamba-1: b=2, d=6, L=11, n=8, dt rank r=3, conv width 4, out dim 5
def inner_inputs(seed):
    g = torch.Generator().manual_seed(seed)
    return {"xz": _randn(g, 2, 12, 11), "conv1d_weight": _randn(g, 6, 1, 4, scale=0.5),
            "conv1d_bias": _randn(g, 6, scale=0.3), "x_proj_weight": _randn(g, 19, 6, scale=0.4),
            "delta_proj_weight": _randn(g, 6, 3, scale=0.4),
            "out_proj_weight": _randn(g, 5, 6, scale=0.4), "out_proj_bias": _randn(g, 5),
            "A": -torch.rand(6, 8, generator=g) - 0.2, "D": _randn(g, 6),
            "delta_bias": _randn(g, 6, scale=0.3), "B_proj_bias": _randn(g, 8, scale=0.3),
            "C_proj_bias": _randn(g, 8, scale=0.3), "b_rms_weight": _randn(g, 8),
            "c_rms_weight": _randn(g, 8), "dt_rms_weight": _randn(g, 6)}


def inner_reference(t, falcon):
    """mamba_inner_ref's math in float64 (with Falcon-Mamba's RMSNorms of B, C and dt)."""
    batch, _, length = t["xz"].shape
    x, z = t["xz"].double().chunk(2, dim=1)
    x = conv_reference(x, t["conv1d_weight"][:, 0], t["conv1d_bias"], "silu")
    x_dbl = x.transpose(1, 2).reshape(batch * length, 6) @ t["x_proj_weight"].double().T
    delta = x_dbl[:, :3] @ t["delta_proj_weight"].double().T
    B = x_dbl[:, 3:11] + t["B_proj_bias"].double()
    C = x_dbl[:, -8:] + t["C_proj_bias"].double()
    if falcon:
        delta = rms_reference(delta, t["dt_rms_weight"], 1e-6)
        B = rms_reference(B, t["b_rms_weight"], 1e-6)
        C = rms_reference(C, t["c_rms_weight"], 1e-6)
    delta, B, C = (u.reshape(batch, length, -1).transpose(1, 2) for u in (delta, B, C))
    y, _ = scan_recurrence(x, delta, t["A"], B, C, t["D"], z, t["delta_bias"], softplus=True)
    return y.transpose(1, 2) @ t["out_proj_weight"].double().T + t["out_proj_bias"].double()


def _inner_call(t, falcon):
    rms = ({"b_rms_weight": t["b_rms_weight"], "c_rms_weight": t["c_rms_weight"],
            "dt_rms_weight": t["dt_rms_weight"]} if falcon else {})
    return mamba_fused.mamba_inner_fn(
        t["xz"], t["conv1d_weight"], t["conv1d_bias"], t["x_proj_weight"],
        t["delta_proj_weight"], t["out_proj_weight"], t["out_proj_bias"], t["A"], D=t["D"],
        delta_bias=t["delta_bias"], B_proj_bias=t["B_proj_bias"], C_proj_bias=t["C_proj_bias"],
        **rms)


def _assert_gradients(out, expected, ours, ref):
    weights = torch.randn(*out.shape, generator=torch.Generator().manual_seed(50)).double()
    names = sorted(ours)
    grads = torch.autograd.grad((out.double() * weights).sum(), [ours[n] for n in names])
    wanted = torch.autograd.grad((expected * weights).sum(), [ref[n] for n in names])
    for name, grad, want in zip(names, grads, wanted):
        torch.testing.assert_close(grad.double(), want, atol=GRAD_TOLERANCE,
                                   rtol=GRAD_TOLERANCE, msg=name)


@pytest.mark.parametrize("falcon", [False, True])
def test_mamba_inner_fn_matches_the_reference_forward_and_backward(falcon):
    t = inner_inputs(seed=1)
    used = [n for n in t if falcon or not n.endswith("rms_weight")]
    ours = {n: t[n].clone().requires_grad_() for n in used}
    ref = {n: t[n].double().requires_grad_() for n in used}
    out = _inner_call(ours, falcon)
    expected = inner_reference(ref, falcon)
    assert out.shape == (2, 11, 5) and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), expected, atol=TOLERANCE, rtol=TOLERANCE)
    _assert_gradients(out, expected, ours, ref)


# Mamba-2: b=2, L=11, nheads=4, headdim=16, ngroups=2, dstate=16, conv width 4
HEADS, HEADDIM, GROUPS, STATE, DIM = 4, 16, 2, 16, 64
CONV = DIM + 2 * GROUPS * STATE


def split_inputs(seed, extra=0, batch=2, length=11):
    g = torch.Generator().manual_seed(seed)
    width = 2 * extra + 2 * DIM + 2 * GROUPS * STATE + HEADS
    return {"zxbcdt": _randn(g, batch, length, width, scale=0.5),
            "conv1d_weight": _randn(g, CONV, 4, scale=0.5), "conv1d_bias": _randn(g, CONV),
            "dt_bias": _randn(g, HEADS, scale=0.3), "A": -torch.rand(HEADS, generator=g) - 0.5,
            "D": _randn(g, HEADS, HEADDIM), "rmsnorm_weight": _randn(g, DIM),
            "outproj_weight": _randn(g, 7, extra + DIM, scale=0.2),
            "outproj_bias": _randn(g, 7), "h0": _randn(g, batch, HEADS, HEADDIM, STATE)}


def split_reference(t, extra, rmsnorm, norm_before_gate=True, limit=(0.0, float("inf")),
                    h0=None):
    """mamba_split_conv1d_scan_ref's math in float64, with the fused function's grouped
    RMSNorm (groups of dim / ngroups) and its silu(x0) * z0 part."""
    zx0, z, xBC, dt = torch.split(t["zxbcdt"].double(),
                                  [2 * extra, DIM, CONV, HEADS], dim=-1)
    xBC = conv_reference(xBC.transpose(1, 2), t["conv1d_weight"], t["conv1d_bias"],
                         "silu").transpose(1, 2)
    x, B, C = torch.split(xBC, [DIM, GROUPS * STATE, GROUPS * STATE], dim=-1)
    z4 = z.unflatten(-1, (HEADS, HEADDIM))
    if h0 is None:  # zeros given: the recurrence then never writes into a tensor it reads
        h0 = torch.zeros(x.shape[0], HEADS, HEADDIM, STATE, dtype=torch.float64)
    y, final = ssd_recurrence(x.unflatten(-1, (HEADS, HEADDIM)), dt, t["A"],
                              B.unflatten(-1, (GROUPS, STATE)), C.unflatten(-1, (GROUPS, STATE)),
                              D=t["D"], z=None if rmsnorm else z4, dt_bias=t["dt_bias"],
                              softplus=True, limit=limit, h0=h0)
    y = y.flatten(-2)
    if rmsnorm:
        y = rms_reference(y, t["rmsnorm_weight"], 1e-6, z=z, group_size=DIM // GROUPS,
                          norm_before_gate=norm_before_gate)
    if extra:
        x0, z0 = zx0.chunk(2, dim=-1)
        y = torch.cat([F.silu(x0) * z0, y], -1)
    return y @ t["outproj_weight"].double().T + t["outproj_bias"].double(), final


def _split_call(t, extra, rmsnorm, **options):
    return mamba_fused.mamba_split_conv1d_scan_combined(
        t["zxbcdt"], t["conv1d_weight"], t["conv1d_bias"], t["dt_bias"], t["A"], t["D"], 64,
        rmsnorm_weight=t["rmsnorm_weight"] if rmsnorm else None,
        outproj_weight=t["outproj_weight"], outproj_bias=t["outproj_bias"], headdim=None,
        ngroups=GROUPS, **options)


def test_split_conv1d_scan_matches_the_reference_forward_and_backward():
    """Gated grouped RMSNorm, a swiglu part (d_nonssm = 3) and the output projection."""
    t = split_inputs(seed=2, extra=3)
    names = [n for n in t if n != "h0"]
    ours = {n: t[n].clone().requires_grad_() for n in names}
    ref = {n: t[n].double().requires_grad_() for n in names}
    out = _split_call(ours, 3, True)
    expected, _ = split_reference(ref, 3, True)
    assert out.shape == (2, 11, 7)
    torch.testing.assert_close(out.double(), expected, atol=TOLERANCE, rtol=TOLERANCE)
    _assert_gradients(out, expected, ours, ref)


def test_split_conv1d_scan_z_gate_limit_and_states():
    """No RMSNorm (out * silu(z)), dt_limit, initial states and the final states returned."""
    t = split_inputs(seed=3)
    out, final = _split_call(t, 0, False, initial_states=t["h0"], dt_limit=(0.05, 1.5),
                             return_final_states=True)
    expected, expected_final = split_reference(t, 0, False, limit=(0.05, 1.5), h0=t["h0"])
    assert final.shape == (2, HEADS, HEADDIM, STATE) and final.dtype == torch.float32
    torch.testing.assert_close(out.double(), expected, atol=TOLERANCE, rtol=TOLERANCE)
    torch.testing.assert_close(final.double(), expected_final, atol=TOLERANCE, rtol=TOLERANCE)


def test_split_conv1d_scan_norm_after_gate_and_seq_idx_restart():
    """norm_before_gate=False, and seq_idx: a row of two sequences equals each run alone."""
    t = split_inputs(seed=4, batch=1, length=11)
    seq_idx = torch.tensor([[0] * 5 + [1] * 6], dtype=torch.int32)
    out = _split_call(t, 0, True, norm_before_gate=False, seq_idx=seq_idx)
    for start, end in ((0, 5), (5, 11)):
        piece = dict(t, zxbcdt=t["zxbcdt"][:, start:end])
        expected, _ = split_reference(piece, 0, True, norm_before_gate=False)
        torch.testing.assert_close(out[:, start:end].double(), expected, atol=TOLERANCE,
                                   rtol=TOLERANCE)


@pytest.mark.parametrize("call, error, message", [
    (lambda: _split_call(dict(split_inputs(5), zxbcdt=split_inputs(5)["zxbcdt"][..., 1:]), 0,
                         True), ValueError, "zxbcdt must have"),
    (lambda: _split_call(dict(split_inputs(5), D=torch.zeros(HEADS)), 0, True), ValueError,
     "headdim must be a positive int"),
    (lambda: _split_call(dict(split_inputs(5), dt_bias=torch.zeros(3)), 0, True), ValueError,
     r"dt_bias must have shape \(4,\)"),
    (lambda: _split_call(split_inputs(5), 0, True, activation="gelu"), ValueError,
     "activation"),
    (lambda: _inner_call(dict(inner_inputs(6), A=torch.zeros(6, 8, dtype=torch.complex64)),
                         False), NotImplementedError, "real A only"),
    (lambda: _inner_call(dict(inner_inputs(6), delta_bias=torch.zeros(5)), False), ValueError,
     r"delta_bias must have shape \(6,\)"),
    (lambda: _inner_call(dict(inner_inputs(6), dt_rms_weight=torch.ones(8)), True),
     ValueError, r"dt_rms_weight must have shape \(6,\)"),
    (lambda: _inner_call(dict(inner_inputs(6), B_proj_bias=torch.ones(6)), False),
     ValueError, r"B_proj_bias must have shape \(8,\)"),
    (lambda: _inner_call(dict(inner_inputs(6), x_proj_weight=torch.zeros(18, 6)), False),
     ValueError, r"x_proj_weight must have shape \[r \+ 2n, d\] = \(19, 6\)"),
])
def test_bad_arguments_give_one_line_errors(call, error, message):
    with pytest.raises(error, match=message) as raised:
        call()
    assert "\n" not in str(raised.value)


# mamba_ssm 2.3 (ops/selective_scan_interface.py, ops/triton/ssd_combined.py)
ORIGINAL_SIGNATURES = {
    "mamba_inner_fn":
        "(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, out_proj_weight, "
        "out_proj_bias, A, B=None, C=None, D=None, delta_bias=None, B_proj_bias=None, "
        "C_proj_bias=None, delta_softplus=True, checkpoint_lvl=1, b_rms_weight=None, "
        "c_rms_weight=None, dt_rms_weight=None, b_c_dt_rms_eps=1e-06)",
    "mamba_split_conv1d_scan_combined":
        "(zxbcdt, conv1d_weight, conv1d_bias, dt_bias, A, D, chunk_size, initial_states=None, "
        "seq_idx=None, dt_limit=(0.0, inf), return_final_states=False, activation='silu', "
        "rmsnorm_weight=None, rmsnorm_eps=1e-06, outproj_weight=None, outproj_bias=None, "
        "headdim=None, ngroups=1, norm_before_gate=True, state_dtype=None)",
}


@pytest.mark.parametrize("name", sorted(ORIGINAL_SIGNATURES))
def test_signature_is_the_originals(name):
    assert str(inspect.signature(getattr(mamba_fused, name))) == ORIGINAL_SIGNATURES[name]
