"""The prefix_attention op: argument checks, config choice, and the plain or differentiable
launch."""
from __future__ import annotations

from typing import Any, Mapping

import torch

from seqtune.checks import (expect_float, expect_same_device, expect_same_dtype, expect_shape,
                            expect_tensor)
from seqtune.custom_ops import encode_config, expect_tensors, forward_config, real_or_none
from seqtune.spec import dtype_name

from seqtune.kernels.prefix_attention.autograd import run_forward

MAX_HEAD_DIM = 256


def prefix_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                     scale: float | None = None,
                     config: Mapping[str, Any] | None = None,
                     bwd_config: Mapping[str, Any] | None = None) -> torch.Tensor:
    """Attention as an RNN: o_t = sum_{s<=t} softmax_s(scale q . k_s) v_s for every t.

    q: [B, H, D] (one query per sequence and head); k, v: [B, T, H, D]; one float dtype; head
    dim 1..256. scale defaults to D**-0.5. Accumulates in fp32 and returns o [B, T, H, D] in
    v's dtype. ``bwd_config`` overrides the tuned config of the backward
    (``prefix_attention_bwd``), which runs when grad is enabled and q, k or v requires grad.
    """
    expect_tensors({"q": q, "k": k, "v": v})
    # The row statistics are kept only when autograd will run the backward.
    with_lse = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    return torch.ops.seqtune.prefix_attention(
        q, k, v, real_or_none("scale", scale), encode_config("config", config),
        encode_config("bwd_config", bwd_config), with_lse)[0]


def prefix_attention_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                             scale: float | None, config: Mapping[str, Any] | None,
                             bwd_config: Mapping[str, Any] | None, with_lse: bool
                             ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The op's implementation (``torch.ops.seqtune.prefix_attention``): checks, config,
    launch; ``(o, every prefix's log-sum-exp [B, H, T] fp32 or None)``."""
    _check_arguments(q, k, v)
    problem = problem_of(q, k, v)
    # An empty problem launches nothing.
    cfg = forward_config("prefix_attention", problem, config, bwd_config) if k.numel() else {}
    return run_forward(q, k, v, resolved_scale(k, scale), cfg, store_lse=with_lse)


def resolved_scale(k: torch.Tensor, scale: float | None) -> float:
    return k.shape[3] ** -0.5 if scale is None else float(scale)


def problem_of(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> dict[str, Any]:
    """The tuning problem of a call (the forward's and the backward's)."""
    batch, length, heads, head_dim = k.shape
    return {"B": batch, "T": length, "H": heads, "D": head_dim, "dtype": dtype_name(v.dtype)}


def _check_arguments(q: Any, k: Any, v: Any) -> None:
    expect_tensor("q", q, 3)
    expect_tensor("k", k, 4)
    expect_tensor("v", v, 4)
    for name, tensor in (("q", q), ("k", k), ("v", v)):
        expect_float(name, tensor)
    expect_same_dtype({"q": q, "k": k, "v": v})
    batch, length, heads, head_dim = k.shape
    expect_shape("v", v, k.shape)
    expect_shape("q", q, (batch, heads, head_dim))
    if not 1 <= head_dim <= MAX_HEAD_DIM:
        raise ValueError(f"head dim D={head_dim} is not supported: expected 1..{MAX_HEAD_DIM}")
    expect_same_device({"q": q, "k": k, "v": v})
