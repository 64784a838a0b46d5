"""Float64 references: the plain recurrences stepped one time step at a time, on the CPU.

Independent of the chunked kernels: no chunks, no cumulative decays, no matmul tricks.
Differentiable (inputs are not detached), so float64 autograd through them is the gradients'
reference.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _f64(tensor: torch.Tensor | None) -> torch.Tensor | None:
    return None if tensor is None else tensor.to("cpu", torch.float64)


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


def packed_lengths(total: int, count: int, generator: torch.Generator) -> list[int]:
    """``count`` sequence lengths summing to ``total``: the first two are 0 and 1 (as far as
    ``count`` and ``total`` allow, leaving one more sequence), the rest a random split of what
    is left."""
    fixed = [0, 1][:count - 1] if total >= 1 else []
    rest_count = count - len(fixed)
    rest_total = total - sum(fixed)
    cuts = torch.randint(0, rest_total + 1, (rest_count - 1,), generator=generator).sort().values
    bounds = [0] + cuts.tolist() + [rest_total]
    return fixed + [end - start for start, end in zip(bounds, bounds[1:])]


def _sequence_slices(cu_seqlens: torch.Tensor | None, batch: int, length: int
                     ) -> list[tuple[int, slice]]:
    """(batch row, steps) of every sequence."""
    if cu_seqlens is None:
        return [(b, slice(0, length)) for b in range(batch)]
    bounds = cu_seqlens.tolist()
    return [(0, slice(start, end)) for start, end in zip(bounds, bounds[1:])]


def _stacked(per_sequence: list[tuple[torch.Tensor, torch.Tensor]], out_shape: tuple[int, ...],
             slices: list[tuple[int, slice]]) -> tuple[torch.Tensor, torch.Tensor]:
    out = torch.empty(out_shape, dtype=torch.float64)
    for (row, steps), (seq_out, _) in zip(slices, per_sequence):
        out[row, steps] = seq_out[0]
    return out, torch.cat([state for _, state in per_sequence])


def _row(tensor: torch.Tensor | None, row: int, steps: slice | None = None
         ) -> torch.Tensor | None:
    if tensor is None:
        return None
    return tensor[row:row + 1] if steps is None else tensor[row:row + 1, steps]


def varlen_linear_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                      g: torch.Tensor | None = None, scale: float | None = None,
                                      initial_state: torch.Tensor | None = None,
                                      cu_seqlens: torch.Tensor | None = None
                                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """``linear_attention_reference`` run on each sequence alone (each batch row, or each
    packed sequence of ``cu_seqlens``) with its own initial state; grouped value heads read
    their q/k head (repeated here, in float64)."""
    group = v.shape[2] // q.shape[2]
    q, k = (_f64(x).repeat_interleave(group, dim=2) for x in (q, k))
    scale = q.shape[3] ** -0.5 if scale is None else scale
    slices = _sequence_slices(cu_seqlens, q.shape[0], q.shape[1])
    runs = [linear_attention_reference(_row(q, b, t), _row(k, b, t), _row(v, b, t),
                                       _row(g, b, t), scale, _row(initial_state, n))
            for n, (b, t) in enumerate(slices)]
    return _stacked(runs, tuple(v.shape), slices)


def varlen_ssd_reference(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                         C: torch.Tensor, D: torch.Tensor | None = None,
                         dt_bias: torch.Tensor | None = None, dt_softplus: bool = False,
                         initial_state: torch.Tensor | None = None,
                         cu_seqlens: torch.Tensor | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """``ssd_reference`` run on each sequence alone with its own initial state."""
    slices = _sequence_slices(cu_seqlens, x.shape[0], x.shape[1])
    runs = [ssd_reference(_row(x, b, t), _row(dt, b, t), A, _row(B, b, t), _row(C, b, t), D,
                          dt_bias, dt_softplus, _row(initial_state, n))
            for n, (b, t) in enumerate(slices)]
    return _stacked(runs, tuple(x.shape), slices)
