"""``torch.ops.seqtune.causal_conv1d`` with its backward op, and
``torch.ops.seqtune.causal_conv1d_step`` (see ``seqtune.custom_ops``): the forward saves only its
inputs (the backward recomputes the pre-activation from x); the step op declares its in-place
state update."""
from __future__ import annotations

import functools

import torch

from seqtune.checks import expect_step_tensors
from seqtune.custom_ops import (decode_config, encode_config, gradients,
                                placeholder, refuse_double_backward, wanted)
from seqtune.loader import config_for

from seqtune.kernels.causal_conv1d.backward import backward
from seqtune.kernels.causal_conv1d.op import causal_conv1d_forward, check_activation, prepare
from seqtune.kernels.causal_conv1d.step import causal_conv1d_step as step_implementation


@torch.library.custom_op("seqtune::causal_conv1d", mutates_args=())
def causal_conv1d_op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                     activation: str | None, initial_state: torch.Tensor | None,
                     output_final_state: bool, cu_seqlens: torch.Tensor | None,
                     config: str | None, bwd_config: str | None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    y, final_state = causal_conv1d_forward(x, weight, bias, activation, initial_state,
                                           output_final_state, cu_seqlens,
                                           decode_config(config), decode_config(bwd_config))
    return y, placeholder(y) if final_state is None else final_state


@causal_conv1d_op.register_fake
def _(x, weight, bias, activation, initial_state, output_final_state, cu_seqlens, config,
      bwd_config):
    if not output_final_state:
        return x.new_empty(x.shape), placeholder(x)
    count = x.shape[0] if cu_seqlens is None else cu_seqlens.shape[0] - 1
    return x.new_empty(x.shape), x.new_empty((count, x.shape[2], weight.shape[1] - 1))


@torch.library.custom_op("seqtune::causal_conv1d_backward", mutates_args=())
def causal_conv1d_backward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                           initial_state: torch.Tensor | None, dy: torch.Tensor | None,
                           dfinal: torch.Tensor | None, activation: str | None,
                           cu_seqlens: torch.Tensor | None, bwd_config: str | None,
                           needs: list[bool]) -> list[torch.Tensor]:
    layout, cu_seqlens, problem = prepare(x, weight, bias, activation, initial_state,
                                          cu_seqlens)
    cfg = config_for("causal_conv1d_bwd", problem, decode_config(bwd_config))
    dy = torch.zeros_like(x) if dy is None else dy  # only the final state reached the loss
    grads = backward(x, weight, bias, initial_state, cu_seqlens, layout, dy, dfinal,
                     tuple(needs), cfg)
    return [placeholder(x) if grad is None else grad for grad in grads]


@causal_conv1d_backward.register_fake
def _(x, weight, bias, initial_state, dy, dfinal, activation, cu_seqlens, bwd_config, needs):
    tensors = (x, weight, bias, initial_state)
    return [t.new_empty(t.shape) if want else placeholder(x)
            for t, want in zip(tensors, wanted(needs, tensors))]


def _setup_context(ctx, inputs, output):
    x, weight, bias, activation, initial_state, output_final_state, cu_seqlens, _, bwd_config = \
        inputs
    ctx.save_for_backward(x, weight, bias, initial_state, cu_seqlens)
    ctx.activation, ctx.output_final_state, ctx.bwd_config = (activation, output_final_state,
                                                              bwd_config)
    ctx.set_materialize_grads(False)  # an unused output's gradient stays None: no zeros read


def _backward(ctx, dy, dfinal):
    x, weight, bias, initial_state, cu_seqlens = ctx.saved_tensors
    tensors = (x, weight, bias, initial_state)
    needs = wanted([ctx.needs_input_grad[i] for i in (0, 1, 2, 4)], tensors)
    grads = causal_conv1d_backward(*tensors, dy, dfinal if ctx.output_final_state else None,
                                   ctx.activation, cu_seqlens, ctx.bwd_config, needs)
    dx, dweight, dbias, dh0 = gradients(grads, needs)
    return dx, dweight, dbias, None, dh0, None, None, None, None


causal_conv1d_op.register_autograd(_backward, setup_context=_setup_context)
refuse_double_backward(causal_conv1d_backward, "causal_conv1d")


@torch.library.custom_op("seqtune::causal_conv1d_step", mutates_args=("state",))
def causal_conv1d_step_op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                          activation: str | None, state: torch.Tensor,
                          state_indices: torch.Tensor | None,
                          config: str | None) -> torch.Tensor:
    return step_implementation(x, weight, bias, activation=activation, state=state,
                               state_indices=state_indices, config=decode_config(config))


@causal_conv1d_step_op.register_fake
def _(x, weight, bias, activation, state, state_indices, config):
    return x.new_empty(x.shape)



@functools.wraps(step_implementation)
def causal_conv1d_step(x, weight, bias=None, *, activation=None, state, state_indices=None,
                       config=None):
    expect_step_tensors({"x": x, "weight": weight, "state": state, "bias": bias,
                         "state_indices": state_indices})
    check_activation(activation)
    return torch.ops.seqtune.causal_conv1d_step(x, weight, bias, activation, state,
                                                state_indices, encode_config("config", config))
