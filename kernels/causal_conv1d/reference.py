"""The float64 reference of causal_conv1d, built on ``torch.nn.functional.conv1d`` (groups=D),
one sequence at a time: independent of the Triton kernels' indexing."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def reference_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                   initial_state: torch.Tensor | None, cu_seqlens: torch.Tensor | None,
                   silu: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(y [B, T, D], final_state [N, D, W - 1]) in float64 on x's device, differentiable.

    Each sequence is left-padded by its state (zeros without one) and convolved by
    ``F.conv1d(..., groups=D)``; the final state is the padded sequence's last W - 1 columns."""
    x, weight = x.double(), weight.double()
    bias = bias.double() if bias is not None else None
    channels, width = weight.shape
    if cu_seqlens is None:
        sequences = list(x.transpose(1, 2))  # B of [D, T]
    else:
        bounds = cu_seqlens.tolist()
        sequences = [x[0, a:b].transpose(0, 1) for a, b in zip(bounds, bounds[1:])]
    outputs, finals = [], []
    for index, sequence in enumerate(sequences):
        state = (initial_state[index].double() if initial_state is not None
                 else sequence.new_zeros(channels, width - 1))
        padded = torch.cat([state, sequence], dim=1)
        if sequence.shape[1] == 0:  # conv1d refuses an input shorter than the kernel
            out = sequence
        else:
            out = F.conv1d(padded[None], weight[:, None, :], bias, groups=channels)[0]
        outputs.append(F.silu(out) if silu else out)
        finals.append(padded[:, padded.shape[1] - (width - 1):])
    if cu_seqlens is None:
        y = torch.stack(outputs).transpose(1, 2)
    else:
        y = torch.cat(outputs, dim=1).transpose(0, 1)[None]
    return y, torch.stack(finals)
