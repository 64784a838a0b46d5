"""The causal_conv1d op: argument checks, the problem the tuned configs are keyed by, launches."""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import torch
import triton

from seqtune import checks
from seqtune.checks import expect_float, expect_same_device, expect_shape, expect_tensor
from seqtune.custom_ops import encode_config, expect_tensors, forward_config
from seqtune.launch import backend_options, launch, new_output
from seqtune.spec import dtype_name

from seqtune.kernels.causal_conv1d.kernels import (causal_conv1d_fwd_kernel, final_state_kernel,
                                                   state_columns)
from seqtune.kernels.varlen import assert_offsets

WIDTHS = tuple(range(2, 9))  # up to lfm3's 7 and one more; causal-conv1d stops at 4
ACTIVATIONS = (None, "silu", "swish")


@dataclasses.dataclass(frozen=True)
class Layout:
    """What the kernels need to know of a call besides the tensors."""

    batch: int  # rows of x (1 with cu_seqlens)
    length: int  # T: tokens per row (the packed total with cu_seqlens)
    channels: int  # D
    width: int  # W
    num_seqs: int  # N: sequences (B, or len(cu_seqlens) - 1)
    silu: bool
    varlen: bool  # packed sequences (cu_seqlens)

    @property
    def search_steps(self) -> int:
        """Bisection steps that find a row's sequence among N (ceil(log2 N))."""
        return max(self.num_seqs - 1, 0).bit_length()


def causal_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
                  activation: str | None = None, initial_state: torch.Tensor | None = None,
                  output_final_state: bool = False, cu_seqlens: torch.Tensor | None = None,
                  config: Mapping[str, Any] | None = None,
                  bwd_config: Mapping[str, Any] | None = None):
    """The depthwise causal convolution of Mamba, Mamba-2, Gated DeltaNet and KDA layers.

    y[b, t, d] = act(bias[d] + sum_j weight[d, j] * x[b, t - (W - 1) + j, d]), where positions
    before a sequence's start read its ``initial_state`` (zeros when None): the same as
    ``F.conv1d`` with ``groups=D`` on the sequence left-padded by its state.

    Args:
        x: ``[B, T, D]`` (flash-linear-attention's layout; any strides), float32, float16 or
            bfloat16.
        weight: ``[D, W]`` with the width W in 2..8; bias: ``[D]``; any float dtype.
        activation: None, ``"silu"`` or ``"swish"`` (the same).
        initial_state: ``[N, D, W - 1]``, the W - 1 inputs before each sequence (oldest first),
            any float dtype; N = B, or the number of sequences with ``cu_seqlens``.
        output_final_state: also return each sequence's last W - 1 inputs, ``[N, D, W - 1]`` in
            x's dtype (reaching into the initial state for sequences shorter than W - 1).
        cu_seqlens: int32/int64 ``[N + 1]``: x holds N sequences packed in one row (B = 1),
            sequence n at tokens ``cu_seqlens[n]:cu_seqlens[n + 1]``; no tap crosses a
            sequence's start. Checked without a host read on a GPU (device-side asserts), so a
            packed call can be captured in a CUDA graph.
        config, bwd_config: (partial) configs of the ``causal_conv1d`` and
            ``causal_conv1d_bwd`` specs; None takes the tuned ones for the problem.

    Accumulates in fp32. Differentiable in x, weight, bias and initial_state (Triton backward).
    Returns ``(y [B, T, D] in x's dtype, final_state or None)``.
    """
    expect_tensors({"x": x, "weight": weight},
                   {"bias": bias, "initial_state": initial_state, "cu_seqlens": cu_seqlens})
    check_activation(activation)
    y, final_state = torch.ops.seqtune.causal_conv1d(
        x, weight, bias, activation, initial_state, bool(output_final_state), cu_seqlens,
        encode_config("config", config), encode_config("bwd_config", bwd_config))
    return y, final_state if output_final_state else None


def prepare(x, weight, bias, activation, initial_state, cu_seqlens
            ) -> tuple[Layout, torch.Tensor | None, dict[str, Any]]:
    """(layout, offsets as the kernels read them, tuning problem) of a checked call."""
    layout = check_arguments(x, weight, bias, activation, initial_state, cu_seqlens)
    cu_seqlens = cu_seqlens.contiguous() if cu_seqlens is not None else None  # read as an array
    return layout, cu_seqlens, problem_of(layout, x, bias, initial_state)


def causal_conv1d_forward(x, weight, bias, activation, initial_state, output_final_state,
                          cu_seqlens, config, bwd_config=None):
    """The op's implementation (``torch.ops.seqtune.causal_conv1d``): checks, config,
    launches."""
    layout, cu_seqlens, problem = prepare(x, weight, bias, activation, initial_state,
                                          cu_seqlens)
    cfg = forward_config("causal_conv1d", problem, config, bwd_config)
    return forward(x, weight, bias, initial_state, cu_seqlens, layout, output_final_state, cfg)


def problem_of(layout: Layout, x: torch.Tensor, bias, initial_state) -> dict[str, Any]:
    """The tuning problem: the total length T and the number of sequences N are size fields,
    so every length mix of a packed batch falls in one bucket."""
    return {"B": layout.batch, "T": layout.length, "D": layout.channels, "W": layout.width,
            "N": layout.num_seqs, "varlen": layout.varlen, "has_bias": bias is not None,
            "silu": layout.silu, "has_initial_state": initial_state is not None,
            "dtype": dtype_name(x.dtype)}


def forward(x, weight, bias, initial_state, cu_seqlens, layout: Layout, output_final_state: bool,
            cfg: Mapping[str, Any]):
    """The launches: y, then (if asked) the final states."""
    batch, length, channels = layout.batch, layout.length, layout.channels
    y = new_output((batch, length, channels), x.dtype, x.device)
    final_state = None
    if output_final_state:
        final_state = new_output((layout.num_seqs, channels, layout.width - 1), x.dtype, x.device)
    # Tensors the flags say are absent are never read; x stands in for them.
    state = initial_state if initial_state is not None else x
    state_strides = initial_state.stride() if initial_state is not None else (0, 0, 0)
    bias_arg = bias if bias is not None else x
    cu = cu_seqlens if cu_seqlens is not None else x
    flags = {"W": layout.width, "HAS_STATE": initial_state is not None,
             "VARLEN": layout.varlen}
    if y.numel():
        grid = (triton.cdiv(length, cfg["BT"]), triton.cdiv(channels, cfg["BD"]), batch)
        launch(causal_conv1d_fwd_kernel, grid, x, weight, bias_arg, state, cu, y,
               length, channels, layout.num_seqs, layout.search_steps,
               *x.stride(), *weight.stride(), bias.stride(0) if bias is not None else 0,
               *state_strides, *y.stride(), **flags, HAS_BIAS=bias is not None,
               SILU=layout.silu, BT=cfg["BT"], BD=cfg["BD"], num_warps=cfg["num_warps"],
               num_stages=cfg["num_stages"], **backend_options(cfg))
    if final_state is not None and final_state.numel():
        launch(final_state_kernel, (layout.num_seqs, triton.cdiv(channels, cfg["BD"])),
               x, state, cu, final_state, length, channels, *x.stride(), *state_strides,
               *final_state.stride(), **flags, WS=state_columns(layout.width), BD=cfg["BD"],
               num_warps=cfg["num_warps"],
               **backend_options(cfg))
    return y, final_state


def check_arguments(x, weight, bias, activation, initial_state, cu_seqlens) -> Layout:
    """Every check before any launch; one-line ValueError/TypeError naming the argument."""
    expect_tensor("x", x, 3)
    expect_float("x", x)
    expect_tensor("weight", weight, 2)
    expect_float("weight", weight)
    batch, length, channels = x.shape
    width = weight.shape[1]
    if width not in WIDTHS:
        raise ValueError(f"weight has width W={width} (shape {tuple(weight.shape)}); "
                         f"causal_conv1d supports W in 2..8")
    expect_shape("weight", weight, (channels, width))
    if bias is not None:
        expect_tensor("bias", bias, 1)
        expect_float("bias", bias)
        expect_shape("bias", bias, (channels,))
    check_activation(activation)
    num_seqs = batch
    if cu_seqlens is not None:
        num_seqs = check_cu_seqlens(cu_seqlens, batch, length, x.device)
    if initial_state is not None:
        expect_tensor("initial_state", initial_state, 3)
        expect_float("initial_state", initial_state)
        expect_shape("initial_state", initial_state, (num_seqs, channels, width - 1))
    expect_same_device({"x": x, "weight": weight, "bias": bias, "initial_state": initial_state,
                        "cu_seqlens": cu_seqlens})
    return Layout(batch, length, channels, width, num_seqs, activation is not None,
                  cu_seqlens is not None)


def check_activation(activation: Any) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be None, 'silu' or 'swish', got {activation!r}")


def check_cu_seqlens(cu_seqlens: Any, batch: int, length: int, device: torch.device) -> int:
    """Validates fla's packed-batch convention; returns the number of sequences N. The values
    are read on the host only where ``checks.host_reads_allowed``, else checked on the device."""
    expect_tensor("cu_seqlens", cu_seqlens, 1)
    if cu_seqlens.device != device:
        raise ValueError(f"tensors on different devices: x on {device}, cu_seqlens on "
                         f"{cu_seqlens.device}")
    if cu_seqlens.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"cu_seqlens must be int32 or int64, got "
                         f"{str(cu_seqlens.dtype).removeprefix('torch.')}")
    if batch != 1:
        raise ValueError(f"with cu_seqlens, x must have batch 1 (sequences packed along T), "
                         f"got batch {batch}")
    if cu_seqlens.numel() < 2:
        raise ValueError(f"cu_seqlens must have N + 1 >= 2 entries, got {cu_seqlens.numel()}")
    if not checks.host_reads_allowed(cu_seqlens):
        assert_offsets("cu_seqlens", cu_seqlens, length)
        return cu_seqlens.numel() - 1
    bounds = cu_seqlens.tolist()
    if bounds[0] != 0 or bounds[-1] != length or any(b > a for a, b in zip(bounds[1:], bounds)):
        raise ValueError(f"cu_seqlens must start at 0, not decrease and end at T={length}, "
                         f"got {_abbreviated(bounds)}")
    return len(bounds) - 1


def _abbreviated(values: list[int]) -> str:
    return str(values) if len(values) <= 8 else f"[{', '.join(map(str, values[:8]))}, ...]"
