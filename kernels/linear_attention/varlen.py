"""Packed variable-length batches: ``cu_seqlens`` checked (on the host only where reads are
allowed, see ``kernels/varlen.py``), and the chunk layout the kernels run over (chunks start at
each sequence's first step, so none straddles two), built on the device and sized from shapes."""
from __future__ import annotations

import dataclasses

import torch
import triton

from seqtune import checks
from seqtune.kernels.varlen import (CU_SEQLENS_DTYPES, assert_offsets, check_max_seqlen,
                                    chunk_bound, chunk_tables)


@dataclasses.dataclass(frozen=True)
class Sequences:
    """Where the sequences of a run lie. Unpacked: ``count`` batch rows of ``length`` steps
    each (``cu`` is None). Packed: batch 1, sequence n spans steps [cu[n], cu[n + 1])."""

    count: int
    length: int
    cu: torch.Tensor | None = None  # int32 [N + 1] on the tensors' device
    max_seqlen: int | None = None  # packed: the longest sequence, when the caller gave it

    @property
    def packed(self) -> bool:
        return self.cu is not None

    def chunk_layout(self, BT: int) -> ChunkLayout:
        """The chunk-parallel grid for chunk size ``BT``: packed, as many programs as the
        sequences can have chunks (from shapes alone), the spare ones masked off."""
        per_row = triton.cdiv(self.length, BT)
        if not self.packed:
            return ChunkLayout(per_row, self.count * per_row, None, None)
        bound = chunk_bound(self.length, self.count, BT, self.max_seqlen)
        chunk_list, chunk_offsets = chunk_tables(self.cu, BT, bound)
        return ChunkLayout(bound, bound, chunk_list, chunk_offsets)


@dataclasses.dataclass(frozen=True)
class ChunkLayout:
    """``grid``: programs of a chunk-parallel kernel per (batch row, head); ``slots``: chunks of
    all sequences (rows of the per-chunk buffers; packed: a bound, the spare rows unused);
    packed only: ``chunk_list`` int32 [slots, 2] of (sequence, chunk in it; spare rows a chunk
    past the last sequence's end, so their programs load and store nothing),
    ``chunk_offsets`` int32 [N + 1] of each sequence's first slot."""

    grid: int
    slots: int
    chunk_list: torch.Tensor | None
    chunk_offsets: torch.Tensor | None


def sequences_of(cu_seqlens: torch.Tensor | None, batch: int, length: int,
                 device: torch.device, max_seqlen: int | None = None) -> Sequences:
    """The sequences of tensors with ``batch`` rows of ``length`` steps, packed by
    ``cu_seqlens`` (fla's convention) or not; one-line ValueError for a bad ``cu_seqlens``.
    Its values are read on the host only where ``checks.host_reads_allowed``; elsewhere they are
    checked by device-side asserts."""
    if cu_seqlens is None:
        if max_seqlen is not None:
            raise ValueError("max_seqlen applies only to packed batches (cu_seqlens)")
        return Sequences(batch, length)
    if not isinstance(cu_seqlens, torch.Tensor):
        raise TypeError(f"cu_seqlens must be a torch.Tensor or None, "
                        f"got {type(cu_seqlens).__name__}")
    if cu_seqlens.dtype not in CU_SEQLENS_DTYPES:
        raise ValueError(f"cu_seqlens must be int32 or int64, got "
                         f"{str(cu_seqlens.dtype).removeprefix('torch.')}")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
        raise ValueError(f"cu_seqlens must have shape [N + 1] with N >= 1, got "
                         f"{tuple(cu_seqlens.shape)}")
    if batch != 1:
        raise ValueError(f"with cu_seqlens the batch size must be 1 (sequences packed along T), "
                         f"got {batch}")
    if cu_seqlens.device != device:
        raise ValueError(f"cu_seqlens is on {cu_seqlens.device}, the tensors on {device}")
    if checks.host_reads_allowed(cu_seqlens):
        _check_on_host(cu_seqlens.tolist(), length)
    else:
        assert_offsets("cu_seqlens", cu_seqlens, length, "the packed length T")
    max_seqlen = check_max_seqlen(max_seqlen, cu_seqlens)
    return Sequences(cu_seqlens.numel() - 1, length, cu_seqlens.to(torch.int32).contiguous(),
                     max_seqlen)


def _check_on_host(bounds: list[int], length: int) -> None:
    if bounds[0] != 0:
        raise ValueError(f"cu_seqlens must start at 0, got {bounds[0]}")
    lengths = [end - start for start, end in zip(bounds, bounds[1:])]
    if min(lengths) < 0:
        at = min(range(len(lengths)), key=lambda i: lengths[i])
        raise ValueError(f"cu_seqlens must be non-decreasing, got cu_seqlens[{at}]={bounds[at]} "
                         f"> cu_seqlens[{at + 1}]={bounds[at + 1]}")
    if bounds[-1] != length:
        raise ValueError(f"cu_seqlens must end at the packed length T={length}, "
                         f"got {bounds[-1]}")
