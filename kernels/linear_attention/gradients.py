"""Launching the backward kernels (``backward.py``) of one chunked recurrence.

The forward keeps only its inputs: the backward recomputes the intra-chunk matrices and the
per-chunk states with the forward's kernels (stages ``intra`` and ``h`` of its own config), then
runs ``dh``, ``dv``, ``dqk`` and ``dg``. States and state gradients are kept in fp32 (as fla's
backward keeps them), since dg reads them directly.
"""
from __future__ import annotations

import dataclasses

import torch
import triton

from seqtune.kernels.linear_attention.backward import (_dg_kernel, _dqk_channel_kernel,
                                                       _dqk_kernel, _dstate_kernel, _dv_kernel)
from seqtune.kernels.linear_attention.chunked import Recurrence, launch_intra, launch_states
from seqtune.kernels.linear_attention.kernels import GATES, SUB, dot_type
from seqtune.kernels.linear_attention.varlen import ChunkLayout
from seqtune.launch import backend_options, launch, new_output


@dataclasses.dataclass(frozen=True)
class Gradients:
    """dq, dk [B, T, Hqk, K] in the inputs' dtype; dv [B, T, H, V] fp32 (SSD's chain rule
    reduces it further); dg like g, fp32 (None without decay); dh0 [N, H, K, V] fp32."""

    dq: torch.Tensor
    dk: torch.Tensor
    dv: torch.Tensor
    dg: torch.Tensor | None
    dh0: torch.Tensor


def _state_grads(r: Recurrence, layout: ChunkLayout, config: dict, do: torch.Tensor,
                 dht: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    T, K = r.q.shape[1], r.q.shape[3]
    H, V, dtype, device = r.heads, r.v.shape[3], r.v.dtype, r.v.device
    N = r.sequences.count
    dhs = new_output((layout.slots, H, K, V), torch.float32, device)
    dh0 = new_output((N, H, K, V), torch.float32, device)
    bk, bv = config["dh.BK"], config["dh.BV"]
    cu = r.sequences.cu if r.sequences.packed else dhs
    offsets = layout.chunk_offsets if layout.chunk_offsets is not None else dhs
    launch(_dstate_kernel, (triton.cdiv(K, bk), triton.cdiv(V, bv), N * H),
           r.q, do, r.gate_or_any(), dht if dht is not None else dhs, dhs, dh0, cu, offsets,
           T, H, r.group, layout.grid, float(r.scale), *r.q.stride(), *do.stride(),
           *r.gate_strides(), K=K, V=V, GATE=GATES[r.gate], HAS_DHT=dht is not None,
           VARLEN=r.sequences.packed, BT=config["BT"], BK=bk, BV=bv, DOT=dot_type(dtype),
           num_warps=config["dh.num_warps"], num_stages=config["dh.num_stages"],
           **backend_options(config))
    return dhs, dh0


def _value_grads(r: Recurrence, layout: ChunkLayout, config: dict, do: torch.Tensor,
                 intra: torch.Tensor, dhs: torch.Tensor) -> torch.Tensor:
    B, T, _, K = r.q.shape
    H, V, dtype = r.heads, r.v.shape[3], r.v.dtype
    dv = new_output(r.v.shape, torch.float32, r.v.device)
    bv = config["dv.BV"]
    cu, chunk_list = r.varlen_args(layout)
    launch(_dv_kernel, (triton.cdiv(V, bv), layout.grid, B * H),
           r.k, r.gate_or_any(), do, intra, dhs, dv, cu, chunk_list, T, H, r.group,
           layout.grid, float(r.scale), *r.k.stride(), *r.gate_strides(), *do.stride(),
           *dv.stride(), K=K, V=V, GATE=GATES[r.gate], VARLEN=r.sequences.packed,
           BT=config["BT"], BK=config["dv.BK"], BV=bv, DOT=dot_type(dtype),
           num_warps=config["dv.num_warps"], num_stages=config["dv.num_stages"],
           **backend_options(config))
    return dv


def _key_grads(r: Recurrence, layout: ChunkLayout, config: dict, do: torch.Tensor,
               states: torch.Tensor, dhs: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """dq and dk per value head, fp32 [B, T, H, K]; with a decay the carries of dg (fp32, as dk
    per channel, else per K block) and with scalar decay its point gradients per K block, fp32
    [B, T, H, K/dqk.BK] (else None)."""
    B, T, _, K = r.q.shape
    H, V, BT = r.heads, r.v.shape[3], config["BT"]
    dq = new_output((B, T, H, K), torch.float32, r.q.device)
    dk = new_output((B, T, H, K), torch.float32, r.q.device)
    bk = config["dqk.BK"]
    points = carries = None
    if r.gate == "scalar":
        points, carries = (new_output((B, T, H, triton.cdiv(K, bk)), torch.float32, r.q.device)
                           for _ in range(2))
    elif r.gate == "channel":
        carries = new_output((B, T, H, K), torch.float32, r.q.device)
    cu, chunk_list = r.varlen_args(layout)
    common = (r.q, r.k, r.v, r.gate_or_any(), do, states, dhs, dq, dk, cu, chunk_list, T, H,
              r.group, layout.grid, float(r.scale), *r.q.stride(), *r.k.stride(),
              *r.v.stride())
    tuning = {"K": K, "V": V, "VARLEN": r.sequences.packed, "BT": BT, "BK": bk,
              "BV": config["dqk.BV"], "DOT": dot_type(r.v.dtype),
              "num_warps": config["dqk.num_warps"], "num_stages": config["dqk.num_stages"],
              "SPLIT": r.gate != "none" and r.v.dtype != torch.float32,
              **backend_options(config)}
    if r.gate == "channel":
        launch(_dqk_channel_kernel, (triton.cdiv(K, bk), layout.grid * (BT // SUB), B * H),
               *common[:9], carries, *common[9:], *r.gate_strides(), *do.stride(), SUB=SUB,
               **tuning)
    else:
        launch(_dqk_kernel, (triton.cdiv(K, bk), layout.grid, B * H), *common[:9],
               *((points, carries) if points is not None else (dq, dq)), *common[9:],
               *r.gate_strides()[:3], *do.stride(), GATE=GATES[r.gate], **tuning)
    return dq, dk, points, carries


def _gate_grads(r: Recurrence, layout: ChunkLayout, config: dict, dq: torch.Tensor,
                dk: torch.Tensor, points: torch.Tensor | None, carries: torch.Tensor,
                states: torch.Tensor, dhs: torch.Tensor) -> torch.Tensor:
    """dg, fp32 contiguous in g's shape, from the point gradients (``points`` for scalar
    decay, else q dq - k dk), the carries and the fp32 states and state gradients."""
    T, K, V, H = r.q.shape[1], r.q.shape[3], r.v.shape[3], r.heads
    dg = new_output(r.g.shape, torch.float32, r.q.device)
    bk = config["dg.BK"]
    channel = r.gate == "channel"
    cu = r.sequences.cu if r.sequences.packed else dg
    offsets = layout.chunk_offsets if layout.chunk_offsets is not None else dg
    launch(_dg_kernel, (triton.cdiv(K, bk) if channel else 1, r.sequences.count * H),
           r.q, r.k, r.g, dq, dk, points if points is not None else dq, carries, states, dhs,
           dg, cu, offsets, T, H, r.group, layout.grid,
           1 if points is None else points.shape[3], *r.q.stride(), *r.k.stride(),
           *r.gate_strides(), K=K, V=V, GATE=GATES[r.gate], VARLEN=r.sequences.packed,
           BT=config["BT"], BK=bk, num_warps=config["dg.num_warps"],
           **backend_options(config))
    return dg


def _per_key_head(grad: torch.Tensor, heads: int, dtype: torch.dtype) -> torch.Tensor:
    """Per-value-head gradients [B, T, H, K] summed over each q/k head's value heads."""
    B, T, H, K = grad.shape
    return grad.view(B, T, heads, H // heads, K).sum(3).to(dtype)


def run_backward(r: Recurrence, config: dict, do: torch.Tensor,
                 dht: torch.Tensor | None) -> Gradients:
    """Every gradient of ``r``'s (o, final state) given do [B, T, H, V] and dht [N, H, K, V]
    (None: the final state is not used), with a full, checked ``*_bwd`` config."""
    layout = r.sequences.chunk_layout(config["BT"])
    dht = None if dht is None else dht.to(torch.float32).contiguous()
    intra = launch_intra(r, layout, config, torch.float32)  # dv's dot takes it unrounded
    states, _ = launch_states(r, layout, config, False, torch.float32)
    dhs, dh0 = _state_grads(r, layout, config, do, dht)
    dv = _value_grads(r, layout, config, do, intra, dhs)
    dq, dk, points, carries = _key_grads(r, layout, config, do, states, dhs)
    dg = None
    if r.g is not None:
        dg = _gate_grads(r, layout, config, dq, dk, points, carries, states, dhs)
    heads = r.q.shape[2]
    return Gradients(_per_key_head(dq, heads, r.q.dtype), _per_key_head(dk, heads, r.k.dtype),
                     dv, dg, dh0)
