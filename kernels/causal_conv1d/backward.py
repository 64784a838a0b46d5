"""Triton kernels of the causal convolution's backward pass, and their launches.

With z = bias + sum_j w_j ext[t - (W - 1) + j] and y = act(z), the upstream gradient dy gives
dz = dy * act'(z) (z recomputed from x: nothing but the inputs is saved), and

- dx[t] = sum_m w_{W-1-m} dz[t + m] over the m with t + m in t's sequence, plus the final
  state's gradient for the last W - 1 tokens of a sequence;
- dw[:, j] = sum_t dz[t] ext[t - (W - 1) + j] and dbias = sum_t dz[t]: per-tile fp32 partial
  sums, reduced afterwards in a fixed order (deterministic, no atomics);
- d initial_state[s, :, i] = sum_{j <= i} w_j dz[start + i - j] plus the final state's
  gradient where the sequence is shorter than W - 1.

The main kernel tiles (tokens, channels) like the forward; the state kernel runs once per
sequence and channel tile.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
import triton
import triton.language as tl

from seqtune.launch import backend_options, launch, new_output

from seqtune.kernels.causal_conv1d.kernels import (load_ext, preactivation, sequence_of_rows,
                                                   state_columns)


@triton.jit
def grad_preactivation(x_base, state, weight, bias, dy_base, positions, start, seq, cols, live,
                       col_mask, stride_xt, stride_xd, stride_sn, stride_sd, stride_sw,
                       stride_wd, stride_ww, stride_bias, stride_dyt, stride_dyd,
                       W: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_STATE: tl.constexpr,
                       SILU: tl.constexpr):
    """dz at ``positions`` (zero where not ``live``), fp32 [rows, BD]."""
    mask = live[:, None] & col_mask[None, :]
    offsets = ((positions.to(tl.int64) * stride_dyt)[:, None]
               + (cols.to(tl.int64) * stride_dyd)[None, :])
    dz = tl.load(dy_base + offsets, mask=mask, other=0.0).to(tl.float32)
    if SILU:
        z = preactivation(x_base, state, weight, bias, positions, start, seq, cols, live,
                          col_mask, stride_xt, stride_xd, stride_sn, stride_sd, stride_sw,
                          stride_wd, stride_ww, stride_bias, W, HAS_BIAS, HAS_STATE)
        gate = tl.sigmoid(z)
        dz = dz * gate * (1.0 + z * (1.0 - gate))
    return dz


@triton.jit
def causal_conv1d_bwd_kernel(x, weight, bias, initial_state, cu_seqlens, dy, dfinal,
                             dx, dw_partial, dbias_partial,
                             T, D, num_seqs, search_steps, tiles_t,
                             stride_xb, stride_xt, stride_xd, stride_wd, stride_ww, stride_bias,
                             stride_sn, stride_sd, stride_sw, stride_dyb, stride_dyt, stride_dyd,
                             stride_fn, stride_fd, stride_fw, stride_dxb, stride_dxt,
                             stride_dxd,
                             W: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_STATE: tl.constexpr,
                             SILU: tl.constexpr, VARLEN: tl.constexpr, HAS_DFINAL: tl.constexpr,
                             WANT_DX: tl.constexpr, WANT_DW: tl.constexpr, BT: tl.constexpr,
                             BD: tl.constexpr):
    """Grid (cdiv(T, BT), cdiv(D, BD), B): dx of a tile, and its partial sums of dw, dbias
    (row ``batch * tiles_t + tile`` of the [B * tiles_t, D, W] and [B * tiles_t, D] buffers)."""
    batch = tl.program_id(2)
    rows = tl.program_id(0) * BT + tl.arange(0, BT)
    cols = tl.program_id(1) * BD + tl.arange(0, BD)
    row_mask = rows < T
    col_mask = cols < D
    seq, start, end = sequence_of_rows(cu_seqlens, rows, batch, T, num_seqs, search_steps, VARLEN)
    x_base = x + batch.to(tl.int64) * stride_xb
    dy_base = dy + batch.to(tl.int64) * stride_dyb
    dz = grad_preactivation(x_base, initial_state, weight, bias, dy_base, rows, start, seq, cols,
                            row_mask, col_mask, stride_xt, stride_xd, stride_sn, stride_sd,
                            stride_sw, stride_wd, stride_ww, stride_bias, stride_dyt, stride_dyd,
                            W, HAS_BIAS, HAS_STATE, SILU)
    if WANT_DX:
        last_tap = tl.load(weight + cols.to(tl.int64) * stride_wd + (W - 1) * stride_ww,
                           mask=col_mask, other=0.0).to(tl.float32)
        grad = dz * last_tap[None, :]
        for m in range(1, W):
            # dz m positions later reads this row through tap W - 1 - m, inside its sequence.
            later = grad_preactivation(x_base, initial_state, weight, bias, dy_base, rows + m,
                                       start, seq, cols, row_mask & (rows + m < end), col_mask,
                                       stride_xt, stride_xd, stride_sn, stride_sd, stride_sw,
                                       stride_wd, stride_ww, stride_bias, stride_dyt,
                                       stride_dyd, W, HAS_BIAS, HAS_STATE, SILU)
            tap = tl.load(weight + cols.to(tl.int64) * stride_wd + (W - 1 - m) * stride_ww,
                          mask=col_mask, other=0.0).to(tl.float32)
            grad += later * tap[None, :]
        if HAS_DFINAL:
            # The last W - 1 tokens of a sequence are its final state's columns.
            column = rows - (end - (W - 1))
            in_final = row_mask & (column >= 0)
            offsets = ((seq.to(tl.int64) * stride_fn + column.to(tl.int64) * stride_fw)[:, None]
                       + (cols.to(tl.int64) * stride_fd)[None, :])
            grad += tl.load(dfinal + offsets, mask=in_final[:, None] & col_mask[None, :],
                            other=0.0).to(tl.float32)
        offsets = ((rows.to(tl.int64) * stride_dxt)[:, None]
                   + (cols.to(tl.int64) * stride_dxd)[None, :])
        tl.store(dx + batch.to(tl.int64) * stride_dxb + offsets, grad.to(dx.dtype.element_ty),
                 mask=row_mask[:, None] & col_mask[None, :])
    if WANT_DW:
        partial_row = (batch * tiles_t + tl.program_id(0)).to(tl.int64)
        tl.store(dbias_partial + partial_row * D + cols, tl.sum(dz, axis=0), mask=col_mask)
        for j in range(W):
            ext = load_ext(x_base, initial_state, rows - (W - 1) + j, start, seq, cols, row_mask,
                           col_mask, stride_xt, stride_xd, stride_sn, stride_sd, stride_sw, W,
                           HAS_STATE)
            tl.store(dw_partial + (partial_row * D + cols) * W + j, tl.sum(dz * ext, axis=0),
                     mask=col_mask)


@triton.jit
def state_grad_kernel(x, weight, bias, initial_state, cu_seqlens, dy, dfinal, dstate, T, D,
                      stride_xb, stride_xt, stride_xd, stride_wd, stride_ww, stride_bias,
                      stride_sn, stride_sd, stride_sw, stride_dyb, stride_dyt, stride_dyd,
                      stride_fn, stride_fd, stride_fw, stride_gn, stride_gd, stride_gw,
                      W: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr,
                      VARLEN: tl.constexpr, HAS_DFINAL: tl.constexpr, WS: tl.constexpr,
                      BD: tl.constexpr):
    """Grid (N, cdiv(D, BD)): d initial_state[s, :, i] = sum_{j <= i} w_j dz[start + i - j]
    (within the sequence), plus the final state's column i - len when the sequence is shorter
    than W - 1 (its final state then still holds initial-state columns)."""
    seq_index = tl.program_id(0)
    cols = tl.program_id(1) * BD + tl.arange(0, BD)
    col_mask = cols < D
    columns = tl.arange(0, WS)  # the W - 1 state columns, padded (state_columns)
    live = columns < W - 1
    if VARLEN:
        start = tl.load(cu_seqlens + seq_index).to(tl.int32)
        end = tl.load(cu_seqlens + seq_index + 1).to(tl.int32)
        x_base = x
        dy_base = dy
    else:
        start = 0
        end = T
        x_base = x + seq_index.to(tl.int64) * stride_xb
        dy_base = dy + seq_index.to(tl.int64) * stride_dyb
    starts = start + tl.zeros_like(columns)
    seq = seq_index + tl.zeros_like(columns)
    grad = tl.zeros([WS, BD], dtype=tl.float32)
    for j in range(W - 1):  # a loop, not unrolled: at W = 8 seven unrolled taps spilled
        positions = starts + columns - j
        dz = grad_preactivation(x_base, initial_state, weight, bias, dy_base, positions, starts,
                                seq, cols, live & (columns >= j) & (positions < end), col_mask,
                                stride_xt, stride_xd, stride_sn, stride_sd, stride_sw, stride_wd,
                                stride_ww, stride_bias, stride_dyt, stride_dyd, W, HAS_BIAS,
                                True, SILU)
        tap = tl.load(weight + cols.to(tl.int64) * stride_wd + j * stride_ww, mask=col_mask,
                      other=0.0).to(tl.float32)
        grad += dz * tap[None, :]
    if HAS_DFINAL:
        final_column = columns - (end - start)
        in_final = live & (final_column >= 0)
        state_offsets = seq_index.to(tl.int64) * stride_fn + final_column.to(tl.int64) * stride_fw
        offsets = state_offsets[:, None] + (cols.to(tl.int64) * stride_fd)[None, :]
        grad += tl.load(dfinal + offsets, mask=in_final[:, None] & col_mask[None, :],
                        other=0.0).to(tl.float32)
    offsets = ((seq_index.to(tl.int64) * stride_gn + columns.to(tl.int64) * stride_gw)[:, None]
               + (cols.to(tl.int64) * stride_gd)[None, :])
    tl.store(dstate + offsets, grad.to(dstate.dtype.element_ty),
             mask=live[:, None] & col_mask[None, :])


def backward(x, weight, bias, initial_state, cu_seqlens, layout, dy, dfinal,
             wanted: tuple[bool, bool, bool, bool], cfg: Mapping[str, Any]):
    """(dx, dweight, dbias, d initial_state), each None unless ``wanted`` (in that order) and
    the input exists. ``dfinal`` (the final state's gradient) may be None."""
    want_dx, want_dw, want_db, want_dh = wanted
    want_db = want_db and bias is not None
    want_dh = want_dh and initial_state is not None
    batch, length, channels, width = layout.batch, layout.length, layout.channels, layout.width
    tiles_t = triton.cdiv(length, cfg["BT"])
    dx = new_output(x.shape, x.dtype, x.device) if want_dx else None
    want_partials = want_dw or want_db
    partial_rows = batch * tiles_t if want_partials else 0
    dw_partial = new_output((partial_rows, channels, width), torch.float32, x.device)
    db_partial = new_output((partial_rows, channels), torch.float32, x.device)
    # Tensors the flags say are absent are never read; x stands in for them.
    state = initial_state if initial_state is not None else x
    state_strides = initial_state.stride() if initial_state is not None else (0, 0, 0)
    final_grad = dfinal if dfinal is not None else x
    final_strides = dfinal.stride() if dfinal is not None else (0, 0, 0)
    bias_arg = bias if bias is not None else x
    cu = cu_seqlens if cu_seqlens is not None else x
    common = (*x.stride(), *weight.stride(), bias.stride(0) if bias is not None else 0,
              *state_strides, *dy.stride(), *final_strides)
    flags = {"W": width, "HAS_BIAS": bias is not None, "SILU": layout.silu,
             "VARLEN": layout.varlen, "HAS_DFINAL": dfinal is not None}
    if (want_dx or want_partials) and length and channels:
        dx_arg = dx if dx is not None else x
        grid = (tiles_t, triton.cdiv(channels, cfg["BD"]), batch)
        launch(causal_conv1d_bwd_kernel, grid, x, weight, bias_arg, state, cu, dy, final_grad,
               dx_arg, dw_partial, db_partial, length, channels, layout.num_seqs,
               layout.search_steps, tiles_t, *common,
               *(dx.stride() if dx is not None else (0, 0, 0)), **flags,
               HAS_STATE=initial_state is not None, WANT_DX=want_dx, WANT_DW=want_partials,
               BT=cfg["BT"], BD=cfg["BD"], num_warps=cfg["num_warps"],
               num_stages=cfg["num_stages"], **backend_options(cfg))
    dstate = None
    if want_dh:
        dstate = new_output(initial_state.shape, initial_state.dtype, x.device)
        if dstate.numel():
            launch(state_grad_kernel, (layout.num_seqs, triton.cdiv(channels, cfg["BD"])),
                   x, weight, bias_arg, state, cu, dy, final_grad, dstate, length, channels,
                   *common, *dstate.stride(), **flags, WS=state_columns(width), BD=cfg["BD"],
                   num_warps=cfg["num_warps"], **backend_options(cfg))
    dw = dw_partial.sum(0).to(weight.dtype) if want_dw else None
    db = db_partial.sum(0).to(bias.dtype) if want_db else None
    return dx, dw, db, dstate
