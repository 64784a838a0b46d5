"""flash_attn_varlen_func with a paged key/value prefix (``block_table``, chunked prefill):
against the same function on the contiguous keys and against the float64 reference."""
from __future__ import annotations

import math

import pytest
import torch

from seqtune import checks
from seqtune.compat.flash_attn import flash_attn_varlen_func
from seqtune.kernels.attention.reference import attention_reference
from test_compat_flash_attn import TOLERANCE

# Sequence 0 is a chunk of 7 queries over a 37-key prefix (chunked prefill, T_q < T_k); no
# length is a multiple of a block size, so every last block is partial.
QUERY_LENGTHS, KEY_LENGTHS = [7, 1, 19], [37, 13, 19]
Q_HEADS, KV_HEADS, DIM = 4, 2, 40
SPARE_BLOCKS = 3


def offsets(lengths):
    return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)


def packed_inputs(dtype, seed=0):
    """q [total_q, Hq, D], k and v [total_k, Hkv, D], cu_seqlens_q, cu_seqlens_k."""
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(sum(QUERY_LENGTHS), Q_HEADS, DIM, generator=generator).to(dtype)
    k, v = (torch.randn(sum(KEY_LENGTHS), KV_HEADS, DIM, generator=generator).to(dtype)
            for _ in range(2))
    return q, k, v, offsets(QUERY_LENGTHS), offsets(KEY_LENGTHS)


def block_count(block_size):
    """The pool's blocks: each sequence's, plus SPARE_BLOCKS."""
    return sum(math.ceil(n / block_size) for n in KEY_LENGTHS) + SPARE_BLOCKS


def block_table(block_size, seed=1):
    """int32 [N, max_blocks + 1]: each sequence's blocks drawn from a shuffled pool with
    SPARE_BLOCKS left over; the extra column names a spare block (padding, never read)."""
    counts = [math.ceil(n / block_size) for n in KEY_LENGTHS]
    order = torch.randperm(block_count(block_size), generator=torch.Generator().manual_seed(seed))
    table = torch.full((len(counts), max(counts) + 1), int(order[-1]), dtype=torch.int32)
    first = 0
    for row, count in enumerate(counts):
        table[row, :count] = order[first:first + count]
        first += count
    return table


def page(packed, table, block_size, fill):
    """packed [total_k, Hkv, D] laid out in the blocks ``table`` names; ``fill`` everywhere
    else (the spare blocks and the tail of each partial last block)."""
    cache = torch.full((block_count(block_size), block_size, *packed.shape[1:]), fill,
                       dtype=packed.dtype)
    starts = offsets(KEY_LENGTHS).tolist()
    for row, (start, length) in enumerate(zip(starts, KEY_LENGTHS)):
        for position in range(length):
            block = table[row, position // block_size]
            cache[block, position % block_size] = packed[start + position]
    return cache


def paged(k, v, block_size):
    """NaN-filled paged k and v (NaN anywhere read would show in the output) and their table."""
    table = block_table(block_size)
    return page(k, table, block_size, math.nan), page(v, table, block_size, math.nan), table


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("block_size", [16, 32])
@pytest.mark.parametrize("host_reads", [True, False])
def test_paged_prefix_equals_contiguous_keys_and_reference(dtype, block_size, host_reads,
                                                           monkeypatch):
    # host_reads=False takes a GPU's path (no host-side page checks) on the CPU.
    monkeypatch.setattr(checks, "host_reads_allowed", lambda tensor: host_reads)
    q, k, v, cu_q, cu_k = packed_inputs(dtype)
    k_paged, v_paged, table = paged(k, v, block_size)
    out = flash_attn_varlen_func(q, k_paged, v_paged, cu_q, cu_k, max(QUERY_LENGTHS),
                                 max(KEY_LENGTHS), causal=True, block_table=table)
    assert out.shape == q.shape and out.dtype == dtype
    contiguous = flash_attn_varlen_func(q, k, v, cu_q, cu_k, max(QUERY_LENGTHS),
                                        max(KEY_LENGTHS), causal=True)
    torch.testing.assert_close(out, contiguous, atol=0, rtol=0)
    expected = attention_reference(q[None], k[None], v[None], causal=True, cu_seqlens=cu_q,
                                   cu_seqlens_k=cu_k)[0]
    torch.testing.assert_close(out.double(), expected, atol=TOLERANCE[dtype],
                               rtol=TOLERANCE[dtype])


def test_paged_prefix_with_window_returns_the_contiguous_lse():
    q, k, v, cu_q, cu_k = packed_inputs(torch.float32, seed=2)
    k_paged, v_paged, table = paged(k, v, 16)
    arguments = dict(causal=True, window_size=(9, 0), return_attn_probs=True)
    out, lse, probs = flash_attn_varlen_func(q, k_paged, v_paged, cu_q, cu_k, 19, 37,
                                             block_table=table, **arguments)
    want_out, want_lse, _ = flash_attn_varlen_func(q, k, v, cu_q, cu_k, 19, 37, **arguments)
    assert probs is None and lse.shape == (Q_HEADS, sum(QUERY_LENGTHS))
    torch.testing.assert_close(out, want_out, atol=0, rtol=0)
    torch.testing.assert_close(lse, want_lse, atol=0, rtol=0)
    expected = attention_reference(q[None], k[None], v[None], causal=True, cu_seqlens=cu_q,
                                   cu_seqlens_k=cu_k, window=(9, 0))[0]
    torch.testing.assert_close(out.double(), expected, atol=TOLERANCE[torch.float32],
                               rtol=TOLERANCE[torch.float32])


def test_gradients_reach_q_and_the_paged_cache():
    q, k, v, cu_q, cu_k = packed_inputs(torch.float32, seed=3)
    table = block_table(16)
    # Zero-filled here: unused slots must get zero gradient, and NaN would poison the sum.
    k_paged, v_paged = (page(t, table, 16, 0.0).requires_grad_() for t in (k, v))
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    weights = torch.randn(q.shape, generator=torch.Generator().manual_seed(4))
    out = flash_attn_varlen_func(leaves[0], k_paged, v_paged, cu_q, cu_k, 19, 37, causal=True,
                                 block_table=table)
    grads = torch.autograd.grad((out * weights).sum(), (leaves[0], k_paged, v_paged))
    contiguous = flash_attn_varlen_func(*leaves, cu_q, cu_k, 19, 37, causal=True)
    want = torch.autograd.grad((contiguous * weights).sum(), leaves)
    torch.testing.assert_close(grads[0], want[0], atol=1e-5, rtol=1e-5)
    for grad, contiguous_grad in zip(grads[1:], want[1:]):
        torch.testing.assert_close(grad, page(contiguous_grad, table, 16, 0.0), atol=1e-5,
                                   rtol=1e-5)


@pytest.mark.parametrize("change, error, message", [
    (lambda t: t.long(), TypeError, "block_table has dtype int64"),
    (lambda t: t[:2], ValueError, r"block_table must have shape \(3, "),
    (lambda t: t[0], ValueError, "block_table must have 2 dimensions"),
    (lambda t: t[:, :1], ValueError, "sequence of 37 keys but block_table holds 1 blocks"),
    (lambda t: t.masked_fill(t == t[0, 0], 99), ValueError, r"blocks in \[0, 9\)"),
])
def test_bad_block_tables_give_one_line_errors(change, error, message):
    q, k, v, cu_q, cu_k = packed_inputs(torch.float32)
    k_paged, v_paged, table = paged(k, v, 16)
    with pytest.raises(error, match=message) as raised:
        flash_attn_varlen_func(q, k_paged, v_paged, cu_q, cu_k, 19, 37, block_table=change(table))
    assert "\n" not in str(raised.value)
