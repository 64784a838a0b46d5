"""Launchers of the forward stages (``wy``, ``h``, ``o``), shared by the forward and by the
backward, which recomputes the first two instead of saving their results.

All take contiguous inputs, a config (the stage knobs ``<stage>.*`` and the chunk size ``BT``)
and the packing of the batch (``varlen.Packing``).
"""
from __future__ import annotations

import dataclasses

import torch
import triton

from seqtune.kernels.delta_rule.kernels import output_kernel, state_kernel, wy_kernel
from seqtune.launch import backend_options, launch, new_output
from seqtune.spec import next_power_of_2

GATE_NONE, GATE_SCALAR, GATE_CHANNEL = 0, 1, 2


def gate_code(g: torch.Tensor | None) -> int:
    return GATE_NONE if g is None else GATE_SCALAR if g.dim() == 3 else GATE_CHANNEL


@dataclasses.dataclass
class ChunkTerms:
    """What the wy stage leaves for the others (scratch, per token and value head)."""

    w: torch.Tensor  # [tokens, HV, K]
    u0: torch.Tensor  # [tokens, HV, V]
    # keys decayed to the chunk's end [tokens, HV, K] (per-channel gate); else k, which the
    # state kernels multiply (a scalar decay goes on U, or on the product with dS, there)
    keys: torch.Tensor
    chunk_decay: torch.Tensor  # [chunks, HV, K] fp32 (a placeholder when ungated)
    scores: torch.Tensor  # [tokens, HV, BT]
    queries: torch.Tensor | None  # decayed queries Q * exp(gam) [tokens, HV, K] when asked


def wy_stage(q, k, v, beta, g, cfg, pack, backward=False) -> ChunkTerms:
    """``backward``: also what the reverse recurrence reads with a per-channel gate,
    Q * exp(gam)."""
    batch, length, heads, key_dim = q.shape
    value_heads, value_dim = v.shape[2:]
    chunk, chunks = cfg["BT"], pack.chunks
    device, dtype, tokens = q.device, q.dtype, batch * length
    gated = g is not None
    store_keys = gate_code(g) == GATE_CHANNEL
    w = new_output((tokens, value_heads, key_dim), dtype, device)
    # fp32: U0 is only ever added to, never a tensor-core operand
    u0 = new_output((tokens, value_heads, value_dim), torch.float32, device)
    keys = new_output((tokens, value_heads, key_dim), dtype, device) if store_keys else k
    chunk_decay = (new_output((chunks, value_heads, key_dim), torch.float32, device) if gated
                   else w)
    scores = new_output((tokens, value_heads, chunk), dtype, device)
    store_queries = backward and gate_code(g) == GATE_CHANNEL
    queries = (new_output((tokens, value_heads, key_dim), dtype, device) if store_queries
               else None)
    # absent optional tensors: any pointer does, the constexpr flags keep them unread
    launch(wy_kernel, (chunks, value_heads), q, k, v, beta, g if gated else beta, w, u0, keys,
           chunk_decay, scores, w if queries is None else queries, pack.chunk_table,
           pack.cu_seqlens, heads, value_heads, key_dim, value_dim, GATE=gate_code(g),
           STORE_KD=store_keys, STORE_QG=store_queries, BT=chunk, BK=cfg["wy.BK"], BV=cfg["wy.BV"],
           num_warps=cfg["wy.num_warps"], num_stages=cfg["wy.num_stages"], **backend_options(cfg))
    return ChunkTerms(w, u0, keys, chunk_decay, scores, queries)


def state_stage(q, k, v, g, terms: ChunkTerms, h0, output_final_state, cfg, pack):
    """(U [tokens, HV, V], chunk states [chunks, HV, K, V], final state fp32 or None)."""
    heads, key_dim = q.shape[2:]
    value_heads, value_dim = v.shape[2:]
    device, dtype, tokens = q.device, q.dtype, q.shape[0] * q.shape[1]
    per_channel = gate_code(g) == GATE_CHANNEL
    u = new_output((tokens, value_heads, value_dim), dtype, device)
    states = new_output((pack.chunks, value_heads, key_dim, value_dim), dtype, device)
    final = (new_output((pack.sequences, value_heads, key_dim, value_dim), torch.float32, device)
             if output_final_state else None)
    w = terms.w
    # the decayed keys only per channel; else k (its key heads), the scalar decay going on U
    keys = terms.keys if per_channel else k
    launch(state_kernel, (pack.sequences * value_heads, triton.cdiv(value_dim, cfg["h.BV"])),
           keys, w if g is None else g, terms.chunk_decay, w, terms.u0, u, states,
           w if h0 is None else h0, w if final is None else final, pack.cu_seqlens,
           pack.chunk_offsets, value_heads if per_channel else heads, value_heads, key_dim,
           value_dim, GATE=gate_code(g), HAS_H0=h0 is not None, STORE_HT=final is not None,
           BT=cfg["BT"], KP=next_power_of_2(key_dim), BV=cfg["h.BV"],
           num_warps=cfg["h.num_warps"], num_stages=cfg["h.num_stages"], **backend_options(cfg))
    return u, states, final


def output_stage(q, g, terms: ChunkTerms, u, states, scale, cfg, pack):
    batch, length, heads, key_dim = q.shape
    value_heads, value_dim = u.shape[1:]
    out = new_output((batch, length, value_heads, value_dim), q.dtype, q.device)
    launch(output_kernel, (pack.chunks, triton.cdiv(value_dim, cfg["o.BV"]), value_heads), q,
           terms.scores if g is None else g, u, states, terms.scores, out, scale,
           pack.chunk_table, pack.cu_seqlens, heads, value_heads, key_dim, value_dim,
           GATE=gate_code(g), BT=cfg["BT"], BK=cfg["o.BK"], BV=cfg["o.BV"],
           num_warps=cfg["o.num_warps"], num_stages=cfg["o.num_stages"], **backend_options(cfg))
    return out


def run_forward(q, k, v, beta, g, scale, h0, output_final_state, cfg, pack):
    """The three stages on contiguous inputs: (o, final state or None, the states entering each
    chunk, as the state stage stores them)."""
    terms = wy_stage(q, k, v, beta, g, cfg, pack)
    u, states, final = state_stage(q, k, v, g, terms, h0, output_final_state, cfg, pack)
    return output_stage(q, g, terms, u, states, scale, cfg, pack), final, states
