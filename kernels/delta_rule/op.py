"""``delta_rule``: the chunkwise delta rule op (DeltaNet, Gated DeltaNet, KDA)."""
from __future__ import annotations

import numbers
from typing import Mapping

import torch

from seqtune.checks import (expect_float, expect_same_device, expect_same_dtype, expect_shape,
                            expect_tensor)
from seqtune.custom_ops import (encode_config, expect_tensors, forward_config, int_or_none,
                                real_or_none)
from seqtune.kernels.delta_rule.stages import run_forward
from seqtune.kernels.delta_rule.varlen import (Bounds, check_cu_seqlens, packing,
                                              uniform_bounds)
from seqtune.launch import new_output
from seqtune.loader import config_for
from seqtune.spec import Config, dtype_name

KERNEL = "delta_rule"
# tl.dot needs 16 along every dimension; the kernels mask tiles wider than a head.
MIN_HEAD_DIM, MAX_HEAD_DIM = 16, 256


def delta_rule(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor,
               g: torch.Tensor | None = None, *, scale: float | None = None,
               initial_state: torch.Tensor | None = None, output_final_state: bool = False,
               cu_seqlens: torch.Tensor | None = None, config: Config | None = None,
               bwd_config: Mapping | None = None, max_seqlen: int | None = None
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The delta rule over a sequence, chunkwise.

    Recurrence per value head (S_0 = initial_state or zeros; q_t, k_t of its key head)::

        S' = diag(exp(g_t)) S_{t-1}
        S_t = S' + beta_t k_t (v_t - S'^T k_t)^T
        o_t = scale S_t^T q_t

    Args:
        q, k: [B, T, H, K] (keys L2-normalised, as the models use them), one float dtype.
        v: [B, T, HV, V] in q's dtype, HV a multiple of H: value head i reads key head
            i // (HV / H) (grouped value heads; q and k are not repeated in memory).
        beta: [B, T, HV] in (0, 1), q's dtype or float32. 16 <= K, V <= 256.
        g: log decay, q's dtype or float32: None (DeltaNet), [B, T, HV] (Gated DeltaNet) or
            [B, T, HV, K] (KDA).
        scale: defaults to K ** -0.5.
        initial_state: [N, HV, K, V] of any float dtype (used in float32), or None for zeros;
            N = B, or the number of sequences with ``cu_seqlens``.
        output_final_state: also return the state after each sequence's last token.
        cu_seqlens: int32/int64 [N + 1] boundaries of N sequences packed along T (batch 1),
            from 0, non-decreasing, ending at T (empty sequences allowed); no state crosses one.
            Checked without a host read on a GPU (device-side asserts), so a packed call can be
            captured in a CUDA graph.
        config: knobs of ``seqtune.kernels.delta_rule.spec``; None takes the tuned config.
        bwd_config: knobs of the ``delta_rule_bwd`` spec for the backward; None takes the tuned
            config. The backward runs when grad is enabled and a tensor input requires grad;
            it recomputes the forward's chunk terms and states (nothing but the inputs is saved).
        max_seqlen: the longest packed sequence, if known (flash-attn's convention): fewer
            programs are launched; less than the longest is an error (a device assert on GPU).

    Returns:
        (o [B, T, HV, V] in q's dtype, final state [N, HV, K, V] float32 or None).

    Precision against float64 (``benchmarks/precision.py`` and ``precision_grads.py`` in the
    Triton interpreter with a GPU's roundings; the spec's inputs, H=2, K=V=32, every gate,
    T=64 and 1000, gradients T=64 and 256; RMS error over RMS reference, fla's metric): o bf16
    <= 4.1e-3, fp16 <= 5.2e-4; the final state from bf16 inputs <= 3.1e-3, fp16 <= 4.1e-4;
    fp32 ~3e-7; gradients bf16 <= 3.9e-3, fp16 <= 6.4e-4. That is at most 1.04x the error of
    fla 0.6's chunk kernels on the same inputs, and below it on most figures
    (``benchmarks/results/precision*.md``). The UT transform's inverse and the state enter the
    tensor cores in two parts (~16 bits); W, U and the scores are rounded to the input dtype as
    operands; a scalar decay to the chunk's end multiplies U in fp32 before that rounding (the
    keys stay exact), a per-channel one the keys.
    """
    expect_tensors({"q": q, "k": k, "v": v, "beta": beta},
                   {"g": g, "initial_state": initial_state, "cu_seqlens": cu_seqlens})
    out, final = torch.ops.seqtune.delta_rule(
        q, k, v, beta, g, real_or_none("scale", scale), initial_state, bool(output_final_state),
        cu_seqlens, int_or_none("max_seqlen", max_seqlen), encode_config("config", config),
        encode_config("bwd_config", bwd_config))
    return out, final if output_final_state else None


def prepare(q, k, v, beta, g, scale, initial_state, cu_seqlens, max_seqlen=None
            ) -> tuple[dict, Bounds, float, tuple[int, int, int, int]]:
    """(tuning problem, sequence bounds, scale, state shape) of a checked call."""
    gate = _validate(q, k, v, beta, g, initial_state, scale)
    batch, length, heads, key_dim = q.shape
    value_heads, value_dim = v.shape[2:]
    varlen = cu_seqlens is not None
    if max_seqlen is not None and not varlen:
        raise ValueError("max_seqlen applies only to packed batches (cu_seqlens)")
    bounds = (check_cu_seqlens(cu_seqlens, batch, length, q.device, max_seqlen) if varlen
              else uniform_bounds(batch, length))
    sequences = bounds.sequences
    state_shape = (sequences, value_heads, key_dim, value_dim)
    if initial_state is not None:
        expect_shape("initial_state", initial_state, state_shape)
    problem = {"B": batch, "T": length, "H": heads, "GV": value_heads // heads,
               "N": sequences if varlen else 1, "K": key_dim, "V": value_dim, "gate": gate,
               "initial_state": initial_state is not None, "varlen": varlen,
               "dtype": dtype_name(q.dtype)}
    return problem, bounds, key_dim ** -0.5 if scale is None else float(scale), state_shape


def delta_rule_forward(q, k, v, beta, g, scale, initial_state, output_final_state, cu_seqlens,
                       max_seqlen, config, bwd_config=None
                       ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The op's implementation (``torch.ops.seqtune.delta_rule``): checks, config, launches."""
    problem, bounds, scale, state_shape = prepare(q, k, v, beta, g, scale, initial_state,
                                                  cu_seqlens, max_seqlen)
    cfg = forward_config(KERNEL, problem, config, bwd_config)
    if q.shape[1] == 0:
        out = new_output((*q.shape[:2], *v.shape[2:]), q.dtype, q.device)
        final = _unchanged_state(initial_state, state_shape, q.device)
        return out, final if output_final_state else None
    q, k, v, beta, g, h0 = _contiguous(q, k, v, beta, g, initial_state)
    pack = packing(bounds, cfg["BT"], q.device)
    return run_forward(q, k, v, beta, g, scale, h0, output_final_state, cfg, pack)[:2]


def delta_rule_chunk_states(q, k, v, beta, g, scale, initial_state, output_final_state,
                            cu_seqlens, chunk: int):
    """The forward with fla's chunk boundaries (the tuned config with BT pinned to ``chunk``),
    also returning the states entering each chunk, which the state stage stores anyway:
    (o, final state or None, states ``[B, NT, HV, K, V]``, or ``[1, total chunks, HV, K, V]``
    when packed, in q's dtype). No autograd: fla's ``return_intermediate_states``."""
    problem, bounds, scale, _ = prepare(q, k, v, beta, g, scale, initial_state, cu_seqlens)
    cfg = config_for(KERNEL, problem, {**config_for(KERNEL, problem, None), "BT": chunk})
    q, k, v, beta, g, h0 = _contiguous(q, k, v, beta, g, initial_state)
    pack = packing(bounds, chunk, q.device)
    o, final, states = run_forward(q, k, v, beta, g, scale, h0, output_final_state, cfg, pack)
    if cu_seqlens is None:
        return o, final, states.view(q.shape[0], -1, *states.shape[1:])
    # packed: the state buffer has spare rows past the real chunks (a bound from the shapes)
    return o, final, states[:int(pack.chunk_offsets[-1])].unsqueeze(0)


def _contiguous(q, k, v, beta, g, initial_state) -> tuple:
    """The kernels' operands: contiguous, the optional ones None when absent."""
    q, k, v, beta = (x.contiguous() for x in (q, k, v, beta))
    return (q, k, v, beta, None if g is None else g.contiguous(),
            None if initial_state is None else initial_state.contiguous())


def _validate(q, k, v, beta, g, initial_state, scale) -> str:
    """The gate kind ("none" | "scalar" | "channel"), or a ValueError/TypeError naming the
    argument at fault."""
    expect_tensor("q", q, 4)
    batch, length, heads, key_dim = q.shape
    expect_tensor("k", k, 4)
    expect_shape("k", k, q.shape)
    expect_tensor("v", v, 4)
    if tuple(v.shape[:2]) != (batch, length) or heads == 0 or v.shape[2] % heads:
        raise ValueError(f"v must have shape ({batch}, {length}, HV, V) with HV a multiple of "
                         f"H={heads}, got {tuple(v.shape)} (layout [B, T, H, K]: sequence "
                         "before heads; was [B, H, T, K] passed?)")
    value_heads = v.shape[2]
    expect_tensor("beta", beta, 3)
    expect_shape("beta", beta, (batch, length, value_heads))
    gate = gate_kind(g, (batch, length, value_heads, key_dim))
    for name, dim in (("K", key_dim), ("V", v.shape[-1])):
        if not MIN_HEAD_DIM <= dim <= MAX_HEAD_DIM:
            raise ValueError(f"head dim {name}={dim} unsupported: expected "
                             f"{MIN_HEAD_DIM} <= {name} <= {MAX_HEAD_DIM}")
    expect_float("q", q)
    expect_same_dtype({"q": q, "k": k, "v": v})
    gates = {"beta": beta} | ({} if g is None else {"g": g})
    for name, tensor in gates.items():
        expect_float(name, tensor, tuple(dict.fromkeys((q.dtype, torch.float32))))
    if initial_state is not None:
        expect_tensor("initial_state", initial_state, 4)
        expect_float("initial_state", initial_state)
    expect_same_device({"q": q, "k": k, "v": v} | gates | {"initial_state": initial_state})
    if scale is not None and (not isinstance(scale, numbers.Real) or isinstance(scale, bool)):
        raise TypeError(f"scale must be a real number or None, got {type(scale).__name__}")
    return gate


def gate_kind(g, channel_shape) -> str:
    """"none", "scalar" (g shaped like ``channel_shape`` without its last axis) or "channel"
    (g shaped ``channel_shape``); TypeError/ValueError naming g otherwise."""
    if g is None:
        return "none"
    if not isinstance(g, torch.Tensor):
        raise TypeError(f"g must be a torch.Tensor or None, got {type(g).__name__}")
    if tuple(g.shape) == tuple(channel_shape[:-1]):
        return "scalar"
    if tuple(g.shape) == tuple(channel_shape):
        return "channel"
    raise ValueError(f"g must have shape {tuple(channel_shape[:-1])} (scalar gate) or "
                     f"{tuple(channel_shape)} (per-channel gate), got {tuple(g.shape)}")


def _unchanged_state(initial_state, shape, device) -> torch.Tensor:
    """The final state of empty sequences: the initial state (an fp32 copy), or zeros."""
    if initial_state is not None:
        return initial_state.to(torch.float32, copy=True)
    return torch.zeros(shape, dtype=torch.float32, device=device)
