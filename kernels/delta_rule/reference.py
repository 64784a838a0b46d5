"""The delta rule as its plain recurrence over time, in float64 on the CPU.

Deliberately shares nothing with the chunked kernels: one token at a time, exactly as the
issue states it,

    S' = diag(exp(g_t)) S_{t-1};  S_t = S' + beta_t k_t (v_t - S'^T k_t)^T;  o_t = scale S_t^T q_t
"""
from __future__ import annotations

import torch


def delta_rule_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor,
                         g: torch.Tensor | None = None, scale: float | None = None,
                         initial_state: torch.Tensor | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """(o [B, T, H, V], final state [B, H, K, V]), both float64 on the CPU."""
    q, k, v, beta = (x.detach().to("cpu", torch.float64) for x in (q, k, v, beta))
    batch, length, heads, key_dim = q.shape
    value_dim = v.shape[-1]
    scale = key_dim ** -0.5 if scale is None else scale
    if initial_state is None:
        state = torch.zeros(batch, heads, key_dim, value_dim, dtype=torch.float64)
    else:
        state = initial_state.detach().to("cpu", torch.float64).clone()
    decay = None if g is None else torch.exp(g.detach().to("cpu", torch.float64))
    out = torch.zeros(batch, length, heads, value_dim, dtype=torch.float64)
    for t in range(length):
        if decay is not None:
            # scalar gate [B, H] scales whole states, channel gate [B, H, K] scales rows of K
            step = decay[:, t]
            state = state * (step[..., None, None] if step.dim() == 2 else step[..., None])
        k_t, v_t = k[:, t], v[:, t]
        predicted = torch.einsum("bhkv,bhk->bhv", state, k_t)
        correction = beta[:, t, :, None] * (v_t - predicted)
        state = state + k_t[..., :, None] * correction[..., None, :]
        out[:, t] = scale * torch.einsum("bhkv,bhk->bhv", state, q[:, t])
    return out, state
