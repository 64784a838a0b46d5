"""Packed variable-length batches: ``cu_seqlens`` checked on the host, and the chunk layout the
kernels run over (chunks start at each sequence's first step, so none straddles two)."""
from __future__ import annotations

import dataclasses

import torch
import triton


@dataclasses.dataclass(frozen=True)
class Sequences:
    """Where the sequences of a run lie. Unpacked: ``count`` batch rows of ``length`` steps
    each (``cu`` is None). Packed: batch 1, sequence n spans steps [cu[n], cu[n + 1])."""

    count: int
    length: int
    cu: torch.Tensor | None = None  # int32 [N + 1] on the tensors' device
    lengths: tuple[int, ...] = ()

    @property
    def packed(self) -> bool:
        return self.cu is not None

    def chunk_layout(self, BT: int) -> ChunkLayout:
        """The chunk-parallel grid for chunk size ``BT``."""
        per_row = triton.cdiv(self.length, BT)
        if not self.packed:
            return ChunkLayout(per_row, self.count * per_row, None, None)
        counts = [triton.cdiv(n, BT) for n in self.lengths]
        pairs = [(seq, c) for seq, count in enumerate(counts) for c in range(count)]
        offsets = [0]
        for count in counts:
            offsets.append(offsets[-1] + count)
        device = self.cu.device
        chunk_list = torch.tensor(pairs or [(0, 0)], dtype=torch.int32, device=device)
        return ChunkLayout(len(pairs), len(pairs), chunk_list,
                           torch.tensor(offsets, dtype=torch.int32, device=device))


@dataclasses.dataclass(frozen=True)
class ChunkLayout:
    """``grid``: programs of a chunk-parallel kernel per (batch row, head); ``slots``: chunks of
    all sequences (rows of the per-chunk buffers); packed only: ``chunk_list`` int32 [chunks, 2]
    of (sequence, chunk in it), ``chunk_offsets`` int32 [N + 1] of each sequence's first slot."""

    grid: int
    slots: int
    chunk_list: torch.Tensor | None
    chunk_offsets: torch.Tensor | None


def sequences_of(cu_seqlens: torch.Tensor | None, batch: int, length: int,
                 device: torch.device) -> Sequences:
    """The sequences of tensors with ``batch`` rows of ``length`` steps, packed by
    ``cu_seqlens`` (fla's convention) or not; one-line ValueError for a bad ``cu_seqlens``."""
    if cu_seqlens is None:
        return Sequences(batch, length)
    if not isinstance(cu_seqlens, torch.Tensor):
        raise TypeError(f"cu_seqlens must be a torch.Tensor or None, "
                        f"got {type(cu_seqlens).__name__}")
    if cu_seqlens.dtype not in (torch.int32, torch.int64):
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
    bounds = cu_seqlens.tolist()
    if bounds[0] != 0:
        raise ValueError(f"cu_seqlens must start at 0, got {bounds[0]}")
    lengths = tuple(end - start for start, end in zip(bounds, bounds[1:]))
    if min(lengths) < 0:
        at = min(range(len(lengths)), key=lambda i: lengths[i])
        raise ValueError(f"cu_seqlens must be non-decreasing, got cu_seqlens[{at}]={bounds[at]} "
                         f"> cu_seqlens[{at + 1}]={bounds[at + 1]}")
    if bounds[-1] != length:
        raise ValueError(f"cu_seqlens must end at the packed length T={length}, "
                         f"got {bounds[-1]}")
    return Sequences(len(lengths), length, cu_seqlens.to(torch.int32).contiguous(), lengths)
