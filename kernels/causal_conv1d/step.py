"""``causal_conv1d_step``: one decoded token through the causal convolution, its state (the
last W - 1 inputs) shifted in place, with an optional state pool (continuous batching)."""
from __future__ import annotations

from typing import Any, Mapping

import torch
import triton
import triton.language as tl

from seqtune.checks import (expect_float, expect_shape, expect_state_indices, expect_state_pool,
                            expect_step_tensors, expect_tensor)
from seqtune.launch import backend_options, launch, new_output
from seqtune.loader import config_for
from seqtune.spec import dtype_name

from seqtune.kernels.causal_conv1d.op import ACTIVATIONS, WIDTHS


@triton.jit
def causal_conv1d_step_kernel(x, weight, bias, state, state_indices, y, D, N,
                              stride_xb, stride_xd, stride_wd, stride_ww, stride_bias,
                              stride_sn, stride_sd, stride_sw, stride_yb, stride_yd,
                              W: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr,
                              HAS_INDICES: tl.constexpr, BD: tl.constexpr):
    """Grid (B, cdiv(D, BD)). Each state column is loaded as a [BD] vector in the layout of
    every other, so the thread that reads column c of a channel is the one that writes it to
    column c - 1: the in-place shift needs no barrier."""
    batch = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BD + tl.arange(0, BD)
    col_offsets = cols.to(tl.int64)
    if HAS_INDICES:
        row = tl.load(state_indices + batch).to(tl.int64)
    else:
        row = batch
    # A row outside [0, N) (a negative one: a padding slot) masks every load and store off:
    # its output is zero and no state is touched. (The row is broadcast before the
    # comparison: the interpreter rejects a mask made from a scalar condition.)
    row_cols = tl.zeros_like(col_offsets) + row
    mask = (cols < D) & (row_cols >= 0) & (row_cols < N)
    x_now = tl.load(x + batch * stride_xb + col_offsets * stride_xd, mask=mask, other=0.0)
    last_tap = tl.load(weight + col_offsets * stride_wd + (W - 1) * stride_ww, mask=mask,
                       other=0.0).to(tl.float32)
    z = x_now.to(tl.float32) * last_tap
    if HAS_BIAS:
        z += tl.load(bias + col_offsets * stride_bias, mask=mask, other=0.0).to(tl.float32)
    state_row = state + row * stride_sn + col_offsets * stride_sd
    for c in tl.static_range(W - 1):
        column = tl.load(state_row + c * stride_sw, mask=mask, other=0.0)
        tap = tl.load(weight + col_offsets * stride_wd + c * stride_ww, mask=mask,
                      other=0.0).to(tl.float32)
        z += column.to(tl.float32) * tap
        if c > 0:
            tl.store(state_row + (c - 1) * stride_sw, column, mask=mask)
    tl.store(state_row + (W - 2) * stride_sw, x_now.to(state.dtype.element_ty), mask=mask)
    if SILU:
        z = z * tl.sigmoid(z)
    tl.store(y + batch * stride_yb + col_offsets * stride_yd, z.to(y.dtype.element_ty),
             mask=cols < D)


def causal_conv1d_step(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                       *, activation: str | None = None, state: torch.Tensor,
                       state_indices: torch.Tensor | None = None,
                       config: Mapping[str, Any] | None = None) -> torch.Tensor:
    """One token of ``causal_conv1d``: y = act(bias + weight[:, :W-1] . state + weight[:, W-1] x),
    then the state drops its oldest column and appends x, in place.

    Args:
        x: ``[B, D]`` float32, float16 or bfloat16 (any strides).
        weight: ``[D, W]`` with W in 2..8; bias: ``[D]``; any float dtype.
        activation: None, ``"silu"`` or ``"swish"``.
        state: ``[N, D, W - 1]``, any float dtype, updated in place (oldest column first, as
            ``causal_conv1d``'s initial and final states): not requiring grad, with its own
            memory (no stride-0 or expanded pool); an input that is a view of it is undefined
            (and refused when it shares the pool's storage).
        state_indices: int32/int64 ``[B]``: batch element i owns row ``state_indices[i]`` (a
            state pool); rows must be distinct and < N; a negative index marks a padding slot
            (vLLM's PAD_SLOT_ID, SGLang's: zero output, no state touched). Without it N == B.
            Checked on the device on CUDA (no host read: a CUDA graph replays for any
            assignment).
        config: a (partial) config of the ``causal_conv1d_step`` spec; None: the tuned one.

    Returns ``y [B, D]`` in x's dtype (fp32 accumulation).
    """
    _check_arguments(x, weight, bias, activation, state, state_indices)
    batch, channels = x.shape
    width = weight.shape[1]
    y = new_output((batch, channels), x.dtype, x.device)
    if y.numel() == 0:
        return y
    problem = {"B": batch, "D": channels, "W": width, "has_bias": bias is not None,
               "silu": activation is not None, "dtype": dtype_name(x.dtype)}
    cfg = config_for("causal_conv1d_step", problem, config)
    indices = state_indices.contiguous() if state_indices is not None else x
    launch(causal_conv1d_step_kernel, (batch, triton.cdiv(channels, cfg["BD"])),
           x, weight, bias if bias is not None else x, state, indices, y, channels,
           state.shape[0],
           *x.stride(), *weight.stride(), bias.stride(0) if bias is not None else 0,
           *state.stride(), *y.stride(), W=width, HAS_BIAS=bias is not None,
           SILU=activation is not None, HAS_INDICES=state_indices is not None, BD=cfg["BD"],
           num_warps=cfg["num_warps"], **backend_options(cfg))
    return y


def _check_arguments(x, weight, bias, activation, state, state_indices) -> None:
    expect_tensor("x", x, 2)
    expect_float("x", x)
    expect_tensor("weight", weight, 2)
    expect_float("weight", weight)
    batch, channels = x.shape
    width = weight.shape[1]
    if width not in WIDTHS:
        raise ValueError(f"weight has width W={width} (shape {tuple(weight.shape)}); "
                         f"causal_conv1d_step supports W in 2..8")
    expect_shape("weight", weight, (channels, width))
    if bias is not None:
        expect_tensor("bias", bias, 1)
        expect_float("bias", bias)
        expect_shape("bias", bias, (channels,))
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be None, 'silu' or 'swish', got {activation!r}")
    expect_tensor("state", state, 3)
    expect_float("state", state)
    pool = state.shape[0]
    expect_shape("state", state, (pool if state_indices is not None else batch, channels,
                                  width - 1))
    if state_indices is not None:
        _check_indices(state_indices, batch)
    inputs = {"x": x, "weight": weight, "bias": bias, "state_indices": state_indices}
    expect_step_tensors(inputs | {"state": state})
    expect_state_pool(state, inputs)
    if state_indices is not None:
        expect_state_indices(state_indices, pool)


def _check_indices(state_indices: Any, batch: int) -> None:
    """int [B] (their values are checked after the devices)."""
    expect_tensor("state_indices", state_indices, 1)
    if state_indices.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"state_indices must be int32 or int64, got "
                         f"{str(state_indices.dtype).removeprefix('torch.')}")
    expect_shape("state_indices", state_indices, (batch,))
