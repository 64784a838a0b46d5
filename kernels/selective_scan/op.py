"""The selective_scan op: argument checks, config choice and launches."""
from __future__ import annotations

from typing import Any, Mapping

import torch
import triton

from seqtune.checks import (expect_float, expect_same_device, expect_same_dtype, expect_shape,
                            expect_tensor)
from seqtune.launch import launch, new_output
from seqtune.loader import config_for
from seqtune.spec import dtype_name

from seqtune.kernels.linear_scan.interpreter import sliced_interpreter_scans
from seqtune.kernels.selective_scan.kernel import selective_scan_kernel, sum_state_tiles_kernel


def selective_scan(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                   C: torch.Tensor, D: torch.Tensor | None = None, z: torch.Tensor | None = None,
                   delta_bias: torch.Tensor | None = None, delta_softplus: bool = False,
                   return_last_state: bool = False, config: Mapping[str, Any] | None = None, *,
                   initial_state: torch.Tensor | None = None):
    """Mamba's selective scan, in Mamba's layout.

    u, delta, z: [b, d, L]; A: [d, n] (real); B, C: [b, n, L], or grouped [b, g, n, L] where
    channel c reads group c // (d / g); D, delta_bias: [d]. u, delta, B, C and z share one float
    dtype; A, D and delta_bias may be float32 or that dtype. initial_state: [b, d, n] of any
    float dtype (used in fp32), the state before the first step (zeros when None), so that a
    sequence can resume from a cached state: the last state of [0:t] continues into [t:L].

    delta += delta_bias, then softplus if ``delta_softplus``;
    x_t = exp(delta_t A) x_{t-1} + delta_t B_t u_t;  y_t = C_t . x_t + D u_t;  y *= silu(z).
    Accumulates in fp32. Returns y [b, d, L] in u's dtype, or (y, last_state [b, d, n] fp32).
    """
    groups = _check_arguments(u, delta, A, B, C, D, z, delta_bias, initial_state)
    batch, channels, length = u.shape
    y = new_output((batch, channels, length), u.dtype, u.device)
    last_state = new_output((batch, channels, A.shape[1]), torch.float32, u.device)
    if y.numel() == 0:  # no step: the state passes through unchanged
        last_state.copy_(initial_state) if initial_state is not None else last_state.zero_()
        return (y, last_state) if return_last_state else y
    problem = {"b": batch, "d": channels, "L": length, "n": A.shape[1], "groups": groups,
               "has_z": z is not None, "has_D": D is not None,
               "has_delta_bias": delta_bias is not None, "delta_softplus": bool(delta_softplus),
               "has_initial_state": initial_state is not None, "dtype": dtype_name(u.dtype)}
    cfg = config_for("selective_scan", problem, config)
    with sliced_interpreter_scans():
        _launch(cfg, problem, u, delta, A, B, C, D, z, delta_bias, initial_state, y, last_state)
    return (y, last_state) if return_last_state else y


def _launch(cfg, problem, u, delta, A, B, C, D, z, delta_bias, initial_state, y,
            last_state) -> None:
    """The scan, then (when the states are split over programs) the sum over state tiles."""
    u, delta, A = _unit_stride_last(u), _unit_stride_last(delta), _unit_stride_last(A)
    z = _unit_stride_last(z) if z is not None else u  # unread when has_z is False
    # The kernels index the 1-D parameters by channel alone: a strided view must be copied.
    D = D.contiguous() if D is not None else u  # unread when has_D is False
    delta_bias = delta_bias.contiguous() if delta_bias is not None else u  # unread without a bias
    h0 = initial_state if initial_state is not None else last_state  # unread without one
    # One layout for both, contiguous: grouped [b, g, n, L], ungrouped as g = 1.
    B, C = (x.contiguous() if x.dim() == 4 else x.unsqueeze(1).contiguous() for x in (B, C))
    batch, channels, length, state_dim = problem["b"], problem["d"], problem["L"], problem["n"]
    state_tiles = triton.cdiv(state_dim, cfg["BLOCK_N"])
    out = y if state_tiles == 1 else new_output((state_tiles, batch, channels, length),
                                                torch.float32, u.device)
    channels_per_group = channels // problem["groups"]
    channel_tiles = triton.cdiv(channels, cfg["BLOCK_D"])
    flags = {"HAS_D": problem["has_D"], "HAS_Z": problem["has_z"]}
    launch(selective_scan_kernel, (channel_tiles, batch, state_tiles),
           u, delta, A, B, C, D, z, delta_bias, h0, out, last_state,
           channels, length, state_dim, channels_per_group,
           u.stride(0), u.stride(1), delta.stride(0), delta.stride(1), A.stride(0),
           B.stride(0), B.stride(1), B.stride(2), z.stride(0), z.stride(1),
           out.stride(0) if state_tiles > 1 else 0, out.stride(-3), out.stride(-2),
           h0.stride(0), h0.stride(1), h0.stride(2),
           **flags, HAS_DELTA_BIAS=problem["has_delta_bias"],
           HAS_INITIAL_STATE=problem["has_initial_state"],
           DELTA_SOFTPLUS=problem["delta_softplus"],
           TILE_IN_ONE_GROUP=channels_per_group % cfg["BLOCK_D"] == 0,
           ALL_STATES=state_tiles == 1, BLOCK_D=cfg["BLOCK_D"], BLOCK_N=cfg["BLOCK_N"],
           BLOCK_T=cfg["BLOCK_T"], num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    if state_tiles > 1:
        launch(sum_state_tiles_kernel,
               (channel_tiles, batch, triton.cdiv(length, cfg["BLOCK_T"])),
               out, u, D, z, y, channels, length, state_tiles, out.stride(0), out.stride(1),
               u.stride(0), u.stride(1), z.stride(0), z.stride(1), y.stride(0), **flags,
               BLOCK_D=cfg["BLOCK_D"], BLOCK_T=cfg["BLOCK_T"], num_warps=cfg["num_warps"])


def _check_arguments(u, delta, A, B, C, D, z, delta_bias, initial_state) -> int:
    """Validates everything before any launch; returns the number of B/C groups (1 when
    ungrouped)."""
    expect_tensor("u", u, 3)
    batch, channels, length = u.shape
    expect_tensor("A", A, 2)
    if A.shape[0] != channels or A.shape[1] < 1:
        raise ValueError(f"A must have shape ({channels}, n) with n >= 1, got {tuple(A.shape)}")
    bc_shape = _bc_shape(B, batch, A.shape[1], length)
    groups = bc_shape[1] if len(bc_shape) == 4 else 1
    if groups < 1 or channels % groups:
        raise ValueError(f"B has {groups} groups, which must divide d={channels}")
    streams = {"u": u, "delta": delta, "B": B, "C": C, "z": z}
    shapes = {"u": u.shape, "delta": u.shape, "B": bc_shape, "C": bc_shape, "z": u.shape}
    for name, tensor in streams.items():
        if tensor is not None:
            expect_tensor(name, tensor, len(shapes[name]))
            expect_shape(name, tensor, shapes[name])
            expect_float(name, tensor)
    expect_same_dtype({name: t for name, t in streams.items() if t is not None})
    for name, vector in (("D", D), ("delta_bias", delta_bias)):
        if vector is not None:
            expect_tensor(name, vector, 1)
            expect_shape(name, vector, (channels,))
    parameters = {"A": A, "D": D, "delta_bias": delta_bias}
    for name, parameter in parameters.items():
        if parameter is not None:
            expect_float(name, parameter, (u.dtype, torch.float32))
    if initial_state is not None:
        expect_tensor("initial_state", initial_state, 3)
        expect_shape("initial_state", initial_state, (batch, channels, A.shape[1]))
        expect_float("initial_state", initial_state)
        parameters["initial_state"] = initial_state
    expect_same_device({**streams, **parameters})
    return groups


def _bc_shape(B: Any, batch: int, state_dim: int, length: int) -> tuple[int, ...]:
    """The shape B and C must have: [b, n, L], or [b, g, n, L] when B is 4-D."""
    if not isinstance(B, torch.Tensor):
        raise TypeError(f"B must be a torch.Tensor, got {type(B).__name__}")
    if B.dim() == 4:
        return (batch, B.shape[1], state_dim, length)
    if B.dim() == 3:
        return (batch, state_dim, length)
    raise ValueError(f"B must have 3 ([b, n, L]) or 4 ([b, g, n, L]) dimensions, "
                     f"got shape {tuple(B.shape)}")


def _unit_stride_last(x: torch.Tensor) -> torch.Tensor:
    """The kernels address the last axis with unit stride; copy only if needed."""
    return x if x.stride(-1) == 1 else x.contiguous()
