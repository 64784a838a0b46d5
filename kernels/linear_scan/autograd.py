"""Launches of the linear_scan kernels (forward and backward; ``library.py`` registers them as
ops): the backward's reverse scan needs only a, h (the forward's output) and the initial
state."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
import triton

from seqtune.launch import backend_options, launch, new_output

from seqtune.kernels.linear_scan.backward import linear_scan_bwd_kernel
from seqtune.kernels.linear_scan.interpreter import sliced_interpreter_scans
from seqtune.kernels.linear_scan.kernel import linear_scan_kernel

Gradients = tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]


def run_forward(a: torch.Tensor, b: torch.Tensor, initial_state: torch.Tensor | None,
                cfg: Mapping[str, Any]) -> torch.Tensor:
    """h [B, T, D] in b's dtype."""
    batch, length, channels = b.shape
    h = new_output((batch, length, channels), b.dtype, b.device)
    if h.numel() == 0:
        return h
    a, b = _unit_stride_channels(a), _unit_stride_channels(b)
    # Without an initial state the kernel never reads h0; any tensor serves as the argument.
    h0 = _unit_stride_channels(initial_state) if initial_state is not None else h
    grid = (triton.cdiv(channels, cfg["BLOCK_D"]), batch)
    with sliced_interpreter_scans():
        launch(linear_scan_kernel, grid, a, b, h0, h, length, channels,
               a.stride(0), a.stride(1), b.stride(0), b.stride(1), h.stride(0), h.stride(1),
               h0.stride(0), HAS_INITIAL_STATE=initial_state is not None,
               BLOCK_T=cfg["BLOCK_T"], BLOCK_D=cfg["BLOCK_D"], num_warps=cfg["num_warps"],
               num_stages=cfg["num_stages"], **backend_options(cfg))
    return h


def run_backward(a: torch.Tensor, h: torch.Tensor, initial_state: torch.Tensor | None,
                 dh: torch.Tensor, cfg: Mapping[str, Any],
                 needs: Sequence[bool] = (True, True, True)) -> Gradients:
    """``(da, db, d initial_state)`` in the dtypes of a, h (= b's) and initial_state; None for
    what ``needs`` leaves out (and for d initial_state without an initial state)."""
    need_da, need_db = needs[0], needs[1]
    need_dh0 = needs[2] and initial_state is not None
    da = new_output(a.shape, a.dtype, a.device) if need_da else None
    db = new_output(h.shape, h.dtype, h.device) if need_db else None
    dh0 = new_output(initial_state.shape, initial_state.dtype, a.device) if need_dh0 else None
    batch, length, channels = h.shape
    if length == 0 or batch * channels == 0:  # h does not depend on anything
        if dh0 is not None:
            dh0.zero_()
        return da, db, dh0
    if not (need_da or need_db or need_dh0):
        return da, db, dh0
    a, h, dh = (_unit_stride_channels(x) for x in (a, h, dh))
    h0 = _unit_stride_channels(initial_state) if initial_state is not None else h
    # Gradients not asked for are never written: any tensor of the right kind serves.
    da_out, db_out, dh0_out = (x if x is not None else dh for x in (da, db, dh0))
    grid = (triton.cdiv(channels, cfg["BLOCK_D"]), batch)
    with sliced_interpreter_scans():
        launch(linear_scan_bwd_kernel, grid, a, h, h0, dh, da_out, db_out, dh0_out,
               length, channels, a.stride(0), a.stride(1), h.stride(0), h.stride(1),
               h0.stride(0), dh.stride(0), dh.stride(1), da_out.stride(0), da_out.stride(1),
               db_out.stride(0), db_out.stride(1), dh0_out.stride(0),
               HAS_INITIAL_STATE=initial_state is not None, NEED_DA=need_da, NEED_DB=need_db,
               NEED_DH0=need_dh0, BLOCK_T=cfg["BLOCK_T"], BLOCK_D=cfg["BLOCK_D"],
               num_warps=cfg["num_warps"], num_stages=cfg["num_stages"], **backend_options(cfg))
    return da, db, dh0


def _unit_stride_channels(x: torch.Tensor) -> torch.Tensor:
    """The kernels address channels (the last axis) with unit stride; copy only if needed."""
    return x if x.stride(-1) == 1 else x.contiguous()
