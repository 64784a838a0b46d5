"""Baselines of ``linear_scan`` for ``seqtune bench``: the same computation by other means.

- ``torch``: plain PyTorch, a parallel (Hillis-Steele) scan over time: log2(T) whole-tensor
  steps composing the affine maps h -> a h + b, accumulated in float32 like the kernel, the
  result in the inputs' dtype.

It takes the spec's inputs (``a, b [B, T, D]``, ``initial_state [B, D]`` or None) and returns
``(h [B, T, D],)`` like ``spec.run``.
"""
from __future__ import annotations

import torch

from seqtune.spec import Inputs, Outputs


def affine_scan(a: torch.Tensor, b: torch.Tensor, dim: int) -> torch.Tensor:
    """h with h_t = a_t h_{t-1} + b_t along ``dim`` from h_{-1} = 0, by doubling: after the step
    with shift s, (a_t, b_t) is the composition of the maps of steps t - 2s + 1 .. t."""
    length = a.shape[dim]
    shift = 1
    while shift < length:
        head_a, tail_a = a.narrow(dim, 0, shift), a.narrow(dim, shift, length - shift)
        head_b, tail_b = b.narrow(dim, 0, shift), b.narrow(dim, shift, length - shift)
        earlier_a, earlier_b = a.narrow(dim, 0, length - shift), b.narrow(dim, 0, length - shift)
        b = torch.cat([head_b, torch.addcmul(tail_b, tail_a, earlier_b)], dim=dim)
        a = torch.cat([head_a, tail_a * earlier_a], dim=dim)
        shift *= 2
    return b


def torch_linear_scan(inputs: Inputs) -> Outputs:
    a, b = inputs["a"].float(), inputs["b"].float()
    if inputs["initial_state"] is not None:
        # Fold h_{-1} into the first step: h_0 = a_0 h_{-1} + b_0.
        first = b[:, :1] + a[:, :1] * inputs["initial_state"].float()[:, None]
        b = torch.cat([first, b[:, 1:]], dim=1)
    return (affine_scan(a, b, dim=1).to(inputs["b"].dtype),)


BASELINES = {"torch": torch_linear_scan}
