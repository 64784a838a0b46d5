"""Packed batches for the delta rule kernels: ``cu_seqlens`` checks and the chunk tables.

Every launch sees a packed batch: a [B, T] batch is B sequences of length T laid end to end,
a ``cu_seqlens`` batch (flash-linear-attention's convention: batch 1, int32/int64 [N + 1] from 0,
non-decreasing, ending at the packed length) is N sequences as given. Chunks never straddle a
sequence: each sequence has ceil(length / BT) chunks of its own (none when empty).
"""
from __future__ import annotations

import dataclasses

import torch

from seqtune import checks
from seqtune.kernels.varlen import (CU_SEQLENS_DTYPES, assert_offsets, check_max_seqlen,
                                    chunk_bound, chunk_tables)


@dataclasses.dataclass(frozen=True)
class Packing:
    """Where the sequences and their chunks lie, as device tensors the kernels read."""

    cu_seqlens: torch.Tensor  # [N + 1] int32/int64: first token of each sequence, then the end
    chunk_table: torch.Tensor  # [chunks, 2] int32: (sequence, index within it) of every chunk
    chunk_offsets: torch.Tensor  # [N + 1] int32: first chunk of each sequence, then the total
    sequences: int
    chunks: int  # rows of chunk_table: packed, a bound from shapes (spare rows masked off)


@dataclasses.dataclass(frozen=True)
class Bounds:
    """The sequences of a call, known without reading any offset: ``batch`` rows of ``length``
    tokens, or (``cu_seqlens``, checked) N sequences packed in one row."""

    batch: int
    length: int
    cu_seqlens: torch.Tensor | None = None
    max_seqlen: int | None = None

    @property
    def sequences(self) -> int:
        return self.batch if self.cu_seqlens is None else self.cu_seqlens.numel() - 1


def check_cu_seqlens(cu_seqlens: object, batch: int, length: int, device: torch.device,
                     max_seqlen: int | None = None) -> Bounds:
    """The checked packed sequences, or a one-line error naming what is wrong. The values are
    read on the host only where ``checks.host_reads_allowed``; elsewhere device-side asserts
    check them."""
    if not isinstance(cu_seqlens, torch.Tensor):
        raise TypeError(f"cu_seqlens must be a torch.Tensor or None, got "
                        f"{type(cu_seqlens).__name__}")
    if cu_seqlens.dtype not in CU_SEQLENS_DTYPES:
        raise ValueError(f"cu_seqlens must be int32 or int64, got "
                         f"{str(cu_seqlens.dtype).removeprefix('torch.')}")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
        raise ValueError(f"cu_seqlens must be 1-D with N + 1 >= 2 entries, got shape "
                         f"{tuple(cu_seqlens.shape)}")
    if cu_seqlens.device != device:
        raise ValueError(f"cu_seqlens is on {cu_seqlens.device}, the inputs on {device}")
    if batch != 1:
        raise ValueError(f"cu_seqlens needs packed inputs of batch 1, got batch {batch}")
    if checks.host_reads_allowed(cu_seqlens):
        _check_on_host(cu_seqlens.tolist(), length)
    else:
        assert_offsets("cu_seqlens", cu_seqlens, length, "the packed length T")
    return Bounds(batch, length, cu_seqlens, check_max_seqlen(max_seqlen, cu_seqlens))


def _check_on_host(bounds: list[int], length: int) -> None:
    if bounds[0] != 0:
        raise ValueError(f"cu_seqlens must start at 0, got {bounds[0]}")
    drop = next((i for i in range(1, len(bounds)) if bounds[i] < bounds[i - 1]), None)
    if drop is not None:
        raise ValueError(f"cu_seqlens must be non-decreasing, got {bounds[drop - 1]} then "
                         f"{bounds[drop]} at index {drop}")
    if bounds[-1] != length:
        raise ValueError(f"cu_seqlens must end at the packed length T={length}, got {bounds[-1]}")


def uniform_bounds(batch: int, length: int) -> Bounds:
    """B sequences of length T laid end to end."""
    return Bounds(batch, length)


def packing(bounds: Bounds, chunk: int, device: torch.device) -> Packing:
    """The chunk tables of these sequences in chunks of ``chunk`` tokens, built on the device
    (nothing is cached: a table made during a CUDA-graph capture holds nothing until replay)."""
    index_dtype = torch.int32 if bounds.batch * bounds.length < 2**31 else torch.int64
    if bounds.cu_seqlens is None:
        return _uniform_packing(bounds.batch, bounds.length, chunk, device, index_dtype)
    bound = chunk_bound(bounds.length, bounds.sequences, chunk, bounds.max_seqlen)
    table, offsets = chunk_tables(bounds.cu_seqlens, chunk, bound)
    return Packing(bounds.cu_seqlens.to(index_dtype).contiguous(), table, offsets,
                   bounds.sequences, bound)


def _uniform_packing(batch: int, length: int, chunk: int, device: torch.device,
                     index_dtype: torch.dtype) -> Packing:
    per_row = -(-length // chunk)
    edges = torch.arange(batch + 1, dtype=torch.int64, device=device) * length
    slots = torch.arange(batch * per_row, dtype=torch.int64, device=device)
    table = torch.stack([slots // max(per_row, 1), slots % max(per_row, 1)], dim=1)
    offsets = torch.arange(batch + 1, dtype=torch.int32, device=device) * per_row
    return Packing(edges.to(index_dtype), table.to(torch.int32), offsets, batch, batch * per_row)
