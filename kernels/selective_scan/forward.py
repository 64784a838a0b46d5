"""Launches of the selective_scan forward: the scan, then (when the states are split over
programs) the sum over state tiles."""
from __future__ import annotations

import torch
import triton

from seqtune.launch import backend_options, launch, new_output

from seqtune.kernels.linear_scan.interpreter import sliced_interpreter_scans
from seqtune.kernels.selective_scan.kernel import selective_scan_kernel, sum_state_tiles_kernel


def run_forward(problem, cfg, u, delta, A, B, C, D, z, delta_bias, initial_state):
    """``(y [b, d, L] in u's dtype, last_state [b, d, n] fp32)`` for the op's ``problem``."""
    batch, channels, length = u.shape
    y = new_output((batch, channels, length), u.dtype, u.device)
    last_state = new_output((batch, channels, A.shape[1]), torch.float32, u.device)
    if y.numel() == 0:  # no step: the state passes through unchanged
        last_state.copy_(initial_state) if initial_state is not None else last_state.zero_()
        return y, last_state
    with sliced_interpreter_scans():
        _launch(cfg, problem, u, delta, A, B, C, D, z, delta_bias, initial_state, y, last_state)
    return y, last_state


def unit_stride_last(x: torch.Tensor) -> torch.Tensor:
    """The kernels address the last axis with unit stride; copy only if needed."""
    return x if x.stride(-1) == 1 else x.contiguous()


def grouped_layout(x: torch.Tensor) -> torch.Tensor:
    """B or C contiguous as [b, g, n, L] (ungrouped as g = 1): one layout for the kernels."""
    return x.contiguous() if x.dim() == 4 else x.unsqueeze(1).contiguous()


def _launch(cfg, problem, u, delta, A, B, C, D, z, delta_bias, initial_state, y,
            last_state) -> None:
    """The scan, then (when the states are split over programs) the sum over state tiles."""
    u, delta, A = unit_stride_last(u), unit_stride_last(delta), unit_stride_last(A)
    z = unit_stride_last(z) if z is not None else u  # unread when has_z is False
    # The kernels index the 1-D parameters by channel alone: a strided view must be copied.
    D = D.contiguous() if D is not None else u  # unread when has_D is False
    delta_bias = delta_bias.contiguous() if delta_bias is not None else u  # unread without a bias
    h0 = initial_state if initial_state is not None else last_state  # unread without one
    B, C = grouped_layout(B), grouped_layout(C)
    batch, channels, length, state_dim = problem["b"], problem["d"], problem["L"], problem["n"]
    state_tiles = triton.cdiv(state_dim, cfg["BLOCK_N"])
    out = y if state_tiles == 1 else new_output((state_tiles, batch, channels, length),
                                                torch.float32, u.device)
    channels_per_group = channels // problem["groups"]
    channel_tiles = triton.cdiv(channels, cfg["BLOCK_D"])
    flags = {"HAS_D": problem["has_D"], "HAS_Z": problem["has_z"]}
    launch(selective_scan_kernel, (channel_tiles, batch, state_tiles),
           u, delta, A, B, C, D, z, delta_bias, h0, out, last_state,
           channels, length, state_dim, channels_per_group,
           u.stride(0), u.stride(1), delta.stride(0), delta.stride(1), A.stride(0),
           B.stride(0), B.stride(1), B.stride(2), z.stride(0), z.stride(1),
           out.stride(0) if state_tiles > 1 else 0, out.stride(-3), out.stride(-2),
           h0.stride(0), h0.stride(1), h0.stride(2),
           **flags, HAS_DELTA_BIAS=problem["has_delta_bias"],
           HAS_INITIAL_STATE=problem["has_initial_state"],
           DELTA_SOFTPLUS=problem["delta_softplus"],
           TILE_IN_ONE_GROUP=channels_per_group % cfg["BLOCK_D"] == 0,
           ALL_STATES=state_tiles == 1, BLOCK_D=cfg["BLOCK_D"], BLOCK_N=cfg["BLOCK_N"],
           BLOCK_T=cfg["BLOCK_T"], num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
           **backend_options(cfg))
    if state_tiles > 1:
        launch(sum_state_tiles_kernel,
               (channel_tiles, batch, triton.cdiv(length, cfg["BLOCK_T"])),
               out, u, D, z, y, channels, length, state_tiles, out.stride(0), out.stride(1),
               u.stride(0), u.stride(1), z.stride(0), z.stride(1), y.stride(0), **flags,
               BLOCK_D=cfg["BLOCK_D"], BLOCK_T=cfg["BLOCK_T"], num_warps=cfg["num_warps"],
               **backend_options(cfg))
