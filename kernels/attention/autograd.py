"""The backward of ``attention`` (``library.py`` registers it as an op): the forward keeps q, k,
v, O and the row log-sum-exp (O(T) extra memory, never a ``T x S`` tensor); the backward
launches the kernels of ``backward.py`` with the ``attention_bwd`` config, computing only the
gradients that are asked for."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
import triton

from seqtune.kernels.attention.backward import (attention_bwd_delta_kernel,
                                                attention_bwd_dkdv_kernel, attention_bwd_dq_kernel)
from seqtune.kernels.attention.forward import (AttentionCall, head_tile, kernel_flags, offsets,
                                               register_words, registers_fit, tile_grid)
from seqtune.launch import backend_options, launch, new_output

# Elements of O (and of dO) one program of the delta kernel reads: 32 a thread at 4 warps.
DELTA_TILE_ELEMENTS = 4096
DELTA_WARPS = 4

Gradients = tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]


def run_backward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                 lse: torch.Tensor | None, grad_out: torch.Tensor, call: AttentionCall,
                 cfg: Mapping[str, Any], needs: Sequence[bool] = (True, True, True)) -> Gradients:
    """``(dq, dk, dv)`` in the dtypes of q, k, v; None for those ``needs`` leaves out (dk and dv
    come from one kernel: either asks for it). ``lse``: the forward's (softmax only)."""
    want_q, want_kv = needs[0], needs[1] or needs[2]
    dq = new_output(q.shape, q.dtype, q.device) if want_q else None
    dk = new_output(k.shape, k.dtype, k.device) if want_kv else None
    dv = new_output(v.shape, v.dtype, v.device) if want_kv else None
    if q.numel() == 0 or k.numel() == 0 or v.numel() == 0:
        # Nothing attends: every gradient is the empty sum.
        for grad in (dq, dk, dv):
            if grad is not None:
                grad.zero_()
    elif want_q or want_kv:
        lse, delta = _row_statistics(out, grad_out, lse, call)
        shared = _shared_arguments(q, k, v, grad_out, lse, delta, call)
        if want_kv:
            _launch_dkdv(shared, dk, dv, q, k, call, cfg)
        if want_q:
            _launch_dq(shared, dq, q, call, cfg)
    return dq, (dk if needs[1] else None), (dv if needs[2] else None)


def _row_statistics(out: torch.Tensor, grad_out: torch.Tensor, lse: torch.Tensor | None,
                    call: AttentionCall) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``(lse, delta)`` as ``[B, Hq, T]`` contiguous float32 (the kernels index them alike);
    None for sigmoid scores, which need neither."""
    if call.sigmoid:
        return None, None
    lse = lse.contiguous()
    batch, queries, heads, value_dim = out.shape
    delta = new_output(lse.shape, torch.float32, out.device)
    block_dv = head_tile(value_dim)
    block_m = max(1, DELTA_TILE_ELEMENTS // block_dv)
    launch(attention_bwd_delta_kernel, (triton.cdiv(queries, block_m), heads, batch),
           out, grad_out, delta, *out.stride(), *grad_out.stride(), *delta.stride()[:2],
           queries, DV=value_dim, BLOCK_DV=block_dv, BLOCK_M=block_m, num_warps=DELTA_WARPS)
    return lse, delta


def _shared_arguments(q, k, v, grad_out, lse, delta, call) -> dict[str, Any]:
    """What the dK/dV and dQ launches both take, by role."""
    batch, queries, heads, _ = q.shape
    keys, kv_heads = k.shape[1], k.shape[2]
    cu_q, cu_k = offsets(call)
    return {"inputs": (q, k, v, grad_out), "rows": (lse, delta),
            "offsets": (cu_q, cu_k), "alibi": call.alibi_slopes,
            "strides": (*q.stride(), *k.stride(), *v.stride(), *grad_out.stride()),
            "row_strides": (*(lse.stride()[:2] if lse is not None else (0, 0)),
                            *call.alibi_strides()),
            "scalars": (queries, keys, heads // kv_heads, call.scale, call.qk_scale, call.bias,
                        *call.window_arguments(queries, keys)),
            "flags": kernel_flags(call, q, v)}


def dkdv_registers(cfg: Mapping[str, Any], head_dim: int, value_dim: int, element_bytes: int,
                   grads: tuple[bool, bool] = (True, True)) -> float:
    """Registers a thread of a dK/dV program holds (``grads``: whether it computes dk, dv):
    its float32 accumulators, the k tile it keeps (and v, for dK's dP) and the q and dO tiles
    it streams (``forward.register_words``)."""
    head, value = head_tile(head_dim), head_tile(value_dim)
    keys, streamed = cfg["dkdv.BLOCK_N"], cfg["dkdv.BLOCK_M"]
    accumulators = keys * (head * grads[0] + value * grads[1])
    kept = keys * (head + value * grads[0])
    return register_words(accumulators, kept + streamed * (head + value), element_bytes,
                          cfg["dkdv.num_warps"])


# The dK/dV tiles of the space holding the fewest registers a thread: the smallest, eight warps.
LEAST_REGISTERS_DKDV = {"dkdv.BLOCK_M": 16, "dkdv.BLOCK_N": 16, "dkdv.num_warps": 8}
# dK and dV run as two launches where one program for both would hold more than this even with
# LEAST_REGISTERS_DKDV (float32 at head dims over 256): fitted to `seqtune check`, where such a
# program at D=512, Dv=256 (144 words) spilled 48 B on sm_90 and bfloat16 at D=512 (128) none.
SPLIT_DKDV_REGISTER_WORDS = {(512, 2): 128, (512, 4): 128}


def dkdv_launches(head_dim: int, value_dim: int,
                  element_bytes: int) -> tuple[tuple[bool, bool], ...]:
    """``(dk, dv)`` flags of each dK/dV launch: one for both, or one for dK and one for dV
    (each recomputes the scores: about 1.25x the dK/dV work, against spills) where the least
    registers one program for both can hold is over SPLIT_DKDV_REGISTER_WORDS."""
    joint = dkdv_registers(LEAST_REGISTERS_DKDV, head_dim, value_dim, element_bytes)
    if registers_fit("dkdv", joint, SPLIT_DKDV_REGISTER_WORDS, head_dim, value_dim,
                     element_bytes) is None:
        return ((True, True),)
    return ((True, False), (False, True))


def _launch_dkdv(shared: dict, dk: torch.Tensor, dv: torch.Tensor, q: torch.Tensor,
                 k: torch.Tensor, call: AttentionCall, cfg: Mapping[str, Any]) -> None:
    block_n = cfg["dkdv.BLOCK_N"]
    grid, tiles = tile_grid(call, block_n, k.shape[0], k.shape[1], k.shape[2], keys=True)
    for grad_k, grad_v in dkdv_launches(q.shape[3], dv.shape[3], q.element_size()):
        launch(attention_bwd_dkdv_kernel, grid, *shared["inputs"], *shared["rows"], dk, dv,
               *shared["offsets"], tiles, shared["alibi"], *shared["strides"],
               *dk.stride(), *dv.stride(), *shared["row_strides"], *shared["scalars"],
               BLOCK_M=cfg["dkdv.BLOCK_M"], BLOCK_N=block_n, **shared["flags"],
               GRAD_K=grad_k, GRAD_V=grad_v, num_warps=cfg["dkdv.num_warps"],
               num_stages=cfg["dkdv.num_stages"], **backend_options(cfg))


def _launch_dq(shared: dict, dq: torch.Tensor, q: torch.Tensor, call: AttentionCall,
               cfg: Mapping[str, Any]) -> None:
    block_m = cfg["dq.BLOCK_M"]
    grid, tiles = tile_grid(call, block_m, q.shape[0], q.shape[1], q.shape[2])
    launch(attention_bwd_dq_kernel, grid, *shared["inputs"], *shared["rows"], dq,
           *shared["offsets"], tiles, shared["alibi"], *shared["strides"],
           *dq.stride(), *shared["row_strides"], *shared["scalars"],
           BLOCK_M=block_m, BLOCK_N=cfg["dq.BLOCK_N"], **shared["flags"],
           num_warps=cfg["dq.num_warps"], num_stages=cfg["dq.num_stages"], **backend_options(cfg))

