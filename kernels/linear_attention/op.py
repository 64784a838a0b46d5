"""``linear_attention``: chunkwise linear attention with no, scalar or per-channel decay."""
from __future__ import annotations

from typing import Any, Mapping

import torch

from seqtune.checks import (expect_float, expect_same_device, expect_same_dtype, expect_shape,
                            expect_tensor)
from seqtune.kernels.linear_attention.kernels import Recurrence, run_chunked
from seqtune.loader import config_for
from seqtune.spec import dtype_name

# Head dims are looped over in tiles, so any size runs; the config space is sized up to this.
MAX_HEAD_DIM = 512


def expect_head_dim(name: str, size: int) -> None:
    if not 1 <= size <= MAX_HEAD_DIM:
        raise ValueError(f"{name} must be between 1 and {MAX_HEAD_DIM}, got {size}")


def expect_initial_state(initial_state: torch.Tensor | None,
                         shape: tuple[int, int, int, int]) -> torch.Tensor | None:
    """The initial state, checked and contiguous (the state kernel indexes it densely)."""
    if initial_state is None:
        return None
    expect_tensor("initial_state", initial_state, 4)
    expect_float("initial_state", initial_state)
    expect_shape("initial_state", initial_state, shape)
    return initial_state.contiguous()


def empty_result(out_shape: tuple[int, ...], like: torch.Tensor,
                 initial_state: torch.Tensor | None, state_shape: tuple[int, ...],
                 output_final_state: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The result of an empty problem (no steps, batch or heads): nothing to launch."""
    out = like.new_empty(out_shape)
    if not output_final_state:
        return out, None
    if initial_state is not None:
        return out, initial_state.to(torch.float32, copy=True)
    return out, torch.zeros(state_shape, dtype=torch.float32, device=like.device)


def _check_gate(g: torch.Tensor | None, q: torch.Tensor) -> str:
    """The kind of decay g is; it must be [B, T, H] or [B, T, H, K], fp32 or q's dtype."""
    if g is None:
        return "none"
    if not isinstance(g, torch.Tensor):
        raise TypeError(f"g must be a torch.Tensor or None, got {type(g).__name__}")
    B, T, H, K = q.shape
    if g.dim() == 3:
        expect_shape("g", g, (B, T, H))
    elif g.dim() == 4:
        expect_shape("g", g, (B, T, H, K))
    else:
        raise ValueError(f"g must have shape {(B, T, H)} (scalar decay) or {(B, T, H, K)} "
                         f"(per-channel decay), got {tuple(g.shape)}")
    expect_float("g", g, (torch.float32, q.dtype))
    return "scalar" if g.dim() == 3 else "channel"


def _problem(q: torch.Tensor, v: torch.Tensor, gate: str, has_initial: bool) -> dict[str, Any]:
    B, T, H, K = q.shape
    return {"B": B, "T": T, "H": H, "K": K, "V": v.shape[3], "gate": gate,
            "initial_state": has_initial, "dtype": dtype_name(q.dtype)}


def linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     g: torch.Tensor | None = None, *, scale: float | None = None,
                     initial_state: torch.Tensor | None = None, output_final_state: bool = False,
                     config: Mapping[str, Any] | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Causal linear attention with optional decay, computed chunkwise.

    S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T and o_t = scale * S_t^T q_t, with S_0 the initial
    state or zeros.

    Args:
        q, k: [B, T, H, K]; v: [B, T, H, V] (K and V may differ); one float dtype.
        g: log decay (<= 0): None (plain linear attention), [B, T, H] (scalar per step and
            head: RetNet, Lightning, simple GLA) or [B, T, H, K] (per key channel: GLA);
            fp32 or q's dtype.
        scale: defaults to K ** -0.5.
        initial_state: [B, H, K, V], any float dtype (used in fp32).
        output_final_state: also return the state after the last step, [B, H, K, V] fp32.
        config: a (partial) config of the ``linear_attention`` kernel; None takes the tuned one.

    Returns:
        (o [B, T, H, V] in q's dtype, final_state or None).
    """
    for name, tensor in (("q", q), ("k", k), ("v", v)):
        expect_tensor(name, tensor, 4)
        expect_float(name, tensor)
    expect_same_dtype({"q": q, "k": k, "v": v})
    B, T, H, K = q.shape
    expect_shape("k", k, q.shape)
    expect_shape("v", v, (B, T, H, v.shape[3]))
    expect_head_dim("K (the last dim of q and k)", K)
    expect_head_dim("V (the last dim of v)", v.shape[3])
    gate = _check_gate(g, q)
    expect_same_device({"q": q, "k": k, "v": v, "g": g, "initial_state": initial_state})
    V = v.shape[3]
    initial_state = expect_initial_state(initial_state, (B, H, K, V))
    if T == 0 or B == 0 or H == 0:
        return empty_result((B, T, H, V), q, initial_state, (B, H, K, V), output_final_state)
    cfg = config_for("linear_attention", _problem(q, v, gate, initial_state is not None), config)
    recurrence = Recurrence(q, k, v, g, K ** -0.5 if scale is None else float(scale),
                            initial_state=initial_state)
    return run_chunked(recurrence, cfg, output_final_state)
