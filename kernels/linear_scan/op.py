"""The linear_scan op: argument checks, config choice, and the plain or differentiable launch."""
from __future__ import annotations

from typing import Any, Mapping

import torch

from seqtune.checks import (expect_float, expect_same_device, expect_same_dtype, expect_shape,
                            expect_tensor)
from seqtune.custom_ops import encode_config, expect_tensors, forward_config
from seqtune.spec import dtype_name

from seqtune.kernels.linear_scan.autograd import run_forward


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
    expect_tensors({"a": a, "b": b}, {"initial_state": initial_state})
    return torch.ops.seqtune.linear_scan(a, b, initial_state, encode_config("config", config),
                                         encode_config("bwd_config", bwd_config))


def linear_scan_forward(a: torch.Tensor, b: torch.Tensor, initial_state: torch.Tensor | None,
                        config: Mapping[str, Any] | None,
                        bwd_config: Mapping[str, Any] | None = None) -> torch.Tensor:
    """The op's implementation (``torch.ops.seqtune.linear_scan``): checks, config, launch."""
    _check_arguments(a, b, initial_state)
    problem = problem_of(a, b, initial_state)
    # An empty problem launches nothing.
    cfg = forward_config("linear_scan", problem, config, bwd_config) if b.numel() else {}
    return run_forward(a, b, initial_state, cfg)


def problem_of(a: torch.Tensor, b: torch.Tensor, initial_state: torch.Tensor | None
               ) -> dict[str, Any]:
    """The tuning problem of a call (the forward's and the backward's)."""
    batch, length, channels = b.shape
    return {"B": batch, "T": length, "D": channels, "initial_state": initial_state is not None,
            "dtype": dtype_name(b.dtype)}


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
