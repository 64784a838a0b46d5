"""A small differentiable call of every op with a backward, shared by the compile and the
double-backward tests: ``DIFFERENTIABLE[name]()`` gives ``(fn, inputs)``, ``fn(*inputs)`` a tuple
of outputs (None for an absent one), the leaves among ``inputs`` requiring grad."""
from __future__ import annotations

import torch
import torch.nn.functional as F

import seqtune.kernels as K


def _leaf(*shape: int, low: float | None = None) -> torch.Tensor:
    """A float32 leaf requiring grad: standard normal, or uniform in (low, 0) for log decays."""
    value = torch.randn(*shape) if low is None else torch.rand(*shape) * low
    return value.requires_grad_()


def _unit(*shape: int) -> torch.Tensor:
    return F.normalize(torch.randn(*shape), dim=-1).requires_grad_()


def _attention():
    cu = torch.tensor([0, 3, 7], dtype=torch.int32)
    return (lambda q, k, v, cu: (K.attention(q, k, v, causal=True, cu_seqlens=cu),),
            (_leaf(1, 7, 2, 16), _leaf(1, 7, 1, 16), _leaf(1, 7, 1, 24), cu))


def _linear_attention():
    return (lambda q, k, v, g, h0: K.linear_attention(q, k, v, g, initial_state=h0,
                                                      output_final_state=True),
            (_leaf(1, 7, 1, 16), _leaf(1, 7, 1, 16), _leaf(1, 7, 2, 24), _leaf(1, 7, 2, low=-1),
             _leaf(1, 2, 16, 24)))


def _ssd():
    return (lambda x, dt, A, B, C, D: K.ssd(x, dt, A, B, C, D=D, dt_softplus=True,
                                            output_final_state=True),
            (_leaf(1, 7, 2, 8), _leaf(1, 7, 2), _leaf(2, low=-1), _leaf(1, 7, 1, 16),
             _leaf(1, 7, 1, 16), _leaf(2)))


def _delta_rule():
    cu = torch.tensor([0, 2, 7], dtype=torch.int32)
    return (lambda q, k, v, beta, g, cu: K.delta_rule(q, k, v, beta, g, cu_seqlens=cu,
                                                      output_final_state=True),
            (_unit(1, 7, 1, 16), _unit(1, 7, 1, 16), _leaf(1, 7, 1, 16),
             torch.rand(1, 7, 1).requires_grad_(), _leaf(1, 7, 1, low=-1), cu))


def _selective_scan():
    return (lambda u, delta, A, B, C, D, z: K.selective_scan(
                u, delta, A, B, C, D, z, delta_softplus=True, return_last_state=True),
            (_leaf(1, 4, 9), _leaf(1, 4, 9), _leaf(4, 3, low=-1), _leaf(1, 3, 9), _leaf(1, 3, 9),
             _leaf(4), _leaf(1, 4, 9)))


def _linear_scan():
    return (lambda a, b, h0: (K.linear_scan(a, b, initial_state=h0),),
            (torch.rand(2, 9, 8).requires_grad_(), _leaf(2, 9, 8), _leaf(2, 8)))


def _prefix_attention():
    return (lambda q, k, v: (K.prefix_attention(q, k, v),),
            (_leaf(1, 2, 16), _leaf(1, 9, 2, 16), _leaf(1, 9, 2, 16)))


def _causal_conv1d():
    cu = torch.tensor([0, 4, 9], dtype=torch.int32)
    return (lambda x, w, b, h0, cu: K.causal_conv1d(x, w, b, activation="silu", initial_state=h0,
                                                    output_final_state=True, cu_seqlens=cu),
            (_leaf(1, 9, 8), _leaf(8, 4), _leaf(8), _leaf(2, 8, 3), cu))


DIFFERENTIABLE = {"attention": _attention, "linear_attention": _linear_attention, "ssd": _ssd,
                  "delta_rule": _delta_rule, "selective_scan": _selective_scan,
                  "linear_scan": _linear_scan, "prefix_attention": _prefix_attention,
                  "causal_conv1d": _causal_conv1d}


def loss_of(outputs) -> torch.Tensor:
    """A loss that weighs every element of every output differently (so a transposed or
    misrouted gradient cannot pass)."""
    return sum((out.float() * torch.cos(torch.arange(out.numel()).view(out.shape))).sum()
               for out in outputs if out is not None)
