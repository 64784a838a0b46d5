"""``torch.ops.seqtune.linear_scan`` and its backward op (see ``seqtune.custom_ops``): the forward
saves a, its output h and the initial state, the backward runs the reverse-scan kernel."""
from __future__ import annotations

import torch

from seqtune.custom_ops import (decode_config, gradients, placeholder, refuse_double_backward,
                                wanted)
from seqtune.loader import config_for

from seqtune.kernels.linear_scan.autograd import run_backward
from seqtune.kernels.linear_scan.op import linear_scan_forward, problem_of


@torch.library.custom_op("seqtune::linear_scan", mutates_args=())
def linear_scan_op(a: torch.Tensor, b: torch.Tensor, initial_state: torch.Tensor | None,
                   config: str | None, bwd_config: str | None) -> torch.Tensor:
    return linear_scan_forward(a, b, initial_state, decode_config(config),
                               decode_config(bwd_config))


@linear_scan_op.register_fake
def _(a, b, initial_state, config, bwd_config):
    return b.new_empty(b.shape)


@torch.library.custom_op("seqtune::linear_scan_backward", mutates_args=())
def linear_scan_backward(a: torch.Tensor, h: torch.Tensor, initial_state: torch.Tensor | None,
                         dh: torch.Tensor, bwd_config: str | None,
                         needs: list[bool]) -> list[torch.Tensor]:
    cfg = config_for("linear_scan_bwd", problem_of(a, h, initial_state),
                     decode_config(bwd_config))
    grads = run_backward(a, h, initial_state, dh, cfg, needs)
    return [placeholder(h) if grad is None else grad for grad in grads]


@linear_scan_backward.register_fake
def _(a, h, initial_state, dh, bwd_config, needs):
    inputs = (a, h, initial_state)
    return [x.new_empty(x.shape) if want else placeholder(h)
            for x, want in zip(inputs, wanted(needs, inputs))]


def _setup_context(ctx, inputs, output):
    a, _, initial_state, _, bwd_config = inputs
    ctx.save_for_backward(a, output, initial_state)
    ctx.bwd_config = bwd_config


def _backward(ctx, dh):
    a, h, initial_state = ctx.saved_tensors
    needs = wanted(ctx.needs_input_grad[:3], (a, h, initial_state))
    grads = linear_scan_backward(a, h, initial_state, dh, ctx.bwd_config, needs)
    return (*gradients(grads, needs), None, None)


linear_scan_op.register_autograd(_backward, setup_context=_setup_context)
refuse_double_backward(linear_scan_backward, "linear_scan")
