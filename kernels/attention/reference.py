"""The float64 reference: the naive attention formula with an explicit mask, on the CPU.

It shares nothing with the kernels' tiling, online softmax or saved log-sum-exp: it forms each
score row in full, masks it, and applies ``torch.softmax`` or ``torch.sigmoid``. Packed batches
run sequence by sequence, each as a batch of one. ``attention_math`` is differentiable, so the
backward's reference is float64 autograd through it.
"""
from __future__ import annotations

import math

import torch

# Bounds the float64 score block formed at once (elements), so long sequences fit in memory.
SCORE_BLOCK_ELEMENTS = 1 << 25


def attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                        causal: bool = False, scale: float | None = None,
                        score: str = "softmax", sigmoid_bias: float | None = None,
                        cu_seqlens: torch.Tensor | None = None,
                        cu_seqlens_k: torch.Tensor | None = None) -> torch.Tensor:
    """``[B, T, Hq, Dv]`` float64 on the CPU; same arguments and meaning as ``attention``."""
    q, k, v = (x.detach().to("cpu", torch.float64) for x in (q, k, v))
    return attention_math(q, k, v, causal=causal, scale=scale, score=score,
                          sigmoid_bias=sigmoid_bias, cu_seqlens=cu_seqlens,
                          cu_seqlens_k=cu_seqlens_k)


def attention_math(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool,
                   scale: float | None, score: str, sigmoid_bias: float | None,
                   cu_seqlens: torch.Tensor | None = None,
                   cu_seqlens_k: torch.Tensor | None = None) -> torch.Tensor:
    """The formula on tensors of any float dtype and device, differentiable in q, k, v."""
    scale = q.shape[3] ** -0.5 if scale is None else float(scale)
    pieces = [_dense(q_part, k_part, v_part, causal, scale, score, sigmoid_bias)
              for q_part, k_part, v_part in _sequences(q, k, v, cu_seqlens, cu_seqlens_k)]
    if not pieces:
        return q.new_zeros(*q.shape[:3], v.shape[3])
    return torch.cat(pieces, dim=1)


def row_log_sum_exp(q: torch.Tensor, k: torch.Tensor, *, causal: bool, scale: float | None,
                    cu_seqlens: torch.Tensor | None = None,
                    cu_seqlens_k: torch.Tensor | None = None) -> torch.Tensor:
    """``[B, Hq, T]``: log2 of each query row's softmax normaliser (the forward's saved
    statistic), ``+inf`` for a row that sees no key."""
    scale = q.shape[3] ** -0.5 if scale is None else float(scale)
    rows = []
    for q_part, k_part, _ in _sequences(q, k, k, cu_seqlens, cu_seqlens_k):
        batch, queries, heads, _ = q_part.shape
        lse = torch.full((batch, heads, queries), math.inf, dtype=q.dtype, device=q.device)
        for first, scores, visible in _score_blocks(q_part, k_part, causal, scale):
            block = torch.logsumexp(scores.masked_fill(~visible, -math.inf), dim=-1) / math.log(2)
            lse[:, :, first:first + block.shape[2]] = torch.where(visible.any(dim=-1), block,
                                                                  math.inf)
        rows.append(lse)
    return torch.cat(rows, dim=2) if rows else q.new_full((q.shape[0], q.shape[2], 0), math.inf)


def _sequences(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               cu_seqlens: torch.Tensor | None, cu_seqlens_k: torch.Tensor | None) -> list[tuple]:
    """``(q, k, v)`` of each sequence: the whole batch when dense."""
    if cu_seqlens is None:
        return [(q, k, v)]
    query_offsets = cu_seqlens.tolist()
    key_offsets = query_offsets if cu_seqlens_k is None else cu_seqlens_k.tolist()
    return [(q[:, q0:q1], k[:, k0:k1], v[:, k0:k1]) for q0, q1, k0, k1
            in zip(query_offsets, query_offsets[1:], key_offsets, key_offsets[1:])]


def _score_blocks(q: torch.Tensor, k: torch.Tensor, causal: bool, scale: float):
    """``(first row, scores [B, Hq, rows, S], visible [rows, S])`` over blocks of query rows."""
    batch, queries, heads, _ = q.shape
    keys, kv_heads = k.shape[1], k.shape[2]
    # Query head h reads key/value head h // (Hq // Hkv).
    k = k.repeat_interleave(heads // kv_heads, dim=2).permute(0, 2, 3, 1)  # [B, Hq, D, S]
    q = q.transpose(1, 2)  # [B, Hq, T, D]
    rows_per_block = max(1, SCORE_BLOCK_ELEMENTS // max(1, batch * heads * keys))
    for first in range(0, queries, rows_per_block):
        rows = torch.arange(first, min(first + rows_per_block, queries), device=q.device)
        visible = torch.ones(len(rows), keys, dtype=torch.bool, device=q.device)
        if causal:
            visible = torch.arange(keys, device=q.device)[None, :] <= rows[:, None] + keys - queries
        yield first, q[:, :, first:first + len(rows)] @ k * scale, visible


def _dense(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float,
           score: str, sigmoid_bias: float | None) -> torch.Tensor:
    batch, queries, heads, _ = q.shape
    keys, kv_heads, value_dim = k.shape[1], k.shape[2], v.shape[3]
    if keys == 0 or queries == 0:
        # No key is visible: every output row is the empty sum.
        return q.new_zeros(batch, queries, heads, value_dim)
    v = v.repeat_interleave(heads // kv_heads, dim=2).transpose(1, 2)  # [B, Hq, S, Dv]
    bias = -math.log(keys) if sigmoid_bias is None else float(sigmoid_bias)
    blocks = []
    for _, scores, visible in _score_blocks(q, k, causal, scale):
        if score == "softmax":
            weights = torch.softmax(scores.masked_fill(~visible, -math.inf), dim=-1)
            # A row with no visible key is all NaN after softmax; its output is defined as 0.
            weights = torch.where(visible.any(dim=-1)[:, None], weights, 0.0)
        else:
            weights = torch.sigmoid(scores + bias) * visible
        blocks.append(weights @ v)
    return torch.cat(blocks, dim=2).transpose(1, 2)
