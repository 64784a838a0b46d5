"""attention_decode's flash-attn features (paged caches, left padding, sliding windows,
soft-capping, ALiBi, the log-sum-exp) against the float64 reference, the reference against a plain
dense softmax, their argument checks, the device (no host read) path, and
flash_attn_with_kvcache on them."""
import math

import pytest
import torch

from host_reads import forbid_host_reads
from seqtune.compat.flash_attn import flash_attn_with_kvcache
from seqtune.kernels.attention_decode.op import attention_decode
from seqtune.kernels.attention_decode.reference import attention_decode_reference
from seqtune.launch import capture_launches, poisoned_outputs

# The reference sees the kernel's (rounded) inputs: fp32 errors are the kernel's fp32 arithmetic
# (IEEE dots, exp2, split merges: ~1e-6 relative); bf16 rounds the probabilities for the p.v dot
# and the output, half an ulp is 2**-8 ~ 4e-3 relative, summed over keys: 2e-2.
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 2e-2}
DTYPES = [torch.float32, torch.bfloat16]
# Every sequence kind at once: full, empty, one key, ragged.
LENGTHS = (75, 0, 1, 40)
ONE_SPLIT = {"NUM_SPLITS": 1, "split.BLOCK_N": 16}
TWO_SPLITS = {"NUM_SPLITS": 2, "split.BLOCK_N": 16}
FOUR_SPLITS = {"NUM_SPLITS": 4, "split.BLOCK_N": 16}


def random_case(lengths=LENGTHS, heads=6, kv_heads=2, dim=64, capacity=75, dtype=torch.float32,
                seed=0, q_scale=1.0):
    generator = torch.Generator().manual_seed(seed)
    batch = len(lengths)
    q = (torch.randn(batch, heads, dim, generator=generator) * q_scale).to(dtype)
    k_cache, v_cache = (torch.randn(batch, capacity, kv_heads, dim, generator=generator).to(dtype)
                        for _ in range(2))
    return q, k_cache, v_cache, torch.tensor(lengths, dtype=torch.int32)


def paged(cache, block_size, seed=1):
    """``cache [B, S, Hkv, D]`` as a paged cache with a shuffled block table (and spare blocks of
    garbage); the last block of each sequence is partial when ``block_size`` does not divide S."""
    batch, capacity = cache.shape[:2]
    per_sequence = -(-capacity // block_size)
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(batch * per_sequence + 3, generator=generator)
    table = order[:batch * per_sequence].reshape(batch, per_sequence).to(torch.int32)
    blocks = torch.full((order.numel(), block_size, *cache.shape[2:]), float("nan"),
                        dtype=cache.dtype)
    padded = torch.full((batch, per_sequence * block_size, *cache.shape[2:]), float("nan"),
                        dtype=cache.dtype)
    padded[:, :capacity] = cache
    blocks[table.long()] = padded.reshape(batch, per_sequence, block_size, *cache.shape[2:])
    return blocks, table


def check(q, k_cache, v_cache, lengths, config=ONE_SPLIT, **features):
    """The kernel's (o, lse) against the reference's, under poisoned outputs."""
    with poisoned_outputs():
        out, lse = attention_decode(q, k_cache, v_cache, lengths, config=config,
                                    return_lse=True, **features)
    want, want_lse = attention_decode_reference(q, k_cache, v_cache, lengths, return_lse=True,
                                                **features)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert lse.shape == q.shape[:2] and lse.dtype == torch.float32
    tolerance = TOLERANCE[q.dtype]
    torch.testing.assert_close(out.double(), want, atol=tolerance, rtol=tolerance)
    torch.testing.assert_close(lse.double(), want_lse, atol=tolerance, rtol=tolerance)
    return out, lse


def dense_scores(q, keys, scale):
    """Plain float64 scores of one sequence: ``[Hq, L]`` (GQA by repeating kv heads)."""
    group = q.shape[0] // keys.shape[1]
    keys = keys.double().repeat_interleave(group, dim=1)
    return torch.einsum("hd,lhd->hl", q.double(), keys) * scale


def test_reference_is_a_dense_softmax_and_ignores_the_page_layout():
    q, k_cache, v_cache, lengths = random_case(dtype=torch.float64)
    out, lse = attention_decode_reference(q, k_cache, v_cache, lengths, return_lse=True)
    for b, length in enumerate(LENGTHS):
        scores = dense_scores(q[b], k_cache[b, :length], 64 ** -0.5)
        values = v_cache[b, :length].repeat_interleave(3, dim=1)
        want = torch.einsum("hl,lhd->hd", torch.softmax(scores, -1), values) if length else 0
        torch.testing.assert_close(out[b], want * torch.ones_like(out[b]))
        torch.testing.assert_close(lse[b], torch.logsumexp(scores, -1) if length
                                   else torch.full((6,), math.inf, dtype=torch.float64))
    k_blocks, table = paged(k_cache, 16)
    v_blocks, _ = paged(v_cache, 16)
    torch.testing.assert_close(attention_decode_reference(q, k_blocks, v_blocks, lengths,
                                                          block_table=table), out)


def test_reference_features_are_flash_attns_formulas():
    """softcap * tanh(scale q.k / softcap) - slope |i - j| over [max(pad, i - left), i]."""
    q, k_cache, v_cache, lengths = random_case(lengths=(30,), dtype=torch.float64, q_scale=4.0)
    slopes = torch.rand(6, dtype=torch.float32)
    out, lse = attention_decode_reference(
        q, k_cache, v_cache, lengths, scale=0.3, cache_leftpad=torch.tensor([12]),
        window=(9, 0), softcap=2.5, alibi_slopes=slopes, return_lse=True)
    positions = torch.arange(20, 30)
    scores = 2.5 * torch.tanh(dense_scores(q[0], k_cache[0, positions], 0.3) / 2.5)
    scores = scores - slopes.double()[:, None] * (29 - positions).double()
    values = v_cache[0, positions].repeat_interleave(3, dim=1)
    torch.testing.assert_close(out[0], torch.einsum("hl,lhd->hd", scores.softmax(-1), values))
    torch.testing.assert_close(lse[0], torch.logsumexp(scores, -1))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("block_size", [16, 32])
def test_paged_cache_with_shuffled_blocks_and_partial_last_block(dtype, block_size):
    q, k_cache, v_cache, lengths = random_case(dtype=dtype)
    k_blocks, table = paged(k_cache, block_size)
    v_blocks, _ = paged(v_cache, block_size)
    out, lse = check(q, k_blocks, v_blocks, lengths, block_table=table)
    contiguous, _ = check(q, k_cache, v_cache, lengths)
    torch.testing.assert_close(out, contiguous, atol=0, rtol=0)  # the layout changes no sum
    strided, _ = check(q, k_blocks, v_blocks, lengths, block_table=table.t().contiguous().t())
    torch.testing.assert_close(strided, out, atol=0, rtol=0)
    assert out[1].abs().max() == 0 and torch.isinf(lse[1]).all()  # length 0: flash-attn's +inf


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_left_padding_and_window_alone_and_with_paging(dtype):
    q, k_cache, v_cache, lengths = random_case(dtype=dtype)
    pads = torch.tensor([3, 0, 1, 39], dtype=torch.int32)  # the 3rd and 4th see no key / one key
    check(q, k_cache, v_cache, lengths, cache_leftpad=pads)
    check(q, k_cache, v_cache, lengths, window=(20, -1))
    check(q, k_cache, v_cache, lengths, window=(0, 0))  # only the query's own key
    k_blocks, table = paged(k_cache, 16)
    v_blocks, _ = paged(v_cache, 16)
    check(q, k_blocks, v_blocks, lengths, block_table=table, cache_leftpad=pads, window=(33, 5))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_softcap_and_alibi(dtype):
    # Large queries: the scores reach ~40, far into the cap of 5 (tanh saturates, no overflow).
    q, k_cache, v_cache, lengths = random_case(dtype=dtype, q_scale=40.0)
    check(q, k_cache, v_cache, lengths, softcap=5.0)
    generator = torch.Generator().manual_seed(3)
    check(q, k_cache, v_cache, lengths, alibi_slopes=torch.rand(6, generator=generator))
    check(q, k_cache, v_cache, lengths, alibi_slopes=torch.rand(4, 6, generator=generator),
          softcap=30.0)


def test_lse_is_the_log_sum_exp_of_the_scaled_capped_biased_scores():
    q, k_cache, v_cache, lengths = random_case(lengths=(37, 1), q_scale=3.0)
    slopes = torch.rand(2, 6)
    _, lse = attention_decode(q, k_cache, v_cache, lengths, scale=0.2, softcap=4.0,
                              alibi_slopes=slopes, return_lse=True, config=FOUR_SPLITS)
    for b, length in enumerate((37, 1)):
        scores = 4.0 * torch.tanh(dense_scores(q[b], k_cache[b, :length], 0.2) / 4.0)
        scores -= slopes[b].double()[:, None] * torch.arange(length - 1, -1, -1).double()
        torch.testing.assert_close(lse[b].double(), torch.logsumexp(scores, -1), rtol=1e-5,
                                   atol=1e-5)


def test_length_one_returns_its_value_and_length_zero_zeros():
    q, k_cache, v_cache, lengths = random_case(lengths=(1, 0, 1))
    out, lse = attention_decode(q, k_cache, v_cache, lengths, return_lse=True)
    torch.testing.assert_close(out[0], v_cache[0, 0].repeat_interleave(3, dim=0))
    assert out[1].abs().max() == 0 and torch.isinf(lse[1]).all() and (lse[1] > 0).all()
    everything_padded = torch.tensor([1, 0, 1], dtype=torch.int32)
    with capture_launches() as recorded:
        out, lse = attention_decode(q, k_cache, v_cache, lengths, cache_leftpad=everything_padded,
                                    return_lse=True)
    assert not recorded and out.abs().max() == 0 and torch.isinf(lse).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(6, 2, 64), (5, 1, 32)], ids=["gqa-d64", "odd-heads-d32"])
def test_splits_with_every_feature_combined(dtype, shape):
    heads, kv_heads, dim = shape
    q, k_cache, v_cache, lengths = random_case(heads=heads, kv_heads=kv_heads, dim=dim,
                                               dtype=dtype, q_scale=8.0)
    k_blocks, table = paged(k_cache, 32)
    v_blocks, _ = paged(v_cache, 32)
    check(q, k_blocks, v_blocks, lengths, config=FOUR_SPLITS, block_table=table,
          cache_leftpad=torch.tensor([2, 0, 0, 5], dtype=torch.int32), window=(50, 0),
          softcap=6.0, alibi_slopes=torch.rand(4, heads), scale=0.1)


def test_window_sizes_the_problem_by_its_keys_not_the_cache():
    """On the CPU the tuned problem's S is the most keys a sequence sees: a window of 10 keys is
    a problem of S=11, too short for 4 splits of 32 keys (the kernel walks only the window)."""
    q, k_cache, v_cache, lengths = random_case()
    with pytest.raises(ValueError, match="padded to 16"):
        attention_decode(q, k_cache, v_cache, lengths, window=(10, 0),
                         config={"NUM_SPLITS": 4, "split.BLOCK_N": 32})


def test_device_path_reads_nothing_on_the_host_and_agrees():
    q, k_cache, v_cache, lengths = random_case(lengths=(40, 0, 9), dim=16, capacity=40)
    k_blocks, table = paged(k_cache, 16)
    v_blocks, _ = paged(v_cache, 16)
    features = dict(block_table=table, cache_leftpad=torch.tensor([1, 0, 2], dtype=torch.int32),
                    window=(30, 0), softcap=3.0, alibi_slopes=torch.rand(6), return_lse=True,
                    config=TWO_SPLITS)
    want = attention_decode(q, k_blocks, v_blocks, lengths, **features)
    with forbid_host_reads():
        got = attention_decode(q, k_blocks, v_blocks, lengths, **features)
        with pytest.raises(RuntimeError, match="cache_leftpad must lie in"):
            attention_decode(q, k_blocks, v_blocks, lengths, block_table=table,
                             cache_leftpad=torch.tensor([41, 0, 0], dtype=torch.int32))
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)


def test_compiled_call_with_features_equals_eager():
    q, k_cache, v_cache, lengths = random_case(lengths=(20, 3), dim=16, capacity=32)
    k_blocks, table = paged(k_cache, 16)
    v_blocks, _ = paged(v_cache, 16)

    def fn(q, k, v, lengths, table, slopes):
        return attention_decode(q, k, v, lengths, block_table=table, window=(8, 0), softcap=2.0,
                                alibi_slopes=slopes, return_lse=True)

    args = (q, k_blocks, v_blocks, lengths, table, torch.rand(6))
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")(*args)
    torch.testing.assert_close(compiled, fn(*args))


def _bad(**changes):
    q, k_cache, v_cache, lengths = random_case(lengths=(20, 3), dim=16, capacity=32)
    k_blocks, table = paged(k_cache, 16)
    arguments = dict(q=q, k_cache=k_blocks, v_cache=k_blocks.clone(), cache_seqlens=lengths,
                     block_table=table)
    return {**arguments, **changes}


BAD = {
    "table-dtype": (_bad(block_table=torch.zeros(2, 2, dtype=torch.int64)), TypeError,
                    "block_table has dtype int64"),
    "table-shape": (_bad(block_table=torch.zeros(3, 2, dtype=torch.int32)), ValueError,
                    r"block_table must have shape \(2, 2\), got \(3, 2\)"),
    "block-size": (_bad(k_cache=torch.zeros(4, 24, 2, 16), v_cache=torch.zeros(4, 24, 2, 16)),
                   ValueError, "block size 24"),
    "block-index": (_bad(block_table=torch.tensor([[0, 1], [9, 0]], dtype=torch.int32)),
                    ValueError, r"block_table must hold block indices in \[0, 7\) .*b=1"),
    "leftpad": (_bad(cache_leftpad=torch.tensor([0, 4], dtype=torch.int32)), ValueError,
                r"cache_leftpad must lie in \[0, cache_seqlens\[b\]\], got 4 for sequence b=1"),
    "seqlens": (_bad(cache_seqlens=torch.tensor([33, 3], dtype=torch.int32)), ValueError,
                r"cache_seqlens must lie in \[0, S_max=32\]"),
    "window": (_bad(window=(-2, 0)), ValueError, r"window must be \(left, right\), two ints >= -1 "
               r".*got \(-2, 0\)"),
    "softcap": (_bad(softcap=-1.0), ValueError, "softcap must be a finite real >= 0.*-1.0"),
    "alibi-shape": (_bad(alibi_slopes=torch.ones(3)), ValueError,
                    r"alibi_slopes must have shape \(6,\) or \(2, 6\), got \(3,\)"),
    "alibi-dtype": (_bad(alibi_slopes=torch.ones(6, dtype=torch.float64)), TypeError,
                    "alibi_slopes has dtype float64"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_feature_arguments_raise_one_line_errors_before_launch(name):
    arguments, error, pattern = BAD[name]
    with capture_launches() as recorded, pytest.raises(error, match=pattern) as raised:
        attention_decode(**arguments)
    assert not recorded and "\n" not in str(raised.value)


# --- flash_attn_with_kvcache ------------------------------------------------------------------


def test_kvcache_appends_into_paged_blocks_and_attends():
    """New k/v land in the blocks the table names (also across a block boundary); one query per
    sequence decodes on attention_decode, several on the packed kernel."""
    q, k_cache, v_cache, lengths = random_case(lengths=(31, 5, 0), dim=32, capacity=40)
    k_blocks, table = paged(k_cache, 16)
    v_blocks, _ = paged(v_cache, 16)
    generator = torch.Generator().manual_seed(5)
    new_k, new_v = (torch.randn(3, 2, 2, 32, generator=generator) for _ in range(2))
    out = flash_attn_with_kvcache(q[:, None], k_blocks, v_blocks, new_k[:, :1], new_v[:, :1],
                                  cache_seqlens=lengths, block_table=table)
    k_cache[torch.arange(3), lengths.long()] = new_k[:, 0]
    v_cache[torch.arange(3), lengths.long()] = new_v[:, 0]
    want = attention_decode_reference(q, k_cache, v_cache, lengths + 1)
    torch.testing.assert_close(out[:, 0].double(), want, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(attention_decode_reference(q, k_blocks, v_blocks, lengths + 1,
                                                          block_table=table), want)
    # Two queries each, appended after the first: causal, bottom-right aligned.
    queries = torch.randn(3, 2, 6, 32, generator=generator)
    out = flash_attn_with_kvcache(queries, k_blocks, v_blocks, new_k[:, 1:], new_v[:, 1:],
                                  cache_seqlens=lengths + 1, block_table=table, causal=True,
                                  cache_leftpad=torch.tensor([3, 0, 0], dtype=torch.int32))
    k_cache[torch.arange(3), lengths.long() + 1] = new_k[:, 1]
    v_cache[torch.arange(3), lengths.long() + 1] = new_v[:, 1]
    for t in range(2):  # query t sees the keys up to position lengths + t
        want = attention_decode_reference(queries[:, t], k_cache, v_cache, lengths + 1 + t,
                                          cache_leftpad=torch.tensor([3, 0, 0]))
        torch.testing.assert_close(out[:, t].double(), want, atol=1e-4, rtol=1e-4)


def test_kvcache_one_query_takes_every_feature_and_returns_lse():
    q, k_cache, v_cache, lengths = random_case(lengths=(30, 0), dim=32, capacity=32, q_scale=5.0)
    k_blocks, table = paged(k_cache, 32)
    v_blocks, _ = paged(v_cache, 32)
    features = dict(cache_leftpad=torch.tensor([4, 0], dtype=torch.int32), softcap=3.0,
                    alibi_slopes=torch.rand(2, 6))
    out, lse = flash_attn_with_kvcache(q[:, None], k_blocks, v_blocks, cache_seqlens=lengths,
                                       block_table=table, window_size=(12, 0),
                                       return_softmax_lse=True, **features)
    want, want_lse = attention_decode_reference(q, k_cache, v_cache, lengths, window=(12, 0),
                                                return_lse=True, **features)
    assert out.shape == (2, 1, 6, 32) and lse.shape == (2, 6, 1)
    torch.testing.assert_close(out[:, 0].double(), want, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(lse[..., 0].double(), want_lse, atol=1e-4, rtol=1e-4)


def test_kvcache_several_queries_take_every_feature_and_return_lse():
    """Several queries run on the packed attention kernel: query t (causal, bottom-right
    aligned) is a decode over the first ``lengths - Tq + t + 1`` keys, with the same window,
    cap, slopes and left pad."""
    _, k_cache, v_cache, lengths = random_case(lengths=(30, 3), dim=32, capacity=32)
    queries = 5.0 * torch.randn(2, 3, 6, 32, generator=torch.Generator().manual_seed(7))
    k_blocks, table = paged(k_cache, 16)
    v_blocks, _ = paged(v_cache, 16)
    features = dict(cache_leftpad=torch.tensor([4, 0], dtype=torch.int32), softcap=3.0,
                    alibi_slopes=torch.rand(2, 6))
    out, lse = flash_attn_with_kvcache(queries, k_blocks, v_blocks, cache_seqlens=lengths,
                                       block_table=table, causal=True, window_size=(12, 0),
                                       return_softmax_lse=True, **features)
    assert out.shape == (2, 3, 6, 32) and lse.shape == (2, 6, 3)
    for t in range(3):
        want, want_lse = attention_decode_reference(queries[:, t], k_cache, v_cache,
                                                    lengths - 2 + t, window=(12, 0),
                                                    return_lse=True, **features)
        torch.testing.assert_close(out[:, t].double(), want, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(lse[..., t].double(), want_lse, atol=1e-4, rtol=1e-4)
