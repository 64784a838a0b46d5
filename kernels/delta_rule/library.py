"""``torch.ops.seqtune.delta_rule`` with its backward op, and
``torch.ops.seqtune.delta_rule_step`` (see ``seqtune.custom_ops``): the forward saves only its
inputs; the backward op re-derives the packing inside the op and runs ``autograd.py``; the step
op declares its in-place pool update."""
from __future__ import annotations

import functools

import torch

from seqtune.checks import expect_step_tensors
from seqtune.custom_ops import (decode_config, encode_config, gradients,
                                placeholder, real_or_none, refuse_double_backward, wanted)
from seqtune.loader import config_for

from seqtune.kernels.delta_rule.autograd import run_backward
from seqtune.kernels.delta_rule.op import KERNEL, delta_rule_forward, prepare
from seqtune.kernels.delta_rule.step import delta_rule_step as step_implementation
from seqtune.kernels.delta_rule.varlen import packing


@torch.library.custom_op("seqtune::delta_rule", mutates_args=())
def delta_rule_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor,
                  g: torch.Tensor | None, scale: float | None,
                  initial_state: torch.Tensor | None, output_final_state: bool,
                  cu_seqlens: torch.Tensor | None, max_seqlen: int | None,
                  config: str | None, bwd_config: str | None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    out, final = delta_rule_forward(q, k, v, beta, g, scale, initial_state, output_final_state,
                                    cu_seqlens, max_seqlen, decode_config(config),
                                    decode_config(bwd_config))
    return out, placeholder(out) if final is None else final


@delta_rule_op.register_fake
def _(q, k, v, beta, g, scale, initial_state, output_final_state, cu_seqlens, max_seqlen,
      config, bwd_config):
    out = q.new_empty((*q.shape[:2], *v.shape[2:]))
    if not output_final_state:
        return out, placeholder(out)
    count = q.shape[0] if cu_seqlens is None else cu_seqlens.shape[0] - 1
    return out, q.new_empty((count, v.shape[2], q.shape[3], v.shape[3]), dtype=torch.float32)


@torch.library.custom_op("seqtune::delta_rule_backward", mutates_args=())
def delta_rule_backward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor,
                        g: torch.Tensor | None, initial_state: torch.Tensor | None,
                        do: torch.Tensor, dht: torch.Tensor | None, scale: float | None,
                        cu_seqlens: torch.Tensor | None, max_seqlen: int | None,
                        bwd_config: str | None, needs: list[bool]) -> list[torch.Tensor]:
    tensors = (q, k, v, beta, g, initial_state)
    problem, bounds, scale, _ = prepare(*tensors[:5], scale, initial_state, cu_seqlens,
                                        max_seqlen)
    if q.shape[1] == 0:  # only the initial state reaches the output, as the final state
        grads = [torch.zeros_like(x) if want else None for x, want in zip(tensors, needs)]
        if needs[5] and dht is not None:
            grads[5] = dht.to(initial_state.dtype, copy=True)  # never an input itself
    else:
        cfg = config_for(KERNEL + "_bwd", problem, decode_config(bwd_config))
        contiguous = [None if x is None else x.contiguous() for x in tensors]
        pack = packing(bounds, cfg["BT"], q.device)
        grads = run_backward(*contiguous[:5], scale, contiguous[5], do.contiguous(),
                             None if dht is None else dht.float().contiguous(), cfg, pack,
                             needs[5])
        grads = [grad if want else None for grad, want in zip(grads, needs)]
    return [placeholder(q) if grad is None else grad for grad in grads]


@delta_rule_backward.register_fake
def _(q, k, v, beta, g, initial_state, do, dht, scale, cu_seqlens, max_seqlen, bwd_config,
      needs):
    return [x.new_empty(x.shape) if want else placeholder(q)
            for x, want in zip((q, k, v, beta, g, initial_state), needs)]


def _setup_context(ctx, inputs, output):
    (q, k, v, beta, g, scale, initial_state, output_final_state, cu_seqlens, max_seqlen, _,
     bwd_config) = inputs
    ctx.save_for_backward(q, k, v, beta, g, initial_state)
    ctx.cu_seqlens = cu_seqlens  # integer offsets, never differentiated
    ctx.max_seqlen = max_seqlen
    ctx.arguments = (scale, output_final_state)
    ctx.bwd_config = bwd_config


def _backward(ctx, do, dht):
    tensors, cu_seqlens = ctx.saved_tensors, ctx.cu_seqlens
    needs = wanted([ctx.needs_input_grad[i] for i in (0, 1, 2, 3, 4, 6)], tensors)
    scale, output_final_state = ctx.arguments
    grads = delta_rule_backward(*tensors, do, dht if output_final_state else None, scale,
                                cu_seqlens, ctx.max_seqlen, ctx.bwd_config, needs)
    dq, dk, dv, dbeta, dg, dh0 = gradients(grads, needs)
    return dq, dk, dv, dbeta, dg, None, dh0, None, None, None, None, None


delta_rule_op.register_autograd(_backward, setup_context=_setup_context)
refuse_double_backward(delta_rule_backward, "delta_rule")


@torch.library.custom_op("seqtune::delta_rule_step", mutates_args=("state",))
def delta_rule_step_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor,
                       g: torch.Tensor | None, state: torch.Tensor, scale: float | None,
                       state_indices: torch.Tensor | None, config: str | None) -> torch.Tensor:
    return step_implementation(q, k, v, beta, g, state=state, scale=scale,
                               state_indices=state_indices, config=decode_config(config))


@delta_rule_step_op.register_fake
def _(q, k, v, beta, g, state, scale, state_indices, config):
    return q.new_empty((q.shape[0], *v.shape[1:]))



@functools.wraps(step_implementation)
def delta_rule_step(q, k, v, beta, g=None, *, state, scale=None, state_indices=None,
                    config=None):
    expect_step_tensors({"q": q, "k": k, "v": v, "beta": beta, "state": state, "g": g,
                         "state_indices": state_indices})
    return torch.ops.seqtune.delta_rule_step(q, k, v, beta, g, state,
                                             real_or_none("scale", scale), state_indices,
                                             encode_config("config", config))
