"""Launches of the prefix_attention kernels (``library.py`` registers them as ops): the backward
keeps q, k, v, o and every prefix's log-sum-exp of scores (O(T) floats per head); its reverse
scans need nothing else."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
import triton

from seqtune.launch import backend_options, launch, new_output
from seqtune.spec import next_power_of_2

from seqtune.kernels.linear_scan.interpreter import sliced_interpreter_scans
from seqtune.kernels.prefix_attention.backward import prefix_attention_bwd_kernel
from seqtune.kernels.prefix_attention.kernel import prefix_attention_kernel

Gradients = tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]


def run_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                cfg: Mapping[str, Any], store_lse: bool = False):
    """``(o [B, T, H, D] in v's dtype, lse [B, H, T] fp32 or None)``."""
    batch, length, heads, head_dim = k.shape
    o = new_output((batch, length, heads, head_dim), v.dtype, v.device)
    lse = new_output((batch, heads, length), torch.float32, v.device) if store_lse else None
    if o.numel() == 0:
        return o, lse
    q, k, v = (_unit_stride_last(x) for x in (q, k, v))
    grid = (batch * heads, triton.cdiv(head_dim, cfg["BLOCK_DV"]))
    with sliced_interpreter_scans():
        launch(prefix_attention_kernel, grid, q, k, v, o, lse if store_lse else o,
               length, heads, head_dim, scale,
               q.stride(0), q.stride(1), k.stride(0), k.stride(1), k.stride(2),
               v.stride(0), v.stride(1), v.stride(2), o.stride(0), o.stride(1), o.stride(2),
               STORE_LSE=store_lse, D_PAD=next_power_of_2(head_dim), BLOCK_T=cfg["BLOCK_T"],
               BLOCK_DV=cfg["BLOCK_DV"], num_warps=cfg["num_warps"],
               num_stages=cfg["num_stages"], **backend_options(cfg))
    return o, lse


def run_backward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor,
                 lse: torch.Tensor, do: torch.Tensor, scale: float, cfg: Mapping[str, Any],
                 needs: Sequence[bool] = (True, True, True)) -> Gradients:
    """``(dq, dk, dv)`` in the dtypes of q, k, v; None for what ``needs`` leaves out."""
    dq, dk, dv = (new_output(x.shape, x.dtype, x.device) if need else None
                  for x, need in zip((q, k, v), needs))
    batch, length, heads, head_dim = k.shape
    if length == 0:  # no output depends on q
        if dq is not None:
            dq.zero_()
        return dq, dk, dv
    if k.numel() == 0 or not any(needs):
        return dq, dk, dv
    q, k, v, o, do = (_unit_stride_last(x) for x in (q, k, v, o, do))
    lse = lse.contiguous()
    # Gradients not asked for are never written: any tensor of the right kind serves.
    dq_out, dk_out, dv_out = (x if x is not None else y for x, y in ((dq, q), (dk, k), (dv, v)))
    with sliced_interpreter_scans():
        launch(prefix_attention_bwd_kernel, (batch * heads,), q, k, v, o, lse, do,
               dq_out, dk_out, dv_out, length, heads, head_dim, scale,
               q.stride(0), q.stride(1), k.stride(0), k.stride(1), k.stride(2),
               v.stride(0), v.stride(1), v.stride(2), o.stride(0), o.stride(1), o.stride(2),
               do.stride(0), do.stride(1), do.stride(2), dq_out.stride(0), dq_out.stride(1),
               dk_out.stride(0), dk_out.stride(1), dk_out.stride(2),
               dv_out.stride(0), dv_out.stride(1), dv_out.stride(2),
               NEED_DQ=needs[0], NEED_DK=needs[1], NEED_DV=needs[2],
               D_PAD=next_power_of_2(head_dim), BLOCK_T=cfg["BLOCK_T"],
               num_warps=cfg["num_warps"], num_stages=cfg["num_stages"], **backend_options(cfg))
    return dq, dk, dv


def _unit_stride_last(x: torch.Tensor) -> torch.Tensor:
    """The kernels address the head dim with unit stride; copy only if needed."""
    return x if x.stride(-1) == 1 else x.contiguous()
