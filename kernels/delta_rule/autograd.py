"""The backward of ``delta_rule`` (``library.py`` registers it as an op): the forward keeps only
its inputs (no per-step and no per-chunk state); the backward recomputes the wy and h stages
with its own config, runs the reverse state recurrence (``dstate_kernel``) and the per-chunk
gradients (``dchunk_kernel``).
"""
from __future__ import annotations

import torch
import triton

from seqtune.kernels.delta_rule.backward import dchunk_kernel, dstate_kernel
from seqtune.kernels.delta_rule.stages import GATE_CHANNEL, gate_code, state_stage, wy_stage
from seqtune.launch import backend_options, launch, new_output
from seqtune.spec import next_power_of_2


def run_backward(q, k, v, beta, g, scale, h0, do, dht, cfg, pack, need_dh0=True):
    """Gradients of contiguous inputs for upstream ``do`` [B, T, HV, V] and ``dht``
    [N, HV, K, V] (or None): (dq, dk, dv, dbeta, dg or None, dh0 or None), each in its input's
    dtype (dh0 in float32 when there is no initial state to take the dtype of)."""
    terms = wy_stage(q, k, v, beta, g, cfg, pack, backward=True)
    u, states, _ = state_stage(q, k, v, g, terms, h0, False, cfg, pack)
    dstates, du, dh0 = _dstate_stage(q, g, terms, do, dht, scale, cfg, pack, need_dh0)
    dq, dk, dv, dbeta, dg = _dchunk_stage(q, k, v, beta, g, u, states, dstates, do, du, scale,
                                          cfg, pack)
    batch, length, heads, key_dim = q.shape
    group = v.shape[2] // heads

    def per_key_head(grad):
        return grad.view(batch, length, heads, group, key_dim).sum(3).to(q.dtype)

    return (per_key_head(dq), per_key_head(dk), dv.view(v.shape).to(v.dtype),
            dbeta.view(beta.shape).to(beta.dtype),
            None if g is None else dg.view(g.shape).to(g.dtype),
            None if dh0 is None else dh0.to(torch.float32 if h0 is None else h0.dtype))


def _dstate_stage(q, g, terms, do, dht, scale, cfg, pack, need_dh0):
    heads, key_dim = q.shape[2:]
    value_heads, value_dim = do.shape[2:]
    device, dtype, tokens = q.device, q.dtype, q.shape[0] * q.shape[1]
    dstates = new_output((pack.chunks, value_heads, key_dim, value_dim), torch.float32, device)
    du = new_output((tokens, value_heads, value_dim), torch.float32, device)
    dh0 = (new_output((pack.sequences, value_heads, key_dim, value_dim), torch.float32, device)
           if need_dh0 else None)
    keys, queries = terms.keys, q if terms.queries is None else terms.queries
    key_heads = value_heads if gate_code(g) == GATE_CHANNEL else heads  # of keys
    launch(dstate_kernel, (pack.sequences * value_heads, triton.cdiv(value_dim, cfg["dh.BV"])),
           queries, terms.scores if g is None else g, keys, terms.chunk_decay, terms.w,
           terms.scores, do, du, dstates, du if dht is None else dht,
           du if dh0 is None else dh0, pack.cu_seqlens, pack.chunk_offsets, scale, heads,
           key_heads, value_heads, key_dim, value_dim,
           GATE=gate_code(g), HAS_DHT=dht is not None, STORE_DH0=dh0 is not None,
           EXACT=dtype == torch.float32, BT=cfg["BT"],
           KP=next_power_of_2(key_dim), BV=cfg["dh.BV"], num_warps=cfg["dh.num_warps"],
           num_stages=cfg["dh.num_stages"], **backend_options(cfg))
    return dstates, du, dh0


def _dchunk_stage(q, k, v, beta, g, u, states, dstates, do, du, scale, cfg, pack):
    heads, key_dim = q.shape[2:]
    value_heads, value_dim = v.shape[2:]
    device, tokens = q.device, q.shape[0] * q.shape[1]

    def buffer(*shape):
        return new_output(shape, torch.float32, device)

    dq, dk = buffer(tokens, value_heads, key_dim), buffer(tokens, value_heads, key_dim)
    dv, dbeta = buffer(tokens, value_heads, value_dim), buffer(tokens, value_heads)
    dg = None if g is None else buffer(*((tokens, value_heads) + tuple(g.shape[3:])))
    launch(dchunk_kernel, (pack.chunks, value_heads), q, k, v, beta, beta if g is None else g,
           u, states, dstates, do, du, dq, dk, dv, dbeta, dbeta if dg is None else dg,
           pack.chunk_table, pack.cu_seqlens, scale, heads, value_heads, key_dim, value_dim,
           GATE=gate_code(g), BT=cfg["BT"], BK=cfg["dqk.BK"], BV=cfg["dqk.BV"],
           num_warps=cfg["dqk.num_warps"], num_stages=cfg["dqk.num_stages"], **backend_options(cfg))
    return dq, dk, dv, dbeta, dg
