"""Float64 references: the plain recurrences stepped one time step at a time, on the CPU.

Independent of the chunked kernels: no chunks, no cumulative decays, no matmul tricks.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _f64(tensor: torch.Tensor | None) -> torch.Tensor | None:
    return None if tensor is None else tensor.detach().to("cpu", torch.float64)


def linear_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                               g: torch.Tensor | None = None, scale: float | None = None,
                               initial_state: torch.Tensor | None = None
                               ) -> tuple[torch.Tensor, torch.Tensor]:
    """(o [B, T, H, V], final state [B, H, K, V]) of S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T,
    o_t = scale S_t^T q_t, in float64."""
    q, k, v, g = _f64(q), _f64(k), _f64(v), _f64(g)
    B, T, H, K = q.shape
    scale = K ** -0.5 if scale is None else scale
    state = (_f64(initial_state).clone() if initial_state is not None
             else torch.zeros(B, H, K, v.shape[3], dtype=torch.float64))
    out = torch.empty(B, T, H, v.shape[3], dtype=torch.float64)
    for t in range(T):
        if g is not None:
            decay = g[:, t].exp()
            state = state * (decay[..., None, None] if decay.dim() == 2 else decay[..., None])
        state = state + k[:, t, :, :, None] * v[:, t, :, None, :]
        out[:, t] = scale * torch.einsum("bhk,bhkv->bhv", q[:, t], state)
    return out, state


def ssd_reference(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                  C: torch.Tensor, D: torch.Tensor | None = None,
                  dt_bias: torch.Tensor | None = None, dt_softplus: bool = False,
                  initial_state: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(y [b, T, h, p], final state [b, h, n, p]) of Mamba-2's SSD recurrence in float64:
    h_t = exp(dt_t A) h_{t-1} + dt_t B_t x_t^T, y_t = C_t^T h_t + D x_t, with dt shifted by
    dt_bias and passed through softplus first when asked."""
    x, dt, A, B, C = _f64(x), _f64(dt), _f64(A), _f64(B), _f64(C)
    batch, T, heads, p = x.shape
    n = B.shape[3]
    heads_per_group = heads // B.shape[2]
    if dt_bias is not None:
        dt = dt + _f64(dt_bias)
    if dt_softplus:
        dt = F.softplus(dt)
    state = (_f64(initial_state).clone() if initial_state is not None
             else torch.zeros(batch, heads, n, p, dtype=torch.float64))
    y = torch.empty(batch, T, heads, p, dtype=torch.float64)
    for t in range(T):
        B_t = B[:, t].repeat_interleave(heads_per_group, dim=1)
        C_t = C[:, t].repeat_interleave(heads_per_group, dim=1)
        decay = torch.exp(dt[:, t] * A)
        input_t = dt[:, t, :, None, None] * B_t[..., :, None] * x[:, t, :, None, :]
        state = decay[..., None, None] * state + input_t
        y[:, t] = torch.einsum("bhn,bhnp->bhp", C_t, state)
        if D is not None:
            y[:, t] += _f64(D)[:, None] * x[:, t]
    return y, state
