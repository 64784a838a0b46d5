"""The selective_scan op: argument checks, config choice, and the plain or differentiable
launch."""
from __future__ import annotations

from typing import Any, Mapping

import torch

from seqtune.checks import (expect_float, expect_same_device, expect_same_dtype, expect_shape,
                            expect_tensor)
from seqtune.custom_ops import encode_config, expect_tensors, forward_config
from seqtune.spec import dtype_name

from seqtune.kernels.selective_scan.forward import run_forward

# The backward holds all n states of a channel in one program (as Mamba's kernels do).
MAX_BWD_STATE_DIM = 256


def selective_scan(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                   C: torch.Tensor, D: torch.Tensor | None = None, z: torch.Tensor | None = None,
                   delta_bias: torch.Tensor | None = None, delta_softplus: bool = False,
                   return_last_state: bool = False, config: Mapping[str, Any] | None = None,
                   bwd_config: Mapping[str, Any] | None = None, *,
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
    When grad is enabled and a tensor argument requires grad, the op is differentiable (n up to
    256) with the ``selective_scan_bwd`` config (``bwd_config`` overrides it, as ``config`` the
    forward's).
    """
    tensors = {"u": u, "delta": delta, "A": A, "B": B, "C": C}
    optional = {"D": D, "z": z, "delta_bias": delta_bias, "initial_state": initial_state}
    expect_tensors(tensors, optional)
    if (torch.is_grad_enabled() and A.dim() == 2 and A.shape[1] > MAX_BWD_STATE_DIM
            and any(t is not None and t.requires_grad for t in (*tensors.values(),
                                                                *optional.values()))):
        raise ValueError(f"selective_scan's backward supports n <= {MAX_BWD_STATE_DIM}, "
                         f"got n={A.shape[1]}")
    y, last_state = torch.ops.seqtune.selective_scan(
        u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus), initial_state,
        encode_config("config", config), encode_config("bwd_config", bwd_config))
    return (y, last_state) if return_last_state else y


def selective_scan_forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state,
                           config, bwd_config=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The op's implementation (``torch.ops.seqtune.selective_scan``): checks, config, launch;
    ``(y, last_state)``."""
    _check_arguments(u, delta, A, B, C, D, z, delta_bias, initial_state)
    problem = problem_of(u, A, B, D, z, delta_bias, delta_softplus, initial_state)
    # An empty problem launches nothing.
    cfg = forward_config("selective_scan", problem, config, bwd_config) if u.numel() else {}
    return run_forward(problem, cfg, u, delta, A, B, C, D, z, delta_bias, initial_state)


def problem_of(u, A, B, D, z, delta_bias, delta_softplus, initial_state) -> dict[str, Any]:
    """The problem (as specs and profiles key it) of checked arguments."""
    batch, channels, length = u.shape
    return {"b": batch, "d": channels, "L": length, "n": A.shape[1],
            "groups": B.shape[1] if B.dim() == 4 else 1, "has_z": z is not None,
            "has_D": D is not None, "has_delta_bias": delta_bias is not None,
            "delta_softplus": bool(delta_softplus), "has_initial_state": initial_state is not None,
            "dtype": dtype_name(u.dtype)}


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
