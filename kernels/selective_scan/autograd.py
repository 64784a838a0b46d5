"""The backward of selective_scan (``library.py`` registers it as an op): the forward keeps
only its inputs; the backward recomputes the states from per-block checkpoints
(``state_checkpoints_kernel``), then runs the reverse scan (``selective_scan_bwd_kernel``),
both with the ``selective_scan_bwd`` config."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
import triton

from seqtune.launch import backend_options, launch, new_output
from seqtune.spec import next_power_of_2

from seqtune.kernels.linear_scan.interpreter import sliced_interpreter_scans
from seqtune.kernels.selective_scan.backward import (selective_scan_bwd_kernel,
                                                     state_checkpoints_kernel)
from seqtune.kernels.selective_scan.forward import grouped_layout, unit_stride_last

# The gradients of these inputs, in this order.
INPUTS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")


def run_backward(problem: Mapping[str, Any], cfg: Mapping[str, Any],
                 tensors: Mapping[str, torch.Tensor | None], dy: torch.Tensor | None,
                 dlast_state: torch.Tensor | None,
                 needs: Sequence[bool] = (True,) * len(INPUTS)) -> tuple:
    """The gradients of ``INPUTS`` in their dtypes (None for absent inputs and for those
    ``needs`` leaves out). ``dy``: of y; ``dlast_state``: of the last state; either may be None
    (no gradient flows from it)."""
    wanted = {name: need and tensors[name] is not None for name, need in zip(INPUTS, needs)}
    u, A = tensors["u"], tensors["A"]
    batch, channels, length = u.shape
    if not any(wanted.values()):
        return (None,) * len(INPUTS)
    if u.numel() == 0:
        return _without_steps(tensors, wanted, dlast_state)
    dy = dy if dy is not None else torch.zeros_like(u)
    blocks = triton.cdiv(length, cfg["BLOCK_T"])
    checkpoints = new_output((batch, blocks, channels, A.shape[1]), torch.float32, u.device)
    streams = _kernel_operands(tensors, dy, dlast_state)
    grads = _gradient_buffers(tensors, wanted)
    with sliced_interpreter_scans():
        _launch_checkpoints(problem, cfg, streams, checkpoints)
        _launch_reverse(problem, cfg, streams, checkpoints, grads, wanted)
    return tuple(_in_dtype(name, grads.get(name), tensors[name]) if wanted[name] else None
                 for name in INPUTS)


def _kernel_operands(tensors, dy, dlast_state) -> dict[str, torch.Tensor]:
    """What the kernels read, in the layouts they address (an absent input is never read:
    u stands in for it)."""
    u = unit_stride_last(tensors["u"])
    ops = {"u": u, "delta": unit_stride_last(tensors["delta"]), "A": unit_stride_last(tensors["A"]),
           "B": grouped_layout(tensors["B"]), "C": grouped_layout(tensors["C"]),
           "dy": unit_stride_last(dy)}
    ops["z"] = unit_stride_last(tensors["z"]) if tensors["z"] is not None else u
    for name in ("D", "delta_bias"):
        ops[name] = tensors[name].contiguous() if tensors[name] is not None else u
    ops["initial_state"] = tensors["initial_state"] if tensors["initial_state"] is not None else u
    ops["dlast"] = (dlast_state.float().contiguous() if dlast_state is not None else u)
    ops["has_dlast"] = dlast_state is not None
    return ops


def _gradient_buffers(tensors, wanted) -> dict[str, torch.Tensor]:
    """Written whole by the kernel: du, ddelta, dz in their dtypes and dh0 in fp32; summed by
    atomic adds, so zeroed: fp32 dA, dB, dC (in the grouped layout), dD, d delta_bias."""
    u = tensors["u"]
    grads = {}
    for name in ("u", "delta", "z"):
        if wanted[name]:
            grads[name] = new_output(u.shape, tensors[name].dtype, u.device)
    if wanted["initial_state"]:
        grads["initial_state"] = new_output(tensors["initial_state"].shape, torch.float32,
                                            u.device)
    for name in ("A", "D", "delta_bias"):
        if wanted[name]:
            grads[name] = torch.zeros(tensors[name].shape, dtype=torch.float32, device=u.device)
    for name in ("B", "C"):
        if wanted[name]:
            grads[name] = torch.zeros(grouped_layout(tensors[name]).shape, dtype=torch.float32,
                                      device=u.device)
    return grads


def _launch_checkpoints(problem, cfg, ops, checkpoints) -> None:
    u, delta, A, B, h0 = ops["u"], ops["delta"], ops["A"], ops["B"], ops["initial_state"]
    batch, channels, length = u.shape
    launch(state_checkpoints_kernel, (triton.cdiv(channels, cfg["states.BLOCK_D"]), batch),
           u, delta, A, B, ops["delta_bias"], h0, checkpoints, channels, length, A.shape[1],
           channels // problem["groups"], u.stride(0), u.stride(1), delta.stride(0),
           delta.stride(1), A.stride(0), B.stride(0), B.stride(1), B.stride(2),
           h0.stride(0), h0.stride(1), h0.stride(-1),
           HAS_DELTA_BIAS=problem["has_delta_bias"], DELTA_SOFTPLUS=problem["delta_softplus"],
           HAS_INITIAL_STATE=problem["has_initial_state"], N_PAD=next_power_of_2(A.shape[1]),
           BLOCK_D=cfg["states.BLOCK_D"], BLOCK_T=cfg["BLOCK_T"],
           num_warps=cfg["states.num_warps"], num_stages=cfg["num_stages"], **backend_options(cfg))


def _launch_reverse(problem, cfg, ops, checkpoints, grads, wanted) -> None:
    u, delta, A, B, z, dy = ops["u"], ops["delta"], ops["A"], ops["B"], ops["z"], ops["dy"]
    batch, channels, length = u.shape
    channels_per_group = channels // problem["groups"]
    out = {name: grads.get(name, checkpoints) for name in INPUTS}  # unwritten: any fp32 tensor
    launch(selective_scan_bwd_kernel, (triton.cdiv(channels, cfg["reverse.BLOCK_D"]), batch),
           u, delta, A, B, ops["C"], ops["D"], z, ops["delta_bias"], checkpoints, dy,
           ops["dlast"], out["u"], out["delta"], out["z"], out["A"], out["B"], out["C"],
           out["D"], out["delta_bias"], out["initial_state"], channels, length, A.shape[1],
           channels_per_group, u.stride(0), u.stride(1), delta.stride(0), delta.stride(1),
           A.stride(0), B.stride(0), B.stride(1), B.stride(2), z.stride(0), z.stride(1),
           dy.stride(0), dy.stride(1),
           HAS_D=problem["has_D"], HAS_Z=problem["has_z"],
           HAS_DELTA_BIAS=problem["has_delta_bias"], DELTA_SOFTPLUS=problem["delta_softplus"],
           HAS_DLAST=ops["has_dlast"], NEED_DU=wanted["u"], NEED_DDELTA=wanted["delta"],
           NEED_DA=wanted["A"], NEED_DB=wanted["B"], NEED_DC=wanted["C"], NEED_DD=wanted["D"],
           NEED_DZ=wanted["z"], NEED_DDELTA_BIAS=wanted["delta_bias"],
           NEED_DH0=wanted["initial_state"],
           TILE_IN_ONE_GROUP=channels_per_group % cfg["reverse.BLOCK_D"] == 0,
           N_PAD=next_power_of_2(A.shape[1]), BLOCK_D=cfg["reverse.BLOCK_D"],
           BLOCK_T=cfg["BLOCK_T"], num_warps=cfg["reverse.num_warps"],
           num_stages=cfg["num_stages"], **backend_options(cfg))


def _in_dtype(name: str, grad: torch.Tensor, tensor: torch.Tensor) -> torch.Tensor:
    """A gradient in its input's dtype and shape (B, C back from the grouped layout)."""
    return grad.reshape(tensor.shape).to(tensor.dtype)


def _without_steps(tensors, wanted, dlast_state) -> tuple:
    """No step (or no channel): y is empty and the last state is the initial state."""
    grads = []
    for name in INPUTS:
        if not wanted[name]:
            grads.append(None)
        elif name == "initial_state" and dlast_state is not None:
            grads.append(dlast_state.to(tensors[name].dtype))
        else:
            grads.append(torch.zeros_like(tensors[name]))
    return tuple(grads)
