"""Packed batches for the delta rule kernels: ``cu_seqlens`` checks and the chunk tables.

Every launch sees a packed batch: a [B, T] batch is B sequences of length T laid end to end,
a ``cu_seqlens`` batch (flash-linear-attention's convention: batch 1, int32/int64 [N + 1] from 0,
non-decreasing, ending at the packed length) is N sequences as given. Chunks never straddle a
sequence: each sequence has ceil(length / BT) chunks of its own (none when empty).
"""
from __future__ import annotations

import dataclasses
import functools

import torch


@dataclasses.dataclass(frozen=True)
class Packing:
    """Where the sequences and their chunks lie, as device tensors the kernels read."""

    cu_seqlens: torch.Tensor  # [N + 1] int32/int64: first token of each sequence, then the end
    chunk_table: torch.Tensor  # [chunks, 2] int32: (sequence, index within it) of every chunk
    chunk_offsets: torch.Tensor  # [N + 1] int32: first chunk of each sequence, then the total
    sequences: int
    chunks: int


def check_cu_seqlens(cu_seqlens: object, batch: int, length: int,
                     device: torch.device) -> tuple[int, ...]:
    """The sequence boundaries as ints, or a one-line error naming what is wrong."""
    if not isinstance(cu_seqlens, torch.Tensor):
        raise TypeError(f"cu_seqlens must be a torch.Tensor or None, got "
                        f"{type(cu_seqlens).__name__}")
    if cu_seqlens.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"cu_seqlens must be int32 or int64, got "
                         f"{str(cu_seqlens.dtype).removeprefix('torch.')}")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
        raise ValueError(f"cu_seqlens must be 1-D with N + 1 >= 2 entries, got shape "
                         f"{tuple(cu_seqlens.shape)}")
    if cu_seqlens.device != device:
        raise ValueError(f"cu_seqlens is on {cu_seqlens.device}, the inputs on {device}")
    if batch != 1:
        raise ValueError(f"cu_seqlens needs packed inputs of batch 1, got batch {batch}")
    bounds = tuple(int(b) for b in cu_seqlens.tolist())
    if bounds[0] != 0:
        raise ValueError(f"cu_seqlens must start at 0, got {bounds[0]}")
    drop = next((i for i in range(1, len(bounds)) if bounds[i] < bounds[i - 1]), None)
    if drop is not None:
        raise ValueError(f"cu_seqlens must be non-decreasing, got {bounds[drop - 1]} then "
                         f"{bounds[drop]} at index {drop}")
    if bounds[-1] != length:
        raise ValueError(f"cu_seqlens must end at the packed length T={length}, got {bounds[-1]}")
    return bounds


def packing(bounds: tuple[int, ...], chunk: int, device: torch.device) -> Packing:
    """The chunk tables of sequences with these boundaries, in chunks of ``chunk`` tokens."""
    return _packing(bounds, chunk, str(device))


def uniform_bounds(batch: int, length: int) -> tuple[int, ...]:
    """The boundaries of B sequences of length T laid end to end."""
    return tuple(range(0, batch * length + 1, length)) if length else (0,) * (batch + 1)


@functools.lru_cache(maxsize=64)
def _packing(bounds: tuple[int, ...], chunk: int, device: str) -> Packing:
    edges = torch.tensor(bounds, dtype=torch.int64)
    counts = (edges[1:] - edges[:-1] + chunk - 1) // chunk
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)])
    sequence = torch.repeat_interleave(torch.arange(len(counts)), counts)
    local = torch.arange(int(offsets[-1])) - offsets[sequence]
    table = torch.stack([sequence, local], dim=1).to(torch.int32)
    index_dtype = torch.int32 if bounds[-1] < 2**31 else torch.int64
    return Packing(cu_seqlens=edges.to(device, index_dtype), chunk_table=table.to(device),
                   chunk_offsets=offsets.to(device, torch.int32), sequences=len(counts),
                   chunks=int(offsets[-1]))
