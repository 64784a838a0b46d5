"""The delta rule as its plain recurrence over time, in float64 on the CPU.

Deliberately shares nothing with the chunked kernels: one token at a time, exactly as the
issue states it, each value head with its key head (value head i reads key head i // (HV / H)),
each packed sequence on its own,

    S' = diag(exp(g_t)) S_{t-1};  S_t = S' + beta_t k_t (v_t - S'^T k_t)^T;  o_t = scale S_t^T q_t

It is written with differentiable torch operations only, so float64 autograd through it gives
the reference gradients.
"""
from __future__ import annotations

import torch


def delta_rule_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor,
                         g: torch.Tensor | None = None, scale: float | None = None,
                         initial_state: torch.Tensor | None = None,
                         cu_seqlens: torch.Tensor | None = None,
                         detach: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(o [B, T, HV, V], final state [N, HV, K, V]), both float64 on the CPU.

    ``detach=False`` keeps the autograd graph to the (float64 CPU) inputs."""
    tensors = [q, k, v, beta, g, initial_state]
    if detach:
        tensors = [None if t is None else t.detach().to("cpu", torch.float64) for t in tensors]
    q, k, v, beta, g, initial_state = tensors
    heads, key_dim = q.shape[2:]
    group = v.shape[2] // heads
    q, k = (x.repeat_interleave(group, dim=2) for x in (q, k))
    scale = key_dim ** -0.5 if scale is None else scale
    if cu_seqlens is None:
        return _recurrence(q, k, v, beta, g, scale, initial_state)
    bounds = [int(b) for b in cu_seqlens.tolist()]
    outs, finals = [], []
    for n in range(len(bounds) - 1):
        steps = slice(bounds[n], bounds[n + 1])
        h0 = None if initial_state is None else initial_state[n:n + 1]
        out, final = _recurrence(q[:, steps], k[:, steps], v[:, steps], beta[:, steps],
                                 None if g is None else g[:, steps], scale, h0)
        outs.append(out)
        finals.append(final)
    return torch.cat(outs, dim=1), torch.cat(finals, dim=0)


def _recurrence(q, k, v, beta, g, scale, initial_state):
    """One [B, T] batch, heads already matched."""
    batch, length, heads, key_dim = q.shape
    value_dim = v.shape[-1]
    if initial_state is None:
        state = torch.zeros(batch, heads, key_dim, value_dim, dtype=torch.float64)
    else:
        state = initial_state.to(torch.float64)
    decay = None if g is None else torch.exp(g.to(torch.float64))
    out = []
    for t in range(length):
        if decay is not None:
            # scalar gate [B, H] scales whole states, channel gate [B, H, K] scales rows of K
            step = decay[:, t]
            state = state * (step[..., None, None] if step.dim() == 2 else step[..., None])
        k_t, v_t = k[:, t], v[:, t]
        predicted = torch.einsum("bhkv,bhk->bhv", state, k_t)
        correction = beta[:, t, :, None] * (v_t - predicted)
        state = state + k_t[..., :, None] * correction[..., None, :]
        out.append(scale * torch.einsum("bhkv,bhk->bhv", state, q[:, t]))
    if not out:
        return torch.zeros(batch, 0, heads, value_dim, dtype=torch.float64), state
    return torch.stack(out, dim=1), state
