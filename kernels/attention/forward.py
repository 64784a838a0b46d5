"""The forward launch of ``attention``: what one call computes (``AttentionCall``) and the
launch of the forward kernel, optionally keeping the row log-sum-exp for the backward."""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import torch
import triton

from seqtune.kernels.attention.kernel import INTERPRETED, LOG2_E, attention_fwd_kernel
from seqtune.kernels.attention.varlen import Packing
from seqtune.launch import backend_options, launch, new_output
from seqtune.spec import Problem, next_power_of_2

# tl.dot's smallest tile edge: head dims are padded to a power of two at least this large.
MIN_HEAD_TILE = 16
# 32-bit registers a thread may spend on the tiles a program holds in registers at once (its
# float32 accumulators and the operand tiles ptxas keeps live next to them), per kernel and by
# the widest head tile; where none is set, every config of the spaces compiled as measured.
# Fitted to `seqtune check` on sm_80 and sm_90, bfloat16 and float32:
# - tiles of 512 (and 512/256): configs at or under these compiled without spills; over them,
#   all spilled but the float32 forward's 32 x 16 and 32 x 32 (D=512/Dv=256) tiles, which the
#   budget gives up;
# - tiles of 256 (Gemma 2's D=256 with its 4096 window, and D=192/Dv=128): the forward's 64 x 32
#   tiles (112 words) compiled clean without a window and spilled 32 B with it on sm_90, 32 x 32
#   (64) clean; dQ's 64 query rows (128 words) spilled 168 B on sm_90, 32 rows (64) clean, and
#   D=192/Dv=128's 64 rows (112) clean. A window's band bounds and masks take WINDOW_WORDS more;
# - tiles of 128: float32 dQ's 64 query rows (96 words) spilled 40 B on sm_90, bfloat16's (64,
#   80 with a window) none.
# Keys are (widest head tile, element bytes): the budgets of tiles of 256 and 128 hold for the
# dtypes they were measured on (float32's default forward, 160 words at D=256, compiles clean).
# The interpreter has no registers: it takes no budget.
FORWARD_REGISTER_WORDS = {(256, 2): 120, (512, 2): 128, (512, 4): 128}
BACKWARD_REGISTER_WORDS = {(512, 2): 160, (512, 4): 160}  # dK/dV
DQ_REGISTER_WORDS = {(128, 4): 80, (256, 2): 120, (512, 2): 160, (512, 4): 160}
WINDOW_WORDS = 16


@dataclasses.dataclass(frozen=True)
class AttentionCall:
    """The non-tensor arguments of one ``attention`` call, validated."""

    causal: bool
    scale: float
    score: str
    sigmoid_bias: float | None  # None: -ln(S_n) per sequence
    packing: Packing | None  # None: a dense batch
    problem: Problem  # the tuning problem, shared by the forward and the backward
    window: tuple[int, int] = (-1, -1)  # (left, right), -1 unbounded
    softcap: float = 0.0  # 0: no soft-capping
    alibi_slopes: torch.Tensor | None = None  # float32 [Hq] or [B, Hq] ([N, Hq] when packed)

    @property
    def sigmoid(self) -> bool:
        return self.score == "sigmoid"

    @property
    def qk_scale(self) -> float:
        """What scores are multiplied by in the kernels: softmax works in base 2; with a
        softcap it multiplies ``tanh(scores * softcap_in)``."""
        if self.sigmoid:
            return self.scale
        return (self.softcap if self.softcap > 0 else self.scale) * LOG2_E

    @property
    def softcap_in(self) -> float:
        return self.scale / self.softcap if self.softcap > 0 else 0.0

    @property
    def upper_bound(self) -> bool:
        """Whether keys past a query's diagonal (plus the right window) are masked."""
        return self.causal or self.window[1] >= 0

    def window_arguments(self, queries: int, keys: int) -> tuple[int, int, float]:
        """``(window_left, window_right, softcap_in)`` of the kernels. Bounds are clipped to
        the (packed) lengths, past which they mask nothing, so the kernels' int32 band edges
        cannot overflow; causal makes the right bound 0."""
        left, right = self.window
        right = 0 if self.causal else right
        return max(min(left, keys), 0), max(min(right, queries), 0), self.softcap_in

    def alibi_strides(self) -> tuple[int, int]:
        """Strides of the slopes over (sequence, head): [Hq] slopes are shared by all."""
        slopes = self.alibi_slopes
        if slopes is None:
            return 0, 0
        return (0, slopes.stride(0)) if slopes.dim() == 1 else tuple(slopes.stride())

    @property
    def bias(self) -> float:
        return 0.0 if self.sigmoid_bias is None else float(self.sigmoid_bias)


def head_tile(dim: int) -> int:
    """The power-of-two tile a head dim is padded to."""
    return max(MIN_HEAD_TILE, next_power_of_2(dim))


def register_words(accumulator: int, operands: int, element_bytes: int, num_warps: int) -> float:
    """32-bit registers per thread for ``accumulator`` float32 elements and ``operands``
    elements of ``element_bytes`` each, spread over the program's ``num_warps`` warps."""
    return (accumulator + operands * element_bytes / 4) / (32 * num_warps)


def registers_fit(kernel: str, words: float, budgets: Mapping[tuple[int, int], int],
                  head_dim: int, value_dim: int, element_bytes: int) -> str | None:
    """Why a program holding ``words`` registers a thread would spill at these head dims (over
    ``budgets`` of their widest head tile and element size), or None; None too where no budget
    is set."""
    budget = budgets.get((max(head_tile(head_dim), head_tile(value_dim)), element_bytes))
    if budget is None or words <= budget:
        return None
    return (f"{kernel} holds ~{words:.0f} registers a thread of tiles at D={head_dim}, "
            f"Dv={value_dim}, over the {budget} that compile without spills")


def tile_grid(call: AttentionCall, block: int, batch: int, rows: int, heads: int,
              keys: bool = False) -> tuple[tuple[int, int, int], torch.Tensor | None]:
    """(grid, tile table or None) of a launch over ``block``-row tiles of the queries (of the
    keys with ``keys``): ``(cdiv(rows, block), heads, B)`` dense; packed, one program per row of
    the (sequence, tile) table, whose size comes from shapes alone (no host read)."""
    if call.packing is None:
        return (triton.cdiv(rows, block), heads, batch), None
    tiles = call.packing.tiles(block, keys)
    return (tiles.shape[0], heads, 1), tiles


def offsets(call: AttentionCall) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    if call.packing is None:
        return None, None
    return call.packing.cu_seqlens, call.packing.cu_seqlens_k


def kernel_flags(call: AttentionCall, q: torch.Tensor, v: torch.Tensor) -> dict[str, Any]:
    """Constexpr arguments every attention kernel takes."""
    head_dim, value_dim = q.shape[3], v.shape[3]
    return {"D": head_dim, "DV": value_dim, "BLOCK_D": head_tile(head_dim),
            "BLOCK_DV": head_tile(value_dim), "CAUSAL": call.upper_bound,
            "WINDOW": call.window[0] >= 0, "SOFTCAP": call.softcap > 0,
            "ALIBI": call.alibi_slopes is not None, "SIGMOID": call.sigmoid,
            "DEFAULT_BIAS": call.sigmoid_bias is None, "VARLEN": call.packing is not None,
            "UPCAST_BF16": INTERPRETED and q.dtype == torch.bfloat16}


def run_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, call: AttentionCall,
                cfg: Mapping[str, Any], store_lse: bool
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(o [B, T, Hq, Dv], lse [B, Hq, T] float32 or None)``; lse only with ``store_lse`` and
    softmax scores (sigmoid weights need no normaliser in the backward)."""
    batch, queries, heads, _ = q.shape
    keys, kv_heads, value_dim = k.shape[1], k.shape[2], v.shape[3]
    out = new_output((batch, queries, heads, value_dim), q.dtype, q.device)
    lse = None
    if store_lse and not call.sigmoid:
        lse = new_output((batch, heads, queries), torch.float32, q.device)
    if out.numel() == 0:
        return out, lse
    if keys == 0:
        # No key is visible to any query: the empty sum is zero for both scores.
        out.zero_()
        if lse is not None:
            lse.fill_(float("inf"))
        return out, lse
    grid, tiles = tile_grid(call, cfg["BLOCK_M"], batch, queries, heads)
    if grid[0] == 0:
        return out, lse
    cu_q, cu_k = offsets(call)
    launch(attention_fwd_kernel, grid, q, k, v, out, lse, cu_q, cu_k, tiles, call.alibi_slopes,
           *q.stride(), *k.stride(), *v.stride(), *out.stride(),
           *(lse.stride()[:2] if lse is not None else (0, 0)), *call.alibi_strides(),
           queries, keys, heads // kv_heads, call.qk_scale, call.bias,
           *call.window_arguments(queries, keys),
           BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], STORE_LSE=lse is not None,
           **kernel_flags(call, q, v), num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
           **backend_options(cfg))
    return out, lse
