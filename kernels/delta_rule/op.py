"""``delta_rule``: the chunkwise delta rule op (DeltaNet, Gated DeltaNet, KDA)."""
from __future__ import annotations

import numbers

import torch
import triton

from seqtune.checks import (expect_float, expect_same_device, expect_same_dtype, expect_shape,
                            expect_tensor)
from seqtune.kernels.delta_rule.kernels import output_kernel, state_kernel, wy_kernel
from seqtune.launch import launch, new_output
from seqtune.loader import config_for
from seqtune.spec import Config, dtype_name, next_power_of_2

KERNEL = "delta_rule"
GATES = {"none": 0, "scalar": 1, "channel": 2}
# The state kernel holds all of K (padded) in registers; below 32 the default config's tiles
# would exceed the head (and no model uses such heads).
MIN_HEAD_DIM, MAX_HEAD_DIM = 32, 256


def delta_rule(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor,
               g: torch.Tensor | None = None, *, scale: float | None = None,
               initial_state: torch.Tensor | None = None, output_final_state: bool = False,
               config: Config | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The delta rule over a sequence, chunkwise.

    Recurrence (S_0 = initial_state or zeros)::

        S' = diag(exp(g_t)) S_{t-1}
        S_t = S' + beta_t k_t (v_t - S'^T k_t)^T
        o_t = scale S_t^T q_t

    Args:
        q, k: [B, T, H, K] (keys L2-normalised, as the models use them); v: [B, T, H, V];
            beta: [B, T, H] in (0, 1); all one float dtype, 32 <= K, V <= 256.
        g: log decay: None (DeltaNet), [B, T, H] (Gated DeltaNet) or [B, T, H, K] (KDA).
        scale: defaults to K ** -0.5.
        initial_state: [B, H, K, V] float32, or None for zeros.
        output_final_state: also return the state after the last token.
        config: knobs of ``seqtune.kernels.delta_rule.spec``; None takes the tuned config.

    Returns:
        (o [B, T, H, V] in q's dtype, final state [B, H, K, V] float32 or None).
    """
    gate = _validate(q, k, v, beta, g, initial_state, scale)
    batch, length, heads, key_dim = q.shape
    value_dim = v.shape[-1]
    problem = {"B": batch, "T": length, "H": heads, "K": key_dim, "V": value_dim, "gate": gate,
               "initial_state": initial_state is not None, "dtype": dtype_name(q.dtype)}
    cfg = config_for(KERNEL, problem, config)
    scale = key_dim ** -0.5 if scale is None else float(scale)
    if length == 0:
        out = new_output((batch, 0, heads, value_dim), q.dtype, q.device)
        return out, _unchanged_state(initial_state, q, value_dim) if output_final_state else None
    q, k, v, beta = (x.contiguous() for x in (q, k, v, beta))
    g = None if g is None else g.contiguous()
    h0 = None if initial_state is None else initial_state.contiguous()
    return _run_stages(q, k, v, beta, g, GATES[gate], scale, h0, output_final_state, cfg)


def _validate(q, k, v, beta, g, initial_state, scale) -> str:
    """The gate kind ("none" | "scalar" | "channel"), or a ValueError/TypeError naming the
    argument at fault."""
    expect_tensor("q", q, 4)
    batch, length, heads, key_dim = q.shape
    expect_tensor("k", k, 4)
    expect_shape("k", k, q.shape)
    expect_tensor("v", v, 4)
    if tuple(v.shape[:3]) != (batch, length, heads):
        raise ValueError(f"v must have shape ({batch}, {length}, {heads}, V) like q, "
                         f"got {tuple(v.shape)}")
    expect_tensor("beta", beta, 3)
    expect_shape("beta", beta, (batch, length, heads))
    gate = _gate_kind(g, q.shape)
    for name, dim in (("K", key_dim), ("V", v.shape[-1])):
        if not MIN_HEAD_DIM <= dim <= MAX_HEAD_DIM:
            raise ValueError(f"head dim {name}={dim} unsupported: expected "
                             f"{MIN_HEAD_DIM} <= {name} <= {MAX_HEAD_DIM}")
    expect_float("q", q)
    gated = {"q": q, "k": k, "v": v, "beta": beta} | ({} if g is None else {"g": g})
    expect_same_dtype(gated)
    if initial_state is not None:
        expect_tensor("initial_state", initial_state, 4)
        expect_shape("initial_state", initial_state, (batch, heads, key_dim, v.shape[-1]))
        expect_float("initial_state", initial_state, (torch.float32,))
    expect_same_device(gated | {"initial_state": initial_state})
    if scale is not None and (not isinstance(scale, numbers.Real) or isinstance(scale, bool)):
        raise TypeError(f"scale must be a real number or None, got {type(scale).__name__}")
    return gate


def _gate_kind(g, q_shape) -> str:
    if g is None:
        return "none"
    if not isinstance(g, torch.Tensor):
        raise TypeError(f"g must be a torch.Tensor or None, got {type(g).__name__}")
    if tuple(g.shape) == tuple(q_shape[:3]):
        return "scalar"
    if tuple(g.shape) == tuple(q_shape):
        return "channel"
    raise ValueError(f"g must have shape {tuple(q_shape[:3])} (scalar gate) or "
                     f"{tuple(q_shape)} (per-channel gate), got {tuple(g.shape)}")


def _unchanged_state(initial_state, q, value_dim) -> torch.Tensor:
    """The final state of an empty sequence: the initial state (a copy), or zeros."""
    if initial_state is not None:
        return initial_state.clone()
    batch, _, heads, key_dim = q.shape
    return torch.zeros(batch, heads, key_dim, value_dim, dtype=torch.float32, device=q.device)


def _run_stages(q, k, v, beta, g, gate, scale, h0, output_final_state, cfg):
    batch, length, heads, key_dim = q.shape
    value_dim = v.shape[-1]
    chunk = cfg["BT"]
    chunks = triton.cdiv(length, chunk)
    device, dtype = q.device, q.dtype
    gated = g is not None
    # absent optional tensors: any pointer does, the constexpr flags keep them unread
    g_arg = g if gated else beta
    w = new_output((batch, length, heads, key_dim), dtype, device)
    u0 = new_output((batch, length, heads, value_dim), dtype, device)
    if gated:
        decayed_keys = new_output((batch, length, heads, key_dim), dtype, device)
        chunk_decay = new_output((batch * heads, chunks, key_dim), torch.float32, device)
    else:
        decayed_keys, chunk_decay = k, w
    scores = new_output((batch, length, heads, chunk), dtype, device)
    launch(wy_kernel, (chunks, batch * heads), q, k, v, beta, g_arg, w, u0, decayed_keys,
           chunk_decay, scores, length, heads, key_dim, value_dim, chunks, GATE=gate, BT=chunk,
           BK=cfg["wy.BK"], BV=cfg["wy.BV"], num_warps=cfg["wy.num_warps"],
           num_stages=cfg["wy.num_stages"])

    u = new_output((batch, length, heads, value_dim), dtype, device)
    states = new_output((batch * heads, chunks, key_dim, value_dim), dtype, device)
    final = (new_output((batch, heads, key_dim, value_dim), torch.float32, device)
             if output_final_state else None)
    launch(state_kernel, (triton.cdiv(value_dim, cfg["h.BV"]), batch * heads), decayed_keys,
           chunk_decay, w, u0, u, states, w if h0 is None else h0, w if final is None else final,
           length, heads, key_dim, value_dim, chunks, GATED=gated, HAS_H0=h0 is not None,
           STORE_HT=final is not None, BT=chunk, KP=next_power_of_2(key_dim), BV=cfg["h.BV"],
           num_warps=cfg["h.num_warps"], num_stages=cfg["h.num_stages"])

    out = new_output((batch, length, heads, value_dim), dtype, device)
    launch(output_kernel, (triton.cdiv(value_dim, cfg["o.BV"]), chunks, batch * heads), q,
           g_arg, u, states, scores, out, scale, length, heads, key_dim, value_dim, chunks,
           GATE=gate, BT=chunk, BK=cfg["o.BK"], BV=cfg["o.BV"], num_warps=cfg["o.num_warps"],
           num_stages=cfg["o.num_stages"])
    return out, final
