"""Baselines of ``selective_scan`` for ``seqtune bench``: the same computation by other means.

- ``torch``: plain PyTorch: the discretised decays exp(delta A) and inputs delta B u formed for
  every (channel, state, step) in float32 (the initial state folded into the first step), scanned
  over time by ``linear_scan``'s parallel (Hillis-Steele) scan, read out with C, plus D u, gated
  by silu(z); y in u's dtype.

It takes the spec's inputs and returns ``(y [b, d, L], last_state [b, d, n] float32)`` like
``spec.run``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from seqtune.kernels.linear_scan.baselines import affine_scan
from seqtune.spec import Inputs, Outputs


def per_channel(x: torch.Tensor, channels: int) -> torch.Tensor:
    """B or C (``[b, n, L]`` or grouped ``[b, g, n, L]``) as ``[b, d, L, n]`` float32: channel c
    reads group c // (d / g)."""
    grouped = x if x.dim() == 4 else x[:, None]
    per_group = channels // grouped.shape[1]
    return grouped.float().repeat_interleave(per_group, dim=1).transpose(-1, -2)


def torch_selective_scan(inputs: Inputs) -> Outputs:
    u = inputs["u"]
    channels = u.shape[1]
    delta = inputs["delta"].float()
    if inputs["delta_bias"] is not None:
        delta = delta + inputs["delta_bias"].float()[:, None]
    if inputs["delta_softplus"]:
        delta = F.softplus(delta)
    decay = torch.exp(delta[..., None] * inputs["A"].float()[:, None, :])  # [b, d, L, n]
    drive = (delta * u.float())[..., None] * per_channel(inputs["B"], channels)
    if inputs.get("initial_state") is not None:  # fold x_{-1} into the first step's drive
        first = drive[:, :, :1] + decay[:, :, :1] * inputs["initial_state"].float()[:, :, None]
        drive = torch.cat([first, drive[:, :, 1:]], dim=2)
    states = affine_scan(decay, drive, dim=2)
    y = (states * per_channel(inputs["C"], channels)).sum(-1)
    if inputs["D"] is not None:
        y = y + inputs["D"].float()[:, None] * u.float()
    if inputs["z"] is not None:
        y = y * F.silu(inputs["z"].float())
    return y.to(u.dtype), states[:, :, -1]


BASELINES = {"torch": torch_selective_scan}
