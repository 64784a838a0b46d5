"""seqtune.compat.flash_attn against an independent float64 softmax attention written here
(flash-attn itself needs CUDA and is not installed on the CPU)."""
from __future__ import annotations

import inspect

import pytest
import torch

from seqtune.compat import flash_attn
from seqtune.compat.flash_attn import (flash_attn_func, flash_attn_varlen_func,
                                       flash_attn_with_kvcache)

# Outputs are convex combinations of values ~N(0, 1): fp32 kernels agree to ~1e-6 (2e-4 leaves
# room for exp2 and accumulation order); bf16 inputs are rounded to 8 mantissa bits (~4e-3
# relative) in q, k, v and in the scores fed to the second product, so errors reach ~1e-2.
TOLERANCE = {torch.float32: 2e-4, torch.bfloat16: 4e-2}


def naive_attention(q, k, v, causal, scale=None):
    """[T, Hq, Dv] float64 of one sequence; bottom-right aligned causal mask; rows seeing no
    key are zero (flash-attn's convention)."""
    q, k, v = (t.double() for t in (q, k, v))
    queries, heads, dim = q.shape
    keys = k.shape[0]
    group = heads // k.shape[1]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    scores = torch.einsum("thd,shd->hts", q, k) * (dim ** -0.5 if scale is None else scale)
    visible = torch.ones(queries, keys, dtype=torch.bool)
    if causal:
        visible = (torch.arange(keys)[None, :]
                   <= torch.arange(queries)[:, None] + keys - queries)
    scores = scores.masked_fill(~visible, float("-inf"))
    weights = torch.softmax(scores, -1).nan_to_num(0.0)
    return torch.einsum("hts,shd->thd", weights, v)


def assert_close(actual, expected, dtype):
    torch.testing.assert_close(actual.double(), expected, atol=TOLERANCE[dtype],
                               rtol=TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("causal", [False, True])
def test_flash_attn_func_matches_naive_attention(dtype, causal):
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(2, 37, 4, 40, generator=generator).to(dtype)
    k = torch.randn(2, 45, 2, 40, generator=generator).to(dtype)
    v = torch.randn(2, 45, 2, 40, generator=generator).to(dtype)
    out = flash_attn_func(q, k, v, 0.0, 0.3, causal)
    assert out.shape == (2, 37, 4, 40) and out.dtype == dtype
    for b in range(2):
        assert_close(out[b], naive_attention(q[b], k[b], v[b], causal, 0.3), dtype)


def test_flash_attn_func_gradients_match_float64_autograd():
    generator = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 13, 2, 16, generator=generator, requires_grad=True)
               for _ in range(3))
    out = flash_attn_func(q, k, v, causal=True)
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    expected = naive_attention(*(t[0] for t in leaves), causal=True)
    expected_grads = torch.autograd.grad(expected.square().sum(), leaves)
    for grad, want in zip(grads, expected_grads):
        torch.testing.assert_close(grad.double(), want, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_flash_attn_varlen_func_attends_within_each_sequence(dtype):
    generator = torch.Generator().manual_seed(2)
    query_lengths, key_lengths = [0, 1, 9, 27], [3, 0, 20, 22]
    q = torch.randn(sum(query_lengths), 4, 32, generator=generator).to(dtype)
    k = torch.randn(sum(key_lengths), 1, 32, generator=generator).to(dtype)
    v = torch.randn(sum(key_lengths), 1, 24, generator=generator).to(dtype)
    cu_q = torch.tensor([0, 0, 1, 10, 37], dtype=torch.int32)
    cu_k = torch.tensor([0, 3, 3, 23, 45], dtype=torch.int32)
    out = flash_attn_varlen_func(q, k, v, cu_q, cu_k, 27, 22, causal=True)
    assert out.shape == (37, 4, 24) and out.dtype == dtype
    for n in range(4):
        rows, cols = slice(cu_q[n], cu_q[n + 1]), slice(cu_k[n], cu_k[n + 1])
        assert_close(out[rows], naive_attention(q[rows], k[cols], v[cols], True), dtype)


def _cache(generator, rows=5, capacity=24, heads=2, dim=32, dtype=torch.float32):
    k_cache = torch.randn(rows, capacity, heads, dim, generator=generator).to(dtype)
    v_cache = torch.randn(rows, capacity, heads, dim, generator=generator).to(dtype)
    return k_cache, v_cache


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("dim", [32, 40])  # 40: not a decode head dim, packed kernel instead
def test_kvcache_appends_into_shuffled_rows_and_attends(dtype, dim):
    generator = torch.Generator().manual_seed(3)
    k_cache, v_cache = _cache(generator, dim=dim, dtype=dtype)
    before_k, before_v = k_cache.clone(), v_cache.clone()
    q = torch.randn(3, 1, 4, dim, generator=generator).to(dtype)
    k_new = torch.randn(3, 1, 2, dim, generator=generator).to(dtype)
    v_new = torch.randn(3, 1, 2, dim, generator=generator).to(dtype)
    rows = torch.tensor([4, 0, 2], dtype=torch.int32)
    lengths = torch.tensor([7, 0, 23], dtype=torch.int32)
    out = flash_attn_with_kvcache(q, k_cache, v_cache, k_new, v_new, cache_seqlens=lengths,
                                  cache_batch_idx=rows)
    assert out.shape == (3, 1, 4, dim) and out.dtype == dtype
    for b, (row, length) in enumerate(zip(rows.tolist(), lengths.tolist())):
        assert torch.equal(k_cache[row, length], k_new[b, 0])
        assert torch.equal(v_cache[row, length], v_new[b, 0])
        assert torch.equal(k_cache[row, :length], before_k[row, :length])
        expected = naive_attention(q[b], k_cache[row, :length + 1], v_cache[row, :length + 1],
                                   causal=True)
        assert_close(out[b], expected, dtype)
    untouched = [1, 3]
    assert torch.equal(k_cache[untouched], before_k[untouched])
    assert torch.equal(v_cache[untouched], before_v[untouched])


def test_kvcache_several_queries_are_causal_bottom_right():
    generator = torch.Generator().manual_seed(4)
    k_cache, v_cache = _cache(generator)
    q = torch.randn(2, 3, 2, 32, generator=generator)
    out = flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=5, causal=True,
                                  softmax_scale=0.2)
    for b in range(2):
        expected = naive_attention(q[b], k_cache[b, :5], v_cache[b, :5], True, 0.2)
        assert_close(out[b], expected, torch.float32)


def test_kvcache_decoding_token_by_token_equals_causal_attention():
    generator = torch.Generator().manual_seed(5)
    q = torch.randn(2, 7, 4, 16, generator=generator)
    k = torch.randn(2, 7, 2, 16, generator=generator)
    v = torch.randn(2, 7, 2, 16, generator=generator)
    k_cache = torch.zeros(2, 9, 2, 16)
    v_cache = torch.zeros(2, 9, 2, 16)
    steps = []
    for t in range(7):
        lengths = torch.full((2,), t, dtype=torch.int32)
        steps.append(flash_attn_with_kvcache(q[:, t:t + 1], k_cache, v_cache, k[:, t:t + 1],
                                             v[:, t:t + 1], cache_seqlens=lengths))
    full = flash_attn_func(q, k, v, causal=True)
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("call, argument", [
    (lambda q: flash_attn_func(q, q, q, dropout_p=0.1), "dropout_p"),
    (lambda q: flash_attn_with_kvcache(q, q, q, rotary_cos=torch.ones(5, 8)), "rotary_cos"),
])
def test_unsupported_arguments_are_refused_by_name(call, argument):
    q = torch.randn(1, 5, 2, 16)
    with pytest.raises(NotImplementedError, match=argument) as error:
        call(q)
    assert "\n" not in str(error.value)


def test_bad_cache_arguments_give_one_line_errors():
    k_cache = torch.zeros(2, 4, 1, 16)
    q = torch.randn(2, 1, 1, 16)
    new = torch.randn(2, 1, 1, 16)
    cases = [
        (dict(cache_seqlens=torch.tensor([4, 1], dtype=torch.int32), k=new, v=new),
         "overflows the cache"),
        (dict(cache_seqlens=torch.tensor([5, 1], dtype=torch.int32)), "cache_seqlens"),
        (dict(cache_batch_idx=torch.tensor([0, 2], dtype=torch.int32)), "cache_batch_idx"),
        (dict(k=new), "k and v"),
        (dict(cache_seqlens=1, k=new.double(), v=new.double()), "mixed dtypes"),
    ]
    for kwargs, message in cases:
        with pytest.raises((ValueError, TypeError), match=message) as error:
            flash_attn_with_kvcache(q, k_cache, k_cache.clone(), **kwargs)
        assert "\n" not in str(error.value)


# The originals' signatures, as flash-attn 2.8 defines them (flash_attn/flash_attn_interface.py):
# same names, order and defaults.
ORIGINAL_SIGNATURES = {
    "flash_attn_func":
        "(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1), "
        "softcap=0.0, alibi_slopes=None, deterministic=False, return_attn_probs=False)",
    "flash_attn_varlen_func":
        "(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0, "
        "softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0, "
        "alibi_slopes=None, deterministic=False, return_attn_probs=False, block_table=None)",
    "flash_attn_with_kvcache":
        "(q, k_cache, v_cache, k=None, v=None, rotary_cos=None, rotary_sin=None, "
        "cache_seqlens=None, cache_batch_idx=None, cache_leftpad=None, block_table=None, "
        "softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0, "
        "rotary_interleaved=True, alibi_slopes=None, num_splits=0, return_softmax_lse=False)",
}


@pytest.mark.parametrize("name", sorted(ORIGINAL_SIGNATURES))
def test_signature_is_the_originals(name):
    assert str(inspect.signature(getattr(flash_attn, name))) == ORIGINAL_SIGNATURES[name]
