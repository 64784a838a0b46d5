"""``attention(q, k, v, ...)``: softmax or sigmoid attention over whole or packed sequences,
differentiable (the backward runs Triton kernels too)."""
from __future__ import annotations

import math
from typing import Any, Mapping

import torch

from seqtune.checks import (expect_float, expect_same_device, expect_same_dtype, expect_tensor,
                            softcap_value, window_pair)
from seqtune.kernels.attention.forward import AttentionCall, run_forward
from seqtune.kernels.attention.varlen import Packing, validate_packing
from seqtune.kernels.attention.window import NO_WINDOW_FIELD, window_field
from seqtune.custom_ops import (encode_config, expect_tensors, forward_config, int_or_none,
                                real_or_none)
from seqtune.spec import Problem, dtype_name

SCORES = ("softmax", "sigmoid")
MAX_HEAD_DIM = 512
NO_WINDOW = (-1, -1)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
              scale: float | None = None, config: Mapping[str, Any] | None = None,
              bwd_config: Mapping[str, Any] | None = None, score: str = "softmax",
              sigmoid_bias: float | None = None, cu_seqlens: torch.Tensor | None = None,
              cu_seqlens_k: torch.Tensor | None = None, max_seqlen: int | None = None,
              max_seqlen_k: int | None = None, window: tuple[int, int] = NO_WINDOW,
              softcap: float = 0.0, alibi_slopes: torch.Tensor | None = None,
              return_lse: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Attention: ``o[b, i, h] = sum_j w(i, j) v[b, j, h // (Hq // Hkv)]``.

    Args:
        q: ``[B, T, Hq, D]`` queries, D in 1..512; float32, float16 or bfloat16.
        k: ``[B, S, Hkv, D]`` keys, same dtype and device as q; ``Hq % Hkv == 0`` (grouped-query
            and multi-query attention share one key/value head among ``Hq // Hkv`` query heads).
        v: ``[B, S, Hkv, Dv]`` values, Dv in 1..512 (may differ from D, as in MLA). Head dims
            over 256 (Gemma-4 class) run smaller tiles by default (see ``spec.py``).
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
        max_seqlen, max_seqlen_k: the longest query / key sequence when packed (optional
            launch sizes, flash-attn's).
        window: ``(left, right)`` sliding window, -1 unbounded (flash-attn's ``window_size``):
            query ``i`` sees keys ``j`` with ``i + S - T - left <= j <= i + S - T + right``
            (per sequence when packed); with causal, right is 0. Key tiles outside the window
            are skipped, so the cost is O(T * window). Softmax only.
        softcap: scores become ``softcap * tanh(scale * q.k / softcap)`` (0: off), as
            flash-attn's ``softcap``; the backward differentiates the tanh. Softmax only.
        alibi_slopes: float32 ``[Hq]`` or ``[B, Hq]`` (``[N, Hq]`` per packed sequence) ALiBi
            slopes: ``-slope * |i + S - T - j|`` is added to the (capped) scores, causal or not.
            flash-attn's causal kernel adds ``slope * j`` instead, which gives the same output
            and an lse larger by ``slope * (i + S - T)``. Softmax only.
        return_lse: also return the row log-sum-exp (natural log) of the scores the softmax
            sees (scaled, capped, biased, masked), float32 ``[B, Hq, T]``, or flash-attn's
            varlen layout ``[Hq, total_T]`` when packed; ``+inf`` for a row that sees no key
            (flash-attn's value). It is not differentiable (gradients flow through o only).
            Softmax only.

    Returns:
        ``[B, T, Hq, Dv]`` in q's dtype, or ``(o, lse)`` with return_lse; o is differentiable
        in q, k and v. Inputs may be non-contiguous.

    Precision against float64 (``benchmarks/attention_precision.py``: max |err| / max |ref|,
    causal, GQA, D=64, T=64 and 1000): o bf16 <= 4.3e-3, fp16 <= 6.7e-4, equal to PyTorch's own
    attention in the dtype (o is rounded once from a float32 accumulator); dq, dk, dv bf16
    <= 6.9e-3, fp16 <= 6.1e-4, at most 1.74x PyTorch's (flash-attn's tests allow 2x).
    """
    expect_tensors({"q": q, "k": k, "v": v})
    if not all(t is None or isinstance(t, torch.Tensor) for t in (cu_seqlens, cu_seqlens_k)):
        # Offsets the schema cannot take get the packing checks' one-line error.
        prepare(q, k, v, causal=causal, scale=scale, score=score, sigmoid_bias=sigmoid_bias,
                cu_seqlens=cu_seqlens, cu_seqlens_k=cu_seqlens_k, max_seqlen=max_seqlen,
                max_seqlen_k=max_seqlen_k)
    left, right = window_pair(window)
    softcap = softcap_value(softcap)
    # Tensors on another device (meta) would dispatch the whole op to its fake kernel.
    expect_tensors({"q": q}, {"cu_seqlens": cu_seqlens, "cu_seqlens_k": cu_seqlens_k,
                              "alibi_slopes": alibi_slopes})
    # The row log-sum-exp is kept only when autograd will run the backward or it is returned.
    with_lse = bool(return_lse) or (torch.is_grad_enabled()
                                    and any(t.requires_grad for t in (q, k, v)))
    out, lse = torch.ops.seqtune.attention(
        q, k, v, bool(causal), real_or_none("scale", scale), score,
        real_or_none("sigmoid_bias", sigmoid_bias), cu_seqlens, cu_seqlens_k,
        int_or_none("max_seqlen", max_seqlen), int_or_none("max_seqlen_k", max_seqlen_k),
        encode_config("config", config), encode_config("bwd_config", bwd_config), with_lse,
        left, right, softcap, alibi_slopes, bool(return_lse))
    if not return_lse:
        return out
    # The kernels keep log2; flash-attn's varlen lse drops the packed batch axis.
    lse = lse * math.log(2)
    return out, (lse.squeeze(0) if cu_seqlens is not None else lse)


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
            max_seqlen_k: int | None = None, window: Any = NO_WINDOW, softcap: Any = 0.0,
            alibi_slopes: Any = None, return_lse: bool = False) -> AttentionCall:
    """The validated call (one-line ValueError/TypeError for bad arguments, before any launch)."""
    head_dim = _validate(q, k, v, score, sigmoid_bias)
    packing = validate_packing(cu_seqlens, cu_seqlens_k, q, k, max_seqlen, max_seqlen_k)
    window, softcap = window_pair(window), softcap_value(softcap)
    _validate_softmax_features(score, window, softcap, alibi_slopes, return_lse)
    if alibi_slopes is not None:
        _validate_slopes(alibi_slopes, q, packing.count if packing is not None else q.shape[0])
    return AttentionCall(causal=bool(causal),
                         scale=head_dim ** -0.5 if scale is None else float(scale),
                         score=score, sigmoid_bias=sigmoid_bias, packing=packing,
                         problem=problem_of(q, k, v, causal, score, packing, window),
                         window=window, softcap=softcap, alibi_slopes=alibi_slopes)


def _validate_softmax_features(score: str, window: tuple[int, int], softcap: float,
                               alibi_slopes: Any, return_lse: bool) -> None:
    """Sigmoid weights have no window, softcap, ALiBi or normaliser in seqtune."""
    if score == "softmax":
        return
    for name, used in (("window", window != NO_WINDOW), ("softcap", softcap != 0.0),
                       ("alibi_slopes", alibi_slopes is not None), ("return_lse", return_lse)):
        if used:
            raise ValueError(f"{name} applies only to score='softmax', got score={score!r}")


def _validate_slopes(slopes: Any, q: torch.Tensor, sequences: int) -> None:
    """float32 ``[Hq]`` or ``[sequences, Hq]`` on q's device, else a one-line error."""
    heads = q.shape[2]
    if not isinstance(slopes, torch.Tensor):
        raise ValueError(f"alibi_slopes must be a float32 tensor, got {type(slopes).__name__}")
    if slopes.dtype != torch.float32:
        raise ValueError(f"alibi_slopes must be float32, got "
                         f"{str(slopes.dtype).removeprefix('torch.')}")
    if tuple(slopes.shape) not in ((heads,), (sequences, heads)):
        raise ValueError(f"alibi_slopes must have shape [Hq={heads}] or [{sequences}, "
                         f"Hq={heads}] (one row per sequence), got {tuple(slopes.shape)}")
    if slopes.device != q.device:
        raise ValueError(f"alibi_slopes is on {slopes.device}, q on {q.device}")


def problem_of(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, score: str,
               packing: Packing | None = None, window: tuple[int, int] = NO_WINDOW) -> Problem:
    """The tuning problem (profile ``problem`` mapping) of a call. ``Dv`` appears only when the
    value head dim differs from D, and ``window`` (the bucketed band, ``window.window_field``)
    only when the window hides a key, so dense problems with Dv == D still match the entries of
    older profiles (which the spec's problem_defaults complete with ``N: 1, varlen: False,
    window: 0``). The soft cap is no field: one tanh per score changes neither the tiles that
    run nor what they keep, so a capped call takes the uncapped call's entries."""
    batch, queries, heads, head_dim = q.shape
    problem = {"B": batch, "T": queries, "S": k.shape[1], "Hq": heads, "Hkv": k.shape[2],
               "D": head_dim}
    if v.shape[3] != head_dim:
        problem["Dv"] = v.shape[3]
    problem.update({"causal": bool(causal), "dtype": dtype_name(q.dtype), "score": score,
                    "N": packing.count if packing is not None else 1,
                    "varlen": packing is not None})
    band = window_field(window, bool(causal), queries, k.shape[1])
    if band != NO_WINDOW_FIELD:
        problem["window"] = band
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
