"""Baselines of ``causal_conv1d`` for ``seqtune bench``: the same computation by other means.

- ``torch``: ``F.conv1d(groups=D)`` in x's dtype on each row left-padded by its state (what a
  PyTorch model runs); packed batches one sequence at a time.
- ``fla``: flash-linear-attention's Triton ``causal_conv1d`` (same ``[B, T, D]`` layout and
  cu_seqlens), when ``fla`` is installed and x is on a GPU. fla keeps W state columns, the oldest
  unused: seqtune's state is its last W - 1.
- ``causal_conv1d``: the CUDA kernels of the causal-conv1d package (``[B, D, T]`` layout, given
  a channel-last view of x), when installed and x is on a GPU; packed batches through its
  ``seq_idx``, which takes neither initial nor final states.

Each takes the forward spec's inputs and returns ``(y, final_state)``. The backward baselines
(``torch``, ``fla``) return the gradients of x, weight, bias and initial state by autograd
(their time includes the forward that autograd needs). The step baselines (``torch``,
``chunkwise_T1``: seqtune's causal_conv1d at T = 1, ``causal_conv1d``: its
``causal_conv1d_update``) return ``(y, updated pool)`` like the step spec's ``run``, stepping
a copy of the pool as it does.
"""
from __future__ import annotations

import importlib

import torch
import torch.nn.functional as F

from seqtune.spec import Inputs, Outputs


def torch_conv1d(inputs: Inputs) -> Outputs:
    x, weight, bias = inputs["x"], inputs["weight"], inputs["bias"]
    channels, width = weight.shape
    state, cu_seqlens = inputs["initial_state"], inputs["cu_seqlens"]
    kernel = weight.to(x.dtype)[:, None, :]
    bias = bias.to(x.dtype) if bias is not None else None

    def convolve(rows: torch.Tensor, row_state: torch.Tensor | None):  # rows [n, D, T]
        pad = (row_state.to(x.dtype) if row_state is not None
               else rows.new_zeros(rows.shape[0], channels, width - 1))
        padded = torch.cat([pad, rows], dim=2)
        out = F.conv1d(padded, kernel, bias, groups=channels) if rows.shape[2] else rows
        out = F.silu(out) if inputs["activation"] is not None else out
        return out, padded[:, :, padded.shape[2] - (width - 1):]

    if cu_seqlens is None:
        y, final_state = convolve(x.transpose(1, 2), state)
        return y.transpose(1, 2), final_state
    bounds = cu_seqlens.tolist()
    pieces = [convolve(x[:, a:b].transpose(1, 2), state[n:n + 1] if state is not None else None)
              for n, (a, b) in enumerate(zip(bounds, bounds[1:]))]
    y = torch.cat([out for out, _ in pieces], dim=2).transpose(1, 2)
    return y, torch.cat([final for _, final in pieces])


def _installed(module: str, function: str, x: torch.Tensor):
    if x.device.type != "cuda":
        raise RuntimeError(f"{module} needs a CUDA device")
    return getattr(importlib.import_module(module), function)


def fla_conv1d(inputs: Inputs) -> Outputs:
    x, state = inputs["x"], inputs["initial_state"]
    conv = _installed("fla.modules.convolution", "causal_conv1d", x)
    y, final_state = conv(x, inputs["weight"], inputs["bias"],
                          initial_state=F.pad(state, (1, 0)) if state is not None else None,
                          output_final_state=True, activation=inputs["activation"],
                          cu_seqlens=inputs["cu_seqlens"])
    return y, final_state[..., 1:]


def dao_conv1d(inputs: Inputs) -> Outputs:
    x, state, cu_seqlens = inputs["x"], inputs["initial_state"], inputs["cu_seqlens"]
    conv = _installed("causal_conv1d", "causal_conv1d_fn", x)
    channel_last = x.transpose(1, 2)
    if cu_seqlens is None:
        if state is not None:  # its channel-last kernel wants channel-last states too
            state = state.transpose(1, 2).contiguous().transpose(1, 2)
        y, final_state = conv(channel_last, inputs["weight"], inputs["bias"],
                              initial_states=state, return_final_states=True,
                              activation=inputs["activation"])
        return y.transpose(1, 2), final_state
    if state is not None:
        raise NotImplementedError("causal-conv1d takes no initial states with seq_idx")
    lengths = cu_seqlens.diff()
    seq_idx = torch.repeat_interleave(torch.arange(lengths.numel(), device=x.device,
                                                   dtype=torch.int32), lengths)[None]
    y = conv(channel_last, inputs["weight"], inputs["bias"], seq_idx=seq_idx,
             activation=inputs["activation"])
    return (y.transpose(1, 2),)


def _autograd_of(forward, accumulate_fp32: bool = False):
    """The backward baseline of a forward baseline: gradients of the inputs that exist.
    ``accumulate_fp32``: the forward sees fp32 copies of the inputs (gradients come back in the
    inputs' dtypes), as cuDNN's half-precision convolutions accumulate in fp32 on a GPU; the
    CPU's bf16 convolution would sum dweight over B*T in bf16."""
    def gradients(inputs: Inputs) -> Outputs:
        names = [k for k in ("x", "weight", "bias", "initial_state") if inputs[k] is not None]
        leaves = {k: inputs[k].detach().requires_grad_() for k in names}
        seen = {k: v.float() for k, v in leaves.items()} if accumulate_fp32 else leaves
        y, final_state = forward({**inputs, **seen})[:2]
        return torch.autograd.grad((y, final_state),
                                   [leaves[k] for k in names],
                                   (inputs["grad_y"], inputs["grad_final_state"]))
    return gradients


def torch_step(inputs: Inputs) -> Outputs:
    """One token in PyTorch on a copy of the pool: gather the owned rows, a dot with the
    taps, scatter the shifted rows back."""
    x, weight, bias = inputs["x"], inputs["weight"].float(), inputs["bias"]
    pool, rows = inputs["state"].clone(), inputs["state_indices"].long()
    window = torch.cat([pool[rows], x[:, :, None].to(pool.dtype)], dim=2)
    y = (window.float() * weight).sum(-1) + (bias.float() if bias is not None else 0)
    pool[rows] = window[:, :, 1:]
    return (F.silu(y) if inputs["activation"] is not None else y).to(x.dtype), pool


def chunkwise_step(inputs: Inputs) -> Outputs:
    """The step as seqtune's ``causal_conv1d`` at T = 1: the owned rows as initial states,
    the final states scattered back (the launches a model without a step kernel runs)."""
    from seqtune.kernels.causal_conv1d.op import causal_conv1d

    pool, rows = inputs["state"].clone(), inputs["state_indices"].long()
    y, final_state = causal_conv1d(inputs["x"][:, None], inputs["weight"], inputs["bias"],
                                   activation=inputs["activation"], initial_state=pool[rows],
                                   output_final_state=True)
    pool[rows] = final_state.to(pool.dtype)
    return y[:, 0], pool


def dao_step(inputs: Inputs) -> Outputs:
    x = inputs["x"]
    update = _installed("causal_conv1d", "causal_conv1d_update", x)
    pool = inputs["state"].clone()
    y = update(x, pool, inputs["weight"], inputs["bias"], activation=inputs["activation"],
               conv_state_indices=inputs["state_indices"])
    return y, pool


FORWARD_BASELINES = {"torch": torch_conv1d, "fla": fla_conv1d, "causal_conv1d": dao_conv1d}
BACKWARD_BASELINES = {"torch": _autograd_of(torch_conv1d, accumulate_fp32=True),
                      "fla": _autograd_of(fla_conv1d)}
STEP_BASELINES = {"torch": torch_step, "chunkwise_T1": chunkwise_step, "causal_conv1d": dao_step}
