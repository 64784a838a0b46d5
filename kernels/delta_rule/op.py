"""``delta_rule``: the chunkwise delta rule op (DeltaNet, Gated DeltaNet, KDA)."""
from __future__ import annotations

import numbers

import torch
import triton

from seqtune.checks import (expect_float, expect_same_device, expect_same_dtype, expect_shape,
                            expect_tensor)
from seqtune.kernels.delta_rule.kernels import output_kernel, state_kernel, wy_kernel
from seqtune.kernels.delta_rule.varlen import check_cu_seqlens, packing, uniform_bounds
from seqtune.launch import launch, new_output
from seqtune.loader import config_for
from seqtune.spec import Config, dtype_name, next_power_of_2

KERNEL = "delta_rule"
GATES = {"none": 0, "scalar": 1, "channel": 2}
# tl.dot needs 16 along every dimension; the kernels mask tiles wider than a head.
MIN_HEAD_DIM, MAX_HEAD_DIM = 16, 256


def delta_rule(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor,
               g: torch.Tensor | None = None, *, scale: float | None = None,
               initial_state: torch.Tensor | None = None, output_final_state: bool = False,
               cu_seqlens: torch.Tensor | None = None, config: Config | None = None
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The delta rule over a sequence, chunkwise.

    Recurrence per value head (S_0 = initial_state or zeros; q_t, k_t of its key head)::

        S' = diag(exp(g_t)) S_{t-1}
        S_t = S' + beta_t k_t (v_t - S'^T k_t)^T
        o_t = scale S_t^T q_t

    Args:
        q, k: [B, T, H, K] (keys L2-normalised, as the models use them), one float dtype.
        v: [B, T, HV, V] in q's dtype, HV a multiple of H: value head i reads key head
            i // (HV / H) (grouped value heads; q and k are not repeated in memory).
        beta: [B, T, HV] in (0, 1), q's dtype or float32. 16 <= K, V <= 256.
        g: log decay, q's dtype or float32: None (DeltaNet), [B, T, HV] (Gated DeltaNet) or
            [B, T, HV, K] (KDA).
        scale: defaults to K ** -0.5.
        initial_state: [N, HV, K, V] of any float dtype (used in float32), or None for zeros;
            N = B, or the number of sequences with ``cu_seqlens``.
        output_final_state: also return the state after each sequence's last token.
        cu_seqlens: int32/int64 [N + 1] boundaries of N sequences packed along T (batch 1),
            from 0, non-decreasing, ending at T (empty sequences allowed); no state crosses one.
        config: knobs of ``seqtune.kernels.delta_rule.spec``; None takes the tuned config.

    Returns:
        (o [B, T, HV, V] in q's dtype, final state [N, HV, K, V] float32 or None).
    """
    gate = _validate(q, k, v, beta, g, initial_state, scale)
    batch, length, heads, key_dim = q.shape
    value_heads, value_dim = v.shape[2:]
    varlen = cu_seqlens is not None
    bounds = (check_cu_seqlens(cu_seqlens, batch, length, q.device) if varlen
              else uniform_bounds(batch, length))
    sequences = len(bounds) - 1
    if initial_state is not None:
        expect_shape("initial_state", initial_state, (sequences, value_heads, key_dim, value_dim))
    problem = {"B": batch, "T": length, "H": heads, "GV": value_heads // heads,
               "N": sequences if varlen else 1, "K": key_dim, "V": value_dim, "gate": gate,
               "initial_state": initial_state is not None, "varlen": varlen,
               "dtype": dtype_name(q.dtype)}
    cfg = config_for(KERNEL, problem, config)
    scale = key_dim ** -0.5 if scale is None else float(scale)
    if length == 0:
        out = new_output((batch, 0, value_heads, value_dim), q.dtype, q.device)
        final = _unchanged_state(initial_state, (sequences, value_heads, key_dim, value_dim),
                                 q.device)
        return out, final if output_final_state else None
    q, k, v, beta = (x.contiguous() for x in (q, k, v, beta))
    g = None if g is None else g.contiguous()
    h0 = None if initial_state is None else initial_state.contiguous()
    pack = packing(bounds, cfg["BT"], q.device)
    out, final, _ = run_forward(q, k, v, beta, g, scale, h0, output_final_state, cfg, pack)
    return out, final


def _validate(q, k, v, beta, g, initial_state, scale) -> str:
    """The gate kind ("none" | "scalar" | "channel"), or a ValueError/TypeError naming the
    argument at fault."""
    expect_tensor("q", q, 4)
    batch, length, heads, key_dim = q.shape
    expect_tensor("k", k, 4)
    expect_shape("k", k, q.shape)
    expect_tensor("v", v, 4)
    if tuple(v.shape[:2]) != (batch, length) or heads == 0 or v.shape[2] % heads:
        raise ValueError(f"v must have shape ({batch}, {length}, HV, V) with HV a multiple of "
                         f"H={heads}, got {tuple(v.shape)}")
    value_heads = v.shape[2]
    expect_tensor("beta", beta, 3)
    expect_shape("beta", beta, (batch, length, value_heads))
    gate = _gate_kind(g, (batch, length, value_heads, key_dim))
    for name, dim in (("K", key_dim), ("V", v.shape[-1])):
        if not MIN_HEAD_DIM <= dim <= MAX_HEAD_DIM:
            raise ValueError(f"head dim {name}={dim} unsupported: expected "
                             f"{MIN_HEAD_DIM} <= {name} <= {MAX_HEAD_DIM}")
    expect_float("q", q)
    expect_same_dtype({"q": q, "k": k, "v": v})
    gates = {"beta": beta} | ({} if g is None else {"g": g})
    for name, tensor in gates.items():
        expect_float(name, tensor, tuple(dict.fromkeys((q.dtype, torch.float32))))
    if initial_state is not None:
        expect_tensor("initial_state", initial_state, 4)
        expect_float("initial_state", initial_state)
    expect_same_device({"q": q, "k": k, "v": v} | gates | {"initial_state": initial_state})
    if scale is not None and (not isinstance(scale, numbers.Real) or isinstance(scale, bool)):
        raise TypeError(f"scale must be a real number or None, got {type(scale).__name__}")
    return gate


def _gate_kind(g, channel_shape) -> str:
    if g is None:
        return "none"
    if not isinstance(g, torch.Tensor):
        raise TypeError(f"g must be a torch.Tensor or None, got {type(g).__name__}")
    if tuple(g.shape) == tuple(channel_shape[:3]):
        return "scalar"
    if tuple(g.shape) == tuple(channel_shape):
        return "channel"
    raise ValueError(f"g must have shape {tuple(channel_shape[:3])} (scalar gate) or "
                     f"{tuple(channel_shape)} (per-channel gate), got {tuple(g.shape)}")


def _unchanged_state(initial_state, shape, device) -> torch.Tensor:
    """The final state of empty sequences: the initial state (an fp32 copy), or zeros."""
    if initial_state is not None:
        return initial_state.to(torch.float32, copy=True)
    return torch.zeros(shape, dtype=torch.float32, device=device)


def run_forward(q, k, v, beta, g, scale, h0, output_final_state, cfg, pack):
    """The three stages on contiguous inputs: (o, final state or None, chunk states)."""
    batch, length, heads, key_dim = q.shape
    value_heads, value_dim = v.shape[2:]
    chunk, chunks = cfg["BT"], pack.chunks
    device, dtype = q.device, q.dtype
    gated = g is not None
    gate = GATES["none" if g is None else "scalar" if g.dim() == 3 else "channel"]
    tokens = batch * length
    # absent optional tensors: any pointer does, the constexpr flags keep them unread
    g_arg = g if gated else beta
    w = new_output((tokens, value_heads, key_dim), dtype, device)
    u0 = new_output((tokens, value_heads, value_dim), dtype, device)
    if gated:
        decayed_keys = new_output((tokens, value_heads, key_dim), dtype, device)
        chunk_decay = new_output((chunks, value_heads, key_dim), torch.float32, device)
    else:
        decayed_keys, chunk_decay = k, w
    scores = new_output((tokens, value_heads, chunk), dtype, device)
    launch(wy_kernel, (chunks, value_heads), q, k, v, beta, g_arg, w, u0, decayed_keys,
           chunk_decay, scores, pack.chunk_table, pack.cu_seqlens, heads, value_heads, key_dim,
           value_dim, GATE=gate, BT=chunk, BK=cfg["wy.BK"], BV=cfg["wy.BV"],
           num_warps=cfg["wy.num_warps"], num_stages=cfg["wy.num_stages"])

    u = new_output((tokens, value_heads, value_dim), dtype, device)
    states = new_output((chunks, value_heads, key_dim, value_dim), dtype, device)
    final = (new_output((pack.sequences, value_heads, key_dim, value_dim), torch.float32, device)
             if output_final_state else None)
    launch(state_kernel, (pack.sequences * value_heads, triton.cdiv(value_dim, cfg["h.BV"])),
           decayed_keys, chunk_decay, w, u0, u, states, w if h0 is None else h0,
           w if final is None else final, pack.cu_seqlens, pack.chunk_offsets,
           value_heads if gated else heads, value_heads, key_dim, value_dim, GATED=gated,
           HAS_H0=h0 is not None, STORE_HT=final is not None, BT=chunk,
           KP=next_power_of_2(key_dim), BV=cfg["h.BV"], num_warps=cfg["h.num_warps"],
           num_stages=cfg["h.num_stages"])

    out = new_output((batch, length, value_heads, value_dim), dtype, device)
    launch(output_kernel, (chunks, triton.cdiv(value_dim, cfg["o.BV"]), value_heads), q,
           g_arg, u, states, scores, out, scale, pack.chunk_table, pack.cu_seqlens, heads,
           value_heads, key_dim, value_dim, GATE=gate, BT=chunk, BK=cfg["o.BK"],
           BV=cfg["o.BV"], num_warps=cfg["o.num_warps"], num_stages=cfg["o.num_stages"])
    return out, final, states
