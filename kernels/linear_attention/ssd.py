"""``ssd``: Mamba-2's state-space duality layer, run on the linear-attention kernels.

SSD is linear attention with q = C, k = B (grouped: head h reads group h // (h_total / g)),
v = dt x, a scalar log decay g = dt A and scale 1, plus the skip term D x. dt x is formed inside
the kernels as v is loaded and D x is added in the output kernel, so x is never copied.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F

from seqtune.checks import (expect_float, expect_same_device, expect_same_dtype, expect_shape,
                            expect_tensor)
from seqtune.custom_ops import encode_config, expect_tensors, forward_config, int_or_none
from seqtune.kernels.linear_attention.chunked import Recurrence, run_chunked
from seqtune.kernels.linear_attention.op import (empty_result, expect_head_dim,
                                                 expect_initial_state)
from seqtune.kernels.linear_attention.varlen import Sequences, sequences_of
from seqtune.spec import dtype_name


def _check_per_head(name: str, value: torch.Tensor | None, heads: int) -> None:
    if value is not None:
        expect_tensor(name, value, 1)
        expect_float(name, value)
        expect_shape(name, value, (heads,))


def _check_inputs(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                  C: torch.Tensor, D: torch.Tensor | None, dt_bias: torch.Tensor | None) -> None:
    for name, tensor, ndim in (("x", x, 4), ("dt", dt, 3), ("A", A, 1), ("B", B, 4), ("C", C, 4)):
        expect_tensor(name, tensor, ndim)
        expect_float(name, tensor)
    expect_same_dtype({"x": x, "B": B, "C": C})
    batch, T, heads, p = x.shape
    groups, n = B.shape[2], B.shape[3]
    expect_shape("dt", dt, (batch, T, heads))
    expect_shape("A", A, (heads,))
    expect_shape("B", B, (batch, T, groups, n))
    expect_shape("C", C, (batch, T, groups, n))
    if groups == 0 or heads % groups:
        raise ValueError(f"the heads of x ({heads}) must be a multiple of the groups of B and C "
                         f"({groups})")
    expect_head_dim("p (the last dim of x)", p)
    expect_head_dim("n (the last dim of B and C)", n)
    _check_per_head("D", D, heads)
    _check_per_head("dt_bias", dt_bias, heads)


def check_ssd_inputs(x, dt, A, B, C, D, dt_bias, initial_state, cu_seqlens, max_seqlen=None
                     ) -> tuple[Sequences, torch.Tensor | None]:
    """(the sequences, the checked contiguous initial state) of an ``ssd`` call."""
    _check_inputs(x, dt, A, B, C, D, dt_bias)
    expect_same_device({"x": x, "dt": dt, "A": A, "B": B, "C": C, "D": D, "dt_bias": dt_bias,
                        "initial_state": initial_state})
    batch, T, heads, p = x.shape
    sequences = sequences_of(cu_seqlens, batch, T, x.device, max_seqlen)
    state_shape = (sequences.count, heads, B.shape[3], p)
    return sequences, expect_initial_state(initial_state, state_shape)


def ssd_problem(x: torch.Tensor, B: torch.Tensor, has_D: bool, has_initial: bool,
                sequences: Sequences) -> dict[str, Any]:
    """The tuning problem of a call (shared by the forward and the backward)."""
    batch, T, heads, p = x.shape
    return {"b": batch, "T": T, "h": heads, "g": B.shape[2], "n": B.shape[3], "p": p,
            "has_D": has_D, "initial_state": has_initial, "dtype": dtype_name(x.dtype),
            "N": sequences.count if sequences.packed else 1, "varlen": sequences.packed}


def step_sizes(dt: torch.Tensor, dt_bias: torch.Tensor | None, dt_softplus: bool
               ) -> torch.Tensor:
    """The effective step dt (+ dt_bias, through softplus when asked), contiguous fp32."""
    step = dt.to(torch.float32)
    if dt_bias is not None:
        step = step + dt_bias.to(torch.float32)
    if dt_softplus:
        step = F.softplus(step)
    return step.contiguous()


def ssd(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, *,
        D: torch.Tensor | None = None, dt_bias: torch.Tensor | None = None,
        dt_softplus: bool = False, initial_state: torch.Tensor | None = None,
        output_final_state: bool = False, cu_seqlens: torch.Tensor | None = None,
        config: Mapping[str, Any] | None = None, bwd_config: Mapping[str, Any] | None = None,
        max_seqlen: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Mamba-2 SSD: h_t = exp(dt_t A) h_{t-1} + dt_t B_t x_t^T, y_t = C_t^T h_t + D x_t.

    Args:
        x: [b, T, h, p]; B, C: [b, T, g, n] with h % g == 0; x, B and C in one float dtype.
        dt: [b, T, h]; A: [h] (negative); D, dt_bias: [h]; any float dtype (used in fp32).
        dt_softplus: dt <- softplus(dt + dt_bias) rather than dt + dt_bias.
        initial_state: [N, h, n, p], any float dtype (used in fp32); N = b, or the number of
            sequences with cu_seqlens.
        output_final_state: also return the state after the last step, [N, h, n, p] fp32.
        cu_seqlens: int32/int64 [N + 1] offsets of N sequences packed along T (b = 1),
            fla's convention; no state crosses a sequence boundary. Checked without a host read
            on a GPU (device-side asserts), so a packed call can be captured in a CUDA graph.
        config: a (partial) config of the ``ssd`` kernel; None takes the tuned one.
        bwd_config: likewise for ``ssd_bwd``, used when autograd runs the backward (gradients
            of x, dt, A, B, C, D, dt_bias and initial_state).
        max_seqlen: the longest packed sequence, if known (flash-attn's convention): fewer
            programs are launched; less than the longest is an error (a device assert on GPU).

    Returns:
        (y [b, T, h, p] in x's dtype, final_state or None).

    Precision against float64 (``benchmarks/precision.py`` and ``precision_grads.py`` in the
    Triton interpreter with a GPU's roundings; the spec's inputs, h=2, n=p=32, T=64 and 1000,
    gradients T=64 and 256; RMS error over RMS reference): y bf16 <= 2.4e-3, fp16 <= 2.8e-4;
    the fp32 final state from bf16 inputs <= 1.9e-3, fp16 <= 2.3e-4 (fla's simple-GLA form of
    SSD: y 2.9e-3 / 3.6e-4, state 2.2e-3 / 2.5e-4); gradients bf16 <= 2.9e-3 (dB), fp16
    <= 4e-4. dt scales B and A's columns in fp32, so x reaches the dots unrounded (dt x is
    never rounded to the dtype).
    """
    expect_tensors({"x": x, "dt": dt, "A": A, "B": B, "C": C},
                   {"D": D, "dt_bias": dt_bias, "initial_state": initial_state,
                    "cu_seqlens": cu_seqlens})
    y, final = torch.ops.seqtune.ssd(
        x, dt, A, B, C, D, dt_bias, bool(dt_softplus), initial_state, bool(output_final_state),
        cu_seqlens, int_or_none("max_seqlen", max_seqlen), encode_config("config", config),
        encode_config("bwd_config", bwd_config))
    return y, final if output_final_state else None


def ssd_forward(x, dt, A, B, C, D, dt_bias, dt_softplus, initial_state, output_final_state,
                cu_seqlens, max_seqlen, config, bwd_config=None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The op's implementation (``torch.ops.seqtune.ssd``): checks, config, launches."""
    sequences, initial_state = check_ssd_inputs(x, dt, A, B, C, D, dt_bias, initial_state,
                                                cu_seqlens, max_seqlen)
    batch, T, heads, p = x.shape
    state_shape = (sequences.count, heads, B.shape[3], p)
    if T == 0 or batch == 0 or heads == 0:
        return empty_result(x.shape, x, initial_state, state_shape, output_final_state)
    problem = ssd_problem(x, B, D is not None, initial_state is not None, sequences)
    cfg = forward_config("ssd", problem, config, bwd_config)
    step = step_sizes(dt, dt_bias, dt_softplus)
    log_decay = (step * A.to(torch.float32)).contiguous()
    recurrence = Recurrence(C, B, x, log_decay, 1.0, sequences, v_scale=step,
                            D=None if D is None else D.contiguous(), initial_state=initial_state)
    y, final, _ = run_chunked(recurrence, cfg, output_final_state)
    return y, final
