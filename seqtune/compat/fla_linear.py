"""flash-linear-attention's (fla 0.6) linear attention with fixed or no decay, on the
chunkwise linear attention of ``seqtune.compat.fla`` (``chunk_simple_gla`` /
``fused_recurrent_simple_gla``), as fla itself builds them on its simple GLA:

- ``chunk_linear_attn``, ``fused_chunk_linear_attn``, ``fused_recurrent_linear_attn``: no
  decay, optionally normalized by the running key sum (``normalize``);
- ``chunk_retention``, ``fused_chunk_retention``, ``fused_recurrent_retention``,
  ``parallel_retention``: RetNet's per-head decay ``1 - 2^(-5 - h)``;
- ``chunk_lightning_attn``, ``fused_recurrent_lightning_attn``: Lightning Attention's per-head
  slopes ``-(8 / H) (1 - layer_idx / num_layers) h``;
- ``fused_chunk_simple_gla``, ``parallel_simple_gla``: simple GLA's other entry points.

fla's argument order, defaults, layouts (``[B, T, H, K]``, states ``[N, H, K, V]``) and return
values. The fused_chunk_* and parallel_* functions run the same chunkwise kernel as chunk_*
(the tuned config decides the chunk); parallel_* has no initial or final state, as in fla.
"""
from __future__ import annotations

from typing import Any

import torch

from seqtune.checks import expect_tensor
from seqtune.compat.fla import (HEAD, POWER_OF_TWO, STEP, _check_gates, _options, _refuse,
                                chunk_simple_gla, fused_recurrent_simple_gla)

# fla's guard against a zero denominator of the normalized output
NORMALIZE_EPS = 1e-10


def _kwargs(function: str, kwargs: dict[str, Any], chunk_sizes: str | None = None) -> None:
    """fla's ``**kwargs`` of a function without ``state_v_first``: fla would drop a
    ``transpose_state_layout`` silently; seqtune refuses it rather than return another layout
    than asked."""
    if "transpose_state_layout" in kwargs:
        _refuse(function, "transpose_state_layout", kwargs["transpose_state_layout"],
                "this function has no state_v_first: states are [N, H, K, V]")
    _options(function, kwargs, False, (), chunk_sizes)


def _per_head(function: str, q, v) -> int:
    """H: fla's linear attention, retention and lightning attention have v's heads equal to
    q's (the fixed decays and the normalizer are per head of q)."""
    expect_tensor("q", q, 4)
    expect_tensor("v", v, 4)
    if v.shape[2] != q.shape[2]:
        raise ValueError(f"{function}: v must have the H={q.shape[2]} heads of q, got shape "
                         f"{tuple(v.shape)}")
    return q.shape[2]


def _retention_decay(q, heads: int) -> torch.Tensor:
    """RetNet's per-head log decay log(1 - 2^(-5 - h)), float32 [H]."""
    h = torch.arange(heads, dtype=torch.float32, device=q.device)
    return torch.log1p(-torch.exp2(-5.0 - h))


def _lightning_decay(function: str, q, heads: int, layer_idx, num_layers) -> torch.Tensor:
    """Lightning Attention's per-head log decay -(8 / H) (1 - layer_idx / num_layers) h."""
    for name, value in (("layer_idx", layer_idx), ("num_layers", num_layers)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{function}: {name} must be an int, got {value!r}")
    if num_layers < 1:
        raise ValueError(f"{function}: num_layers must be >= 1, got {num_layers}")
    slope = 8 / heads * (1 - layer_idx / num_layers) if heads else 0.0
    return -slope * torch.arange(heads, dtype=torch.float32, device=q.device)


def _cumulative_keys(k, reverse, cu_seqlens):
    """(running key sum of each step within its sequence [B, T, H, K], each sequence's total
    [N, 1, H, K]), float32: sum_{s <= t} k_s, or sum_{s >= t} with ``reverse``."""
    k = k.float()
    if cu_seqlens is None:
        total = k.sum(1, keepdim=True)
        running = (k.flip(1).cumsum(1).flip(1) if reverse else k.cumsum(1))
        return running, total
    # packed: differences of one prefix sum over all tokens, per sequence
    prefix = torch.cat([k.new_zeros(1, 1, *k.shape[2:]), k.cumsum(1)], 1)[0]  # [T + 1, H, K]
    offsets = cu_seqlens.to(device=k.device, dtype=torch.int64)
    lengths = offsets[1:] - offsets[:-1]
    position = torch.arange(k.shape[1], device=k.device)
    start = torch.repeat_interleave(offsets[:-1], lengths, output_size=k.shape[1])
    end = torch.repeat_interleave(offsets[1:], lengths, output_size=k.shape[1])
    running = prefix[end] - prefix[position] if reverse else prefix[position + 1] - prefix[start]
    total = (prefix[offsets[1:]] - prefix[offsets[:-1]]).unsqueeze(1)
    return running.unsqueeze(0), total


def _normalize(function, o, q, k, scale, z_init, reverse, cu_seqlens):
    """fla's normalized linear attention: (o / (scale q_t . z_t + 1e-10), z_state), z_t the
    running key sum plus ``z_init`` [N, 1, H, K] (a previous call's z_state); z_state the sum
    after each sequence. In float32, differentiable; o back in its dtype."""
    running, total = _cumulative_keys(k, reverse, cu_seqlens)
    if z_init is not None:
        if not isinstance(z_init, torch.Tensor) or tuple(z_init.shape) != tuple(total.shape):
            shown = tuple(z_init.shape) if isinstance(z_init, torch.Tensor) else repr(z_init)
            raise ValueError(f"{function}: z_state of initial_state must have shape [N, 1, H, K] = "
                             f"{tuple(total.shape)}, got {shown}")
        if cu_seqlens is None:
            running = running + z_init.float()
        else:
            lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).to(device=k.device, dtype=torch.int64)
            running = running + torch.repeat_interleave(z_init.float()[:, 0], lengths, 0,
                                                        output_size=k.shape[1]).unsqueeze(0)
        total = total + z_init.float()
    denominator = (q.float() * scale * running).sum(-1, keepdim=True) + NORMALIZE_EPS
    return (o.float() / denominator).to(o.dtype), total.to(k.dtype)


def _linear_attn(function, q, k, v, scale, initial_state, output_final_state, normalize,
                 cu_seqlens, recurrent, reverse=False):
    """Linear attention without decay (simple GLA with no gate), normalized when asked:
    ``initial_state`` is then ``(kv_state, z_state)`` or a kv_state alone, and the second
    result ``(final_state, z_state)``."""
    _per_head(function, q, v)
    z_init = None
    if normalize and isinstance(initial_state, tuple):
        if len(initial_state) != 2:
            raise ValueError(f"{function}: initial_state must be (kv_state, z_state) with "
                             f"normalize=True, got a tuple of {len(initial_state)}")
        initial_state, z_init = initial_state
    if scale is None:
        scale = q.shape[-1] ** -0.5
    options = dict(scale=scale, initial_state=initial_state,
                   output_final_state=output_final_state, cu_seqlens=cu_seqlens)
    if recurrent:
        o, final = fused_recurrent_simple_gla(q, k, v, reverse=reverse, **options)
    else:
        o, final = chunk_simple_gla(q, k, v, **options)
    if not normalize:
        return o, final
    o, z_state = _normalize(function, o, q, k, scale, z_init, reverse, cu_seqlens)
    return o, (final, z_state)


def chunk_linear_attn(q, k, v, scale=None, initial_state=None, output_final_state=False,
                      normalize=True, cu_seqlens=None):
    """fla's ``chunk_linear_attn``: o_t = scale q_t^T S_t, S_t = S_{t-1} + k_t v_t^T, and with
    ``normalize`` (default True) divided by scale q_t . (z_0 + sum_{s <= t} k_s) + 1e-10.

    q, k ``[B, T, H, K]``, v ``[B, T, H, V]``; initial_state ``[N, H, K, V]``, or with
    ``normalize`` a tuple ``(kv_state, z_state [N, 1, H, K])``. Returns ``(o, final_state)``,
    with ``normalize`` ``(o, (final_state or None, z_state))``; differentiable."""
    return _linear_attn("chunk_linear_attn", q, k, v, scale, initial_state,
                        output_final_state, normalize, cu_seqlens, recurrent=False)


def fused_chunk_linear_attn(q, k, v, scale=None, initial_state=None, output_final_state=False,
                            normalize=True, cu_seqlens=None):
    """fla's ``fused_chunk_linear_attn``: as ``chunk_linear_attn`` (the same kernel)."""
    return _linear_attn("fused_chunk_linear_attn", q, k, v, scale, initial_state,
                        output_final_state, normalize, cu_seqlens, recurrent=False)


def fused_recurrent_linear_attn(q, k, v, scale=None, initial_state=None,
                                output_final_state=False, reverse=False, normalize=False,
                                cu_seqlens=None):
    """fla's ``fused_recurrent_linear_attn``: as ``chunk_linear_attn`` with ``normalize``
    False by default and ``reverse`` (each sequence from its last step; the key sum then runs
    backwards too); single-token sequences run ``linear_attention_step``."""
    return _linear_attn("fused_recurrent_linear_attn", q, k, v, scale, initial_state,
                        output_final_state, normalize, cu_seqlens, recurrent=True,
                        reverse=reverse)


def _chunk_fixed(function, q, k, v, g_gamma, scale, initial_state, output_final_state,
                 cu_seqlens, kwargs):
    _kwargs(function, kwargs, POWER_OF_TWO)
    return chunk_simple_gla(q, k, v, g_gamma=g_gamma, scale=scale, initial_state=initial_state,
                            output_final_state=output_final_state, cu_seqlens=cu_seqlens)


def chunk_retention(q, k, v, scale=None, initial_state=None, output_final_state=False,
                    cu_seqlens=None, **kwargs):
    """fla's ``chunk_retention`` (RetNet): linear attention with the fixed per-head decay
    ``1 - 2^(-5 - h)`` (h = 0..H-1). q, k ``[B, T, H, K]``, v ``[B, T, H, V]``; state
    ``[N, H, K, V]``. kwargs: ``chunk_size`` (a power of 2: a request). Returns
    ``(o [B, T, H, V], final_state float32 or None)``, differentiable."""
    heads = _per_head("chunk_retention", q, v)
    return _chunk_fixed("chunk_retention", q, k, v, _retention_decay(q, heads), scale,
                        initial_state, output_final_state, cu_seqlens, kwargs)


def fused_chunk_retention(q, k, v, scale=None, initial_state=None, output_final_state=False,
                          cu_seqlens=None, **kwargs):
    """fla's ``fused_chunk_retention``: as ``chunk_retention`` (the same kernel)."""
    heads = _per_head("fused_chunk_retention", q, v)
    return _chunk_fixed("fused_chunk_retention", q, k, v, _retention_decay(q, heads), scale,
                        initial_state, output_final_state, cu_seqlens, kwargs)


def fused_recurrent_retention(q, k, v, scale=None, initial_state=None, output_final_state=False,
                              reverse=False, state_v_first=False, cu_seqlens=None, **kwargs):
    """fla's ``fused_recurrent_retention``: as ``chunk_retention``, with ``reverse``,
    ``state_v_first`` (states ``[N, H, V, K]``; the deprecated ``transpose_state_layout``
    warns) and single-token sequences on ``linear_attention_step``."""
    function = "fused_recurrent_retention"
    state_v_first, _ = _options(function, kwargs, state_v_first)
    heads = _per_head(function, q, v)
    return fused_recurrent_simple_gla(q, k, v, g_gamma=_retention_decay(q, heads), scale=scale,
                                      initial_state=initial_state,
                                      output_final_state=output_final_state, reverse=reverse,
                                      state_v_first=state_v_first, cu_seqlens=cu_seqlens)


def chunk_lightning_attn(q, k, v, layer_idx, num_layers, scale=None, initial_state=None,
                         output_final_state=False, cu_seqlens=None, **kwargs):
    """fla's ``chunk_lightning_attn`` (Lightning Attention): linear attention with the fixed
    per-head log decay ``-(8 / H) (1 - layer_idx / num_layers) h``. Otherwise as
    ``chunk_retention``."""
    function = "chunk_lightning_attn"
    heads = _per_head(function, q, v)
    g_gamma = _lightning_decay(function, q, heads, layer_idx, num_layers)
    return _chunk_fixed(function, q, k, v, g_gamma, scale, initial_state, output_final_state,
                        cu_seqlens, kwargs)


def fused_recurrent_lightning_attn(q, k, v, layer_idx, num_layers, scale=None,
                                   initial_state=None, output_final_state=False, reverse=False,
                                   cu_seqlens=None, **kwargs):
    """fla's ``fused_recurrent_lightning_attn``: as ``chunk_lightning_attn``, with ``reverse``
    and single-token sequences on ``linear_attention_step``."""
    function = "fused_recurrent_lightning_attn"
    _kwargs(function, kwargs)
    heads = _per_head(function, q, v)
    g_gamma = _lightning_decay(function, q, heads, layer_idx, num_layers)
    return fused_recurrent_simple_gla(q, k, v, g_gamma=g_gamma, scale=scale,
                                      initial_state=initial_state,
                                      output_final_state=output_final_state, reverse=reverse,
                                      cu_seqlens=cu_seqlens)


def fused_chunk_simple_gla(q, k, v, g=None, g_gamma=None, scale=None, initial_state=None,
                           output_final_state=False, cu_seqlens=None):
    """fla's ``fused_chunk_simple_gla``: as ``seqtune.compat.fla.chunk_simple_gla`` (the same
    kernel): g ``[B, T, H]`` and/or g_gamma ``[H]``."""
    _check_gates("fused_chunk_simple_gla", q, v, g=(g, STEP), g_gamma=(g_gamma, HEAD))
    return chunk_simple_gla(q, k, v, g, g_gamma, scale, initial_state, output_final_state,
                            cu_seqlens=cu_seqlens)


def _attention_scores(q, k, g, scale):
    """The decayed causal scores fla's parallel kernels materialize, [B, H, T, T] in q's dtype:
    scale q_i . k_j exp(G_i - G_j) for j <= i (G the running sum of g), else 0."""
    scores = torch.einsum("bihk,bjhk->bhij", q.float(), k.float()) * scale
    steps = q.shape[1]
    causal = torch.ones(steps, steps, dtype=torch.bool, device=q.device).tril()
    if g is not None:
        total = g.float().cumsum(1).transpose(1, 2)  # [B, H, T]
        gaps = total[..., :, None] - total[..., None, :]
        scores = scores * torch.where(causal, gaps, gaps.new_zeros(())).exp()
    return torch.where(causal, scores, scores.new_zeros(())).to(q.dtype)


def _parallel(function, q, k, v, g, scale, output_attentions, cu_seqlens):
    if output_attentions and cu_seqlens is not None:
        raise ValueError(f"{function}: output_attentions=True is not supported with "
                         f"cu_seqlens (as in fla)")
    o, _ = chunk_simple_gla(q, k, v, g, scale=scale, cu_seqlens=cu_seqlens)
    if not output_attentions:
        return o, None
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    with torch.no_grad():  # fla returns the scores without a gradient
        return o, _attention_scores(q, k, g, scale)


def parallel_simple_gla(q, k, v, g=None, scale=None, output_attentions=False, cu_seqlens=None,
                        cu_seqlens_cpu=None, **kwargs):
    """fla's ``parallel_simple_gla``: causal linear attention with the per-step head decay g
    ``[B, T, H]`` (None: none), without initial or final state. Returns ``(o [B, T, H, V],
    attn)``: with ``output_attentions`` the decayed causal scores ``[B, H, T, T]`` (padded
    batches only, no gradient, as in fla), else None. ``cu_seqlens_cpu`` is accepted, unused.
    """
    function = "parallel_simple_gla"
    _kwargs(function, kwargs)
    _check_gates(function, q, v, g=(g, STEP))
    return _parallel(function, q, k, v, g, scale, output_attentions, cu_seqlens)


def parallel_retention(q, k, v, scale=None, output_attentions=False, cu_seqlens=None,
                       **kwargs):
    """fla's ``parallel_retention``: ``parallel_simple_gla`` with RetNet's per-head decay."""
    function = "parallel_retention"
    _kwargs(function, kwargs)
    heads = _per_head(function, q, v)
    g = _retention_decay(q, heads).expand(q.shape[0], q.shape[1], heads)
    return _parallel(function, q, k, v, g, scale, output_attentions, cu_seqlens)
