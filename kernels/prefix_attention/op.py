"""The prefix_attention op: argument checks, config choice and launch."""
from __future__ import annotations

from typing import Any, Mapping

import torch
import triton

from seqtune.checks import (expect_float, expect_same_device, expect_same_dtype, expect_shape,
                            expect_tensor)
from seqtune.launch import launch, new_output
from seqtune.loader import config_for
from seqtune.spec import dtype_name, next_power_of_2

from seqtune.kernels.linear_scan.interpreter import sliced_interpreter_scans
from seqtune.kernels.prefix_attention.kernel import prefix_attention_kernel

MAX_HEAD_DIM = 256


def prefix_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                     scale: float | None = None,
                     config: Mapping[str, Any] | None = None) -> torch.Tensor:
    """Attention as an RNN: o_t = sum_{s<=t} softmax_s(scale q . k_s) v_s for every t.

    q: [B, H, D] (one query per sequence and head); k, v: [B, T, H, D]; one float dtype; head
    dim 1..256. scale defaults to D**-0.5. Accumulates in fp32 and returns o [B, T, H, D] in
    v's dtype.
    """
    _check_arguments(q, k, v)
    batch, length, heads, head_dim = k.shape
    o = new_output((batch, length, heads, head_dim), v.dtype, v.device)
    if o.numel() == 0:
        return o
    problem = {"B": batch, "T": length, "H": heads, "D": head_dim, "dtype": dtype_name(v.dtype)}
    cfg = config_for("prefix_attention", problem, config)
    q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
    scale = head_dim ** -0.5 if scale is None else float(scale)
    grid = (batch * heads, triton.cdiv(head_dim, cfg["BLOCK_DV"]))
    with sliced_interpreter_scans():
        launch(prefix_attention_kernel, grid, q, k, v, o, length, heads, head_dim, scale,
               q.stride(0), q.stride(1), k.stride(0), k.stride(1), k.stride(2),
               v.stride(0), v.stride(1), v.stride(2), o.stride(0), o.stride(1), o.stride(2),
               D_PAD=next_power_of_2(head_dim), BLOCK_T=cfg["BLOCK_T"],
               BLOCK_DV=cfg["BLOCK_DV"], num_warps=cfg["num_warps"],
               num_stages=cfg["num_stages"])
    return o


def _check_arguments(q: Any, k: Any, v: Any) -> None:
    expect_tensor("q", q, 3)
    expect_tensor("k", k, 4)
    expect_tensor("v", v, 4)
    for name, tensor in (("q", q), ("k", k), ("v", v)):
        expect_float(name, tensor)
    expect_same_dtype({"q": q, "k": k, "v": v})
    batch, length, heads, head_dim = k.shape
    expect_shape("v", v, k.shape)
    expect_shape("q", q, (batch, heads, head_dim))
    if not 1 <= head_dim <= MAX_HEAD_DIM:
        raise ValueError(f"head dim D={head_dim} is not supported: expected 1..{MAX_HEAD_DIM}")
    expect_same_device({"q": q, "k": k, "v": v})
