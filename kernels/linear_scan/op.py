"""The linear_scan op: argument checks, config choice and launch."""
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
from seqtune.kernels.linear_scan.kernel import linear_scan_kernel


def linear_scan(a: torch.Tensor, b: torch.Tensor, *, initial_state: torch.Tensor | None = None,
                config: Mapping[str, Any] | None = None) -> torch.Tensor:
    """h_t = a_t * h_{t-1} + b_t along T, with h_{-1} = initial_state (zeros when None).

    a, b: [B, T, D] in one float dtype; initial_state: [B, D] in that dtype or float32.
    Accumulates in fp32; returns h [B, T, D] in b's dtype. ``config`` overrides the tuned
    config (missing knobs take the default).
    """
    _check_arguments(a, b, initial_state)
    batch, length, channels = b.shape
    h = new_output((batch, length, channels), b.dtype, b.device)
    if h.numel() == 0:
        return h
    problem = {"B": batch, "T": length, "D": channels, "initial_state": initial_state is not None,
               "dtype": dtype_name(b.dtype)}
    cfg = config_for("linear_scan", problem, config)
    a, b = _unit_stride_channels(a), _unit_stride_channels(b)
    # Without an initial state the kernel never reads h0; any tensor serves as the argument.
    h0 = _unit_stride_channels(initial_state) if initial_state is not None else h
    grid = (triton.cdiv(channels, cfg["BLOCK_D"]), batch)
    with sliced_interpreter_scans():
        launch(linear_scan_kernel, grid, a, b, h0, h, length, channels,
               a.stride(0), a.stride(1), b.stride(0), b.stride(1), h.stride(0), h.stride(1),
               h0.stride(0), HAS_INITIAL_STATE=initial_state is not None,
               BLOCK_T=cfg["BLOCK_T"], BLOCK_D=cfg["BLOCK_D"], num_warps=cfg["num_warps"],
               num_stages=cfg["num_stages"])
    return h


def _check_arguments(a: Any, b: Any, initial_state: Any) -> None:
    expect_tensor("a", a, 3)
    expect_tensor("b", b, 3)
    expect_float("a", a)
    expect_float("b", b)
    expect_same_dtype({"a": a, "b": b})
    expect_shape("a", a, b.shape)
    if initial_state is not None:
        expect_tensor("initial_state", initial_state, 2)
        expect_float("initial_state", initial_state, (b.dtype, torch.float32))
        expect_shape("initial_state", initial_state, (b.shape[0], b.shape[2]))
    expect_same_device({"a": a, "b": b, "initial_state": initial_state})


def _unit_stride_channels(x: torch.Tensor) -> torch.Tensor:
    """The kernel addresses channels (the last axis) with unit stride; copy only if needed."""
    return x if x.stride(-1) == 1 else x.contiguous()
