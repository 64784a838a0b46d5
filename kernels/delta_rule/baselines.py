"""Baselines of ``delta_rule`` for ``seqtune bench``: the same computation by other means.

- ``torch``: plain PyTorch, chunkwise (a sequential loop over chunks of 64 steps): within a
  chunk the delta rule's corrected values solve a unit lower-triangular system (the WY form of
  DeltaNet), in float32; matmuls with the inputs in their dtype, decays and state in float32.
- ``fla_chunk``: flash-linear-attention's chunk kernels when the ``fla`` package is installed
  and the inputs are on a CUDA device: ``chunk_delta_rule`` (no decay), ``chunk_gated_delta_rule``
  (scalar decay: Gated DeltaNet) and ``chunk_kda`` (per-channel decay: KDA). Same ``[B, T, H,
  K]`` layout, log-space decays, beta in (0, 1) and ``K ** -0.5`` default scale as seqtune. fla
  refuses float32 inputs for these (reported as unavailable).

Each takes the spec's inputs (packed sequences and grouped value heads included) and returns
``(o, final_state)`` like ``spec.run``.
"""
from __future__ import annotations

import torch

from seqtune.kernels.linear_attention.baselines import chunk_terms, fla_function, matmul_in
from seqtune.spec import Inputs, Outputs

CHUNK = 64


def chunked_delta_rule(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor,
                       g: torch.Tensor | None, scale: float,
                       initial_state: torch.Tensor | None) -> Outputs:
    """(o [B, T, H, V] in q's dtype, final state [B, H, K, V] float32) of
    S' = diag(exp(g_t)) S_{t-1}, S_t = S' + beta_t k_t (v_t - S'^T k_t)^T, o_t = scale S_t^T q_t.

    Per chunk with state S_0 and the corrected values u_i = beta_i (v_i - S'_i^T k_i):
    (I + diag(beta) A) U = diag(beta) (V - (K exp(b)) S_0) with A_ij the decayed k_i . k_j for
    j < i; then O = scale ((Q exp(b)) S_0 + scores U) and S = exp(b_C) S_0 + (K exp(b_C - b))^T U.
    """
    batch, length, heads, key_dim = q.shape
    dtype = q.dtype
    q, k, v = (x.transpose(1, 2) for x in (q, k, v))  # [B, H, T, *]
    beta = beta.transpose(1, 2).float()
    g = None if g is None else g.transpose(1, 2)
    state = (torch.zeros(batch, heads, key_dim, v.shape[-1], device=q.device)
             if initial_state is None else initial_state.float().clone())
    out = torch.empty(v.shape, dtype=dtype, device=q.device)
    for start in range(0, length, CHUNK):
        steps = slice(start, start + CHUNK)
        chunk_k, chunk_g = k[:, :, steps], None if g is None else g[:, :, steps]
        scores, decayed_q, decayed_k, total = chunk_terms(q[:, :, steps], chunk_k, chunk_g)
        key_scores, decayed_keys_in, _, _ = chunk_terms(chunk_k, chunk_k, chunk_g)
        chunk_beta = beta[:, :, steps, None]
        system = torch.eye(key_scores.shape[-1], device=q.device) + chunk_beta * key_scores.tril(-1)
        rhs = chunk_beta * (v[:, :, steps].float() - matmul_in(dtype, decayed_keys_in, state))
        corrected = torch.linalg.solve_triangular(system, rhs, upper=False, unitriangular=True)
        out[:, :, steps] = (scale * (matmul_in(dtype, decayed_q, state)
                                     + matmul_in(dtype, scores, corrected))).to(dtype)
        state = state if total is None else state * total
        state = state + matmul_in(dtype, decayed_k.transpose(-1, -2), corrected)
    return out.transpose(1, 2), state


def torch_delta_rule(inputs: Inputs) -> Outputs:
    """Grouped value heads by repeating q and k; packed sequences one at a time."""
    q, k, v = inputs["q"], inputs["k"], inputs["v"]
    group = v.shape[2] // q.shape[2]
    q, k = (x.repeat_interleave(group, dim=2) for x in (q, k))
    beta, g, h0 = inputs["beta"], inputs["g"], inputs["initial_state"]
    scale = q.shape[-1] ** -0.5
    if inputs.get("cu_seqlens") is None:
        return chunked_delta_rule(q, k, v, beta, g, scale, h0)
    bounds = inputs["cu_seqlens"].tolist()
    outs, finals = [], []
    for n in range(len(bounds) - 1):
        steps = slice(bounds[n], bounds[n + 1])
        out, final = chunked_delta_rule(q[:, steps], k[:, steps], v[:, steps], beta[:, steps],
                                        None if g is None else g[:, steps], scale,
                                        None if h0 is None else h0[n:n + 1])
        outs.append(out)
        finals.append(final)
    return torch.cat(outs, dim=1), torch.cat(finals)


def fla_delta_rule(inputs: Inputs) -> Outputs:
    """fla's chunk kernel for the inputs' kind of decay (none, scalar, per channel)."""
    q, g = inputs["q"], inputs["g"]
    common = {"q": q, "k": inputs["k"], "v": inputs["v"], "beta": inputs["beta"],
              "scale": q.shape[-1] ** -0.5, "initial_state": inputs["initial_state"],
              "output_final_state": True, "cu_seqlens": inputs.get("cu_seqlens")}
    if g is None:
        return tuple(fla_function("fla.ops.delta_rule", "chunk_delta_rule", q)(**common))
    if g.dim() == 3:
        chunk = fla_function("fla.ops.gated_delta_rule", "chunk_gated_delta_rule", q)
        return tuple(chunk(**common, g=g))
    return tuple(fla_function("fla.ops.kda", "chunk_kda", q)(**common, g=g))


BASELINES = {"torch": torch_delta_rule, "fla_chunk": fla_delta_rule}
