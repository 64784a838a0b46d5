"""``attention_decode``: one new query token per sequence against a padded KV cache (GQA),
split-KV (flash-decoding) on Triton."""
from __future__ import annotations

import math
from typing import Any, Mapping

import torch
import triton
import triton.language as tl

from seqtune.checks import (expect_float, expect_same_device, expect_same_dtype, expect_shape,
                            expect_tensor, softcap_value)
from seqtune.custom_ops import encode_config, expect_tensors
from seqtune.kernels.attention_decode.features import (check_alibi, check_block_table,
                                                      check_leftpad, check_window,
                                                      longest_visible)
from seqtune.kernels.attention_decode.kernel import decode_combine_kernel, decode_split_kernel
from seqtune.launch import backend_options, launch, new_output
from seqtune.loader import config_for
from seqtune.spec import dtype_name, next_power_of_2

KERNEL_NAME = "attention_decode"
HEAD_DIMS = (16, 32, 64, 128, 256)
# tl.dot needs every dimension >= 16: a GQA group is padded to at least this many rows.
MIN_DOT_ROWS = 16


def group_rows(num_q_heads: int, num_kv_heads: int) -> int:
    """Rows of a split program's query tile: the GQA group size, padded for tl.dot."""
    return max(MIN_DOT_ROWS, next_power_of_2(num_q_heads // num_kv_heads))


def attention_decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                     cache_seqlens: torch.Tensor, *, scale: float | None = None,
                     config: Mapping[str, Any] | None = None,
                     block_table: torch.Tensor | None = None,
                     cache_leftpad: torch.Tensor | None = None,
                     window: tuple[int, int] = (-1, -1), softcap: float = 0.0,
                     alibi_slopes: torch.Tensor | None = None,
                     return_lse: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Attention of one new token per sequence over its KV cache (flash-attn's
    ``flash_attn_with_kvcache`` semantics for one query).

    Args:
        q: ``[B, Hq, D]``, the new tokens' queries.
        k_cache, v_cache: ``[B, S_max, Hkv, D]`` with ``Hq % Hkv == 0`` (query head ``h`` reads
            kv head ``h // (Hq // Hkv)``); any strides. Paged (with ``block_table``):
            ``[num_blocks, block_size, Hkv, D]``.
        cache_seqlens: int32 ``[B]`` on q's device: sequence ``b`` attends to cache positions
            ``< cache_seqlens[b]``, which must lie in ``[0, S_max]`` (paged: ``S_max`` is
            ``max_blocks * block_size``). A sequence that sees no key gets a zero output. On
            the CPU the values of this and the other index tensors are checked on the host; on
            a GPU by device-side asserts, with no host read, so a decode step can be captured
            in a CUDA graph.
        scale: the softmax scale, ``D ** -0.5`` by default.
        config: a (partial) config of the ``attention_decode`` spec; None takes the tuned one
            for the problem ``{B, Hq, Hkv, D, S, dtype, block_size}``: S is the most keys a
            sequence sees on the CPU, and the cache's capacity (or ``window[0] + 1``) on a GPU;
            block_size is the paged cache's, 0 for a contiguous one.
        block_table: int32 ``[B, max_blocks]``, a paged cache (flash-attn's and vLLM's layout):
            position ``p`` of sequence ``b`` is row ``p % block_size`` of cache block
            ``block_table[b, p // block_size]``. Block sizes 16, 32, 64, 128 or 256; blocks in
            any order; entries past a sequence's last block are never read.
        cache_leftpad: int32 ``[B]``: sequence ``b``'s keys are cache positions
            ``[cache_leftpad[b], cache_seqlens[b])`` (positions count from the pad).
        window: ``(left, right)``, -1 unbounded: the query, at the last position ``i`` of its
            sequence, sees keys ``i - left <= j <= i + right`` (so ``right`` hides nothing).
            Key blocks outside the window are skipped: the cost is O(left), not O(S).
        softcap: > 0 caps the scores: ``softcap * tanh(scale * q.k / softcap)``; 0 is off.
        alibi_slopes: float32 ``[Hq]`` or ``[B, Hq]``: adds ``-slope * |i - j|`` to the
            (capped) score of key ``j``, as flash-attn.
        return_lse: also return the natural-log log-sum-exp of the final (scaled, capped,
            biased) scores.

    D is a power of two in 16..256; q and the caches share one dtype: float32, float16 or
    bfloat16. Bad arguments raise ValueError/TypeError before any launch.

    Returns:
        ``o`` ``[B, Hq, D]`` in q's dtype; with ``return_lse``, ``(o, lse)``, lse ``[B, Hq]``
        float32, ``+inf`` for a sequence that sees no key (flash-attn's convention).
    """
    expect_tensors({"q": q, "k_cache": k_cache, "v_cache": v_cache,
                    "cache_seqlens": cache_seqlens},
                   {"block_table": block_table, "cache_leftpad": cache_leftpad})
    _check_scale(scale)
    window_left = check_window(window)
    o, lse = torch.ops.seqtune.attention_decode(
        q, k_cache, v_cache, cache_seqlens, None if scale is None else float(scale),
        encode_config("config", config), block_table, cache_leftpad, window_left,
        softcap_value(softcap), alibi_slopes)
    return (o, lse) if return_lse else o


def attention_decode_forward(q, k_cache, v_cache, cache_seqlens, scale, config,
                             block_table=None, cache_leftpad=None, window_left=-1, softcap=0.0,
                             alibi_slopes=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The op's implementation (``torch.ops.seqtune.attention_decode``): checks, config,
    launches; returns ``(o, lse)``."""
    batch, num_q_heads, num_kv_heads, head_dim = _check_arguments(
        q, k_cache, v_cache, cache_seqlens, scale, block_table)
    page = check_block_table(block_table, k_cache, batch)
    check_leftpad(cache_leftpad, batch)
    alibi_stride = check_alibi(alibi_slopes, batch, num_q_heads)
    expect_same_device({"q": q, "block_table": block_table, "cache_leftpad": cache_leftpad,
                        "alibi_slopes": alibi_slopes})
    capacity = k_cache.shape[1] if page == 0 else page * block_table.shape[1]
    max_len = longest_visible(cache_seqlens, cache_leftpad, block_table, k_cache.shape[0], page,
                              capacity, window_left)
    if batch == 0 or num_q_heads == 0 or max_len == 0:
        return (torch.zeros(q.shape, dtype=q.dtype, device=q.device),
                torch.full(q.shape[:2], math.inf, dtype=torch.float32, device=q.device))
    problem = {"B": batch, "Hq": num_q_heads, "Hkv": num_kv_heads, "D": head_dim, "S": max_len,
               "dtype": dtype_name(q.dtype), "block_size": page}
    cfg = config_for(KERNEL_NAME, problem, config)
    # The kernel indexes a table row, the left pads and the slopes with unit strides.
    features = {"block_table": None if page == 0 else block_table.contiguous(), "page": page,
                "cache_leftpad": cache_leftpad, "window_left": window_left, "softcap": softcap,
                "alibi_slopes": alibi_slopes, "alibi_stride": alibi_stride}
    scale = head_dim ** -0.5 if scale is None else float(scale)
    return _launch_stages(q, k_cache, v_cache, cache_seqlens.contiguous(), scale, cfg, features)


def _check_arguments(q, k_cache, v_cache, cache_seqlens, scale,
                     block_table) -> tuple[int, int, int, int]:
    """Shape, dtype and device checks; returns ``(B, Hq, Hkv, D)``."""
    expect_tensor("q", q, 3)
    expect_tensor("k_cache", k_cache, 4)
    expect_tensor("v_cache", v_cache, 4)
    expect_tensor("cache_seqlens", cache_seqlens, 1)
    for name, tensor in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache)):
        expect_float(name, tensor)
    expect_same_dtype({"q": q, "k_cache": k_cache, "v_cache": v_cache})
    expect_float("cache_seqlens", cache_seqlens, (torch.int32,))
    expect_same_device({"q": q, "k_cache": k_cache, "v_cache": v_cache,
                        "cache_seqlens": cache_seqlens})
    batch, num_q_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[2]
    if head_dim not in HEAD_DIMS:
        raise ValueError(f"q has head dim D={head_dim}, expected a power of two in 16..256")
    # A paged cache has any number of blocks; a contiguous one has a row per sequence.
    cache_rows = batch if block_table is None else k_cache.shape[0]
    expect_shape("k_cache", k_cache, (cache_rows, k_cache.shape[1], num_kv_heads, head_dim))
    expect_shape("v_cache", v_cache, tuple(k_cache.shape))
    expect_shape("cache_seqlens", cache_seqlens, (batch,))
    if num_kv_heads == 0 or num_q_heads % num_kv_heads:
        raise ValueError(f"q has Hq={num_q_heads} heads, expected a multiple of k_cache's "
                         f"Hkv={num_kv_heads} heads")
    _check_scale(scale)
    return batch, num_q_heads, num_kv_heads, head_dim


def _check_scale(scale) -> None:
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float))):
        raise TypeError(f"scale must be a float or None, got {type(scale).__name__}")


TRITON_DTYPES = {torch.float32: tl.float32, torch.float16: tl.float16,
                 torch.bfloat16: tl.bfloat16}


def _dot_dtype(dtype: torch.dtype) -> tl.dtype:
    """The inputs' dtype, or float32 for bfloat16 under the interpreter (see the split kernel)."""
    if dtype == torch.bfloat16 and triton.knobs.runtime.interpret:
        return tl.float32
    return TRITON_DTYPES[dtype]


def _launch_stages(q, k_cache, v_cache, cache_seqlens, scale: float, cfg: dict,
                   features: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The split stage into fp32 scratch, then the combine stage into ``o`` and ``lse`` (or,
    with one split, the split stage straight into them)."""
    batch, num_q_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[2]
    num_splits = cfg["NUM_SPLITS"]
    o = new_output(q.shape, q.dtype, q.device)
    lse = new_output((batch, num_q_heads), torch.float32, q.device)
    if num_splits == 1:
        partial, partial_lse = o, lse  # the split stage writes o and lse directly
        partial_strides = (o.stride(0), o.stride(1), 0, o.stride(2))
    else:
        partial = new_output((batch, num_q_heads, num_splits, head_dim), torch.float32, q.device)
        partial_lse = new_output((batch, num_q_heads, num_splits), torch.float32, q.device)
        partial_strides = partial.stride()
    # An absent feature's pointer is a dummy the kernel never reads (its flag is off).
    table, leftpad, slopes = (features[name] for name in ("block_table", "cache_leftpad",
                                                          "alibi_slopes"))
    launch(decode_split_kernel, (batch * num_kv_heads, num_splits),
           q, k_cache, v_cache, cache_seqlens, partial, partial_lse,
           cache_seqlens if table is None else table,
           cache_seqlens if leftpad is None else leftpad.contiguous(),
           partial_lse if slopes is None else slopes.contiguous(),
           *q.stride(), *k_cache.stride(), *v_cache.stride(), *partial_strides,
           0 if table is None else table.stride(0), features["alibi_stride"],
           scale, features["softcap"], features["window_left"],
           num_kv_heads, num_q_heads // num_kv_heads,
           HEAD_DIM=head_dim, BLOCK_G=group_rows(num_q_heads, num_kv_heads),
           BLOCK_N=cfg["split.BLOCK_N"], NUM_SPLITS=num_splits,
           DOT_DTYPE=_dot_dtype(q.dtype), PAGE_SIZE=features["page"],
           HAS_LEFTPAD=leftpad is not None, SOFTCAP=features["softcap"] > 0,
           ALIBI=slopes is not None,
           num_warps=cfg["split.num_warps"], num_stages=cfg["split.num_stages"],
           **backend_options(cfg))
    if num_splits > 1:
        launch(decode_combine_kernel, (batch * num_q_heads,),
               partial, partial_lse, o, lse, *o.stride(), num_q_heads,
               HEAD_DIM=head_dim, NUM_SPLITS=num_splits, num_warps=cfg["combine.num_warps"],
               **backend_options(cfg))
    return o, lse
