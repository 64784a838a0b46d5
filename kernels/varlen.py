"""Packed batches (``cu_seqlens``) without host reads, shared by the packed ops.

A host read of the offsets (``.tolist()``, ``int(t)``) syncs the stream and aborts a CUDA-graph
capture, so on a GPU the ops check the offsets with device-side asserts and size every grid from
shapes alone: N sequences of T tokens in all have at most ``sum ceil(T_n / BT) <=
(T + N (BT - 1)) // BT`` chunks of BT tokens (``N ceil(max_seqlen / BT)`` when flash-attn's
``max_seqlen`` is given). The (sequence, chunk) table is built on the device with that many rows;
rows past the real chunks are spare: they name the chunk one past the end of the last sequence,
which no kernel runs (its programs exit at once: the chunk starts at or past the sequence's
end). On the CPU (``checks.host_reads_allowed``) the ops keep their host-side
checks, whose errors name the offending entry.
"""
from __future__ import annotations

import torch

from seqtune import checks

CU_SEQLENS_DTYPES = (torch.int32, torch.int64)


def assert_offsets(name: str, offsets: torch.Tensor, total: int, total_name: str = "T") -> None:
    """Queue device-side checks that ``offsets`` start at 0, never decrease and end at
    ``total``: no sync; on a GPU a failure surfaces at a later CUDA call (a device assert), on
    the CPU it raises RuntimeError at once."""
    torch._assert_async(offsets[0] == 0, f"{name} must start at 0")
    torch._assert_async((offsets[1:] >= offsets[:-1]).all(), f"{name} must be non-decreasing")
    torch._assert_async(offsets[-1] == total, f"{name} must end at {total_name}={total}")


def check_max_seqlen(max_seqlen: object, offsets: torch.Tensor, name: str = "max_seqlen",
                     offsets_name: str = "cu_seqlens") -> int | None:
    """``max_seqlen`` (flash-attn's bound on the longest sequence; None: unknown) after checking
    it is an int no sequence of ``offsets`` exceeds: on the host where reads are allowed (a
    one-line ValueError), else by a device-side assert."""
    if max_seqlen is None:
        return None
    if isinstance(max_seqlen, bool) or not isinstance(max_seqlen, int):
        raise TypeError(f"{name} must be an int or None, got {type(max_seqlen).__name__}")
    if max_seqlen < 0:
        raise ValueError(f"{name} must be >= 0, got {max_seqlen}")
    lengths = offsets[1:] - offsets[:-1]
    message = f"{name}={max_seqlen} is less than the longest sequence of {offsets_name}"
    if not checks.host_reads_allowed(offsets):
        torch._assert_async((lengths <= max_seqlen).all(), message)
        return max_seqlen
    longest = int(lengths.max())
    if longest > max_seqlen:
        raise ValueError(f"{message} ({longest})")
    return max_seqlen


def chunk_bound(total: int, sequences: int, chunk: int, max_seqlen: int | None = None) -> int:
    """The most chunks of ``chunk`` tokens that ``sequences`` sequences of ``total`` tokens in
    all (each at most ``max_seqlen`` long, when given) can have."""
    bound = (total + sequences * (chunk - 1)) // chunk
    if max_seqlen is not None:
        bound = min(bound, sequences * -(-max_seqlen // chunk))
    return bound


def chunk_tables(cu_seqlens: torch.Tensor, chunk: int, bound: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(table int32 [bound, 2] of (sequence, chunk within it), chunk_offsets int32 [N + 1]
    of each sequence's first chunk)``, computed on ``cu_seqlens``' device (N >= 1). Spare rows
    (past the real chunks) hold the last sequence and its chunk count: a chunk past its end."""
    edges = cu_seqlens.to(torch.int64)
    counts = (edges[1:] - edges[:-1] + chunk - 1) // chunk
    offsets = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
    slots = torch.arange(bound, dtype=torch.int64, device=cu_seqlens.device)
    last = counts.numel() - 1
    sequence = torch.searchsorted(offsets[1:], slots, right=True).clamp_(max=last)
    local = torch.minimum(slots - offsets[sequence], counts[sequence])
    table = torch.stack([sequence, local], dim=1).to(torch.int32)
    return table, offsets.to(torch.int32)
