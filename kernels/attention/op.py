"""``attention(q, k, v, ...)``: softmax or sigmoid attention forward over whole sequences."""
from __future__ import annotations

import math
from typing import Any, Mapping

import torch
import triton

from seqtune.checks import expect_float, expect_same_device, expect_same_dtype, expect_tensor
from seqtune.kernels.attention.kernel import INTERPRETED, LOG2_E, attention_fwd_kernel
from seqtune.launch import launch, new_output
from seqtune.loader import config_for
from seqtune.spec import Problem, dtype_name

SCORES = ("softmax", "sigmoid")
HEAD_DIMS = (16, 32, 64, 128, 256)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
              scale: float | None = None, config: Mapping[str, Any] | None = None,
              score: str = "softmax", sigmoid_bias: float | None = None) -> torch.Tensor:
    """Attention forward: ``o[b, i, h] = sum_j w(i, j) v[b, j, h // (Hq // Hkv)]``.

    Args:
        q: ``[B, T, Hq, D]`` queries; D a power of two in 16..256; float32, float16 or bfloat16.
        k, v: ``[B, S, Hkv, D]`` keys and values, same dtype and device as q; ``Hq % Hkv == 0``
            (grouped-query and multi-query attention share one key/value head among
            ``Hq // Hkv`` query heads).
        causal: query ``i`` sees keys ``j <= i + S - T`` (bottom-right aligned when T != S).
            With ``T > S`` the first ``T - S`` query rows see no key and their output is zero.
        scale: multiplies ``q . k``; defaults to ``D ** -0.5``.
        config: a (partial) config of the ``attention`` kernel space; None takes the tuned one.
        score: ``"softmax"`` (``w`` = softmax over the visible keys) or ``"sigmoid"``
            (``w = sigmoid(scale q.k + sigmoid_bias)`` over the visible keys, unnormalised).
        sigmoid_bias: ``b`` of sigmoid attention; defaults to ``-ln(S)``. Only with sigmoid.

    Returns:
        ``[B, T, Hq, D]`` in q's dtype. Inputs may be non-contiguous.
    """
    batch, queries, heads, head_dim, keys, kv_heads = _validate(q, k, v, score, sigmoid_bias)
    scale = head_dim ** -0.5 if scale is None else float(scale)
    if q.numel() == 0:
        return new_output(q.shape, q.dtype, q.device)
    if keys == 0:
        # No key is visible to any query: the empty sum is zero for both scores.
        return torch.zeros(q.shape, dtype=q.dtype, device=q.device)
    problem = problem_of(q, k, causal, score)
    cfg = config_for("attention", problem, config)
    sigmoid = score == "sigmoid"
    if sigmoid:
        bias = -math.log(keys) if sigmoid_bias is None else float(sigmoid_bias)
        qk_scale = scale
    else:
        bias = 0.0
        qk_scale = scale * LOG2_E
    out = new_output(q.shape, q.dtype, q.device)
    grid = (triton.cdiv(queries, cfg["BLOCK_M"]), heads, batch)
    launch(attention_fwd_kernel, grid, q, k, v, out,
           *q.stride(), *k.stride(), *v.stride(), *out.stride(),
           queries, keys, heads // kv_heads, qk_scale, bias,
           D=head_dim, BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"],
           CAUSAL=bool(causal), SIGMOID=sigmoid,
           UPCAST_BF16=INTERPRETED and q.dtype == torch.bfloat16,
           num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    return out


def problem_of(q: torch.Tensor, k: torch.Tensor, causal: bool, score: str) -> Problem:
    """The tuning problem (profile ``problem`` mapping) of a call."""
    batch, queries, heads, head_dim = q.shape
    return {"B": batch, "T": queries, "S": k.shape[1], "Hq": heads, "Hkv": k.shape[2],
            "D": head_dim, "causal": bool(causal), "dtype": dtype_name(q.dtype), "score": score}


def _validate(q: Any, k: Any, v: Any, score: str,
              sigmoid_bias: float | None) -> tuple[int, int, int, int, int, int]:
    """Shapes ``(B, T, Hq, D, S, Hkv)`` of valid arguments, else a one-line error."""
    for name, tensor in (("q", q), ("k", k), ("v", v)):
        expect_tensor(name, tensor, 4)
        expect_float(name, tensor)
    expect_same_dtype({"q": q, "k": k, "v": v})
    expect_same_device({"q": q, "k": k, "v": v})
    if score not in SCORES:
        raise ValueError(f"score must be one of {SCORES}, got {score!r}")
    if sigmoid_bias is not None and score != "sigmoid":
        raise ValueError(f"sigmoid_bias applies only to score='sigmoid', got score={score!r}")
    batch, queries, heads, head_dim = q.shape
    if tuple(k.shape) != tuple(v.shape):
        raise ValueError(f"k and v must have the same shape [B, S, Hkv, D], "
                         f"got k {tuple(k.shape)} and v {tuple(v.shape)}")
    _, keys, kv_heads, _ = k.shape
    if k.shape[0] != batch or k.shape[3] != head_dim:
        raise ValueError(f"k must have shape [B={batch}, S, Hkv, D={head_dim}] to match q "
                         f"{tuple(q.shape)}, got {tuple(k.shape)}")
    if head_dim not in HEAD_DIMS:
        raise ValueError(f"head dim D={head_dim} of q is not supported: expected one of "
                         f"{HEAD_DIMS}")
    if kv_heads == 0 or heads % kv_heads != 0:
        raise ValueError(f"query heads Hq={heads} must be a multiple of key/value heads "
                         f"Hkv={kv_heads}")
    return batch, queries, heads, head_dim, keys, kv_heads
