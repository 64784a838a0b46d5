"""Checks of ``attention_decode``'s flash-attn features (paged caches, left padding, sliding
windows, soft-capping, ALiBi) and the longest visible key range that sizes the launch.

Shapes, dtypes and plain numbers are checked on the host always. Values inside tensors (lengths,
left pads, block indices) are read on the host only where ``checks.host_reads_allowed``; on a GPU
they are checked by device-side asserts, so a decode step can be captured in a CUDA graph.
"""
from __future__ import annotations

from typing import Any

import torch

from seqtune import checks
from seqtune.checks import expect_float, expect_shape, expect_tensor, window_pair

# Paged caches: the block sizes flash-attn 3 and vLLM use (flash-attn 2 takes multiples of 256).
PAGE_SIZES = (16, 32, 64, 128, 256)


def check_block_table(block_table: torch.Tensor | None, k_cache: torch.Tensor,
                      batch: int) -> int:
    """The page (block) size of a paged cache ``[num_blocks, page, Hkv, D]``, 0 without a
    block table."""
    if block_table is None:
        return 0
    expect_tensor("block_table", block_table, 2)
    expect_float("block_table", block_table, (torch.int32,))
    expect_shape("block_table", block_table, (batch, block_table.shape[1]))
    page = k_cache.shape[1]
    if page not in PAGE_SIZES:
        raise ValueError(f"a paged k_cache has block size {page} (its dim 1), expected one of "
                         f"{PAGE_SIZES}")
    return page


def check_leftpad(cache_leftpad: torch.Tensor | None, batch: int) -> None:
    if cache_leftpad is not None:
        expect_tensor("cache_leftpad", cache_leftpad, 1)
        expect_float("cache_leftpad", cache_leftpad, (torch.int32,))
        expect_shape("cache_leftpad", cache_leftpad, (batch,))


def check_window(window: Any) -> int:
    """``window=(left, right)`` (``checks.window_pair``); returns ``left``: the query is the
    last position of its sequence, so ``right`` never hides a key."""
    return window_pair(window)[0]


def check_alibi(alibi_slopes: torch.Tensor | None, batch: int, num_q_heads: int) -> int:
    """The batch stride of the contiguous ``alibi_slopes`` (``[Hq]``: 0, ``[B, Hq]``: Hq)."""
    if alibi_slopes is None:
        return 0
    if not isinstance(alibi_slopes, torch.Tensor) or tuple(alibi_slopes.shape) not in (
            (num_q_heads,), (batch, num_q_heads)):
        raise ValueError(f"alibi_slopes must have shape ({num_q_heads},) or "
                         f"({batch}, {num_q_heads}), got {_shape(alibi_slopes)}")
    expect_float("alibi_slopes", alibi_slopes, (torch.float32,))
    return 0 if alibi_slopes.dim() == 1 else num_q_heads


def _shape(value: Any) -> str:
    return str(tuple(value.shape)) if isinstance(value, torch.Tensor) else type(value).__name__


def longest_visible(cache_seqlens: torch.Tensor, cache_leftpad: torch.Tensor | None,
                    block_table: torch.Tensor | None, num_blocks: int, page: int,
                    capacity: int, window_left: int) -> int:
    """The most keys one sequence attends to, after checking the lengths lie in
    ``[0, S_max]``, the left pads in ``[0, cache_seqlens]`` and every block a sequence uses in
    ``[0, num_blocks)``. Where host reads are allowed, the exact maximum; elsewhere a bound
    from shapes (the capacity, or the window), the values checked by device-side asserts."""
    if cache_seqlens.numel() == 0:
        return 0
    lengths = cache_seqlens.long()
    pads = torch.zeros_like(lengths) if cache_leftpad is None else cache_leftpad.long()
    # Only the given tensors are checked: each rule is one more device assert per step.
    rules = {"cache_seqlens": ((lengths >= 0) & (lengths <= capacity), lengths,
                               f"must lie in [0, S_max={capacity}]")}
    if cache_leftpad is not None:
        rules["cache_leftpad"] = ((pads >= 0) & (pads <= lengths), pads,
                                  "must lie in [0, cache_seqlens[b]]")
    if block_table is not None:
        used = (torch.arange(block_table.shape[1], device=lengths.device)[None, :] * page
                < lengths[:, None])
        valid = (block_table >= 0) & (block_table < num_blocks)
        rules["block_table"] = ((valid | ~used).all(dim=1), block_table,
                                f"must hold block indices in [0, {num_blocks}) where used")
    starts = pads if window_left < 0 else torch.maximum(pads, lengths - 1 - window_left)
    if not checks.host_reads_allowed(cache_seqlens):
        for name, (ok, _, rule) in rules.items():
            torch._assert_async(ok.all(), f"{name} {rule}")
        return capacity if window_left < 0 else min(capacity, window_left + 1)
    for name, (ok, values, rule) in rules.items():
        _expect_all(name, ok, values, rule)
    return int((lengths - starts).clamp(min=0).max())


def _expect_all(name: str, ok: torch.Tensor, values: torch.Tensor, rule: str) -> None:
    """A one-line ValueError naming the rule and the first offending sequence's value."""
    if bool(ok.all()):
        return
    if name == "cache_seqlens":  # the message attention_decode gave before its features
        low, high = (int(x) for x in torch.aminmax(values))
        raise ValueError(f"cache_seqlens {rule}, got values in [{low}, {high}]")
    bad = int((~ok).nonzero()[0, 0])
    raise ValueError(f"{name} {rule}, got {values[bad].tolist()} for sequence b={bad}")
