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

CU_SEQLENS_DTYPES = (torch.int32, torch.int64)
# Offsets are read as int32 in the kernels.
MAX_PACKED_LENGTH = 2**31 - 1


@dataclasses.dataclass(frozen=True)
class Packing:
    """Validated offsets, contiguous int32 on the tensors' device, and the longest sequence."""

    cu_seqlens: torch.Tensor
    cu_seqlens_k: torch.Tensor
    max_queries: int
    max_keys: int

    @property
    def count(self) -> int:
        return self.cu_seqlens.numel() - 1


def check_offsets(name: str, offsets: object, total: int, total_name: str) -> list[int]:
    """The offsets as a host list, or a one-line ValueError naming ``name``."""
    if not isinstance(offsets, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of int32 or int64, "
                         f"got {type(offsets).__name__}")
    if offsets.dtype not in CU_SEQLENS_DTYPES:
        raise ValueError(f"{name} must be int32 or int64, got "
                         f"{str(offsets.dtype).removeprefix('torch.')}")
    if offsets.dim() != 1 or offsets.numel() == 0:
        raise ValueError(f"{name} must have shape [N + 1], got {tuple(offsets.shape)}")
    values = offsets.tolist()
    if values[0] != 0:
        raise ValueError(f"{name} must start at 0, got {name}[0]={values[0]}")
    for index in range(1, len(values)):
        if values[index] < values[index - 1]:
            raise ValueError(f"{name} must be non-decreasing, got {name}[{index - 1}]="
                             f"{values[index - 1]} > {name}[{index}]={values[index]}")
    if values[-1] != total:
        raise ValueError(f"{name} must end at {total_name}={total}, got {name}[-1]={values[-1]}")
    return values


def validate_packing(cu_seqlens: object, cu_seqlens_k: object, q: torch.Tensor,
                     k: torch.Tensor) -> Packing | None:
    """None for a dense batch; else the checked offsets (one-line ValueError when bad). The
    offsets are read on the host (one device sync per call, as flash-attn's ``max_seqlen``
    arguments imply): the grid needs the longest sequence."""
    if cu_seqlens is None:
        if cu_seqlens_k is not None:
            raise ValueError("cu_seqlens_k requires cu_seqlens (the query offsets)")
        return None
    if q.shape[0] != 1:
        raise ValueError(f"with cu_seqlens, q, k and v must have batch 1 (sequences packed "
                         f"along T), got batch {q.shape[0]}")
    total_queries, total_keys = q.shape[1], k.shape[1]
    if max(total_queries, total_keys) > MAX_PACKED_LENGTH:
        raise ValueError(f"packed lengths above {MAX_PACKED_LENGTH} are not supported, got "
                         f"T={total_queries}, S={total_keys}")
    queries = check_offsets("cu_seqlens", cu_seqlens, total_queries, "T")
    if cu_seqlens_k is None:
        if total_keys != total_queries:
            raise ValueError(f"without cu_seqlens_k, k and v must be packed like q: S="
                             f"{total_keys} != T={total_queries} (pass cu_seqlens_k)")
        keys = queries
    else:
        keys = check_offsets("cu_seqlens_k", cu_seqlens_k, total_keys, "S")
        if len(keys) != len(queries):
            raise ValueError(f"cu_seqlens_k must describe as many sequences as cu_seqlens: "
                             f"N={len(keys) - 1} != N={len(queries) - 1}")
    for name, offsets in (("cu_seqlens", cu_seqlens), ("cu_seqlens_k", cu_seqlens_k)):
        if offsets is not None and offsets.device != q.device:
            raise ValueError(f"{name} is on {offsets.device}, q on {q.device}")
    as_int32 = {"dtype": torch.int32, "device": q.device}
    return Packing(torch.tensor(queries, **as_int32), torch.tensor(keys, **as_int32),
                   max_queries=_longest(queries), max_keys=_longest(keys))


def _longest(offsets: list[int]) -> int:
    return max((b - a for a, b in zip(offsets, offsets[1:])), default=0)


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
