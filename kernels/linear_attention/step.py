"""One-token decode steps: ``linear_attention_step`` and ``ssd_step`` on one Triton kernel.

Per batch element and value head: S <- diag(exp(g)) S + k v^T, o = scale S^T q (+ D x), with the
state row S = state[state_indices[b]] (or state[b]) read and written in place, in fp32. SSD is the
scalar-decay case with q = C, k = B (grouped), v = dt x, g = dt A and scale 1, as in the chunkwise
op (``ssd.py``).
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
import triton
import triton.language as tl

from seqtune.checks import (expect_float, expect_same_dtype, expect_shape, expect_state_indices,
                            expect_state_pool, expect_step_tensors, expect_tensor)
from seqtune.kernels.linear_attention.kernels import GATES
from seqtune.kernels.linear_attention.op import expect_head_dim
from seqtune.kernels.linear_attention.ssd import step_sizes
from seqtune.launch import backend_options, launch, new_output
from seqtune.loader import config_for
from seqtune.spec import dtype_name


@triton.jit
def _step_kernel(q, k, v, g, vs, D, state, idx, o, H, QK_GROUP, scale, N,
                 sqb, sqh, sqd, skb, skh, skd, svb, svh, svd, sgb, sgh, sgd,
                 ssn, ssh, ssk, ssv, sob, soh, sod,
                 K: tl.constexpr, V: tl.constexpr, GATE: tl.constexpr, VSCALE: tl.constexpr,
                 HAS_D: tl.constexpr, INDEXED: tl.constexpr, BK: tl.constexpr,
                 BV: tl.constexpr):
    """A [K, BV] column block of one state row, one step. Grid (V/BV, B*H). A row outside
    [0, N) (a negative one: a padding slot) masks every state access off and stores zeros."""
    pid_v, bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    b, h = bh // H, bh % H
    row = b
    if INDEXED:
        row = tl.load(idx + b).to(tl.int64)
    e = pid_v * BV + tl.arange(0, BV)
    # (The row is broadcast before the comparison: the interpreter rejects a mask made from a
    # scalar condition.)
    row_e = tl.zeros_like(e).to(tl.int64) + row
    e_mask = (e < V) & (row_e >= 0) & (row_e < N)
    v_raw = tl.load(v + b * svb + h * svh + e * svd, mask=e_mask, other=0.0).to(tl.float32)
    v_in = v_raw
    if VSCALE:
        v_in = v_raw * tl.load(vs + bh)
    qk_head = h // QK_GROUP
    state_base = state + row * ssn + h * ssh + e[None, :] * ssv
    if GATE == 1:
        decay = tl.exp(tl.load(g + b * sgb + h * sgh).to(tl.float32))
    out = tl.zeros([BV], dtype=tl.float32)
    for k0 in range(0, K, BK):
        d = k0 + tl.arange(0, BK)
        d_mask = d < K
        mask = d_mask[:, None] & e_mask[None, :]
        block = tl.load(state_base + d[:, None] * ssk, mask=mask, other=0.0)
        if GATE == 1:
            block *= decay
        elif GATE == 2:
            channel = tl.load(g + b * sgb + h * sgh + d * sgd, mask=d_mask, other=0.0)
            block *= tl.exp(channel.to(tl.float32))[:, None]
        k_vec = tl.load(k + b * skb + qk_head * skh + d * skd, mask=d_mask, other=0.0)
        q_vec = tl.load(q + b * sqb + qk_head * sqh + d * sqd, mask=d_mask, other=0.0)
        block += k_vec.to(tl.float32)[:, None] * v_in[None, :]
        tl.store(state_base + d[:, None] * ssk, block, mask=mask)
        out += tl.sum(q_vec.to(tl.float32)[:, None] * block, axis=0)
    out *= scale
    if HAS_D:
        out += tl.load(D + h).to(tl.float32) * v_raw
    # where(), not the zero block alone: a padded slot's inputs may hold anything (inf, NaN)
    out = tl.where(e_mask, out, 0.0)
    tl.store(o + b * sob + h * soh + e * sod, out.to(o.dtype.element_ty), mask=e < V)


def _check_state(state: torch.Tensor, heads: int, K: int, V: int, batch: int,
                 state_indices: torch.Tensor | None, inputs: dict) -> None:
    """The pool and its indices (see ``expect_state_pool``, ``expect_state_indices``)."""
    expect_tensor("state", state, 4)
    if state.dtype != torch.float32:
        raise TypeError(f"state has dtype {str(state.dtype).removeprefix('torch.')}, "
                        f"expected float32 (it is updated in place)")
    expect_shape("state", state, (state.shape[0], heads, K, V))
    expect_step_tensors(inputs | {"state": state, "state_indices": state_indices})
    expect_state_pool(state, inputs | {"state_indices": state_indices})
    if state_indices is None:
        if state.shape[0] != batch:
            raise ValueError(f"state must have {batch} rows (one per batch element) without "
                             f"state_indices, got {state.shape[0]}")
        return
    expect_tensor("state_indices", state_indices, 1)
    if state_indices.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"state_indices has dtype "
                        f"{str(state_indices.dtype).removeprefix('torch.')}, expected int32 or "
                        f"int64")
    expect_shape("state_indices", state_indices, (batch,))
    expect_state_indices(state_indices, state.shape[0])


def _run_step(q, k, v, g, v_scale, D, state, state_indices, scale, gate, cfg) -> torch.Tensor:
    batch, heads, V = v.shape
    K = q.shape[2]
    out = new_output((batch, heads, V), q.dtype, q.device)
    if batch == 0 or heads == 0:
        return out
    g_strides = (0, 0, 0) if g is None else tuple(g.stride()) + (0,) * (3 - g.dim())
    launch(_step_kernel, (triton.cdiv(V, cfg["BV"]), batch * heads),
           q, k, v, g if g is not None else q, v_scale if v_scale is not None else q,
           D if D is not None else q, state,
           state_indices.contiguous() if state_indices is not None else q, out, heads,
           heads // q.shape[1], float(scale), state.shape[0], *q.stride(), *k.stride(),
           *v.stride(), *g_strides, *state.stride(), *out.stride(), K=K, V=V, GATE=GATES[gate],
           VSCALE=v_scale is not None, HAS_D=D is not None,
           INDEXED=state_indices is not None, BK=cfg["BK"], BV=cfg["BV"],
           num_warps=cfg["num_warps"], **backend_options(cfg))
    return out


def linear_attention_step(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                          g: torch.Tensor | None = None, *, state: torch.Tensor,
                          scale: float | None = None, state_indices: torch.Tensor | None = None,
                          config: Mapping[str, Any] | None = None) -> torch.Tensor:
    """One token of ``linear_attention``: S <- diag(exp(g)) S + k v^T, o = scale S^T q.

    Args:
        q, k: [B, H, K]; v: [B, HV, V] with HV a multiple of H (value head i reads q/k head
            i // (HV / H)); one float dtype.
        g: log decay: None, [B, HV] (scalar) or [B, HV, K] (per channel); fp32 or q's dtype.
        state: [N, HV, K, V] fp32, updated in place: not requiring grad, with its own memory
            (no stride-0 or expanded pool); an input that is a view of it is undefined (and
            refused when it shares the pool's storage).
        scale: defaults to K ** -0.5.
        state_indices: int32/int64 [B]: batch element i owns state row state_indices[i]
            (a state pool; distinct rows, each < N); without it N == B and row i is element
            i. A negative index marks a padding slot (vLLM's PAD_SLOT_ID, SGLang's): no row
            is read or written for it and its output row is zero. Checked on the device on
            CUDA (no host read: a CUDA graph replays for any assignment).
        config: a (partial) config of the ``linear_attention_step`` kernel.

    Returns:
        o [B, HV, V] in q's dtype.
    """
    for name, tensor in (("q", q), ("k", k), ("v", v)):
        expect_tensor(name, tensor, 3)
        expect_float(name, tensor)
    expect_same_dtype({"q": q, "k": k, "v": v})
    batch, H, K = q.shape
    expect_shape("k", k, q.shape)
    HV, V = v.shape[1], v.shape[2]
    expect_shape("v", v, (batch, HV, V))
    if H == 0 or HV % H:
        raise ValueError(f"the value heads of v ({HV}) must be a multiple of the heads of q and "
                         f"k ({H})")
    expect_head_dim("K (the last dim of q and k)", K)
    expect_head_dim("V (the last dim of v)", V)
    gate = _step_gate(g, batch, HV, K, q.dtype)
    _check_state(state, HV, K, V, batch, state_indices, {"q": q, "k": k, "v": v, "g": g})
    problem = {"B": batch, "H": H, "K": K, "V": V, "gate": gate, "dtype": dtype_name(q.dtype),
               "GV": HV // H, "indexed": state_indices is not None}
    cfg = config_for("linear_attention_step", problem, config)
    return _run_step(q, k, v, g, None, None, state, state_indices,
                     K ** -0.5 if scale is None else scale, gate, cfg)


def _step_gate(g: torch.Tensor | None, batch: int, HV: int, K: int, dtype: torch.dtype) -> str:
    if g is None:
        return "none"
    if not isinstance(g, torch.Tensor):
        raise TypeError(f"g must be a torch.Tensor or None, got {type(g).__name__}")
    if g.dim() == 2:
        expect_shape("g", g, (batch, HV))
    elif g.dim() == 3:
        expect_shape("g", g, (batch, HV, K))
    else:
        raise ValueError(f"g must have shape {(batch, HV)} (scalar decay) or {(batch, HV, K)} "
                         f"(per-channel decay), got {tuple(g.shape)}")
    expect_float("g", g, (torch.float32, dtype))
    return "scalar" if g.dim() == 2 else "channel"


def _check_ssd_step(x, dt, A, B, C, D, dt_bias) -> None:
    for name, tensor, ndim in (("x", x, 3), ("dt", dt, 2), ("A", A, 1), ("B", B, 3), ("C", C, 3)):
        expect_tensor(name, tensor, ndim)
        expect_float(name, tensor)
    expect_same_dtype({"x": x, "B": B, "C": C})
    batch, heads, p = x.shape
    groups, n = B.shape[1], B.shape[2]
    expect_shape("dt", dt, (batch, heads))
    expect_shape("A", A, (heads,))
    expect_shape("C", C, (batch, groups, n))
    if groups == 0 or heads % groups:
        raise ValueError(f"the heads of x ({heads}) must be a multiple of the groups of B and C "
                         f"({groups})")
    expect_head_dim("p (the last dim of x)", p)
    expect_head_dim("n (the last dim of B and C)", n)
    for name, value in (("D", D), ("dt_bias", dt_bias)):
        if value is not None:
            expect_tensor(name, value, 1)
            expect_float(name, value)
            expect_shape(name, value, (heads,))


def ssd_step(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
             C: torch.Tensor, *, state: torch.Tensor, D: torch.Tensor | None = None,
             dt_bias: torch.Tensor | None = None, dt_softplus: bool = False,
             state_indices: torch.Tensor | None = None,
             config: Mapping[str, Any] | None = None) -> torch.Tensor:
    """One token of ``ssd`` (Mamba-2's selective_state_update, per-head layout):
    h <- exp(dt A) h + dt B x^T, y = C^T h + D x.

    Args:
        x: [B, h, p]; B, C: [B, g, n] with h % g == 0; x, B and C in one float dtype.
        dt: [B, h]; A: [h]; D, dt_bias: [h]; any float dtype (used in fp32).
        state: [N, h, n, p] fp32 (ssd's state layout), updated in place: not requiring grad,
            with its own memory (no stride-0 or expanded pool); an input that is a view of it
            is undefined (and refused when it shares the pool's storage).
        dt_softplus: dt <- softplus(dt + dt_bias) rather than dt + dt_bias.
        state_indices: int32/int64 [B]: batch element i owns state row state_indices[i]
            (distinct rows, each < N); without it N == B. A negative index marks a padding
            slot: no row is read or written for it and its output row is zero. Checked on the
            device on CUDA (no host read: a CUDA graph replays for any assignment).
        config: a (partial) config of the ``ssd_step`` kernel.

    Returns:
        y [B, h, p] in x's dtype.
    """
    _check_ssd_step(x, dt, A, B, C, D, dt_bias)
    batch, heads, p = x.shape
    n = B.shape[2]
    _check_state(state, heads, n, p, batch, state_indices,
                 {"x": x, "dt": dt, "A": A, "B": B, "C": C, "D": D, "dt_bias": dt_bias})
    problem = {"b": batch, "h": heads, "g": B.shape[1], "n": n, "p": p, "has_D": D is not None,
               "dtype": dtype_name(x.dtype), "indexed": state_indices is not None}
    cfg = config_for("ssd_step", problem, config)
    step = step_sizes(dt, dt_bias, dt_softplus)
    log_decay = step * A.to(torch.float32)
    return _run_step(C, B, x, log_decay, step, None if D is None else D.contiguous(), state,
                     state_indices, 1.0, "scalar", cfg)
