"""``delta_rule_step``: one decoding step of the delta rule, updating a state pool in place.

Per batch element b, value head hv (key head hv // (HV / H)) and its state row S =
state[state_indices[b]] (or state[b])::

    S' = diag(exp(g)) S;  S <- S' + beta k (v - S'^T k)^T;  o = scale S^T q

The kernel (grid: B * HV programs x V tiles) needs the whole of K for the prediction S'^T k
before it can update anything, so with K in one BK tile it reads and writes each state tile
once; with several it reads the state twice (prediction, then update and output).
"""
from __future__ import annotations

import numbers

import torch
import triton
import triton.language as tl

from seqtune.checks import (expect_float, expect_same_dtype, expect_shape, expect_state_indices,
                            expect_state_pool, expect_step_tensors, expect_tensor)
from seqtune.launch import backend_options, launch, new_output
from seqtune.loader import config_for
from seqtune.spec import Config, dtype_name

from seqtune.kernels.delta_rule.op import gate_kind

KERNEL = "delta_rule_step"
GATES = {"none": 0, "scalar": 1, "channel": 2}
MIN_HEAD_DIM, MAX_HEAD_DIM = 16, 256


@triton.jit
def _decayed_tile(state_row, q, k, g, batch, head, hv, HV, K, V, kcols, vcols, vmask,
                  GATE: tl.constexpr):
    """(S' tile [BK, BV] fp32, k and q along the tile's rows, fp32); the state read only
    where ``vmask`` holds."""
    kmask = kcols < K
    tile = tl.load(state_row + kcols[:, None] * V + vcols[None, :],
                   mask=kmask[:, None] & vmask[None, :], other=0.0)
    if GATE == 1:
        tile *= tl.exp(tl.load(g + batch * HV + hv).to(tl.float32))
    elif GATE == 2:
        decay = tl.load(g + (batch * HV + hv) * K + kcols, mask=kmask, other=0.0)
        tile *= tl.exp(decay.to(tl.float32))[:, None]
    key = tl.load(k + head * K + kcols, mask=kmask, other=0.0).to(tl.float32)
    query = tl.load(q + head * K + kcols, mask=kmask, other=0.0).to(tl.float32)
    return tile, key, query


@triton.jit
def step_kernel(q, k, v, beta, g, state, indices, o, scale, H, HV, K, V, N,
                GATE: tl.constexpr, HAS_INDICES: tl.constexpr, ONE_PASS: tl.constexpr,
                BK: tl.constexpr, BV: tl.constexpr):
    """One batch element, value head and V tile. Grid (B * HV, V tiles). A row outside
    [0, N) (a negative one: a padding slot) masks every state access off and stores zeros."""
    program, v_tile = tl.program_id(0), tl.program_id(1)
    batch, hv = program // HV, program % HV
    head = hv // (HV // H)
    q += batch.to(tl.int64) * H * K
    k += batch.to(tl.int64) * H * K
    if HAS_INDICES:
        row = tl.load(indices + batch).to(tl.int64)
    else:
        row = batch.to(tl.int64)
    state_row = state + (row * HV + hv) * K * V
    vcols = v_tile * BV + tl.arange(0, BV)
    # (The row is broadcast before the comparison: the interpreter rejects a mask made from a
    # scalar condition.)
    row_cols = tl.zeros_like(vcols).to(tl.int64) + row
    vmask = (vcols < V) & (row_cols >= 0) & (row_cols < N)
    value = tl.load(v + (batch.to(tl.int64) * HV + hv) * V + vcols, mask=vmask,
                    other=0.0).to(tl.float32)
    weight = tl.load(beta + batch * HV + hv).to(tl.float32)
    tile_offsets = tl.arange(0, BK)[:, None] * V + vcols[None, :]
    if ONE_PASS:
        kcols = tl.arange(0, BK)
        tile, key, query = _decayed_tile(state_row, q, k, g, batch, head, hv, HV, K, V, kcols,
                                         vcols, vmask, GATE)
        correction = weight * (value - tl.sum(tile * key[:, None], axis=0))
        tile += key[:, None] * correction[None, :]
        tl.store(state_row + tile_offsets, tile, mask=(kcols < K)[:, None] & vmask[None, :])
        out = tl.sum(tile * query[:, None], axis=0)
    else:
        predicted = tl.zeros([BV], dtype=tl.float32)
        for k0 in range(0, K, BK):
            kcols = k0 + tl.arange(0, BK)
            tile, key, _ = _decayed_tile(state_row, q, k, g, batch, head, hv, HV, K, V, kcols,
                                         vcols, vmask, GATE)
            predicted += tl.sum(tile * key[:, None], axis=0)
        correction = weight * (value - predicted)
        out = tl.zeros([BV], dtype=tl.float32)
        for k0 in range(0, K, BK):
            kcols = k0 + tl.arange(0, BK)
            tile, key, query = _decayed_tile(state_row, q, k, g, batch, head, hv, HV, K, V,
                                             kcols, vcols, vmask, GATE)
            tile += key[:, None] * correction[None, :]
            tl.store(state_row + k0 * V + tile_offsets, tile,
                     mask=(kcols < K)[:, None] & vmask[None, :])
            out += tl.sum(tile * query[:, None], axis=0)
    # where(), not the zero tile alone: a padded slot's inputs may hold anything (inf, NaN)
    out = tl.where(vmask, scale * out, 0.0)
    tl.store(o + (batch.to(tl.int64) * HV + hv) * V + vcols, out.to(o.dtype.element_ty),
             mask=vcols < V)


def delta_rule_step(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor,
                    g: torch.Tensor | None = None, *, state: torch.Tensor,
                    scale: float | None = None, state_indices: torch.Tensor | None = None,
                    config: Config | None = None) -> torch.Tensor:
    """One token of the delta rule per batch element; ``state`` is updated in place.

    Args:
        q, k: [B, H, K], one float dtype; v: [B, HV, V] in q's dtype, HV a multiple of H
            (value head i reads key head i // (HV / H)); 16 <= K, V <= 256.
        beta: [B, HV]; g: None, [B, HV] (scalar log decay) or [B, HV, K] (per channel); each
            in q's dtype or float32.
        state: [N, HV, K, V] float32; row state[state_indices[b]] (or state[b]
            without indices, then N == B) belongs to element b and is overwritten with the
            state after this token. Two elements must not share a row, and no input may be
            a view of the pool (undefined; refused when it shares the pool's storage). Not
            requiring grad, with its own memory (no stride-0 or expanded pool).
        scale: defaults to K ** -0.5.
        state_indices: int32/int64 [B] rows of ``state`` (a pool, as continuous batching
            keeps it), each < N; a negative index marks a padding slot (vLLM's PAD_SLOT_ID,
            SGLang's): no row is read or written for it and its output row is zero. Checked
            on the device on CUDA (no host read: a CUDA graph replays for any assignment).
        config: knobs of the ``delta_rule_step`` spec; None takes the tuned config.

    Returns:
        o: [B, HV, V] in q's dtype.
    """
    gate = _validate(q, k, v, beta, g, state, scale, state_indices)
    batch, heads, key_dim = q.shape
    value_heads, value_dim = v.shape[1:]
    problem = {"B": batch, "H": heads, "GV": value_heads // heads, "K": key_dim, "V": value_dim,
               "gate": gate, "indexed": state_indices is not None, "dtype": dtype_name(q.dtype)}
    cfg = config_for(KERNEL, problem, config)
    scale = key_dim ** -0.5 if scale is None else float(scale)
    out = new_output((batch, value_heads, value_dim), q.dtype, q.device)
    if batch == 0:
        return out
    q, k, v, beta = (x.contiguous() for x in (q, k, v, beta))
    g = None if g is None else g.contiguous()
    indices = None if state_indices is None else state_indices.contiguous()
    # a strided state is updated through a contiguous copy, written back
    pool = state.contiguous()
    launch(step_kernel, (batch * value_heads, triton.cdiv(value_dim, cfg["BV"])), q, k, v, beta,
           beta if g is None else g, pool, pool if indices is None else indices, out, scale,
           heads, value_heads, key_dim, value_dim, state.shape[0], GATE=GATES[gate],
           HAS_INDICES=indices is not None, ONE_PASS=cfg["BK"] >= key_dim, BK=cfg["BK"],
           BV=cfg["BV"], num_warps=cfg["num_warps"], **backend_options(cfg))
    if pool is not state:
        state.copy_(pool)
    return out


def _validate(q, k, v, beta, g, state, scale, state_indices) -> str:
    """The gate kind, or a one-line ValueError/TypeError naming the argument at fault."""
    expect_tensor("q", q, 3)
    batch, heads, key_dim = q.shape
    expect_tensor("k", k, 3)
    expect_shape("k", k, q.shape)
    expect_tensor("v", v, 3)
    if v.shape[0] != batch or heads == 0 or v.shape[1] % heads:
        raise ValueError(f"v must have shape ({batch}, HV, V) with HV a multiple of H={heads}, "
                         f"got {tuple(v.shape)}")
    value_heads, value_dim = v.shape[1:]
    for name, dim in (("K", key_dim), ("V", value_dim)):
        if not MIN_HEAD_DIM <= dim <= MAX_HEAD_DIM:
            raise ValueError(f"head dim {name}={dim} unsupported: expected "
                             f"{MIN_HEAD_DIM} <= {name} <= {MAX_HEAD_DIM}")
    expect_tensor("beta", beta, 2)
    expect_shape("beta", beta, (batch, value_heads))
    gate = gate_kind(g, (batch, value_heads, key_dim))
    expect_float("q", q)
    expect_same_dtype({"q": q, "k": k, "v": v})
    gates = {"beta": beta} | ({} if g is None else {"g": g})
    for name, tensor in gates.items():
        expect_float(name, tensor, tuple(dict.fromkeys((q.dtype, torch.float32))))
    expect_tensor("state", state, 4)
    if tuple(state.shape[1:]) != (value_heads, key_dim, value_dim):
        raise ValueError(f"state must have shape (N, {value_heads}, {key_dim}, {value_dim}), "
                         f"got {tuple(state.shape)}")
    expect_float("state", state, (torch.float32,))
    inputs = {"q": q, "k": k, "v": v} | gates | {"state_indices": state_indices}
    expect_step_tensors(inputs | {"state": state})
    expect_state_pool(state, inputs)
    _check_indices(state_indices, batch, state.shape[0])
    if scale is not None and (not isinstance(scale, numbers.Real) or isinstance(scale, bool)):
        raise TypeError(f"scale must be a real number or None, got {type(scale).__name__}")
    return gate


def _check_indices(state_indices, batch: int, rows: int) -> None:
    """state_indices: int [B] within the pool (an index outside would write outside the state);
    without them the pool has one row per element."""
    if state_indices is None:
        if rows != batch:
            raise ValueError(f"state has {rows} rows but the batch is {batch}; pass "
                             f"state_indices to use a state pool")
        return
    if not isinstance(state_indices, torch.Tensor):
        raise TypeError(f"state_indices must be a torch.Tensor or None, got "
                        f"{type(state_indices).__name__}")
    if state_indices.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"state_indices must be int32 or int64, got "
                         f"{str(state_indices.dtype).removeprefix('torch.')}")
    expect_shape("state_indices", state_indices, (batch,))
    expect_state_indices(state_indices, rows)
