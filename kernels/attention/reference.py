"""The float64 reference: the naive attention formula with an explicit mask, on the CPU.

It shares nothing with the kernel's tiling or online softmax: it forms each score row in full,
masks it, and applies ``torch.softmax`` or ``torch.sigmoid``.
"""
from __future__ import annotations

import math

import torch

# Bounds the float64 score block formed at once (elements), so long sequences fit in memory.
SCORE_BLOCK_ELEMENTS = 1 << 25


def attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                        causal: bool = False, scale: float | None = None,
                        score: str = "softmax", sigmoid_bias: float | None = None) -> torch.Tensor:
    """``[B, T, Hq, D]`` float64 on the CPU; same arguments and meaning as ``attention``."""
    q, k, v = (x.detach().to("cpu", torch.float64) for x in (q, k, v))
    batch, queries, heads, head_dim = q.shape
    keys, kv_heads = k.shape[1], k.shape[2]
    scale = head_dim ** -0.5 if scale is None else float(scale)
    # Query head h reads key/value head h // (Hq // Hkv).
    k = k.repeat_interleave(heads // kv_heads, dim=2).permute(0, 2, 3, 1)  # [B, Hq, D, S]
    v = v.repeat_interleave(heads // kv_heads, dim=2).transpose(1, 2)  # [B, Hq, S, D]
    q = q.transpose(1, 2)  # [B, Hq, T, D]
    out = torch.zeros(batch, heads, queries, head_dim, dtype=torch.float64)
    if keys == 0:
        return out.transpose(1, 2)  # no key is visible: every output row is the empty sum
    bias = -math.log(keys) if sigmoid_bias is None else float(sigmoid_bias)
    rows_per_block = max(1, SCORE_BLOCK_ELEMENTS // max(1, batch * heads * keys))
    for first in range(0, queries, rows_per_block):
        rows = torch.arange(first, min(first + rows_per_block, queries))
        scores = q[:, :, rows] @ k * scale
        visible = torch.ones(len(rows), keys, dtype=torch.bool)
        if causal:
            visible = torch.arange(keys)[None, :] <= rows[:, None] + keys - queries
        if score == "softmax":
            weights = torch.softmax(scores.masked_fill(~visible, -math.inf), dim=-1)
            # A row with no visible key is all NaN after softmax; its output is defined as 0.
            weights = torch.where(visible.any(dim=-1)[:, None], weights, 0.0)
        else:
            weights = torch.sigmoid(scores + bias) * visible
        out[:, :, rows] = weights @ v
    return out.transpose(1, 2)
