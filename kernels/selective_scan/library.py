"""``torch.ops.seqtune.selective_scan`` with its backward op, and
``torch.ops.seqtune.selective_scan_step`` (see ``seqtune.custom_ops``): the forward saves only
its inputs; the step op declares its in-place pool update."""
from __future__ import annotations

import functools

import torch

from seqtune.checks import expect_step_tensors
from seqtune.custom_ops import (decode_config, encode_config, gradients,
                                placeholder, refuse_double_backward, wanted)
from seqtune.loader import config_for

from seqtune.kernels.selective_scan.autograd import INPUTS, run_backward
from seqtune.kernels.selective_scan.op import problem_of, selective_scan_forward
from seqtune.kernels.selective_scan.step import selective_scan_step as step_implementation


@torch.library.custom_op("seqtune::selective_scan", mutates_args=())
def selective_scan_op(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                      C: torch.Tensor, D: torch.Tensor | None, z: torch.Tensor | None,
                      delta_bias: torch.Tensor | None, delta_softplus: bool,
                      initial_state: torch.Tensor | None, config: str | None,
                      bwd_config: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    return selective_scan_forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                  initial_state, decode_config(config), decode_config(bwd_config))


@selective_scan_op.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, config, bwd_config):
    return u.new_empty(u.shape), u.new_empty((*u.shape[:2], A.shape[1]), dtype=torch.float32)


@torch.library.custom_op("seqtune::selective_scan_backward", mutates_args=())
def selective_scan_backward(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor,
                            B: torch.Tensor, C: torch.Tensor, D: torch.Tensor | None,
                            z: torch.Tensor | None, delta_bias: torch.Tensor | None,
                            initial_state: torch.Tensor | None, dy: torch.Tensor | None,
                            dlast_state: torch.Tensor | None, delta_softplus: bool,
                            bwd_config: str | None, needs: list[bool]) -> list[torch.Tensor]:
    tensors = (u, delta, A, B, C, D, z, delta_bias, initial_state)
    problem = problem_of(u, A, B, D, z, delta_bias, delta_softplus, initial_state)
    cfg = config_for("selective_scan_bwd", problem, decode_config(bwd_config))
    grads = run_backward(problem, cfg, dict(zip(INPUTS, tensors)), dy, dlast_state, needs)
    # Without steps the state's gradient is dlast_state itself: an op's output is never an input.
    return [placeholder(u) if grad is None else grad.clone() if grad is dlast_state else grad
            for grad in grads]


@selective_scan_backward.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, initial_state, dy, dlast_state, delta_softplus,
      bwd_config, needs):
    tensors = (u, delta, A, B, C, D, z, delta_bias, initial_state)
    return [x.new_empty(x.shape) if want else placeholder(u)
            for x, want in zip(tensors, wanted(needs, tensors))]


def _setup_context(ctx, inputs, output):
    *tensors, delta_softplus, initial_state, _, bwd_config = inputs
    ctx.save_for_backward(*tensors, initial_state)
    ctx.delta_softplus, ctx.bwd_config = delta_softplus, bwd_config
    ctx.set_materialize_grads(False)  # an unused output's gradient stays None: no zeros read


def _backward(ctx, dy, dlast_state):
    tensors = ctx.saved_tensors
    needs = wanted([ctx.needs_input_grad[i] for i in (0, 1, 2, 3, 4, 5, 6, 7, 9)], tensors)
    grads = selective_scan_backward(*tensors, dy, dlast_state, ctx.delta_softplus,
                                    ctx.bwd_config, needs)
    *leading, dh0 = gradients(grads, needs)
    return (*leading, None, dh0, None, None)


selective_scan_op.register_autograd(_backward, setup_context=_setup_context)
refuse_double_backward(selective_scan_backward, "selective_scan")


@torch.library.custom_op("seqtune::selective_scan_step", mutates_args=("state",))
def selective_scan_step_op(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor,
                           B: torch.Tensor, C: torch.Tensor, state: torch.Tensor,
                           D: torch.Tensor | None, z: torch.Tensor | None,
                           delta_bias: torch.Tensor | None, delta_softplus: bool,
                           state_indices: torch.Tensor | None,
                           config: str | None) -> torch.Tensor:
    return step_implementation(u, delta, A, B, C, state=state, D=D, z=z, delta_bias=delta_bias,
                               delta_softplus=delta_softplus, state_indices=state_indices,
                               config=decode_config(config))


@selective_scan_step_op.register_fake
def _(u, delta, A, B, C, state, D, z, delta_bias, delta_softplus, state_indices, config):
    return u.new_empty(u.shape)



@functools.wraps(step_implementation)
def selective_scan_step(u, delta, A, B, C, *, state, D=None, z=None, delta_bias=None,
                        delta_softplus=False, state_indices=None, config=None):
    expect_step_tensors({"u": u, "delta": delta, "A": A, "B": B, "C": C, "state": state, "D": D,
                         "z": z, "delta_bias": delta_bias, "state_indices": state_indices})
    return torch.ops.seqtune.selective_scan_step(u, delta, A, B, C, state, D, z, delta_bias,
                                                 bool(delta_softplus), state_indices,
                                                 encode_config("config", config))
