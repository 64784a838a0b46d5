"""``selective_scan_step``: one decoded token of Mamba's selective scan (what mamba_ssm's
``selective_state_update`` does in its 2-D layout), the state pool updated in place.

Per batch element b, channel c (of B/C group c // (d / g)) and its state row
x = state[state_indices[b], c] (or state[b, c])::

    delta <- softplus(delta + delta_bias);  x <- exp(delta A_c) x + delta u B;
    y = C . x + D u;  y *= silu(z)

A program owns BD channels of one batch element and walks the n states in BN tiles: each state
tile is read and written once, and its C . x is accumulated in fp32 before the D skip and the
gate finish y. Every tensor is addressed through its strides (no copies; a strided state is
updated where it lies).
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
import triton
import triton.language as tl

from seqtune.checks import (expect_float, expect_same_dtype, expect_shape, expect_state_indices,
                            expect_state_pool, expect_step_tensors, expect_tensor)
from seqtune.launch import backend_options, launch, new_output
from seqtune.loader import config_for
from seqtune.spec import dtype_name

from seqtune.kernels.selective_scan.kernel import softplus

KERNEL = "selective_scan_step"


@triton.jit
def selective_scan_step_kernel(
        u, delta, A, B, C, D, z, delta_bias, state, state_indices, y, d, n, channels_per_group, N,
        stride_u_batch, stride_u_channel, stride_delta_batch, stride_delta_channel,
        stride_A_channel, stride_A_state, stride_B_batch, stride_B_group, stride_B_state,
        stride_C_batch, stride_C_group, stride_C_state, stride_D, stride_z_batch,
        stride_z_channel, stride_delta_bias, stride_state_row, stride_state_channel,
        stride_state_state, stride_indices, stride_y_batch, stride_y_channel,
        HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DELTA_BIAS: tl.constexpr,
        DELTA_SOFTPLUS: tl.constexpr, HAS_INDICES: tl.constexpr, BD: tl.constexpr,
        BN: tl.constexpr):
    """Grid (B, cdiv(d, BD)). A state index outside [0, N) (a negative one: a padding slot)
    masks every load of the program off, so its y is zero and no state row is read or
    written."""
    batch = tl.program_id(0).to(tl.int64)
    channels = tl.program_id(1) * BD + tl.arange(0, BD)
    if HAS_INDICES:
        row = tl.load(state_indices + batch * stride_indices).to(tl.int64)
    else:
        row = batch
    # (The row is broadcast before the comparison: the interpreter rejects a mask made from a
    # scalar condition.)
    row_channels = tl.zeros_like(channels).to(tl.int64) + row
    live = (channels < d) & (row_channels >= 0) & (row_channels < N)
    x_in = tl.load(u + batch * stride_u_batch + channels * stride_u_channel, mask=live,
                   other=0.0).to(tl.float32)
    step = tl.load(delta + batch * stride_delta_batch + channels * stride_delta_channel,
                   mask=live, other=0.0).to(tl.float32)
    if HAS_DELTA_BIAS:
        step += tl.load(delta_bias + channels * stride_delta_bias, mask=live,
                        other=0.0).to(tl.float32)
    if DELTA_SOFTPLUS:
        step = softplus(step)
    drive = step * x_in
    groups = channels // channels_per_group
    A_rows = A + channels[:, None] * stride_A_channel
    B_rows = B + batch * stride_B_batch + groups[:, None] * stride_B_group
    C_rows = C + batch * stride_C_batch + groups[:, None] * stride_C_group
    state_rows = state + row * stride_state_row + channels[:, None] * stride_state_channel
    out = tl.zeros([BD], dtype=tl.float32)
    for n0 in range(0, n, BN):
        states = n0 + tl.arange(0, BN)
        mask = live[:, None] & (states < n)[None, :]
        cells = state_rows + states[None, :] * stride_state_state
        x = tl.load(cells, mask=mask, other=0.0)
        decay = tl.load(A_rows + states[None, :] * stride_A_state, mask=mask,
                        other=0.0).to(tl.float32)
        B_tile = tl.load(B_rows + states[None, :] * stride_B_state, mask=mask,
                         other=0.0).to(tl.float32)
        C_tile = tl.load(C_rows + states[None, :] * stride_C_state, mask=mask,
                         other=0.0).to(tl.float32)
        x = tl.exp(step[:, None] * decay) * x + drive[:, None] * B_tile
        tl.store(cells, x, mask=mask)
        out += tl.sum(x * C_tile, axis=1)
    if HAS_D:
        out += tl.load(D + channels * stride_D, mask=live, other=0.0).to(tl.float32) * x_in
    if HAS_Z:
        gate = tl.load(z + batch * stride_z_batch + channels * stride_z_channel, mask=live,
                       other=0.0).to(tl.float32)
        out *= gate * tl.sigmoid(gate)
    tl.store(y + batch * stride_y_batch + channels * stride_y_channel,
             out.to(y.dtype.element_ty), mask=channels < d)


def selective_scan_step(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                        C: torch.Tensor, *, state: torch.Tensor, D: torch.Tensor | None = None,
                        z: torch.Tensor | None = None, delta_bias: torch.Tensor | None = None,
                        delta_softplus: bool = False,
                        state_indices: torch.Tensor | None = None,
                        config: Mapping[str, Any] | None = None) -> torch.Tensor:
    """One token of ``selective_scan`` per batch element; ``state`` is updated in place.

    Args:
        u, delta, z: [B, d] in one float dtype (z optional: y *= silu(z)).
        A: [d, n] (real); D, delta_bias: [d]; each float32 or u's dtype.
        B, C: [B, n], or grouped [B, g, n] with g dividing d (channel c reads group
            c // (d / g)), in u's dtype.
        state: [N, d, n] float32 (any strides): row state[state_indices[i]] (or state[i]
            without indices, then N == B) is element i's state, overwritten with the state
            after this token. Two elements must not share a row. Not requiring grad, with its
            own memory (no stride-0 or expanded pool); an input that is a view of it is
            undefined (and refused when it shares the pool's storage).
        delta_softplus: delta <- softplus(delta + delta_bias) when set (delta + delta_bias
            otherwise).
        state_indices: int32/int64 [B], distinct, each < N (a state pool, as continuous
            batching keeps it); a negative index marks a padding slot (vLLM's PAD_SLOT_ID,
            SGLang's): its output is zero and no state is touched. Checked on the device on
            CUDA (no host read: a CUDA graph replays for any assignment).
        config: knobs of the ``selective_scan_step`` spec; None takes the tuned config.

    Returns:
        y: [B, d] in u's dtype (fp32 arithmetic), as ``selective_scan`` gives for one step
        from the same state.
    """
    _check_arguments(u, delta, A, B, C, D, z, delta_bias, state, state_indices)
    batch, channels = u.shape
    y = new_output((batch, channels), u.dtype, u.device)
    if y.numel() == 0:
        return y
    problem = problem_of(u, A, B, D, z, delta_bias, delta_softplus, state_indices)
    cfg = config_for(KERNEL, problem, config)
    # 2-D B/C read as one group with a zero group stride.
    B_strides = B.stride() if B.dim() == 3 else (B.stride(0), 0, B.stride(1))
    C_strides = C.stride() if C.dim() == 3 else (C.stride(0), 0, C.stride(1))
    unread = u  # stands in for an absent tensor; its flag keeps the kernel from reading it
    launch(selective_scan_step_kernel, (batch, triton.cdiv(channels, cfg["BD"])),
           u, delta, A, B, C, unread if D is None else D, unread if z is None else z,
           unread if delta_bias is None else delta_bias, state,
           unread if state_indices is None else state_indices, y,
           channels, A.shape[1], channels // problem["groups"], state.shape[0],
           *u.stride(), *delta.stride(), *A.stride(), *B_strides, *C_strides,
           0 if D is None else D.stride(0), *(z.stride() if z is not None else (0, 0)),
           0 if delta_bias is None else delta_bias.stride(0), *state.stride(),
           0 if state_indices is None else state_indices.stride(0), *y.stride(),
           HAS_D=D is not None, HAS_Z=z is not None, HAS_DELTA_BIAS=delta_bias is not None,
           DELTA_SOFTPLUS=problem["delta_softplus"], HAS_INDICES=state_indices is not None,
           BD=cfg["BD"], BN=cfg["BN"], num_warps=cfg["num_warps"], **backend_options(cfg))
    return y


def problem_of(u, A, B, D, z, delta_bias, delta_softplus, state_indices) -> dict[str, Any]:
    """The problem (as the spec and profiles key it) of checked arguments."""
    batch, channels = u.shape
    return {"B": batch, "d": channels, "n": A.shape[1],
            "groups": B.shape[1] if B.dim() == 3 else 1, "has_z": z is not None,
            "has_D": D is not None, "has_delta_bias": delta_bias is not None,
            "delta_softplus": bool(delta_softplus), "indexed": state_indices is not None,
            "dtype": dtype_name(u.dtype)}


def _check_arguments(u, delta, A, B, C, D, z, delta_bias, state, state_indices) -> None:
    """Everything before any launch, as one-line errors naming the argument at fault."""
    expect_tensor("u", u, 2)
    batch, channels = u.shape
    expect_tensor("A", A, 2)
    if A.shape[0] != channels or A.shape[1] < 1:
        raise ValueError(f"A must have shape ({channels}, n) with n >= 1, got {tuple(A.shape)}")
    state_dim = A.shape[1]
    bc_shape = _bc_shape(B, batch, state_dim)
    groups = bc_shape[1] if len(bc_shape) == 3 else 1
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
    parameters = {"A": A, "D": D, "delta_bias": delta_bias}
    for name, parameter in parameters.items():
        if parameter is not None:
            if name != "A":
                expect_tensor(name, parameter, 1)
                expect_shape(name, parameter, (channels,))
            expect_float(name, parameter, tuple(dict.fromkeys((u.dtype, torch.float32))))
    expect_tensor("state", state, 3)
    if tuple(state.shape[1:]) != (channels, state_dim):
        raise ValueError(f"state must have shape (N, {channels}, {state_dim}), "
                         f"got {tuple(state.shape)}")
    expect_float("state", state, (torch.float32,))
    _check_indices(state_indices, batch, state.shape[0])
    inputs = {**streams, **parameters, "state_indices": state_indices}
    expect_step_tensors({**inputs, "state": state})
    expect_state_pool(state, inputs)
    if state_indices is not None:
        expect_state_indices(state_indices, state.shape[0])


def _bc_shape(B: Any, batch: int, state_dim: int) -> tuple[int, ...]:
    """The shape B and C must have: [B, n], or [B, g, n] when B is 3-D."""
    if not isinstance(B, torch.Tensor):
        raise TypeError(f"B must be a torch.Tensor, got {type(B).__name__}")
    if B.dim() == 3:
        return (batch, B.shape[1], state_dim)
    if B.dim() == 2:
        return (batch, state_dim)
    raise ValueError(f"B must have 2 ([B, n]) or 3 ([B, g, n]) dimensions, "
                     f"got shape {tuple(B.shape)}")


def _check_indices(state_indices: Any, batch: int, rows: int) -> None:
    """int [B] (their values are checked after the devices); without them N == B."""
    if state_indices is None:
        if rows != batch:
            raise ValueError(f"state has {rows} rows but the batch is {batch}; pass "
                             f"state_indices to use a state pool")
        return
    expect_tensor("state_indices", state_indices, 1)
    if state_indices.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"state_indices must be int32 or int64, got "
                        f"{str(state_indices.dtype).removeprefix('torch.')}")
    expect_shape("state_indices", state_indices, (batch,))
