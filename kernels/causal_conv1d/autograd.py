"""causal_conv1d as a ``torch.autograd.Function``: the forward saves only its inputs (the
backward recomputes the pre-activation from x), the backward runs the Triton kernels of
``backward.py`` with the ``causal_conv1d_bwd`` config of the same problem."""
from __future__ import annotations

from typing import Any, Mapping

import torch

from seqtune.loader import config_for

from seqtune.kernels.causal_conv1d.backward import backward
from seqtune.kernels.causal_conv1d.op import Layout, forward


class CausalConv1dFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, initial_state, cu_seqlens, layout: Layout,
                problem: dict, output_final_state: bool, config, bwd_config):
        cfg = config_for("causal_conv1d", problem, config)
        y, final_state = forward(x, weight, bias, initial_state, cu_seqlens, layout,
                                 output_final_state, cfg)
        ctx.save_for_backward(x, weight, bias, initial_state, cu_seqlens)
        ctx.layout, ctx.problem, ctx.bwd_config = layout, problem, bwd_config
        # An output unused by the loss gets None, not a tensor of zeros to read.
        ctx.set_materialize_grads(False)
        return y if final_state is None else (y, final_state)

    @staticmethod
    def backward(ctx, dy, dfinal=None):
        x, weight, bias, initial_state, cu_seqlens = ctx.saved_tensors
        cfg = config_for("causal_conv1d_bwd", ctx.problem, ctx.bwd_config)
        if dy is None:  # only the final state reached the loss
            dy = torch.zeros_like(x)
        wanted = tuple(ctx.needs_input_grad[:4])
        grads = backward(x, weight, bias, initial_state, cu_seqlens, ctx.layout, dy, dfinal,
                         wanted, cfg)
        return (*grads, None, None, None, None, None, None)


def differentiable_conv(x, weight, bias, initial_state, cu_seqlens, layout: Layout,
                        problem: dict, output_final_state: bool,
                        config: Mapping[str, Any] | None, bwd_config: Mapping[str, Any] | None):
    """What ``causal_conv1d`` returns when a floating input requires grad."""
    outputs = CausalConv1dFunction.apply(x, weight, bias, initial_state, cu_seqlens, layout,
                                         problem, output_final_state, config, bwd_config)
    if output_final_state:
        return outputs
    return outputs, None
