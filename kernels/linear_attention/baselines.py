"""Baselines of ``linear_attention`` and ``ssd`` for ``seqtune bench``: the same computation by
other means.

- ``torch``: plain PyTorch, chunkwise (what a user writes without Triton: a sequential loop
  over chunks of 64 steps, each chunk in parallel): matmuls in the inputs' dtype, decays,
  scores and the carried state in float32.
- ``fla_chunk``: flash-linear-attention's chunk kernels when the ``fla`` package is installed
  and the inputs are on a CUDA device: ``chunk_linear_attn`` (no decay, ``normalize=False``),
  ``chunk_simple_gla`` (scalar decay) and ``chunk_gla`` (per-channel decay); for ssd,
  ``chunk_simple_gla`` with q = C, k = B (expanded to every head), v = dt x, g = dt A and
  scale 1, plus D x. fla takes the same ``[B, T, H, K]`` layout, log-space decays and
  ``K ** -0.5`` default scale as seqtune, so the comparison is the same computation.

Each takes the spec's inputs and returns ``(o, final_state)`` like ``spec.run``.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable

import torch
import torch.nn.functional as F

from seqtune.spec import Inputs, Outputs

CHUNK = 64


def fla_function(module: str, name: str, *tensors: torch.Tensor) -> Callable[..., Any]:
    """``fla.<module>.<name>``, or a one-line error when fla is not installed or the inputs are
    not on a CUDA device (fla's kernels are written for GPUs; the interpreter would crawl)."""
    try:
        function = getattr(importlib.import_module(module), name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and exc.name.split(".")[0] == "fla":
            raise RuntimeError("flash-linear-attention (the fla package) is not installed") \
                from None
        raise
    if not all(t.is_cuda for t in tensors):
        raise RuntimeError(f"{module}.{name} needs CUDA tensors")
    return function


def chunk_terms(q: torch.Tensor, k: torch.Tensor, g: torch.Tensor | None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The decayed terms of one chunk, all float32, head-first ``[B, H, C, ...]`` inputs.

    With b_i the cumulative log decay within the chunk (scalar [B, H, C] or per channel
    [B, H, C, K]; none when ``g`` is None):

    - scores ``[B, H, C, C]``: sum_k q_ik k_jk exp(b_ik - b_jk) for j <= i, else 0;
    - decayed_q: q_i exp(b_i), what reads the state carried into the chunk;
    - decayed_k: k_j exp(b_C - b_j), what writes the state carried out of it;
    - total: exp(b_C), the decay of the carried state over the chunk (None without decay).

    Every exponent is <= 0 (the decays are log values <= 0), so nothing overflows.
    """
    length = q.shape[2]
    future = torch.ones(length, length, dtype=torch.bool, device=q.device).triu(1)
    if g is None:
        scores = (q @ k.transpose(-1, -2)).float().masked_fill(future, 0.0)
        return scores, q.float(), k.float(), None
    b = g.float().cumsum(dim=2)
    last = b[:, :, -1:]
    if b.dim() == 3:  # one decay per step and head
        gap = (b[..., :, None] - b[..., None, :]).masked_fill(future, -torch.inf)
        scores = (q @ k.transpose(-1, -2)).float() * gap.exp()
        return (scores, q.float() * b.exp()[..., None], k.float() * (last - b).exp()[..., None],
                last.exp()[..., None])
    gap = (b[:, :, :, None, :] - b[:, :, None, :, :]).masked_fill(future[..., None], -torch.inf)
    scores = torch.einsum("bhik,bhjk,bhijk->bhij", q.float(), k.float(), gap.exp())
    return (scores, q.float() * b.exp(), k.float() * (last - b).exp(),
            last.transpose(-1, -2).exp())


def matmul_in(dtype: torch.dtype, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` with both operands in ``dtype`` (tensor cores for half types), as float32."""
    return (a.to(dtype) @ b.to(dtype)).float()


def chunked_linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                             g: torch.Tensor | None, scale: float,
                             initial_state: torch.Tensor | None) -> Outputs:
    """(o [B, T, H, V] in q's dtype, final state [B, H, K, V] float32) of S_t =
    diag(exp(g_t)) S_{t-1} + k_t v_t^T, o_t = scale S_t^T q_t, one chunk at a time."""
    batch, length, heads, key_dim = q.shape
    dtype = q.dtype
    q, k, v = (x.transpose(1, 2) for x in (q, k, v))  # [B, H, T, *]
    g = None if g is None else g.transpose(1, 2)
    state = (torch.zeros(batch, heads, key_dim, v.shape[-1], device=q.device)
             if initial_state is None else initial_state.float().clone())
    out = torch.empty(v.shape, dtype=dtype, device=q.device)
    for start in range(0, length, CHUNK):
        steps = slice(start, start + CHUNK)
        scores, decayed_q, decayed_k, total = chunk_terms(
            q[:, :, steps], k[:, :, steps], None if g is None else g[:, :, steps])
        chunk_v = v[:, :, steps]
        out[:, :, steps] = (scale * (matmul_in(dtype, scores, chunk_v)
                                     + matmul_in(dtype, decayed_q, state))).to(dtype)
        state = state if total is None else state * total
        state = state + matmul_in(dtype, decayed_k.transpose(-1, -2), chunk_v)
    return out.transpose(1, 2), state


def per_sequence(run: Callable[..., Outputs], cu_seqlens: torch.Tensor | None,
                 tensors: dict[str, torch.Tensor | None], initial_state: torch.Tensor | None,
                 **fixed: Any) -> Outputs:
    """``run`` on each packed sequence alone (on all rows at once when not packed): outputs
    concatenated along T, final states along the batch."""
    if cu_seqlens is None:
        return run(**tensors, initial_state=initial_state, **fixed)
    bounds = cu_seqlens.tolist()
    outs, states = [], []
    for n, (start, end) in enumerate(zip(bounds, bounds[1:])):
        sliced = {k: None if t is None else t[:, start:end] for k, t in tensors.items()}
        state = None if initial_state is None else initial_state[n:n + 1]
        out, final = run(**sliced, initial_state=state, **fixed)
        outs.append(out)
        states.append(final)
    return torch.cat(outs, dim=1), torch.cat(states)


def grouped(inputs: Inputs) -> dict[str, torch.Tensor | None]:
    """q, k repeated to the value heads (GVA), v and g as they are."""
    group = inputs["v"].shape[2] // inputs["q"].shape[2]
    return {"q": inputs["q"].repeat_interleave(group, dim=2),
            "k": inputs["k"].repeat_interleave(group, dim=2), "v": inputs["v"], "g": inputs["g"]}


def torch_linear_attention(inputs: Inputs) -> Outputs:
    return per_sequence(chunked_linear_attention, inputs.get("cu_seqlens"), grouped(inputs),
                        inputs["initial_state"], scale=inputs["q"].shape[-1] ** -0.5)


def fla_linear_attention(inputs: Inputs) -> Outputs:
    """fla's chunk kernel for the inputs' kind of decay (none, scalar, per channel)."""
    q, k, v, g = (grouped(inputs)[name] for name in ("q", "k", "v", "g"))
    common = {"q": q, "k": k, "v": v, "scale": q.shape[-1] ** -0.5,
              "initial_state": inputs["initial_state"], "output_final_state": True,
              "cu_seqlens": inputs.get("cu_seqlens")}
    if g is None:
        chunk = fla_function("fla.ops.linear_attn", "chunk_linear_attn", q)
        return tuple(chunk(**common, normalize=False))
    if g.dim() == 3:
        return tuple(fla_function("fla.ops.simple_gla", "chunk_simple_gla", q)(**common, g=g))
    return tuple(fla_function("fla.ops.gla", "chunk_gla", q)(**common, g=g))


def ssd_as_linear_attention(inputs: Inputs) -> dict[str, Any]:
    """SSD's linear-attention form: q = C and k = B expanded to every head, v = dt x,
    g = dt A (float32), scale 1; and D, for the skip term added after."""
    x = inputs["x"]
    step = inputs["dt"].float()
    if inputs["dt_bias"] is not None:
        step = step + inputs["dt_bias"].float()
    if inputs["dt_softplus"]:
        step = F.softplus(step)
    per_group = x.shape[2] // inputs["B"].shape[2]
    return {"q": inputs["C"].repeat_interleave(per_group, dim=2),
            "k": inputs["B"].repeat_interleave(per_group, dim=2),
            "v": (x * step[..., None]).to(x.dtype), "g": step * inputs["A"].float(),
            "initial_state": inputs["initial_state"], "D": inputs["D"],
            "cu_seqlens": inputs.get("cu_seqlens")}


def _with_skip(y: torch.Tensor, x: torch.Tensor, D: torch.Tensor | None) -> torch.Tensor:
    return y if D is None else (y.float() + D.float()[:, None] * x.float()).to(x.dtype)


def torch_ssd(inputs: Inputs) -> Outputs:
    mapped = ssd_as_linear_attention(inputs)
    tensors = {name: mapped[name] for name in ("q", "k", "v", "g")}
    y, state = per_sequence(chunked_linear_attention, mapped["cu_seqlens"], tensors,
                            mapped["initial_state"], scale=1.0)
    return _with_skip(y, inputs["x"], mapped["D"]), state


def fla_ssd(inputs: Inputs) -> Outputs:
    chunk = fla_function("fla.ops.simple_gla", "chunk_simple_gla", inputs["x"])
    mapped = ssd_as_linear_attention(inputs)
    y, state = chunk(q=mapped["q"], k=mapped["k"], v=mapped["v"], g=mapped["g"], scale=1.0,
                     initial_state=mapped["initial_state"], output_final_state=True,
                     cu_seqlens=mapped["cu_seqlens"])
    return _with_skip(y, inputs["x"], mapped["D"]), state


BASELINES = {"torch": torch_linear_attention, "fla_chunk": fla_linear_attention}
SSD_BASELINES = {"torch": torch_ssd, "fla_chunk": fla_ssd}
