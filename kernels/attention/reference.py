"""The float64 reference: the naive attention formula with an explicit mask, on the CPU.

It shares nothing with the kernels' tiling, online softmax or saved log-sum-exp: it forms each
score row in full (scaled, soft-capped, ALiBi-biased), masks it, and applies ``torch.softmax`` or
``torch.sigmoid``. Packed batches run sequence by sequence, each as a batch of one.
``attention_math`` is differentiable, so the backward's reference is float64 autograd through it.
"""
from __future__ import annotations

import dataclasses
import math

import torch

# Bounds the float64 score block formed at once (elements), so long sequences fit in memory.
SCORE_BLOCK_ELEMENTS = 1 << 25
NO_WINDOW = (-1, -1)


def attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                        causal: bool = False, scale: float | None = None,
                        score: str = "softmax", sigmoid_bias: float | None = None,
                        cu_seqlens: torch.Tensor | None = None,
                        cu_seqlens_k: torch.Tensor | None = None,
                        window: tuple[int, int] = NO_WINDOW, softcap: float = 0.0,
                        alibi_slopes: torch.Tensor | None = None) -> torch.Tensor:
    """``[B, T, Hq, Dv]`` float64 on the CPU; same arguments and meaning as ``attention``."""
    q, k, v = (x.detach().to("cpu", torch.float64) for x in (q, k, v))
    return attention_math(q, k, v, causal=causal, scale=scale, score=score,
                          sigmoid_bias=sigmoid_bias, cu_seqlens=cu_seqlens,
                          cu_seqlens_k=cu_seqlens_k, window=window, softcap=softcap,
                          alibi_slopes=alibi_slopes)


def attention_math(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool,
                   scale: float | None, score: str, sigmoid_bias: float | None,
                   cu_seqlens: torch.Tensor | None = None,
                   cu_seqlens_k: torch.Tensor | None = None,
                   window: tuple[int, int] = NO_WINDOW, softcap: float = 0.0,
                   alibi_slopes: torch.Tensor | None = None) -> torch.Tensor:
    """The formula on tensors of any float dtype and device, differentiable in q, k, v."""
    scores = _scores(q, causal, scale, window, softcap, alibi_slopes)
    packed = cu_seqlens is not None
    pieces = [_dense(q_part, k_part, v_part, scores.of(index, packed), score, sigmoid_bias)
              for index, (q_part, k_part, v_part)
              in enumerate(_sequences(q, k, v, cu_seqlens, cu_seqlens_k))]
    if not pieces:
        return q.new_zeros(*q.shape[:3], v.shape[3])
    return torch.cat(pieces, dim=1)


def row_log_sum_exp(q: torch.Tensor, k: torch.Tensor, *, causal: bool, scale: float | None,
                    cu_seqlens: torch.Tensor | None = None,
                    cu_seqlens_k: torch.Tensor | None = None,
                    window: tuple[int, int] = NO_WINDOW, softcap: float = 0.0,
                    alibi_slopes: torch.Tensor | None = None) -> torch.Tensor:
    """``[B, Hq, T]``: log2 of each query row's softmax normaliser (the forward's saved
    statistic), ``+inf`` for a row that sees no key."""
    scores = _scores(q, causal, scale, window, softcap, alibi_slopes)
    packed = cu_seqlens is not None
    rows = []
    for index, (q_part, k_part, _) in enumerate(_sequences(q, k, k, cu_seqlens, cu_seqlens_k)):
        batch, queries, heads, _ = q_part.shape
        lse = torch.full((batch, heads, queries), math.inf, dtype=q.dtype, device=q.device)
        for first, block_scores, visible in scores.of(index, packed).blocks(q_part, k_part):
            block = (torch.logsumexp(block_scores.masked_fill(~visible, -math.inf), dim=-1)
                     / math.log(2))
            lse[:, :, first:first + block.shape[2]] = torch.where(visible.any(dim=-1), block,
                                                                  math.inf)
        rows.append(lse)
    return torch.cat(rows, dim=2) if rows else q.new_full((q.shape[0], q.shape[2], 0), math.inf)


@dataclasses.dataclass(frozen=True)
class _Scores:
    """The score formula of one call: ``softcap * tanh(scale q.k / softcap)`` (or ``scale q.k``)
    minus ``slope * |i + S - T - j|``, visible where causal and the window allow."""

    causal: bool
    scale: float
    window: tuple[int, int]
    softcap: float
    alibi_slopes: torch.Tensor | None  # [Hq], or [B, Hq] ([N, Hq] when packed)
    sequence: int | None = None  # the packed sequence scored; None for a dense batch

    def of(self, sequence: int, packed: bool) -> "_Scores":
        """The formula of packed sequence ``sequence`` (its row of ``[N, Hq]`` slopes)."""
        return dataclasses.replace(self, sequence=sequence) if packed else self

    def _slopes(self, batch: int) -> torch.Tensor:
        """``[B, Hq, 1, 1]`` float64 slopes of the scored batch rows."""
        slopes = self.alibi_slopes.detach().to("cpu", torch.float64)
        if slopes.dim() == 2 and self.sequence is not None:
            slopes = slopes[self.sequence:self.sequence + 1]
        return slopes.expand(batch, slopes.shape[-1])[:, :, None, None]

    def blocks(self, q: torch.Tensor, k: torch.Tensor):
        """``(first row, scores [B, Hq, rows, S], visible [rows, S])`` over blocks of query
        rows of one sequence (a whole dense batch)."""
        batch, queries, heads, _ = q.shape
        keys, kv_heads = k.shape[1], k.shape[2]
        # Query head h reads key/value head h // (Hq // Hkv).
        k = k.repeat_interleave(heads // kv_heads, dim=2).permute(0, 2, 3, 1)  # [B, Hq, D, S]
        q = q.transpose(1, 2)  # [B, Hq, T, D]
        left, right = self.window
        if self.causal:
            right = 0
        rows_per_block = max(1, SCORE_BLOCK_ELEMENTS // max(1, batch * heads * keys))
        columns = torch.arange(keys, device=q.device)
        for first in range(0, queries, rows_per_block):
            rows = torch.arange(first, min(first + rows_per_block, queries), device=q.device)
            # Query i sits at key position i + S - T (bottom-right alignment).
            distance = rows[:, None] + keys - queries - columns[None, :]
            visible = torch.ones(len(rows), keys, dtype=torch.bool, device=q.device)
            if right >= 0:
                visible &= distance >= -right
            if left >= 0:
                visible &= distance <= left
            scores = q[:, :, first:first + len(rows)] @ k * self.scale
            if self.softcap > 0:
                scores = self.softcap * torch.tanh(scores / self.softcap)
            if self.alibi_slopes is not None:
                slopes = self._slopes(batch).to(scores)
                scores = scores - slopes * distance.abs().to(scores)
            yield first, scores, visible


def _scores(q, causal, scale, window, softcap, alibi_slopes) -> _Scores:
    scale = q.shape[3] ** -0.5 if scale is None else float(scale)
    return _Scores(bool(causal), scale, tuple(window), float(softcap), alibi_slopes)


def _sequences(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               cu_seqlens: torch.Tensor | None, cu_seqlens_k: torch.Tensor | None) -> list[tuple]:
    """``(q, k, v)`` of each sequence: the whole batch when dense."""
    if cu_seqlens is None:
        return [(q, k, v)]
    query_offsets = cu_seqlens.tolist()
    key_offsets = query_offsets if cu_seqlens_k is None else cu_seqlens_k.tolist()
    return [(q[:, q0:q1], k[:, k0:k1], v[:, k0:k1]) for q0, q1, k0, k1
            in zip(query_offsets, query_offsets[1:], key_offsets, key_offsets[1:])]


def _dense(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scores: _Scores, score: str,
           sigmoid_bias: float | None) -> torch.Tensor:
    batch, queries, heads, _ = q.shape
    keys, kv_heads, value_dim = k.shape[1], k.shape[2], v.shape[3]
    if keys == 0 or queries == 0:
        # No key is visible: every output row is the empty sum.
        return q.new_zeros(batch, queries, heads, value_dim)
    v = v.repeat_interleave(heads // kv_heads, dim=2).transpose(1, 2)  # [B, Hq, S, Dv]
    bias = -math.log(keys) if sigmoid_bias is None else float(sigmoid_bias)
    blocks = []
    for _, block_scores, visible in scores.blocks(q, k):
        if score == "softmax":
            weights = torch.softmax(block_scores.masked_fill(~visible, -math.inf), dim=-1)
            # A row with no visible key is all NaN after softmax; its output is defined as 0.
            weights = torch.where(visible.any(dim=-1)[:, None], weights, 0.0)
        else:
            weights = torch.sigmoid(block_scores + bias) * visible
        blocks.append(weights @ v)
    return torch.cat(blocks, dim=2).transpose(1, 2)
