"""The float64 reference of ``attention_decode``: naive softmax attention per sequence over its
own cache prefix, on the CPU, sharing nothing with the split-KV kernels."""
from __future__ import annotations

import torch


def attention_decode_reference(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                               cache_seqlens: torch.Tensor,
                               scale: float | None = None) -> torch.Tensor:
    """``o[b, h] = softmax(scale * q[b, h] . K_b^T) V_b`` over the first ``cache_seqlens[b]``
    positions of kv head ``h // (Hq // Hkv)``; zero for an empty sequence. Float64 on the CPU."""
    batch, num_q_heads, head_dim = q.shape
    group_size = num_q_heads // k_cache.shape[2]
    scale = head_dim ** -0.5 if scale is None else scale
    queries = q.detach().to("cpu", torch.float64)
    out = torch.zeros(batch, num_q_heads, head_dim, dtype=torch.float64)
    for b, length in enumerate(cache_seqlens.tolist()):
        if length == 0:
            continue
        # Only this sequence's prefix goes to the CPU in float64: caches can be gigabytes.
        keys = k_cache[b, :length].to("cpu", torch.float64).repeat_interleave(group_size, dim=1)
        values = v_cache[b, :length].to("cpu", torch.float64).repeat_interleave(group_size, dim=1)
        scores = torch.einsum("hd,lhd->hl", queries[b], keys) * scale
        out[b] = torch.einsum("hl,lhd->hd", torch.softmax(scores, dim=-1), values)
    return out
