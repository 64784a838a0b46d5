"""``torch.ops.seqtune.linear_attention`` and ``torch.ops.seqtune.ssd`` with their backward ops,
and their step ops (see ``seqtune.custom_ops``): the forwards save only their inputs; the
backward ops re-derive the recurrence (packing included) inside the op and run
``autograd.py``; the step ops declare their in-place pool update."""
from __future__ import annotations

import functools

import torch

from seqtune.checks import expect_step_tensors
from seqtune.custom_ops import (decode_config, encode_config, gradients,
                                placeholder, real_or_none, refuse_double_backward, wanted)

from seqtune.kernels.linear_attention.autograd import linear_attention_grads, ssd_grads
from seqtune.kernels.linear_attention.op import linear_attention_forward, prepare
from seqtune.kernels.linear_attention.ssd import check_ssd_inputs, ssd_forward, ssd_problem
from seqtune.kernels.linear_attention.step import linear_attention_step as la_step_implementation
from seqtune.kernels.linear_attention.step import ssd_step as ssd_step_implementation


def _final_state(like, cu_seqlens, batch, shape, output_final_state):
    """The fake final state [N, *shape] fp32 (N = B, or the packed sequences), or the
    placeholder."""
    if not output_final_state:
        return placeholder(like)
    count = batch if cu_seqlens is None else cu_seqlens.shape[0] - 1
    return like.new_empty((count, *shape), dtype=torch.float32)


def _listed(grads, like) -> list[torch.Tensor]:
    return [placeholder(like) if grad is None else grad for grad in grads]


def _fake_grads(tensors, needs, like) -> list[torch.Tensor]:
    return [x.new_empty(x.shape) if want else placeholder(like)
            for x, want in zip(tensors, wanted(needs, tensors))]


def _empty_grads(tensors, needs, dht, output_final_state) -> tuple:
    """Gradients of a call with nothing to launch: only the initial state reaches the output
    (as the final state), everything else gets zeros."""
    grads = [torch.zeros_like(x) if want else None
             for x, want in zip(tensors, wanted(needs, tensors))]
    initial_state = tensors[-1]
    if grads[-1] is not None and output_final_state and dht is not None:
        grads[-1] = dht.to(initial_state.dtype, copy=True)  # never an input itself
    return tuple(grads)


@torch.library.custom_op("seqtune::linear_attention", mutates_args=())
def linear_attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        g: torch.Tensor | None, scale: float | None,
                        initial_state: torch.Tensor | None,
                        output_final_state: bool, cu_seqlens: torch.Tensor | None,
                        max_seqlen: int | None, config: str | None, bwd_config: str | None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    out, final = linear_attention_forward(q, k, v, g, scale, initial_state, output_final_state,
                                          cu_seqlens, max_seqlen, decode_config(config),
                                          decode_config(bwd_config))
    return out, placeholder(out) if final is None else final


@linear_attention_op.register_fake
def _(q, k, v, g, scale, initial_state, output_final_state, cu_seqlens, max_seqlen, config,
      bwd_config):
    state = (v.shape[2], q.shape[3], v.shape[3])
    return (q.new_empty(v.shape),
            _final_state(q, cu_seqlens, q.shape[0], state, output_final_state))


@torch.library.custom_op("seqtune::linear_attention_backward", mutates_args=())
def linear_attention_backward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                              g: torch.Tensor | None, initial_state: torch.Tensor | None,
                              do: torch.Tensor, dht: torch.Tensor | None, scale: float | None,
                              output_final_state: bool, cu_seqlens: torch.Tensor | None,
                              max_seqlen: int | None, bwd_config: str | None,
                              needs: list[bool]) -> list[torch.Tensor]:
    tensors = (q, k, v, g, initial_state)
    recurrence, problem, _ = prepare(q, k, v, g, scale, initial_state, cu_seqlens, max_seqlen)
    if recurrence is None:
        return _listed(_empty_grads(tensors, needs, dht, output_final_state), q)
    grads = linear_attention_grads(recurrence, problem, decode_config(bwd_config), tensors, do,
                                   dht, wanted(needs, tensors))
    return _listed(grads, q)


@linear_attention_backward.register_fake
def _(q, k, v, g, initial_state, do, dht, scale, output_final_state, cu_seqlens, max_seqlen,
      bwd_config, needs):
    return _fake_grads((q, k, v, g, initial_state), needs, q)


def _la_setup_context(ctx, inputs, output):
    (q, k, v, g, scale, initial_state, output_final_state, cu_seqlens, max_seqlen, _,
     bwd_config) = inputs
    ctx.save_for_backward(q, k, v, g, initial_state)
    ctx.cu_seqlens = cu_seqlens  # integer offsets, never differentiated
    ctx.max_seqlen = max_seqlen
    ctx.arguments = (scale, output_final_state)
    ctx.bwd_config = bwd_config


def _la_backward(ctx, do, dht):
    q, k, v, g, initial_state = ctx.saved_tensors
    cu_seqlens = ctx.cu_seqlens
    tensors = (q, k, v, g, initial_state)
    needs = wanted([ctx.needs_input_grad[i] for i in (0, 1, 2, 3, 5)], tensors)
    scale, output_final_state = ctx.arguments
    grads = linear_attention_backward(*tensors, do, dht if output_final_state else None,
                                      scale, output_final_state, cu_seqlens, ctx.max_seqlen,
                                      ctx.bwd_config, needs)
    dq, dk, dv, dg, dh0 = gradients(grads, needs)
    return dq, dk, dv, dg, None, dh0, None, None, None, None, None


linear_attention_op.register_autograd(_la_backward, setup_context=_la_setup_context)
refuse_double_backward(linear_attention_backward, "linear_attention")


@torch.library.custom_op("seqtune::ssd", mutates_args=())
def ssd_op(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
           D: torch.Tensor | None, dt_bias: torch.Tensor | None, dt_softplus: bool,
           initial_state: torch.Tensor | None, output_final_state: bool,
           cu_seqlens: torch.Tensor | None, max_seqlen: int | None, config: str | None,
           bwd_config: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    y, final = ssd_forward(x, dt, A, B, C, D, dt_bias, dt_softplus, initial_state,
                           output_final_state, cu_seqlens, max_seqlen, decode_config(config),
                           decode_config(bwd_config))
    return y, placeholder(y) if final is None else final


@ssd_op.register_fake
def _(x, dt, A, B, C, D, dt_bias, dt_softplus, initial_state, output_final_state, cu_seqlens,
      max_seqlen, config, bwd_config):
    state = (x.shape[2], B.shape[3], x.shape[3])
    return x.new_empty(x.shape), _final_state(x, cu_seqlens, x.shape[0], state,
                                              output_final_state)


@torch.library.custom_op("seqtune::ssd_backward", mutates_args=())
def ssd_backward(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                 C: torch.Tensor, D: torch.Tensor | None, dt_bias: torch.Tensor | None,
                 initial_state: torch.Tensor | None, dy: torch.Tensor, dht: torch.Tensor | None,
                 dt_softplus: bool, output_final_state: bool, cu_seqlens: torch.Tensor | None,
                 max_seqlen: int | None, bwd_config: str | None,
                 needs: list[bool]) -> list[torch.Tensor]:
    tensors = (x, dt, A, B, C, D, dt_bias, initial_state)
    sequences, initial_state = check_ssd_inputs(*tensors, cu_seqlens, max_seqlen)
    batch, T, heads, _ = x.shape
    if T == 0 or batch == 0 or heads == 0:
        return _listed(_empty_grads(tensors, needs, dht, output_final_state), x)
    problem = ssd_problem(x, B, D is not None, initial_state is not None, sequences)
    grads = ssd_grads((*tensors[:-1], initial_state), sequences, problem,
                      decode_config(bwd_config), dt_softplus, dy, dht, wanted(needs, tensors))
    return _listed(grads, x)


@ssd_backward.register_fake
def _(x, dt, A, B, C, D, dt_bias, initial_state, dy, dht, dt_softplus, output_final_state,
      cu_seqlens, max_seqlen, bwd_config, needs):
    return _fake_grads((x, dt, A, B, C, D, dt_bias, initial_state), needs, x)


def _ssd_setup_context(ctx, inputs, output):
    (x, dt, A, B, C, D, dt_bias, dt_softplus, initial_state, output_final_state, cu_seqlens,
     max_seqlen, _, bwd_config) = inputs
    ctx.save_for_backward(x, dt, A, B, C, D, dt_bias, initial_state)
    ctx.cu_seqlens = cu_seqlens  # integer offsets, never differentiated
    ctx.max_seqlen = max_seqlen
    ctx.arguments = (dt_softplus, output_final_state)
    ctx.bwd_config = bwd_config


def _ssd_backward(ctx, dy, dht):
    tensors, cu_seqlens = ctx.saved_tensors, ctx.cu_seqlens
    needs = wanted([ctx.needs_input_grad[i] for i in (0, 1, 2, 3, 4, 5, 6, 8)], tensors)
    dt_softplus, output_final_state = ctx.arguments
    grads = ssd_backward(*tensors, dy, dht if output_final_state else None, dt_softplus,
                         output_final_state, cu_seqlens, ctx.max_seqlen, ctx.bwd_config, needs)
    dx, ddt, dA, dB, dC, dD, ddt_bias, dh0 = gradients(grads, needs)
    return dx, ddt, dA, dB, dC, dD, ddt_bias, None, dh0, None, None, None, None, None


ssd_op.register_autograd(_ssd_backward, setup_context=_ssd_setup_context)
refuse_double_backward(ssd_backward, "ssd")


@torch.library.custom_op("seqtune::linear_attention_step", mutates_args=("state",))
def linear_attention_step_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                             g: torch.Tensor | None, state: torch.Tensor, scale: float | None,
                             state_indices: torch.Tensor | None,
                             config: str | None) -> torch.Tensor:
    return la_step_implementation(q, k, v, g, state=state, scale=scale,
                                  state_indices=state_indices, config=decode_config(config))


@linear_attention_step_op.register_fake
def _(q, k, v, g, state, scale, state_indices, config):
    return q.new_empty((q.shape[0], *v.shape[1:]))



@functools.wraps(la_step_implementation)
def linear_attention_step(q, k, v, g=None, *, state, scale=None, state_indices=None,
                          config=None):
    expect_step_tensors({"q": q, "k": k, "v": v, "state": state, "g": g,
                         "state_indices": state_indices})
    return torch.ops.seqtune.linear_attention_step(q, k, v, g, state,
                                                   real_or_none("scale", scale), state_indices,
                                                   encode_config("config", config))


@torch.library.custom_op("seqtune::ssd_step", mutates_args=("state",))
def ssd_step_op(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                C: torch.Tensor, state: torch.Tensor, D: torch.Tensor | None,
                dt_bias: torch.Tensor | None, dt_softplus: bool,
                state_indices: torch.Tensor | None, config: str | None) -> torch.Tensor:
    return ssd_step_implementation(x, dt, A, B, C, state=state, D=D, dt_bias=dt_bias,
                                   dt_softplus=dt_softplus, state_indices=state_indices,
                                   config=decode_config(config))


@ssd_step_op.register_fake
def _(x, dt, A, B, C, state, D, dt_bias, dt_softplus, state_indices, config):
    return x.new_empty(x.shape)



@functools.wraps(ssd_step_implementation)
def ssd_step(x, dt, A, B, C, *, state, D=None, dt_bias=None, dt_softplus=False,
             state_indices=None, config=None):
    expect_step_tensors({"x": x, "dt": dt, "A": A, "B": B, "C": C, "state": state, "D": D,
                         "dt_bias": dt_bias, "state_indices": state_indices})
    return torch.ops.seqtune.ssd_step(x, dt, A, B, C, state, D, dt_bias, bool(dt_softplus),
                                      state_indices, encode_config("config", config))
