"""``linear_attention``: chunkwise linear attention with no, scalar or per-channel decay."""
from __future__ import annotations

from typing import Any, Mapping

import torch

from seqtune.checks import (expect_float, expect_same_device, expect_same_dtype, expect_shape,
                            expect_tensor)
from seqtune.custom_ops import (encode_config, expect_tensors, forward_config, int_or_none,
                                real_or_none)
from seqtune.kernels.linear_attention.chunked import Recurrence, run_chunked
from seqtune.kernels.linear_attention.varlen import Sequences, sequences_of
from seqtune.spec import dtype_name

# Head dims are looped over in tiles, so any size runs; the config space is sized up to this.
MAX_HEAD_DIM = 512


def expect_head_dim(name: str, size: int) -> None:
    if not 1 <= size <= MAX_HEAD_DIM:
        raise ValueError(f"{name} must be between 1 and {MAX_HEAD_DIM}, got {size}")


def expect_initial_state(initial_state: torch.Tensor | None,
                         shape: tuple[int, int, int, int]) -> torch.Tensor | None:
    """The initial state, checked and contiguous (the state kernel indexes it densely)."""
    if initial_state is None:
        return None
    expect_tensor("initial_state", initial_state, 4)
    expect_float("initial_state", initial_state)
    expect_shape("initial_state", initial_state, shape)
    return initial_state.contiguous()


def empty_result(out_shape: tuple[int, ...], like: torch.Tensor,
                 initial_state: torch.Tensor | None, state_shape: tuple[int, ...],
                 output_final_state: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The result of an empty problem (no steps, batch or heads): nothing to launch."""
    out = like.new_empty(out_shape)
    if not output_final_state:
        return out, None
    if initial_state is not None:
        return out, initial_state.to(torch.float32, copy=True)
    return out, torch.zeros(state_shape, dtype=torch.float32, device=like.device)


def _check_gate(g: torch.Tensor | None, B: int, T: int, HV: int, K: int, dtype: torch.dtype
                ) -> str:
    """The kind of decay g is; it must be [B, T, HV] or [B, T, HV, K], fp32 or q's dtype."""
    if g is None:
        return "none"
    if not isinstance(g, torch.Tensor):
        raise TypeError(f"g must be a torch.Tensor or None, got {type(g).__name__}")
    if g.dim() == 3:
        expect_shape("g", g, (B, T, HV))
    elif g.dim() == 4:
        expect_shape("g", g, (B, T, HV, K))
    else:
        raise ValueError(f"g must have shape {(B, T, HV)} (scalar decay) or {(B, T, HV, K)} "
                         f"(per-channel decay), got {tuple(g.shape)}")
    expect_float("g", g, (torch.float32, dtype))
    return "scalar" if g.dim() == 3 else "channel"


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[int, int, int, int,
                                                                           int, int]:
    """(B, T, H, HV, K, V) of checked q, k [B, T, H, K] and v [B, T, HV, V], HV % H == 0."""
    for name, tensor in (("q", q), ("k", k), ("v", v)):
        expect_tensor(name, tensor, 4)
        expect_float(name, tensor)
    expect_same_dtype({"q": q, "k": k, "v": v})
    B, T, H, K = q.shape
    expect_shape("k", k, q.shape)
    HV, V = v.shape[2], v.shape[3]
    expect_shape("v", v, (B, T, HV, V))
    if H == 0 or HV % H:
        raise ValueError(f"the value heads of v ({HV}) must be a multiple of the heads of q and "
                         f"k ({H}) (layout [B, T, H, K]: sequence before heads; was "
                         "[B, H, T, K] passed?)")
    expect_head_dim("K (the last dim of q and k)", K)
    expect_head_dim("V (the last dim of v)", V)
    return B, T, H, HV, K, V


def problem_of(B: int, T: int, H: int, HV: int, K: int, V: int, gate: str, has_initial: bool,
               dtype: torch.dtype, sequences: Sequences) -> dict[str, Any]:
    """The tuning problem of a call (shared by the forward and the backward)."""
    return {"B": B, "T": T, "H": H, "K": K, "V": V, "gate": gate,
            "initial_state": has_initial, "dtype": dtype_name(dtype),
            "N": sequences.count if sequences.packed else 1, "varlen": sequences.packed,
            "GV": HV // H}


def prepare(q, k, v, g, scale, initial_state, cu_seqlens, max_seqlen=None
            ) -> tuple[Recurrence | None, dict[str, Any], tuple[int, ...]]:
    """The checked recurrence of a call (None when there is nothing to launch), its tuning
    problem and the shape of its states [N, HV, K, V]."""
    B, T, H, HV, K, V = check_qkv(q, k, v)
    gate = _check_gate(g, B, T, HV, K, q.dtype)
    expect_same_device({"q": q, "k": k, "v": v, "g": g, "initial_state": initial_state})
    sequences = sequences_of(cu_seqlens, B, T, q.device, max_seqlen)
    state_shape = (sequences.count, HV, K, V)
    initial_state = expect_initial_state(initial_state, state_shape)
    problem = problem_of(B, T, H, HV, K, V, gate, initial_state is not None, q.dtype, sequences)
    if T == 0 or B == 0 or HV == 0:
        return None, problem, state_shape
    recurrence = Recurrence(q, k, v, g, K ** -0.5 if scale is None else float(scale), sequences,
                            initial_state=initial_state)
    return recurrence, problem, state_shape


def linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     g: torch.Tensor | None = None, *, scale: float | None = None,
                     initial_state: torch.Tensor | None = None, output_final_state: bool = False,
                     cu_seqlens: torch.Tensor | None = None,
                     config: Mapping[str, Any] | None = None,
                     bwd_config: Mapping[str, Any] | None = None, max_seqlen: int | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Causal linear attention with optional decay, computed chunkwise.

    S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T and o_t = scale * S_t^T q_t, with S_0 the initial
    state or zeros. Value head i reads q/k head i // (HV / H) (grouped value heads, GVA).

    Args:
        q, k: [B, T, H, K]; v: [B, T, HV, V] with HV a multiple of H (K and V may differ);
            one float dtype.
        g: log decay (<= 0): None (plain linear attention), [B, T, HV] (scalar per step and
            head: RetNet, Lightning, simple GLA) or [B, T, HV, K] (per key channel: GLA);
            fp32 or q's dtype.
        scale: defaults to K ** -0.5.
        initial_state: [N, HV, K, V], any float dtype (used in fp32); N = B, or the number of
            sequences with cu_seqlens.
        output_final_state: also return the state after the last step, [N, HV, K, V] fp32.
        cu_seqlens: int32/int64 [N + 1] offsets of N sequences packed along T (batch 1),
            fla's convention; no state crosses a sequence boundary. Checked without a host read
            on a GPU (device-side asserts), so a packed call can be captured in a CUDA graph.
        config: a (partial) config of the ``linear_attention`` kernel; None takes the tuned one.
        bwd_config: likewise for ``linear_attention_bwd``, used when autograd runs the backward
            (gradients of q, k, v, g and initial_state, through the final state when used).
        max_seqlen: the longest packed sequence, if known (flash-attn's convention): fewer
            programs are launched; less than the longest is an error (a device assert on GPU).

    Returns:
        (o [B, T, HV, V] in q's dtype, final_state or None).

    Precision against float64 (``benchmarks/precision.py`` and ``precision_grads.py`` in the
    Triton interpreter with a GPU's roundings; the spec's inputs, H=2, K=V=32, every gate,
    T=64 and 1000, gradients also T=256; RMS error over RMS reference, fla's metric): o bf16
    <= 2.4e-3, fp16 <= 3.1e-4 (the largest element within 5.3e-3 / 5.6e-4 of the largest |o|);
    the fp32 final state from bf16 inputs <= 1.6e-3, fp16 <= 2.1e-4; dq, dk, dv, dh0 bf16
    <= 2.7e-3, fp16 <= 3.4e-4; dg bf16 <= 9.3e-4, fp16 <= 8.6e-5. That is at most 1.04x the
    error of fla 0.6's chunk kernels on the same inputs (o and state) and 1.02x (gradients),
    dg 2-1000x below it (``benchmarks/results/precision*.md``). Dots of fp32 intermediates
    (per-channel decay's A and dA terms, dv's A) take bf16x3 operands (~16 bits).
    """
    expect_tensors({"q": q, "k": k, "v": v},
                   {"g": g, "initial_state": initial_state, "cu_seqlens": cu_seqlens})
    out, final = torch.ops.seqtune.linear_attention(
        q, k, v, g, real_or_none("scale", scale), initial_state, bool(output_final_state),
        cu_seqlens, int_or_none("max_seqlen", max_seqlen), encode_config("config", config),
        encode_config("bwd_config", bwd_config))
    return out, final if output_final_state else None


def linear_attention_forward(q, k, v, g, scale, initial_state, output_final_state, cu_seqlens,
                             max_seqlen, config, bwd_config=None
                             ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The op's implementation (``torch.ops.seqtune.linear_attention``): checks, config,
    launches."""
    recurrence, problem, state_shape = prepare(q, k, v, g, scale, initial_state, cu_seqlens,
                                               max_seqlen)
    if recurrence is None:
        return empty_result(v.shape, q, initial_state, state_shape, output_final_state)
    cfg = forward_config("linear_attention", problem, config, bwd_config)
    out, final, _ = run_chunked(recurrence, cfg, output_final_state)
    return out, final
