"""Baselines of ``attention`` and ``attention_bwd`` for ``seqtune bench``: the same computation
by other means.

- ``torch_sdpa``: ``torch.nn.functional.scaled_dot_product_attention`` (flash / cuDNN /
  memory-efficient backends on a GPU, chosen by PyTorch), softmax scores only.
- ``torch``: the plain PyTorch formula a user writes without a fused kernel: scores by a matmul
  in the inputs' dtype, softmax (or sigmoid) in float32, weights back to the inputs' dtype for
  the second matmul. Queries go in blocks so long sequences fit in memory.

Forward baselines take the spec's inputs (``q [B, T, Hq, D]``, ``k [B, S, Hkv, D]``,
``v [B, S, Hkv, Dv]``, ``causal``, ``score``, optional ``sigmoid_bias`` and ``window``) and return
``(o [B, T, Hq, Dv],)`` like ``spec.run``. The backward's (``BACKWARD_BASELINES``) run the same
forward and its autograd backward and return ``(dq, dk, dv)``: the training step's attention
cost, since neither can run its backward alone. Packed inputs (``cu_seqlens``) are refused:
these formulas would attend across sequences.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from seqtune.spec import Inputs, Outputs

# Float32 score elements formed at once by the plain baseline (1 GiB): bounds its memory, not
# its arithmetic, at long sequence lengths.
SCORE_BLOCK_ELEMENTS = 1 << 28


def visible_keys(queries: int, keys: int, causal: bool, device: torch.device,
                 window: tuple[int, int] = (-1, -1)) -> torch.Tensor:
    """``[T, S]`` bool: query i sees key j (causal attention is bottom-right aligned: j <= i +
    S - T, as the kernel defines it; a window ``(left, right)``, -1 unbounded, keeps
    ``i + S - T - left <= j <= i + S - T + right``)."""
    visible = torch.ones(queries, keys, dtype=torch.bool, device=device)
    left, right = window
    if causal:
        right = 0
    if right >= 0:
        visible = visible.tril(keys - queries + right)
    if left >= 0:
        visible = visible.triu(keys - queries - left)
    return visible


def _dense_only(inputs: Inputs) -> None:
    if inputs.get("cu_seqlens") is not None:
        raise ValueError("packed sequences (cu_seqlens) are not supported by this baseline")


def sdpa_attention(inputs: Inputs) -> Outputs:
    """PyTorch's scaled_dot_product_attention on the same inputs (softmax only)."""
    _dense_only(inputs)
    if inputs["score"] != "softmax":
        raise ValueError("scaled_dot_product_attention computes softmax attention only")
    q, k, v = (inputs[name].transpose(1, 2) for name in ("q", "k", "v"))
    queries, keys = q.shape[2], k.shape[2]
    grouped = q.shape[1] != k.shape[1]
    window = tuple(inputs.get("window", (-1, -1)))
    if inputs["causal"] and queries == keys and window[0] < 0:
        # Top-left and bottom-right alignment agree here; is_causal keeps the flash backend.
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=grouped)
    else:
        mask = visible_keys(queries, keys, inputs["causal"], q.device, window)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=grouped)
        # Queries that see no key (causal T > S): SDPA gives NaN there, the op defines 0.
        out = out.masked_fill(~mask.any(dim=1)[:, None], 0)
    return (out.transpose(1, 2),)


def plain_attention(inputs: Inputs) -> Outputs:
    """Scores, mask, softmax or sigmoid, weighted sum: matmuls in the inputs' dtype."""
    _dense_only(inputs)
    q, k, v = inputs["q"], inputs["k"], inputs["v"]
    batch, queries, heads, head_dim = q.shape
    keys, kv_heads = k.shape[1], k.shape[2]
    group = heads // kv_heads
    q = q.transpose(1, 2)  # [B, Hq, T, D]
    k_t = k.repeat_interleave(group, dim=2).permute(0, 2, 3, 1)  # [B, Hq, D, S]
    v = v.repeat_interleave(group, dim=2).transpose(1, 2)  # [B, Hq, S, D]
    visible = visible_keys(queries, keys, inputs["causal"], q.device,
                           tuple(inputs.get("window", (-1, -1))))
    bias = inputs.get("sigmoid_bias")
    bias = -math.log(max(keys, 1)) if bias is None else float(bias)
    out = torch.empty(batch, heads, queries, v.shape[3], dtype=q.dtype, device=q.device)
    rows = max(1, SCORE_BLOCK_ELEMENTS // max(1, batch * heads * keys))
    for first in range(0, queries, rows):
        last = min(first + rows, queries)
        scores = (q[:, :, first:last] @ k_t).float() * head_dim ** -0.5
        weights = _weights(scores, visible[first:last], inputs["score"], bias)
        out[:, :, first:last] = weights.to(v.dtype) @ v
    return (out.transpose(1, 2),)


def _weights(scores: torch.Tensor, visible: torch.Tensor, score: str,
             bias: float) -> torch.Tensor:
    if score == "softmax":
        weights = torch.softmax(scores.masked_fill(~visible, -math.inf), dim=-1)
        # A query that sees no key has the empty sum, 0 (softmax gives NaN there).
        return weights.nan_to_num(0.0)
    return torch.sigmoid(scores + bias) * visible


def forward_backward(forward: Callable[[Inputs], Outputs]) -> Callable[[Inputs], Outputs]:
    """A backward baseline: ``forward`` on q, k, v that require grad, then autograd with the
    inputs' upstream gradient ``do``; returns ``(dq, dk, dv)``."""
    def run(inputs: Inputs) -> Outputs:
        leaves = {name: inputs[name].detach().requires_grad_() for name in ("q", "k", "v")}
        with torch.enable_grad():
            (out,) = forward({**inputs, **leaves})
            return torch.autograd.grad(out, tuple(leaves.values()), inputs["do"])
    return run


def sdpa_training(inputs: Inputs) -> Outputs:
    """SDPA forward and backward; refuses causal T > S (or a window) that leaves a query no
    key, where SDPA's rows are NaN and would poison the key gradients (the op defines them as
    zero)."""
    visible = visible_keys(inputs["q"].shape[1], inputs["k"].shape[1], inputs["causal"],
                           inputs["q"].device, tuple(inputs.get("window", (-1, -1))))
    if not bool(visible.any(dim=1).all()):
        raise ValueError("SDPA's backward gives NaN for causal T > S (query rows with no key)")
    return forward_backward(sdpa_attention)(inputs)


BASELINES = {"torch_sdpa": sdpa_attention, "torch": plain_attention}
BACKWARD_BASELINES = {"torch_sdpa": sdpa_training, "torch": forward_backward(plain_attention)}
