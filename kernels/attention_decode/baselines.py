"""Baselines of ``attention_decode`` for ``seqtune bench``: the same computation by other means.

- ``torch_sdpa``: ``torch.nn.functional.scaled_dot_product_attention`` over the whole cache
  with a key mask for the ragged lengths (``cache_seqlens``), GQA through ``enable_gqa``.
- ``torch``: the plain PyTorch formula: scores by einsum in the inputs' dtype, masked softmax in
  float32, weights back to the inputs' dtype for the weighted sum.

Both take the spec's inputs (``q [B, Hq, D]``, ``k_cache, v_cache [B, S, Hkv, D]``,
``cache_seqlens [B]``; or paged caches with a ``block_table``, gathered into contiguous ones
first) and return ``(o [B, Hq, D],)`` like ``spec.run``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from seqtune.spec import Inputs, Outputs


def cached_keys(cache_seqlens: torch.Tensor, capacity: int) -> torch.Tensor:
    """``[B, S]`` bool: position s of sequence b is in its cache (s < cache_seqlens[b])."""
    positions = torch.arange(capacity, device=cache_seqlens.device)
    return positions[None, :] < cache_seqlens[:, None].long()


def contiguous_caches(inputs: Inputs) -> tuple[torch.Tensor, torch.Tensor]:
    """``k_cache, v_cache`` as ``[B, S, Hkv, D]``: a paged cache's blocks gathered in table
    order (``[B, max_blocks * block_size, Hkv, D]``)."""
    k_cache, v_cache = inputs["k_cache"], inputs["v_cache"]
    table = inputs.get("block_table")
    if table is None:
        return k_cache, v_cache
    batch = table.shape[0]
    return tuple(cache[table.long()].reshape(batch, -1, *cache.shape[2:])
                 for cache in (k_cache, v_cache))


def sdpa_decode(inputs: Inputs) -> Outputs:
    """One query token per sequence through SDPA, masked to each sequence's cache length."""
    q = inputs["q"]
    k_cache, v_cache = contiguous_caches(inputs)
    lengths = inputs["cache_seqlens"]
    mask = cached_keys(lengths, k_cache.shape[1])[:, None, None, :]  # [B, 1, 1, S]
    out = F.scaled_dot_product_attention(
        q[:, :, None, :], k_cache.transpose(1, 2), v_cache.transpose(1, 2), attn_mask=mask,
        enable_gqa=q.shape[1] != k_cache.shape[2])[:, :, 0]
    # An empty cache has the empty sum, 0 (SDPA gives NaN for a fully masked row).
    return (torch.where((lengths > 0)[:, None, None], out, 0).to(q.dtype),)


def plain_decode(inputs: Inputs) -> Outputs:
    """Masked softmax attention of each query head over its kv head's cache."""
    q = inputs["q"]
    k_cache, v_cache = contiguous_caches(inputs)
    batch, heads, head_dim = q.shape
    kv_heads = k_cache.shape[2]
    grouped_q = q.reshape(batch, kv_heads, heads // kv_heads, head_dim)
    scores = torch.einsum("bhgd,bshd->bhgs", grouped_q, k_cache).float() * head_dim ** -0.5
    mask = cached_keys(inputs["cache_seqlens"], k_cache.shape[1])[:, None, None, :]
    weights = torch.softmax(scores.masked_fill(~mask, -math.inf), dim=-1).nan_to_num(0.0)
    out = torch.einsum("bhgs,bshd->bhgd", weights.to(v_cache.dtype), v_cache)
    return (out.reshape(batch, heads, head_dim),)


BASELINES = {"torch_sdpa": sdpa_decode, "torch": plain_decode}
