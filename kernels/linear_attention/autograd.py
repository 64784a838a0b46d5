"""The backwards of ``linear_attention`` and ``ssd`` (``library.py`` registers them as ops): the
forward keeps only its inputs, the backward recomputes the per-chunk states and runs
``gradients.py`` with the ``*_bwd`` kernel's config for the same problem."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from seqtune.kernels.linear_attention.chunked import Recurrence
from seqtune.kernels.linear_attention.gradients import run_backward
from seqtune.loader import config_for


def _state_grad(dh0: torch.Tensor, initial_state: torch.Tensor | None) -> torch.Tensor | None:
    return None if initial_state is None else dh0.to(initial_state.dtype)


def linear_attention_grads(recurrence: Recurrence, problem: dict[str, Any], bwd_config,
                           tensors, do, dht, needs) -> tuple:
    """(dq, dk, dv, dg, d initial_state) of ``tensors`` = (q, k, v, g, initial_state), None
    where ``needs`` leaves one out."""
    q, k, v, g, initial_state = tensors
    config = config_for("linear_attention_bwd", problem, bwd_config)
    grads = run_backward(recurrence, config, do, dht)
    dg = None if g is None or not needs[3] else grads.dg.to(g.dtype)
    return (grads.dq if needs[0] else None, grads.dk if needs[1] else None,
            grads.dv.to(v.dtype) if needs[2] else None, dg,
            _state_grad(grads.dh0, initial_state) if needs[4] else None)


def ssd_grads(tensors, sequences, problem, bwd_config, dt_softplus, dy, dht, needs) -> tuple:
    """The gradients of ``tensors`` = (x, dt, A, B, C, D, dt_bias, initial_state)."""
    x, dt, A, B, C, D, dt_bias, initial_state = tensors
    raw, step, log_decay, v = ssd_terms(x, dt, A, dt_bias, dt_softplus)
    r = Recurrence(C, B, v, log_decay, 1.0, sequences,
                   initial_state=None if initial_state is None else initial_state.contiguous())
    config = config_for("ssd_bwd", problem, bwd_config)
    grads = run_backward(r, config, dy, dht)
    return ssd_input_grads(needs, grads, x, dt, A, D, dt_bias, initial_state, dy, raw, step,
                           dt_softplus)


def ssd_terms(x, dt, A, dt_bias, dt_softplus):
    """(raw step dt + dt_bias, effective step, log decay, v = dt x in x's dtype), fp32."""
    raw = dt.to(torch.float32)
    if dt_bias is not None:
        raw = raw + dt_bias.to(torch.float32)
    step = F.softplus(raw) if dt_softplus else raw
    log_decay = (step * A.to(torch.float32)).contiguous()
    v = (x.to(torch.float32) * step[..., None]).to(x.dtype)
    return raw, step.contiguous(), log_decay, v


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
