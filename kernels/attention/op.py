"""``attention(q, k, v, ...)``: softmax or sigmoid attention over whole or packed sequences,
differentiable (the backward runs Triton kernels too)."""
from __future__ import annotations

from typing import Any, Mapping

import torch

from seqtune.checks import expect_float, expect_same_device, expect_same_dtype, expect_tensor
from seqtune.kernels.attention.forward import AttentionCall, run_forward
from seqtune.kernels.attention.varlen import Packing, validate_packing
from seqtune.custom_ops import (encode_config, expect_tensors, forward_config, int_or_none,
                                real_or_none)
from seqtune.spec import Problem, dtype_name

SCORES = ("softmax", "sigmoid")
MAX_HEAD_DIM = 256


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
              scale: float | None = None, config: Mapping[str, Any] | None = None,
              bwd_config: Mapping[str, Any] | None = None, score: str = "softmax",
              sigmoid_bias: float | None = None, cu_seqlens: torch.Tensor | None = None,
              cu_seqlens_k: torch.Tensor | None = None, max_seqlen: int | None = None,
              max_seqlen_k: int | None = None) -> torch.Tensor:
    """Attention: ``o[b, i, h] = sum_j w(i, j) v[b, j, h // (Hq // Hkv)]``.

    Args:
        q: ``[B, T, Hq, D]`` queries, D in 1..256; float32, float16 or bfloat16.
        k: ``[B, S, Hkv, D]`` keys, same dtype and device as q; ``Hq % Hkv == 0`` (grouped-query
            and multi-query attention share one key/value head among ``Hq // Hkv`` query heads).
        v: ``[B, S, Hkv, Dv]`` values, Dv in 1..256 (may differ from D, as in MLA).
        causal: query ``i`` sees keys ``j <= i + S - T`` (bottom-right aligned when T != S, per
            sequence when packed). A query row that sees no key outputs zero.
        scale: multiplies ``q . k``; defaults to ``D ** -0.5``.
        config: a (partial) config of the ``attention`` kernel space; None takes the tuned one.
        bwd_config: a (partial) config of the ``attention_bwd`` space for the backward; None
            takes the tuned one.
        score: ``"softmax"`` (``w`` = softmax over the visible keys) or ``"sigmoid"``
            (``w = sigmoid(scale q.k + sigmoid_bias)`` over the visible keys, unnormalised).
        sigmoid_bias: ``b`` of sigmoid attention; defaults to ``-ln(S)`` (``-ln(S_n)`` of each
            packed sequence). Only with sigmoid.
        cu_seqlens: int32/int64 ``[N + 1]`` offsets of N sequences packed along T (batch 1,
            flash-linear-attention's convention); each attends only within itself.
        cu_seqlens_k: offsets of the sequences' keys packed along S when they differ from the
            query offsets (``k, v [1, total_S, Hkv, *]``); needs cu_seqlens.

    Returns:
        ``[B, T, Hq, Dv]`` in q's dtype; differentiable in q, k and v. Inputs may be
        non-contiguous.
    """
    expect_tensors({"q": q, "k": k, "v": v})
    if not all(t is None or isinstance(t, torch.Tensor) for t in (cu_seqlens, cu_seqlens_k)):
        # Offsets the schema cannot take get the packing checks' one-line error.
        prepare(q, k, v, causal=causal, scale=scale, score=score, sigmoid_bias=sigmoid_bias,
                cu_seqlens=cu_seqlens, cu_seqlens_k=cu_seqlens_k, max_seqlen=max_seqlen,
                max_seqlen_k=max_seqlen_k)
    # Offsets on another device (meta) would dispatch the whole op to its fake kernel.
    expect_tensors({"q": q}, {"cu_seqlens": cu_seqlens, "cu_seqlens_k": cu_seqlens_k})
    # The row log-sum-exp is kept only when autograd will run the backward.
    with_lse = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    return torch.ops.seqtune.attention(
        q, k, v, bool(causal), real_or_none("scale", scale), score,
        real_or_none("sigmoid_bias", sigmoid_bias), cu_seqlens, cu_seqlens_k,
        int_or_none("max_seqlen", max_seqlen), int_or_none("max_seqlen_k", max_seqlen_k),
        encode_config("config", config), encode_config("bwd_config", bwd_config), with_lse)[0]


def attention_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, call: AttentionCall,
                      config: Mapping[str, Any] | None, bwd_config: Mapping[str, Any] | None,
                      with_lse: bool
                      ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The op's implementation (``torch.ops.seqtune.attention``) for a prepared call:
    ``(o, the row log-sum-exp [B, Hq, T] fp32 or None)``."""
    cfg = forward_config("attention", call.problem, config, bwd_config)
    return run_forward(q, k, v, call, cfg, store_lse=with_lse)


def prepare(q: Any, k: Any, v: Any, *, causal: bool = False, scale: float | None = None,
            score: str = "softmax", sigmoid_bias: float | None = None,
            cu_seqlens: torch.Tensor | None = None,
            cu_seqlens_k: torch.Tensor | None = None, max_seqlen: int | None = None,
            max_seqlen_k: int | None = None) -> AttentionCall:
    """The validated call (one-line ValueError/TypeError for bad arguments, before any launch)."""
    head_dim = _validate(q, k, v, score, sigmoid_bias)
    packing = validate_packing(cu_seqlens, cu_seqlens_k, q, k, max_seqlen, max_seqlen_k)
    return AttentionCall(causal=bool(causal),
                         scale=head_dim ** -0.5 if scale is None else float(scale),
                         score=score, sigmoid_bias=sigmoid_bias, packing=packing,
                         problem=problem_of(q, k, v, causal, score, packing))


def problem_of(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, score: str,
               packing: Packing | None = None) -> Problem:
    """The tuning problem (profile ``problem`` mapping) of a call. ``Dv`` appears only when the
    value head dim differs from D, so problems with Dv == D still match the entries of older
    profiles (which the spec's problem_defaults complete with ``N: 1, varlen: False``)."""
    batch, queries, heads, head_dim = q.shape
    problem = {"B": batch, "T": queries, "S": k.shape[1], "Hq": heads, "Hkv": k.shape[2],
               "D": head_dim}
    if v.shape[3] != head_dim:
        problem["Dv"] = v.shape[3]
    problem.update({"causal": bool(causal), "dtype": dtype_name(q.dtype), "score": score,
                    "N": packing.count if packing is not None else 1,
                    "varlen": packing is not None})
    return problem


LAYOUT_HINT = " (layout [B, T, H, D]: sequence before heads; was [B, H, T, D] passed?)"


def _validate(q: Any, k: Any, v: Any, score: str, sigmoid_bias: float | None) -> int:
    """The head dim D of valid arguments, else a one-line error."""
    for name, tensor in (("q", q), ("k", k), ("v", v)):
        expect_tensor(name, tensor, 4)
        expect_float(name, tensor)
    expect_same_dtype({"q": q, "k": k, "v": v})
    expect_same_device({"q": q, "k": k, "v": v})
    if score not in SCORES:
        raise ValueError(f"score must be one of {SCORES}, got {score!r}")
    if sigmoid_bias is not None and score != "sigmoid":
        raise ValueError(f"sigmoid_bias applies only to score='sigmoid', got score={score!r}")
    batch, _, heads, head_dim = q.shape
    if tuple(k.shape[:3]) != tuple(v.shape[:3]):
        raise ValueError(f"k and v must share [B, S, Hkv], got k {tuple(k.shape)} and "
                         f"v {tuple(v.shape)}")
    kv_heads = k.shape[2]
    if k.shape[0] != batch or k.shape[3] != head_dim:
        raise ValueError(f"k must have shape [B={batch}, S, Hkv, D={head_dim}] to match q "
                         f"{tuple(q.shape)}, got {tuple(k.shape)}")
    for name, dim in (("D", head_dim), ("Dv", v.shape[3])):
        if not 1 <= dim <= MAX_HEAD_DIM:
            raise ValueError(f"head dim {name}={dim} is not supported: expected 1..{MAX_HEAD_DIM}")
    if kv_heads == 0 or heads % kv_heads != 0:
        raise ValueError(f"query heads Hq={heads} must be a multiple of key/value heads "
                         f"Hkv={kv_heads}{LAYOUT_HINT}")
    return head_dim
