"""``torch.ops.seqtune.attention`` and its backward op (see ``seqtune.custom_ops``): the forward
saves q, k, v, O and the row log-sum-exp (never a ``T x S`` tensor); the backward op re-derives
the call (packing included) from its arguments inside the op, where host reads are invisible to
dynamo."""
from __future__ import annotations

import torch

from seqtune.custom_ops import decode_config, gradients, placeholder, refuse_double_backward
from seqtune.loader import config_for

from seqtune.kernels.attention.autograd import run_backward
from seqtune.kernels.attention.op import attention_forward, prepare


def _call(q, k, v, causal, scale, score, sigmoid_bias, cu_seqlens, cu_seqlens_k, max_seqlen,
          max_seqlen_k, window_left, window_right, softcap, alibi_slopes, return_lse=False):
    return prepare(q, k, v, causal=causal, scale=scale, score=score, sigmoid_bias=sigmoid_bias,
                   cu_seqlens=cu_seqlens, cu_seqlens_k=cu_seqlens_k, max_seqlen=max_seqlen,
                   max_seqlen_k=max_seqlen_k, window=(window_left, window_right),
                   softcap=softcap, alibi_slopes=alibi_slopes, return_lse=return_lse)


@torch.library.custom_op("seqtune::attention", mutates_args=())
def attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool,
                 scale: float | None, score: str, sigmoid_bias: float | None,
                 cu_seqlens: torch.Tensor | None, cu_seqlens_k: torch.Tensor | None,
                 max_seqlen: int | None, max_seqlen_k: int | None,
                 config: str | None, bwd_config: str | None,
                 with_lse: bool, window_left: int, window_right: int, softcap: float,
                 alibi_slopes: torch.Tensor | None,
                 return_lse: bool) -> tuple[torch.Tensor, torch.Tensor]:
    call = _call(q, k, v, causal, scale, score, sigmoid_bias, cu_seqlens, cu_seqlens_k,
                 max_seqlen, max_seqlen_k, window_left, window_right, softcap, alibi_slopes,
                 return_lse)
    out, lse = attention_forward(q, k, v, call, decode_config(config),
                                 decode_config(bwd_config), with_lse)
    return out, placeholder(out) if lse is None else lse


@attention_op.register_fake
def _(q, k, v, causal, scale, score, sigmoid_bias, cu_seqlens, cu_seqlens_k, max_seqlen,
      max_seqlen_k, config, bwd_config, with_lse, window_left, window_right, softcap,
      alibi_slopes, return_lse):
    batch, queries, heads, _ = q.shape
    out = q.new_empty((batch, queries, heads, v.shape[3]))
    if not with_lse or score == "sigmoid":  # sigmoid weights need no normaliser
        return out, placeholder(out)
    return out, q.new_empty((batch, heads, queries), dtype=torch.float32)


@torch.library.custom_op("seqtune::attention_backward", mutates_args=())
def attention_backward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                       lse: torch.Tensor, grad_out: torch.Tensor, causal: bool,
                       scale: float | None, score: str, sigmoid_bias: float | None,
                       cu_seqlens: torch.Tensor | None, cu_seqlens_k: torch.Tensor | None,
                       max_seqlen: int | None, max_seqlen_k: int | None,
                       window_left: int, window_right: int, softcap: float,
                       alibi_slopes: torch.Tensor | None, bwd_config: str | None,
                       needs: list[bool]) -> list[torch.Tensor]:
    call = _call(q, k, v, causal, scale, score, sigmoid_bias, cu_seqlens, cu_seqlens_k,
                 max_seqlen, max_seqlen_k, window_left, window_right, softcap, alibi_slopes)
    cfg = config_for("attention_bwd", call.problem, decode_config(bwd_config))
    grads = run_backward(q, k, v, out, None if call.sigmoid else lse, grad_out, call, cfg,
                         needs)
    return [placeholder(out) if grad is None else grad for grad in grads]


@attention_backward.register_fake
def _(q, k, v, out, lse, grad_out, causal, scale, score, sigmoid_bias, cu_seqlens, cu_seqlens_k,
      max_seqlen, max_seqlen_k, window_left, window_right, softcap, alibi_slopes, bwd_config,
      needs):
    return [x.new_empty(x.shape) if need else placeholder(out) for x, need in zip((q, k, v), needs)]


def _setup_context(ctx, inputs, output):
    (q, k, v, causal, scale, score, sigmoid_bias, cu_seqlens, cu_seqlens_k, max_seqlen,
     max_seqlen_k, _, bwd_config, _, window_left, window_right, softcap, alibi_slopes,
     _) = inputs
    ctx.save_for_backward(q, k, v, *output)
    # The returned lse gets no gradient (the backward differentiates o only).
    ctx.mark_non_differentiable(output[1])
    # Integer offsets and constant slopes, never differentiated: kept beside the saved
    # tensors, as the packing was.
    ctx.offsets = (cu_seqlens, cu_seqlens_k, max_seqlen, max_seqlen_k)
    ctx.arguments = (causal, scale, score, sigmoid_bias)
    ctx.features = (window_left, window_right, softcap, alibi_slopes)
    ctx.bwd_config = bwd_config


def _backward(ctx, grad_out, _):
    q, k, v, out, lse = ctx.saved_tensors
    needs = list(ctx.needs_input_grad[:3])
    grads = attention_backward(q, k, v, out, lse, grad_out, *ctx.arguments, *ctx.offsets,
                               *ctx.features, ctx.bwd_config, needs)
    return (*gradients(grads, needs), *(None,) * 16)


attention_op.register_autograd(_backward, setup_context=_setup_context)
refuse_double_backward(attention_backward, "attention")
