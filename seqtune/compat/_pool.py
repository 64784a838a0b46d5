"""State-pool rows for the compat decode entry points that step a copy of the rows (a state
in a dtype the kernel does not update in place, or a window gathered for several tokens).
Private (a helper, no entry points of its own).

Padding slots (negative rows) make the write-back the hard part: writing only the live rows
would need a boolean index (a host read, a size that depends on values), which breaks CUDA
graph capture. Instead every slot writes, a padding slot repeating the (row, value) of the
first live slot, so each row written receives one value however the copies are ordered; with
no live slot, slot 0 writes back what row 0 already holds."""
from __future__ import annotations

import torch


def pad_slots(indices: torch.Tensor, pad_slot_id: int) -> torch.Tensor:
    """``indices`` as int64 with entries equal to ``pad_slot_id`` set to -1 (seqtune's step
    ops treat every negative index as a padding slot; vLLM's PAD_SLOT_ID is -1)."""
    rows = indices.to(torch.int64)
    return torch.where(rows == pad_slot_id, -1, rows)


def gather_rows(pool: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """A copy of ``pool[rows]``, a padding slot getting a copy of row 0 (written back only as
    row 0's own value, see ``write_rows``)."""
    return pool[rows.clamp(min=0)]


def write_rows(pool: torch.Tensor, rows: torch.Tensor, new: torch.Tensor,
               old: torch.Tensor) -> None:
    """pool[rows[i]] = new[i] for the live slots (rows[i] >= 0), in place; ``old`` holds the
    gathered rows (``gather_rows``), what padding slots write when no slot is live."""
    live = rows >= 0
    slots = torch.arange(rows.shape[0], device=rows.device)
    source = torch.where(live, slots, torch.argmax(live.to(torch.int32)))
    values = torch.where(live.view(-1, *(1,) * (new.dim() - 1)), new, old)
    pool.index_copy_(0, rows.clamp(min=0)[source], values[source].to(pool.dtype))
