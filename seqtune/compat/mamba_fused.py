"""mamba_ssm 2.3's fused layer functions on seqtune's kernels: ``mamba_inner_fn`` (a Mamba-1
layer after its input projection: causal conv, x/dt projections, selective scan, output
projection; Falcon-Mamba trains through it) and ``mamba_split_conv1d_scan_combined`` (a Mamba-2
layer after its input projection: split, causal conv, SSD, gated RMSNorm, output projection).

Built as mamba_ssm's references build them (``mamba_inner_ref``,
``mamba_split_conv1d_scan_ref``): the convolution on ``seqtune.compat.causal_conv1d``, the scans
on ``seqtune.compat.mamba_ssm``, the projections and norms in PyTorch (norms in float32).
mamba_ssm's arguments, defaults and return values; differentiable through PyTorch autograd (no
fused backward: activations are kept, ``checkpoint_lvl`` changes nothing).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from seqtune.checks import expect_shape, expect_tensor
from seqtune.compat.causal_conv1d import causal_conv1d_fn
from seqtune.compat.mamba_ssm import _refuse, mamba_chunk_scan_combined, selective_scan_fn

ACTIVATIONS = (None, "silu", "swish")


def _rms_norm(x, weight, eps, z=None, group_size=None, norm_before_gate=True):
    """mamba_ssm's (gated) RMSNorm over the last axis, or over groups of ``group_size`` of it,
    in float32: x / rms(x) * weight, gated by silu(z) after the norm (``norm_before_gate``) or
    before it. In x's dtype."""
    out = x.float()
    if z is not None and not norm_before_gate:
        out = out * F.silu(z.float())
    groups = out.shape[-1] // (group_size or out.shape[-1])
    grouped = out.unflatten(-1, (groups, -1))
    grouped = grouped * torch.rsqrt(grouped.square().mean(-1, keepdim=True) + eps)
    out = grouped.flatten(-2) * weight.float()
    if z is not None and norm_before_gate:
        out = out * F.silu(z.float())
    return out.to(x.dtype)


def _projected(x_dbl, start, size, bias, rms_weight, eps, batch, length):
    """B or C ([b, n, L]) from columns [start, start + size) of the projection (b L, *)."""
    part = x_dbl[:, start:start + size]
    if bias is not None:
        part = part + bias.to(part.dtype)
    if rms_weight is not None:
        part = _rms_norm(part, rms_weight, eps)
    return part.reshape(batch, length, size).transpose(1, 2)


def mamba_inner_fn(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight,
                   out_proj_weight, out_proj_bias, A, B=None, C=None, D=None, delta_bias=None,
                   B_proj_bias=None, C_proj_bias=None, delta_softplus=True, checkpoint_lvl=1,
                   b_rms_weight=None, c_rms_weight=None, dt_rms_weight=None,
                   b_c_dt_rms_eps=1e-6):
    """mamba_ssm's ``mamba_inner_fn``: out = out_proj(selective_scan(x, dt, A, B, C, D, z))
    with x = silu(causal_conv1d(x)), ``(x, z) = xz.chunk(2, dim=1)``, and dt, B, C from
    ``x_proj`` of x (dt through ``delta_proj``).

    xz ``[b, 2d, L]``; conv1d_weight ``[d, 1, W]`` (W 2..8), conv1d_bias ``[d]``;
    x_proj_weight ``[r + 2n, d]``; delta_proj_weight ``[d, r]``; out_proj_weight ``[o, d]``,
    out_proj_bias ``[o]``; A ``[d, n]`` real; B, C None (from x_proj, plus ``B_proj_bias`` /
    ``C_proj_bias`` ``[n]``) or given as ``selective_scan_fn`` takes them; D, delta_bias
    ``[d]``; ``b_rms_weight``, ``c_rms_weight`` ``[n]`` and ``dt_rms_weight`` ``[d]``
    (Falcon-Mamba): RMSNorm of B, C and dt (before ``delta_bias``) with ``b_c_dt_rms_eps``.
    Returns ``out [b, L, o]``, differentiable in every tensor. Not supported: complex A.
    """
    function = "mamba_inner_fn"
    if checkpoint_lvl not in (0, 1):
        raise ValueError(f"{function}: checkpoint_lvl must be 0 or 1, got {checkpoint_lvl!r}")
    expect_tensor("A", A, 2)
    if A.is_complex():
        _refuse(function, "A", A, "real A only")
    expect_tensor("xz", xz, 3)
    batch, channels, length = xz.shape
    if channels % 2:
        raise ValueError(f"{function}: xz must have 2 d channels (x and z), got shape "
                         f"{tuple(xz.shape)}")
    dim, state = channels // 2, A.shape[1]
    expect_shape("A", A, (dim, state))
    expect_tensor("conv1d_weight", conv1d_weight, 3)
    expect_shape("conv1d_weight", conv1d_weight, (dim, 1, conv1d_weight.shape[2]))
    expect_tensor("delta_proj_weight", delta_proj_weight, 2)
    rank = delta_proj_weight.shape[1]
    expect_shape("delta_proj_weight", delta_proj_weight, (dim, rank))
    expect_tensor("x_proj_weight", x_proj_weight, 2)
    if x_proj_weight.shape[1] != dim or (B is None and C is None
                                         and x_proj_weight.shape[0] != rank + 2 * state):
        raise ValueError(f"{function}: x_proj_weight must have shape [r + 2n, d] = "
                         f"{(rank + 2 * state, dim)}, got {tuple(x_proj_weight.shape)}")
    for name, tensor, size in (("B_proj_bias", B_proj_bias, state),
                               ("C_proj_bias", C_proj_bias, state),
                               ("b_rms_weight", b_rms_weight, state),
                               ("c_rms_weight", c_rms_weight, state),
                               ("dt_rms_weight", dt_rms_weight, dim)):
        if tensor is not None:
            expect_tensor(name, tensor, 1)
            expect_shape(name, tensor, (size,))
    x, z = xz.chunk(2, dim=1)
    x = causal_conv1d_fn(x, conv1d_weight[:, 0], conv1d_bias, activation="silu")
    x_dbl = F.linear(x.transpose(1, 2).reshape(batch * length, dim), x_proj_weight)
    delta = x_dbl[:, :rank] @ delta_proj_weight.t()  # [b L, d]
    if dt_rms_weight is not None:
        delta = _rms_norm(delta, dt_rms_weight, b_c_dt_rms_eps)
    delta = delta.reshape(batch, length, dim).transpose(1, 2)
    if B is None:
        B = _projected(x_dbl, rank, state, B_proj_bias, b_rms_weight, b_c_dt_rms_eps, batch,
                       length)
    if C is None:
        C = _projected(x_dbl, x_dbl.shape[1] - state, state, C_proj_bias, c_rms_weight,
                       b_c_dt_rms_eps, batch, length)
    y = selective_scan_fn(x, delta, A, B, C, D, z=z, delta_bias=delta_bias,
                          delta_softplus=delta_softplus)
    return F.linear(y.transpose(1, 2), out_proj_weight, out_proj_bias)


def _split_sizes(function, zxbcdt, conv1d_weight, D, headdim, ngroups):
    """(d_nonssm, dim, state, heads, headdim) of mamba_ssm's packed projection
    ``[z0 x0 | z | x B C | dt]``."""
    expect_tensor("zxbcdt", zxbcdt, 3)
    expect_tensor("conv1d_weight", conv1d_weight, 2)
    if not isinstance(D, torch.Tensor) or D.dim() not in (1, 2):
        shown = tuple(D.shape) if isinstance(D, torch.Tensor) else type(D).__name__
        raise ValueError(f"{function}: D must be a tensor [nheads, headdim] or [nheads], got "
                         f"{shown}")
    if D.dim() == 1:
        if isinstance(headdim, bool) or not isinstance(headdim, int) or headdim < 1:
            raise ValueError(f"{function}: headdim must be a positive int when D is [nheads], "
                             f"got {headdim!r}")
        heads = D.shape[0]
    else:
        heads, headdim = D.shape
    if isinstance(ngroups, bool) or not isinstance(ngroups, int) or ngroups < 1 or (
            heads % ngroups):
        raise ValueError(f"{function}: ngroups must be a positive int dividing nheads={heads}, "
                         f"got {ngroups!r}")
    dim = heads * headdim
    state = (conv1d_weight.shape[0] - dim) // ngroups // 2
    if state < 1 or conv1d_weight.shape[0] != dim + 2 * ngroups * state:
        raise ValueError(f"{function}: conv1d_weight must have dim + 2 ngroups dstate rows "
                         f"(dim={dim}, ngroups={ngroups}), got shape "
                         f"{tuple(conv1d_weight.shape)}")
    extra = zxbcdt.shape[-1] - 2 * dim - 2 * ngroups * state - heads
    if extra < 0 or extra % 2:
        raise ValueError(f"{function}: zxbcdt must have 2 d_nonssm + 2 dim + 2 ngroups dstate "
                         f"+ nheads = {2 * dim + 2 * ngroups * state + heads} (+ 2 d_nonssm) "
                         f"channels, got shape {tuple(zxbcdt.shape)}")
    return extra // 2, dim, state, heads, headdim


def mamba_split_conv1d_scan_combined(zxbcdt, conv1d_weight, conv1d_bias, dt_bias, A, D,
                                     chunk_size, initial_states=None, seq_idx=None,
                                     dt_limit=(0.0, float("inf")), return_final_states=False,
                                     activation="silu", rmsnorm_weight=None, rmsnorm_eps=1e-6,
                                     outproj_weight=None, outproj_bias=None, headdim=None,
                                     ngroups=1, norm_before_gate=True, state_dtype=None):
    """mamba_ssm's ``mamba_split_conv1d_scan_combined`` (a Mamba-2 layer after in_proj).

    zxbcdt ``[b, L, 2 d_nonssm + 2 dim + 2 ngroups dstate + nheads]`` (dim = nheads headdim)
    splits into ``z0 x0 | z | xBC | dt``; xBC goes through the causal conv (conv1d_weight
    ``[dim + 2 ngroups dstate, W]``, conv1d_bias, ``activation`` None/"silu"/"swish", restarting
    at ``seq_idx`` changes), then SSD (``mamba_chunk_scan_combined`` with dt_bias ``[nheads]``,
    A ``[nheads]``, D ``[nheads, headdim]`` or ``[nheads]`` with ``headdim``, softplus dt
    clamped to ``dt_limit``, initial_states ``[b, nheads, headdim, dstate]``). Without
    ``rmsnorm_weight`` the output is gated by silu(z); with it ``RMSNorm(y) * silu(z)``
    (``norm_before_gate``, else ``RMSNorm(y * silu(z))``) over groups of dim / ngroups, in
    float32. ``silu(x0) * z0`` is prepended when d_nonssm > 0; ``outproj_weight`` ``[o, *]``
    and ``outproj_bias`` project last. ``chunk_size`` is a request (the tuned config decides);
    ``state_dtype`` is accepted: seqtune's inter-chunk states are float32.

    Returns ``out [b, L, o or d_nonssm + dim]``, and with ``return_final_states`` also the
    final states ``[b, nheads, headdim, dstate]`` float32; differentiable.
    """
    function = "mamba_split_conv1d_scan_combined"
    if activation not in ACTIVATIONS:
        raise ValueError(f"{function}: activation must be None, 'silu' or 'swish', got "
                         f"{activation!r}")
    if outproj_weight is None and outproj_bias is not None:
        raise ValueError(f"{function}: outproj_bias needs outproj_weight")
    extra, dim, state, heads, headdim = _split_sizes(function, zxbcdt, conv1d_weight, D,
                                                     headdim, ngroups)
    zx0, z, xBC, dt = torch.split(zxbcdt, [2 * extra, dim, dim + 2 * ngroups * state, heads],
                                  dim=-1)
    xBC = causal_conv1d_fn(xBC.transpose(1, 2), conv1d_weight, conv1d_bias, seq_idx=seq_idx,
                           activation=activation).transpose(1, 2)
    x, B, C = torch.split(xBC, [dim, ngroups * state, ngroups * state], dim=-1)
    z = z.unflatten(-1, (heads, headdim))
    result = mamba_chunk_scan_combined(
        x.unflatten(-1, (heads, headdim)), dt, A, B.unflatten(-1, (ngroups, state)),
        C.unflatten(-1, (ngroups, state)), chunk_size, D=D,
        z=z if rmsnorm_weight is None else None, dt_bias=dt_bias,
        initial_states=initial_states, seq_idx=seq_idx, dt_softplus=True, dt_limit=dt_limit,
        return_final_states=return_final_states)
    y, final = result if return_final_states else (result, None)
    y = y.flatten(-2)
    if rmsnorm_weight is not None:
        expect_tensor("rmsnorm_weight", rmsnorm_weight, 1)
        expect_shape("rmsnorm_weight", rmsnorm_weight, (dim,))
        y = _rms_norm(y, rmsnorm_weight, rmsnorm_eps, z=z.flatten(-2), group_size=dim // ngroups,
                      norm_before_gate=norm_before_gate)
    if extra:
        x0, z0 = zx0.chunk(2, dim=-1)
        y = torch.cat([F.silu(x0) * z0, y], dim=-1)
    if outproj_weight is not None:
        y = F.linear(y, outproj_weight, outproj_bias)
    return (y, final) if return_final_states else y
