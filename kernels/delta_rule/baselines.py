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
``(o, final_state)`` like ``spec.run``. ``BWD_BASELINES`` (for ``delta_rule_bwd``): the same two
differentiated by autograd. ``STEP_BASELINES`` (for ``delta_rule_step``): seqtune's chunkwise
op at T = 1 and fla's fused recurrent kernels.
"""
from __future__ import annotations

import torch

from seqtune.kernels.delta_rule.op import delta_rule
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


def _gradients_of(forward):
    """A backward baseline: forward and backward of ``forward`` by autograd (seqtune's backward
    recomputes its forward's chunk terms and states, so this is the comparable work), returning
    the gradients in the ``delta_rule_bwd`` order."""
    def run(inputs: Inputs) -> Outputs:
        names = [n for n in ("q", "k", "v", "beta", "g", "initial_state")
                 if inputs[n] is not None]
        leaves = {n: inputs[n].detach().requires_grad_() for n in names}
        with torch.enable_grad():
            out, final = forward({**inputs, **leaves})
            loss = ((out.float() * inputs["do"].float()).sum()
                    + (final.float() * inputs["dht"]).sum())
            return torch.autograd.grad(loss, list(leaves.values()))
    return run


BWD_BASELINES = {"torch": _gradients_of(torch_delta_rule),
                 "fla_chunk": _gradients_of(fla_delta_rule)}


def chunkwise_step(inputs: Inputs) -> Outputs:
    """One token through seqtune's chunkwise op (T = 1) from each element's state row."""
    out, final = delta_rule(*_one_token(inputs), initial_state=_rows_of(inputs),
                            output_final_state=True)
    return out[:, 0], _scattered(inputs, final)


def fla_fused_recurrent_step(inputs: Inputs) -> Outputs:
    """One token through fla's fused recurrent kernel for the gate kind, when installed."""
    q, k, v, beta, g = _one_token(inputs)
    common = {"q": q, "k": k, "v": v, "beta": beta, "scale": q.shape[-1] ** -0.5,
              "initial_state": _rows_of(inputs), "output_final_state": True}
    if g is None:
        step = fla_function("fla.ops.delta_rule", "fused_recurrent_delta_rule", q)
        out, final = step(**common)
    elif g.dim() == 3:
        step = fla_function("fla.ops.gated_delta_rule", "fused_recurrent_gated_delta_rule", q)
        out, final = step(**common, g=g)
    else:
        step = fla_function("fla.ops.kda", "fused_recurrent_kda", q)
        out, final = step(**common, g=g)
    return out[:, 0], _scattered(inputs, final)


def _one_token(inputs: Inputs):
    g = inputs["g"]
    return (inputs["q"][:, None], inputs["k"][:, None], inputs["v"][:, None],
            inputs["beta"][:, None], None if g is None else g[:, None])


def _rows_of(inputs: Inputs) -> torch.Tensor:
    indices = inputs["state_indices"]
    return inputs["state"] if indices is None else inputs["state"][indices.long()]


def _scattered(inputs: Inputs, final: torch.Tensor) -> torch.Tensor:
    """The pool after the step, as the spec's run returns it (a copy, updated rows)."""
    indices = inputs["state_indices"]
    if indices is None:
        return final.float()
    pool = inputs["state"].clone()
    pool[indices.long()] = final.float()
    return pool


def torch_step(inputs: Inputs) -> Outputs:
    """One token in plain PyTorch, fp32 on the inputs' device: decay the owned state rows,
    the delta-rule rank-1 correction beta k (v - S^T k)^T, read out S^T q."""
    q, k, v, beta = (inputs[n].float() for n in ("q", "k", "v", "beta"))
    group = v.shape[1] // q.shape[1]
    q, k = q.repeat_interleave(group, 1), k.repeat_interleave(group, 1)
    pool = inputs["state"].clone()
    rows = (torch.arange(pool.shape[0], device=pool.device) if inputs["state_indices"] is None
            else inputs["state_indices"].long())
    state = pool[rows]
    if inputs["g"] is not None:
        decay = inputs["g"].float().exp()
        state = state * (decay[..., None, None] if decay.dim() == 2 else decay[..., None])
    error = v - torch.einsum("bhk,bhkv->bhv", k, state)
    state = state + k[..., :, None] * (beta[..., None] * error)[..., None, :]
    pool[rows] = state
    out = torch.einsum("bhk,bhkv->bhv", q, state) * q.shape[-1] ** -0.5
    return out.to(inputs["v"].dtype), pool


STEP_BASELINES = {"torch": torch_step, "chunkwise_T1": chunkwise_step,
                  "fla_fused_recurrent": fla_fused_recurrent_step}
