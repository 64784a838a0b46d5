"""The float64 reference of ``attention_decode``: naive softmax attention per sequence over its
own visible keys, gathered one by one on the CPU, sharing nothing with the split-KV kernels."""
from __future__ import annotations

import math

import torch


def attention_decode_reference(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                               cache_seqlens: torch.Tensor, scale: float | None = None, *,
                               block_table: torch.Tensor | None = None,
                               cache_leftpad: torch.Tensor | None = None,
                               window: tuple[int, int] = (-1, -1), softcap: float = 0.0,
                               alibi_slopes: torch.Tensor | None = None,
                               return_lse: bool = False):
    """``o[b, h] = softmax(s) V_b`` with ``s = cap(scale * q[b, h] . K_b^T) - slope * (i - j)``
    over the visible positions ``j`` of kv head ``h // (Hq // Hkv)``: ``[cache_leftpad[b],
    cache_seqlens[b])``, and ``j >= i - window[0]`` where ``i = cache_seqlens[b] - 1`` is the
    query's position. ``cap(x) = softcap * tanh(x / softcap)`` when ``softcap > 0``. Position
    ``j`` of a paged cache is row ``j % block_size`` of block ``block_table[b, j // block_size]``.
    Zero output and ``lse = +inf`` for a sequence that sees no key. Float64 on the CPU; returns
    ``o`` or, with ``return_lse``, ``(o, lse [B, Hq])``."""
    batch, num_q_heads, head_dim = q.shape
    group_size = num_q_heads // k_cache.shape[2]
    scale = head_dim ** -0.5 if scale is None else scale
    queries = q.detach().to("cpu", torch.float64)
    out = torch.zeros(batch, num_q_heads, head_dim, dtype=torch.float64)
    lse = torch.full((batch, num_q_heads), math.inf, dtype=torch.float64)
    for b, length in enumerate(cache_seqlens.tolist()):
        positions = _visible_positions(b, length, cache_leftpad, window)
        if positions.numel() == 0:
            continue
        # Only this sequence's keys go to the CPU in float64: caches can be gigabytes.
        keys = _gather(k_cache, b, positions, block_table).repeat_interleave(group_size, dim=1)
        values = _gather(v_cache, b, positions, block_table).repeat_interleave(group_size, dim=1)
        scores = torch.einsum("hd,lhd->hl", queries[b], keys) * scale
        if softcap > 0:
            scores = softcap * torch.tanh(scores / softcap)
        if alibi_slopes is not None:
            slopes = alibi_slopes.to("cpu", torch.float64)
            slopes = slopes if slopes.dim() == 1 else slopes[b]
            scores = scores - slopes[:, None] * (length - 1 - positions).to(torch.float64)
        lse[b] = torch.logsumexp(scores, dim=-1)
        out[b] = torch.einsum("hl,lhd->hd", torch.softmax(scores, dim=-1), values)
    return (out, lse) if return_lse else out


def _visible_positions(b: int, length: int, cache_leftpad: torch.Tensor | None,
                       window: tuple[int, int]) -> torch.Tensor:
    start = 0 if cache_leftpad is None else int(cache_leftpad[b])
    if window[0] >= 0:
        start = max(start, length - 1 - window[0])
    return torch.arange(start, length)


def _gather(cache: torch.Tensor, b: int, positions: torch.Tensor,
            block_table: torch.Tensor | None) -> torch.Tensor:
    """``[len(positions), Hkv, D]`` float64 rows of sequence ``b``."""
    if block_table is None:
        return cache[b, positions.to(cache.device)].to("cpu", torch.float64)
    block_size = cache.shape[1]
    blocks = block_table[b].cpu().long()[positions // block_size]
    return cache[blocks.to(cache.device), (positions % block_size).to(cache.device)].to(
        "cpu", torch.float64)
