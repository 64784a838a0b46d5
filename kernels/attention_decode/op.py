"""``attention_decode``: one new query token per sequence against a padded KV cache (GQA),
split-KV (flash-decoding) on Triton."""
from __future__ import annotations

import math
from typing import Any, Mapping

import torch
import triton
import triton.language as tl

from seqtune import checks
from seqtune.checks import (expect_float, expect_same_device, expect_same_dtype, expect_shape,
                            expect_tensor)
from seqtune.custom_ops import encode_config, expect_tensors
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
                     config: Mapping[str, Any] | None = None) -> torch.Tensor:
    """Attention of one new token per sequence over its KV cache.

    Args:
        q: ``[B, Hq, D]``, the new tokens' queries.
        k_cache, v_cache: ``[B, S_max, Hkv, D]`` with ``Hq % Hkv == 0`` (query head ``h`` reads
            kv head ``h // (Hq // Hkv)``); any strides.
        cache_seqlens: int32 ``[B]`` on q's device: sequence ``b`` attends to cache positions
            ``< cache_seqlens[b]``, which must lie in ``[0, S_max]``. A sequence of length 0
            gets a zero output. On the CPU the range is checked on the host; on a GPU by a
            device-side assert, with no host read, so a decode step can be captured in a CUDA
            graph.
        scale: the softmax scale, ``D ** -0.5`` by default.
        config: a (partial) config of the ``attention_decode`` spec; None takes the tuned one
            for the problem ``{B, Hq, Hkv, D, S, dtype}``: S is ``max(cache_seqlens)`` on the
            CPU, and the cache's capacity ``S_max`` on a GPU (known without a host read).

    D is a power of two in 16..256; q and the caches share one dtype: float32, float16 or
    bfloat16. Bad arguments raise ValueError/TypeError before any launch.

    Returns:
        ``o`` ``[B, Hq, D]`` in q's dtype.
    """
    expect_tensors({"q": q, "k_cache": k_cache, "v_cache": v_cache,
                    "cache_seqlens": cache_seqlens})
    _check_scale(scale)
    return torch.ops.seqtune.attention_decode(q, k_cache, v_cache, cache_seqlens,
                                              None if scale is None else float(scale),
                                              encode_config("config", config))


def attention_decode_forward(q, k_cache, v_cache, cache_seqlens, scale, config) -> torch.Tensor:
    """The op's implementation (``torch.ops.seqtune.attention_decode``): checks, config,
    launches."""
    batch, num_q_heads, num_kv_heads, head_dim = _check_arguments(q, k_cache, v_cache,
                                                                  cache_seqlens, scale)
    max_len = _max_cache_length(cache_seqlens, k_cache.shape[1])
    if batch == 0 or num_q_heads == 0 or max_len == 0:
        return torch.zeros(q.shape, dtype=q.dtype, device=q.device)
    problem = {"B": batch, "Hq": num_q_heads, "Hkv": num_kv_heads, "D": head_dim, "S": max_len,
               "dtype": dtype_name(q.dtype)}
    cfg = config_for(KERNEL_NAME, problem, config)
    scale = head_dim ** -0.5 if scale is None else float(scale)
    return _launch_stages(q, k_cache, v_cache, cache_seqlens.contiguous(), scale, cfg)


def _check_arguments(q, k_cache, v_cache, cache_seqlens, scale) -> tuple[int, int, int, int]:
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
    expect_shape("k_cache", k_cache, (batch, k_cache.shape[1], num_kv_heads, head_dim))
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


def _max_cache_length(cache_seqlens: torch.Tensor, capacity: int) -> int:
    """The longest cache to attend to, after checking every length lies in ``[0, S_max]``:
    max(cache_seqlens) where host reads are allowed; elsewhere the capacity, the lengths checked
    by a device-side assert (no sync)."""
    if cache_seqlens.numel() == 0:
        return 0
    if not checks.host_reads_allowed(cache_seqlens):
        in_range = ((cache_seqlens >= 0) & (cache_seqlens <= capacity)).all()
        torch._assert_async(in_range, f"cache_seqlens must lie in [0, S_max={capacity}]")
        return capacity
    low, high = (int(x) for x in torch.aminmax(cache_seqlens))
    if low < 0 or high > capacity:
        raise ValueError(f"cache_seqlens must lie in [0, S_max={capacity}], got values in "
                         f"[{low}, {high}]")
    return high


TRITON_DTYPES = {torch.float32: tl.float32, torch.float16: tl.float16,
                 torch.bfloat16: tl.bfloat16}


def _dot_dtype(dtype: torch.dtype) -> tl.dtype:
    """The inputs' dtype, or float32 for bfloat16 under the interpreter (see the split kernel)."""
    if dtype == torch.bfloat16 and triton.knobs.runtime.interpret:
        return tl.float32
    return TRITON_DTYPES[dtype]


def _launch_stages(q, k_cache, v_cache, cache_seqlens, scale: float, cfg: dict) -> torch.Tensor:
    """The split stage into fp32 scratch, then the combine stage into ``o`` (or, with one
    split, the split stage straight into ``o``)."""
    batch, num_q_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[2]
    num_splits = cfg["NUM_SPLITS"]
    o = new_output(q.shape, q.dtype, q.device)
    if num_splits == 1:
        partial, lse = o, o  # the split stage writes o directly; lse is not touched
        partial_strides = (o.stride(0), o.stride(1), 0, o.stride(2))
    else:
        partial = new_output((batch, num_q_heads, num_splits, head_dim), torch.float32, q.device)
        lse = new_output((batch, num_q_heads, num_splits), torch.float32, q.device)
        partial_strides = partial.stride()
    launch(decode_split_kernel, (batch * num_kv_heads, num_splits),
           q, k_cache, v_cache, cache_seqlens, partial, lse,
           *q.stride(), *k_cache.stride(), *v_cache.stride(), *partial_strides,
           scale * math.log2(math.e), num_kv_heads, num_q_heads // num_kv_heads,
           HEAD_DIM=head_dim, BLOCK_G=group_rows(num_q_heads, num_kv_heads),
           BLOCK_N=cfg["split.BLOCK_N"], NUM_SPLITS=num_splits,
           DOT_DTYPE=_dot_dtype(q.dtype),
           num_warps=cfg["split.num_warps"], num_stages=cfg["split.num_stages"],
           **backend_options(cfg))
    if num_splits > 1:
        launch(decode_combine_kernel, (batch * num_q_heads,),
               partial, lse, o, *o.stride(), num_q_heads,
               HEAD_DIM=head_dim, NUM_SPLITS=num_splits, num_warps=cfg["combine.num_warps"],
               **backend_options(cfg))
    return o
