"""Launching the chunkwise kernels (``kernels.py``) on one prepared recurrence."""
from __future__ import annotations

import dataclasses

import torch
import triton

from seqtune.kernels.linear_attention.kernels import (DIAG_BK, GATES, SUB, _intra_channel_kernel,
                                                      _intra_kernel, _output_kernel,
                                                      _state_kernel, dot_type)
from seqtune.kernels.linear_attention.varlen import ChunkLayout, Sequences
from seqtune.launch import backend_options, launch, new_output


@dataclasses.dataclass(frozen=True)
class Recurrence:
    """Prepared operands of one chunked run. q, k: [B, T, Hqk, K]; v: [B, T, H, V] with
    H % Hqk == 0 (value head h reads q/k head h // (H / Hqk)); g: None, [B, T, H] or
    [B, T, H, K]; v_scale: None or contiguous fp32 [B, T, H]; D: None or [H]; initial_state:
    None or contiguous [N, H, K, V]; sequences: the batch rows or packed sequences."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    g: torch.Tensor | None
    scale: float
    sequences: Sequences
    v_scale: torch.Tensor | None = None
    D: torch.Tensor | None = None
    initial_state: torch.Tensor | None = None

    @property
    def gate(self) -> str:
        if self.g is None:
            return "none"
        return "scalar" if self.g.dim() == 3 else "channel"

    @property
    def heads(self) -> int:
        return self.v.shape[2]

    @property
    def group(self) -> int:
        return self.v.shape[2] // self.q.shape[2]

    def gate_or_any(self) -> torch.Tensor:
        """g, or any tensor in its place (never read when GATE == 0)."""
        return self.g if self.g is not None else self.q

    def gate_strides(self) -> tuple[int, int, int, int]:
        if self.g is None:
            return 0, 0, 0, 0
        strides = tuple(self.g.stride())
        return strides if len(strides) == 4 else strides + (0,)

    def varlen_args(self, layout: ChunkLayout) -> tuple[torch.Tensor, torch.Tensor]:
        """(cu, chunk list) for the chunk-parallel kernels (any tensor when unpacked)."""
        cu = self.sequences.cu
        return (cu if cu is not None else self.q,
                layout.chunk_list if layout.chunk_list is not None else self.q)


def launch_intra(r: Recurrence, layout: ChunkLayout, config: dict,
                 a_dtype: torch.dtype | None = None) -> torch.Tensor:
    """A of every chunk, [B, H, T, BT] in ``a_dtype``, by default the input dtype (decays and
    v_scale included, scale not)."""
    B, T, _, K = r.q.shape
    H, BT, dtype = r.heads, config["BT"], r.v.dtype
    intra = new_output((B, H, T, BT), a_dtype or dtype, r.v.device)
    cu, chunk_list = r.varlen_args(layout)
    common = (r.q, r.k, r.gate_or_any(), intra, cu, chunk_list, T, H, r.group, layout.grid,
              *r.q.stride(), *r.k.stride())
    vs = r.v_scale if r.v_scale is not None else intra
    tuning = {"num_warps": config["intra.num_warps"], "num_stages": config["intra.num_stages"],
              **backend_options(config)}
    if r.gate == "channel":
        if r.v_scale is not None:
            raise ValueError("v_scale goes with no or scalar decay only (SSD's dt)")
        launch(_intra_channel_kernel, (layout.grid * (BT // SUB), B * H), *common,
               *r.gate_strides(), K=K, BT=BT, BK=config["intra.BK"], SUB=SUB, DIAG_BK=DIAG_BK,
               VARLEN=r.sequences.packed, **tuning)
    else:
        launch(_intra_kernel, (layout.grid, B * H), *common[:3], vs, *common[3:],
               *r.gate_strides()[:3], K=K, GATE=GATES[r.gate], VSCALE=r.v_scale is not None,
               BT=BT, BK=config["intra.BK"], VARLEN=r.sequences.packed,
               DOT=dot_type(dtype), **tuning)
    return intra


def launch_states(r: Recurrence, layout: ChunkLayout, config: dict, output_final_state: bool,
                  state_dtype: torch.dtype | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(the state before every chunk [slots, H, K, V] in ``state_dtype``, by default the input
    dtype, the final state [N, H, K, V] fp32 or None)."""
    T, K = r.q.shape[1], r.q.shape[3]
    H, V, dtype, device = r.heads, r.v.shape[3], r.v.dtype, r.v.device
    N = r.sequences.count
    states = new_output((layout.slots, H, K, V), state_dtype or dtype, device)
    final = new_output((N, H, K, V), torch.float32, device) if output_final_state else None
    bk, bv = config["h.BK"], config["h.BV"]
    cu = r.sequences.cu if r.sequences.packed else states
    offsets = layout.chunk_offsets if layout.chunk_offsets is not None else states
    launch(_state_kernel, (triton.cdiv(K, bk), triton.cdiv(V, bv), N * H),
           r.k, r.v, r.gate_or_any(), r.v_scale if r.v_scale is not None else states,
           r.initial_state if r.initial_state is not None else states, states,
           final if final is not None else states, cu, offsets, T, H, r.group, layout.grid,
           *r.k.stride(), *r.v.stride(), *r.gate_strides(),
           K=K, V=V, GATE=GATES[r.gate], VSCALE=r.v_scale is not None,
           HAS_INITIAL=r.initial_state is not None, STORE_FINAL=final is not None,
           VARLEN=r.sequences.packed, BT=config["BT"], BK=bk, BV=bv, DOT=dot_type(dtype),
           num_warps=config["h.num_warps"], num_stages=config["h.num_stages"],
           **backend_options(config))
    return states, final


def launch_output(r: Recurrence, layout: ChunkLayout, config: dict, intra: torch.Tensor,
                  states: torch.Tensor) -> torch.Tensor:
    B, T, _, K = r.q.shape
    H, V, dtype = r.heads, r.v.shape[3], r.v.dtype
    out = new_output((B, T, H, V), dtype, r.v.device)
    bv = config["o.BV"]
    cu, chunk_list = r.varlen_args(layout)
    launch(_output_kernel, (triton.cdiv(V, bv), layout.grid, B * H),
           r.q, r.v, r.gate_or_any(), r.D if r.D is not None else states, states, intra, out,
           cu, chunk_list, T, H, r.group, layout.grid, float(r.scale), *r.q.stride(), *r.v.stride(),
           *r.gate_strides(), *out.stride(), K=K, V=V, GATE=GATES[r.gate],
           HAS_D=r.D is not None, VARLEN=r.sequences.packed, BT=config["BT"],
           BK=config["o.BK"], BV=bv, DOT=dot_type(dtype),
           num_warps=config["o.num_warps"], num_stages=config["o.num_stages"],
           **backend_options(config))
    return out


def run_chunked(r: Recurrence, config: dict, output_final_state: bool
                ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Launch intra, h and o on ``r`` with a full, checked config; returns (o, final state or
    None, the per-chunk states, which a backward may keep)."""
    layout = r.sequences.chunk_layout(config["BT"])
    intra = launch_intra(r, layout, config)
    states, final = launch_states(r, layout, config, output_final_state)
    return launch_output(r, layout, config, intra, states), final, states
