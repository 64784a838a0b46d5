"""Packed variable-length batches (``cu_seqlens``, flash-linear-attention's convention) for
``attention``: argument checks, the per-sequence lengths, and the deterministic length mixes the
presets and verify cases pack.

Sequence ``n`` holds query rows ``cu_seqlens[n]:cu_seqlens[n + 1]`` of ``q [1, total_T, Hq, D]``
and key rows ``cu_seqlens_k[n]:cu_seqlens_k[n + 1]`` of ``k, v [1, total_S, Hkv, *]`` (the query
offsets when ``cu_seqlens_k`` is None).
"""
from __future__ import annotations

import dataclasses

import torch

from seqtune import checks
from seqtune.kernels.varlen import (CU_SEQLENS_DTYPES, assert_offsets, check_max_seqlen,
                                    chunk_bound, chunk_tables)

# Offsets are read as int32 in the kernels.
MAX_PACKED_LENGTH = 2**31 - 1


@dataclasses.dataclass(frozen=True)
class Packing:
    """Checked offsets, contiguous int32 on the tensors' device, and the longest sequences when
    the caller gave them (flash-attn's ``max_seqlen``): grids are sized from shapes, never from
    the offsets' values (see ``kernels/varlen.py``)."""

    cu_seqlens: torch.Tensor
    cu_seqlens_k: torch.Tensor
    total_queries: int
    total_keys: int
    max_queries: int | None = None
    max_keys: int | None = None

    @property
    def count(self) -> int:
        return self.cu_seqlens.numel() - 1

    def tiles(self, block: int, keys: bool = False) -> torch.Tensor:
        """The (sequence, tile) table of ``block``-row tiles over the queries (over the keys
        with ``keys``), int32 ``[bound, 2]`` on the device; spare rows name a tile past the last
        sequence's end, which the kernels skip."""
        offsets = self.cu_seqlens_k if keys else self.cu_seqlens
        total = self.total_keys if keys else self.total_queries
        longest = self.max_keys if keys else self.max_queries
        return chunk_tables(offsets, block, chunk_bound(total, self.count, block, longest))[0]


def check_offsets(name: str, offsets: object, total: int, total_name: str,
                  device: torch.device) -> None:
    """A one-line ValueError naming ``name`` for bad offsets: their type, dtype and shape always;
    their values on the host where reads are allowed (the CPU), else by device-side asserts."""
    if not isinstance(offsets, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of int32 or int64, "
                         f"got {type(offsets).__name__}")
    if offsets.dtype not in CU_SEQLENS_DTYPES:
        raise ValueError(f"{name} must be int32 or int64, got "
                         f"{str(offsets.dtype).removeprefix('torch.')}")
    if offsets.dim() != 1 or offsets.numel() < 2:
        raise ValueError(f"{name} must have shape [N + 1] with N >= 1, got "
                         f"{tuple(offsets.shape)}")
    if offsets.device != device:
        raise ValueError(f"{name} is on {offsets.device}, q on {device}")
    if not checks.host_reads_allowed(offsets):
        assert_offsets(name, offsets, total, total_name)
        return
    values = offsets.tolist()
    if values[0] != 0:
        raise ValueError(f"{name} must start at 0, got {name}[0]={values[0]}")
    for index in range(1, len(values)):
        if values[index] < values[index - 1]:
            raise ValueError(f"{name} must be non-decreasing, got {name}[{index - 1}]="
                             f"{values[index - 1]} > {name}[{index}]={values[index]}")
    if values[-1] != total:
        raise ValueError(f"{name} must end at {total_name}={total}, got {name}[-1]={values[-1]}")


def validate_packing(cu_seqlens: object, cu_seqlens_k: object, q: torch.Tensor,
                     k: torch.Tensor, max_seqlen_q: int | None = None,
                     max_seqlen_k: int | None = None) -> Packing | None:
    """None for a dense batch; else the checked offsets (one-line ValueError when bad), with no
    host read of their values off the CPU."""
    if cu_seqlens is None:
        if cu_seqlens_k is not None:
            raise ValueError("cu_seqlens_k requires cu_seqlens (the query offsets)")
        if max_seqlen_q is not None or max_seqlen_k is not None:
            raise ValueError("max_seqlen and max_seqlen_k apply only to packed batches "
                             "(cu_seqlens)")
        return None
    if q.shape[0] != 1:
        raise ValueError(f"with cu_seqlens, q, k and v must have batch 1 (sequences packed "
                         f"along T), got batch {q.shape[0]}")
    total_queries, total_keys = q.shape[1], k.shape[1]
    if max(total_queries, total_keys) > MAX_PACKED_LENGTH:
        raise ValueError(f"packed lengths above {MAX_PACKED_LENGTH} are not supported, got "
                         f"T={total_queries}, S={total_keys}")
    check_offsets("cu_seqlens", cu_seqlens, total_queries, "T", q.device)
    if cu_seqlens_k is None:
        if total_keys != total_queries:
            raise ValueError(f"without cu_seqlens_k, k and v must be packed like q: S="
                             f"{total_keys} != T={total_queries} (pass cu_seqlens_k)")
        cu_seqlens_k = cu_seqlens
    else:
        check_offsets("cu_seqlens_k", cu_seqlens_k, total_keys, "S", q.device)
        if cu_seqlens_k.numel() != cu_seqlens.numel():
            raise ValueError(f"cu_seqlens_k must describe as many sequences as cu_seqlens: "
                             f"N={cu_seqlens_k.numel() - 1} != N={cu_seqlens.numel() - 1}")
    max_queries = check_max_seqlen(max_seqlen_q, cu_seqlens)
    if max_seqlen_k is None:
        max_keys = max_queries if cu_seqlens_k is cu_seqlens else None
    else:
        if cu_seqlens_k is cu_seqlens:
            raise ValueError("max_seqlen_k requires cu_seqlens_k (without it, max_seqlen bounds "
                             "the keys too)")
        max_keys = check_max_seqlen(max_seqlen_k, cu_seqlens_k, "max_seqlen_k", "cu_seqlens_k")
    return Packing(cu_seqlens.to(torch.int32).contiguous(),
                   cu_seqlens_k.to(torch.int32).contiguous(), total_queries, total_keys,
                   max_queries, max_keys)


def sequence_lengths(total: int, count: int) -> list[int]:
    """A fixed uneven split of ``total`` rows into ``count`` sequences: with three or more, the
    first is empty and the second holds one row (the edge cases of a packed batch); the rest
    share the remainder in proportion 1 : 2 : 3 : ... (never a multiple of a tile by design)."""
    if count == 0:
        return []
    lengths = [0] * count
    rest_first = 2 if count >= 3 else 0
    remaining = total
    if rest_first and total:
        lengths[1], remaining = 1, total - 1
    shares = list(range(1, count - rest_first + 1))
    given = 0
    for index, share in enumerate(shares):
        lengths[rest_first + index] = remaining * share // sum(shares)
        given += lengths[rest_first + index]
    lengths[-1] += remaining - given
    return lengths


def key_lengths(total: int, count: int) -> list[int]:
    """Key lengths that differ from ``sequence_lengths``' query lengths: the first two swapped
    (a sequence with keys but no query, one with a query but no key) and the rest reversed,
    so causal sequences have both more and fewer keys than queries."""
    lengths = sequence_lengths(total, count)
    if count >= 3:
        lengths[0], lengths[1] = lengths[1], lengths[0]
        lengths[2:] = lengths[2:][::-1]
    return lengths


def offsets_of(lengths: list[int], device: str | torch.device) -> torch.Tensor:
    """``cu_seqlens`` (int32) of the given lengths."""
    offsets = [0]
    for length in lengths:
        offsets.append(offsets[-1] + length)
    return torch.tensor(offsets, dtype=torch.int32, device=device)
