"""``torch.ops.seqtune.prefix_attention`` and its backward op (see ``seqtune.custom_ops``): the
forward saves q, k, v, o and every prefix's log-sum-exp; the backward runs the reverse scans."""
from __future__ import annotations

import torch

from seqtune.custom_ops import decode_config, gradients, placeholder, refuse_double_backward
from seqtune.loader import config_for

from seqtune.kernels.prefix_attention.autograd import run_backward
from seqtune.kernels.prefix_attention.op import (prefix_attention_forward, problem_of,
                                                 resolved_scale)


@torch.library.custom_op("seqtune::prefix_attention", mutates_args=())
def prefix_attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None,
                        config: str | None, bwd_config: str | None,
                        with_lse: bool) -> tuple[torch.Tensor, torch.Tensor]:
    o, lse = prefix_attention_forward(q, k, v, scale, decode_config(config),
                                      decode_config(bwd_config), with_lse)
    return o, placeholder(o) if lse is None else lse


@prefix_attention_op.register_fake
def _(q, k, v, scale, config, bwd_config, with_lse):
    batch, length, heads, _ = k.shape
    lse = k.new_empty((batch, heads, length), dtype=torch.float32) if with_lse else placeholder(v)
    return v.new_empty(k.shape), lse


@torch.library.custom_op("seqtune::prefix_attention_backward", mutates_args=())
def prefix_attention_backward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor,
                              lse: torch.Tensor, do: torch.Tensor, scale: float | None,
                              bwd_config: str | None, needs: list[bool]) -> list[torch.Tensor]:
    cfg = config_for("prefix_attention_bwd", problem_of(q, k, v), decode_config(bwd_config))
    grads = run_backward(q, k, v, o, lse, do, resolved_scale(k, scale), cfg, needs)
    return [placeholder(o) if grad is None else grad for grad in grads]


@prefix_attention_backward.register_fake
def _(q, k, v, o, lse, do, scale, bwd_config, needs):
    return [x.new_empty(x.shape) if need else placeholder(o) for x, need in zip((q, k, v), needs)]


def _setup_context(ctx, inputs, output):
    q, k, v, scale, _, bwd_config, _ = inputs
    ctx.save_for_backward(q, k, v, *output)
    ctx.scale, ctx.bwd_config = scale, bwd_config


def _backward(ctx, do, _):
    q, k, v, o, lse = ctx.saved_tensors
    needs = list(ctx.needs_input_grad[:3])
    grads = prefix_attention_backward(q, k, v, o, lse, do, ctx.scale, ctx.bwd_config, needs)
    return (*gradients(grads, needs), None, None, None, None)


prefix_attention_op.register_autograd(_backward, setup_context=_setup_context)
refuse_double_backward(prefix_attention_backward, "prefix_attention")
