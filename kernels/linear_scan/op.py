"""The linear_scan op: argument checks, config choice, and the plain or differentiable launch."""
from __future__ import annotations

from typing import Any, Mapping

import torch

from seqtune.checks import (expect_float, expect_same_device, expect_same_dtype, expect_shape,
                            expect_tensor)
from seqtune.loader import config_for
from seqtune.spec import dtype_name

from seqtune.kernels.linear_scan.autograd import LinearScanFunction, run_forward


def linear_scan(a: torch.Tensor, b: torch.Tensor, *, initial_state: torch.Tensor | None = None,
                config: Mapping[str, Any] | None = None,
                bwd_config: Mapping[str, Any] | None = None) -> torch.Tensor:
    """h_t = a_t * h_{t-1} + b_t along T, with h_{-1} = initial_state (zeros when None).

    a, b: [B, T, D] in one float dtype; initial_state: [B, D] in that dtype or float32.
    Accumulates in fp32; returns h [B, T, D] in b's dtype. ``config`` overrides the tuned
    config (missing knobs take the default); ``bwd_config`` likewise for the backward
    (``linear_scan_bwd``), which runs when grad is enabled and a, b or initial_state requires
    grad.
    """
    _check_arguments(a, b, initial_state)
    batch, length, channels = b.shape
    problem = {"B": batch, "T": length, "D": channels, "initial_state": initial_state is not None,
               "dtype": dtype_name(b.dtype)}
    cfg = config_for("linear_scan", problem, config) if b.numel() else {}  # empty: no launch
    tensors = (a, b, initial_state)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        bwd_cfg = config_for("linear_scan_bwd", problem, bwd_config)
        return LinearScanFunction.apply(a, b, initial_state, cfg, bwd_cfg)
    return run_forward(a, b, initial_state, cfg)


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
