"""``torch.autograd.Function``s of ``linear_attention`` and ``ssd``: the forward keeps only its
inputs (the backward recomputes the per-chunk states), the backward runs ``gradients.py`` with
the ``*_bwd`` kernel's config for the same problem."""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import torch
import torch.nn.functional as F

from seqtune.kernels.linear_attention.chunked import Recurrence, run_chunked
from seqtune.kernels.linear_attention.gradients import run_backward
from seqtune.kernels.linear_attention.varlen import Sequences
from seqtune.loader import config_for


@dataclasses.dataclass(frozen=True)
class Call:
    """What a call fixes besides its tensors."""

    kernel: str  # the forward's kernel name; the backward's is kernel + "_bwd"
    problem: dict[str, Any]
    config: dict
    bwd_config: Mapping[str, Any] | None
    sequences: Sequences
    scale: float
    output_final_state: bool


def _state_grad(dh0: torch.Tensor, initial_state: torch.Tensor | None) -> torch.Tensor | None:
    return None if initial_state is None else dh0.to(initial_state.dtype)


class LinearAttentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, g, initial_state, call: Call):
        r = Recurrence(q, k, v, g, call.scale, call.sequences,
                       initial_state=None if initial_state is None
                       else initial_state.contiguous())
        out, final, _ = run_chunked(r, call.config, call.output_final_state)
        ctx.save_for_backward(q, k, v, g, initial_state)
        ctx.call = call
        return out, final

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, g, initial_state = ctx.saved_tensors
        call = ctx.call
        r = Recurrence(q, k, v, g, call.scale, call.sequences,
                       initial_state=None if initial_state is None
                       else initial_state.contiguous())
        config = config_for(call.kernel + "_bwd", call.problem, call.bwd_config)
        grads = run_backward(r, config, do, dht)
        needs = ctx.needs_input_grad
        dg = None if g is None or not needs[3] else grads.dg.to(g.dtype)
        return (grads.dq if needs[0] else None, grads.dk if needs[1] else None,
                grads.dv.to(v.dtype) if needs[2] else None, dg,
                _state_grad(grads.dh0, initial_state) if needs[4] else None, None)


def wants_grad(*tensors: torch.Tensor | None) -> bool:
    """Whether autograd must record the call: grad mode on and a float input requiring grad."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


@dataclasses.dataclass(frozen=True)
class SsdCall:
    call: Call
    dt_softplus: bool


def ssd_terms(x, dt, A, dt_bias, dt_softplus):
    """(raw step dt + dt_bias, effective step, log decay, v = dt x in x's dtype), fp32."""
    raw = dt.to(torch.float32)
    if dt_bias is not None:
        raw = raw + dt_bias.to(torch.float32)
    step = F.softplus(raw) if dt_softplus else raw
    log_decay = (step * A.to(torch.float32)).contiguous()
    v = (x.to(torch.float32) * step[..., None]).to(x.dtype)
    return raw, step.contiguous(), log_decay, v


class SsdFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dt, A, B, C, D, dt_bias, initial_state, spec: SsdCall):
        call = spec.call
        _, step, log_decay, _ = ssd_terms(x, dt, A, dt_bias, spec.dt_softplus)
        r = Recurrence(C, B, x, log_decay, 1.0, call.sequences, v_scale=step,
                       D=None if D is None else D.contiguous(),
                       initial_state=None if initial_state is None
                       else initial_state.contiguous())
        y, final, _ = run_chunked(r, call.config, call.output_final_state)
        ctx.save_for_backward(x, dt, A, B, C, D, dt_bias, initial_state)
        ctx.spec = spec
        return y, final

    @staticmethod
    def backward(ctx, dy, dht):
        x, dt, A, B, C, D, dt_bias, initial_state = ctx.saved_tensors
        call = ctx.spec.call
        raw, step, log_decay, v = ssd_terms(x, dt, A, dt_bias, ctx.spec.dt_softplus)
        r = Recurrence(C, B, v, log_decay, 1.0, call.sequences,
                       initial_state=None if initial_state is None
                       else initial_state.contiguous())
        config = config_for("ssd_bwd", call.problem, call.bwd_config)
        grads = run_backward(r, config, dy, dht)
        return ssd_input_grads(ctx.needs_input_grad, grads, x, dt, A, D, dt_bias, initial_state,
                               dy, raw, step, ctx.spec.dt_softplus) + (None,)


def ssd_input_grads(needs, grads, x, dt, A, D, dt_bias, initial_state, dy, raw, step,
                    dt_softplus):
    """(dx, ddt, dA, dB, dC, dD, ddt_bias, d initial_state) from the linear-attention
    gradients (q = C, k = B, v = dt x, g = dt A) by the chain rule."""
    dv = grads.dv
    x32 = x.to(torch.float32)
    dstep = grads.dg * A.to(torch.float32) + (dv * x32).sum(-1)
    draw = dstep * torch.sigmoid(raw) if dt_softplus else dstep
    dx = dv * step[..., None]
    if D is not None:
        dx = dx + D.to(torch.float32)[:, None] * dy.to(torch.float32)
    dA = (grads.dg * step).sum((0, 1))
    dD = None if D is None or not needs[5] else (dy.to(torch.float32) * x32).sum((0, 1, 3))
    return (dx.to(x.dtype) if needs[0] else None, draw.to(dt.dtype) if needs[1] else None,
            dA.to(A.dtype) if needs[2] else None, grads.dk if needs[3] else None,
            grads.dq if needs[4] else None, None if dD is None else dD.to(D.dtype),
            draw.sum((0, 1)).to(dt_bias.dtype) if dt_bias is not None and needs[6] else None,
            _state_grad(grads.dh0, initial_state) if needs[7] else None)
