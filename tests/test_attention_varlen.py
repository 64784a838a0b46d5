"""attention on packed sequences (cu_seqlens, cu_seqlens_k), padded head dims and Dv != D,
against running each sequence alone and against the float64 reference (Triton interpreter)."""
from __future__ import annotations

import pytest
import torch

from seqtune.agreement import compare
from seqtune.kernels.attention.op import attention, problem_of
from seqtune.kernels.attention.reference import attention_reference
from seqtune.kernels.attention.varlen import key_lengths, sequence_lengths
from seqtune.launch import capture_launches
from seqtune.loader import _normalise, problem_distance
from seqtune.registry import get_spec
from seqtune.spec import Tolerance

SPEC = get_spec("attention")
SMALL_TILES = {"BLOCK_M": 16, "BLOCK_N": 16}
# Lengths with an empty sequence, a single row and ones that straddle 16-row tiles.
QUERY_LENGTHS = [0, 1, 17, 5, 22]
KEY_LENGTHS = [3, 0, 9, 26, 1]


def _offsets(lengths: list[int], dtype=torch.int32) -> torch.Tensor:
    return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=dtype)


def _packed(query_lengths, key_lengths, Hq=4, Hkv=2, D=16, Dv=16, dtype=torch.float32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    total_q, total_k = sum(query_lengths), sum(key_lengths)
    q = torch.randn(1, total_q, Hq, D, generator=generator).to(dtype)
    k = torch.randn(1, total_k, Hkv, D, generator=generator).to(dtype)
    v = torch.randn(1, total_k, Hkv, Dv, generator=generator).to(dtype)
    return q, k, v


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("score", ["softmax", "sigmoid"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
def test_packed_keys_equal_each_sequence_alone(causal, score, dtype):
    """With cu_seqlens_k (keys per sequence differ from queries in both directions, a sequence
    with keys but no query and one with a query but no key) every sequence's rows are what
    the op gives for that sequence alone: attention never crosses a boundary."""
    q, k, v = _packed(QUERY_LENGTHS, KEY_LENGTHS, dtype=dtype)
    cu_q, cu_k = _offsets(QUERY_LENGTHS), _offsets(KEY_LENGTHS)
    out = attention(q, k, v, causal=causal, score=score, cu_seqlens=cu_q, cu_seqlens_k=cu_k,
                    config=SMALL_TILES)
    assert out.shape == (1, sum(QUERY_LENGTHS), 4, 16) and out.dtype == dtype
    tolerance = SPEC.tolerances[str(dtype).removeprefix("torch.")]
    for n in range(len(QUERY_LENGTHS)):
        rows, keys = slice(cu_q[n], cu_q[n + 1]), slice(cu_k[n], cu_k[n + 1])
        alone = attention_reference(q[:, rows], k[:, keys], v[:, keys], causal=causal,
                                    score=score)
        assert compare((out[:, rows],), (alone,), tolerance).ok, f"sequence {n}"
        if rows.stop - rows.start and keys.stop - keys.start:
            own = attention(q[:, rows], k[:, keys], v[:, keys], causal=causal, score=score,
                            config=SMALL_TILES)
            assert compare((out[:, rows],), (own.double(),), tolerance).ok, f"sequence {n}"
    blind = slice(cu_q[1], cu_q[2])  # one query row, no key
    assert torch.equal(out[:, blind], torch.zeros_like(out[:, blind]))


@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_shared_packing_agrees_with_the_reference(index_dtype):
    lengths = sequence_lengths(45, 5)
    q, k, v = _packed(lengths, lengths, Hq=3, Hkv=1, D=32, Dv=32, seed=1)
    cu = _offsets(lengths, index_dtype)
    out = attention(q, k, v, causal=True, cu_seqlens=cu)
    expected = attention_reference(q, k, v, causal=True, cu_seqlens=cu)
    assert compare((out,), (expected,), Tolerance(atol=1e-5, rtol=1e-5)).ok


def test_strided_offsets_read_like_contiguous_ones():
    q, k, v = _packed(QUERY_LENGTHS, KEY_LENGTHS)
    cu_q, cu_k = _offsets(QUERY_LENGTHS, torch.int64), _offsets(KEY_LENGTHS, torch.int64)
    spaced = torch.zeros(2 * cu_q.numel(), dtype=torch.int64)
    spaced[::2] = cu_q
    out = attention(q, k, v, causal=True, cu_seqlens=spaced[::2], cu_seqlens_k=cu_k)
    assert torch.equal(out, attention(q, k, v, causal=True, cu_seqlens=cu_q, cu_seqlens_k=cu_k))


def test_only_empty_sequences_launch_nothing():
    q, k, v = _packed([0, 0], [0, 0])
    with capture_launches() as launches:
        out = attention(q, k, v, cu_seqlens=_offsets([0, 0]))
    assert launches == [] and out.shape == (1, 0, 4, 16)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("D, Dv", [(1, 1), (3, 5), (80, 80), (96, 64), (192, 128)])
def test_head_dims_are_padded_internally(D, Dv, dtype):
    """Any head dim 1..256 and a value head dim of its own (MLA: 192 for q/k, 128 for v)."""
    generator = torch.Generator().manual_seed(D)
    q = torch.randn(1, 21, 2, D, generator=generator).to(dtype)
    k = torch.randn(1, 19, 1, D, generator=generator).to(dtype)
    v = torch.randn(1, 19, 1, Dv, generator=generator).to(dtype)
    out = attention(q, k, v, causal=True, config=SMALL_TILES)
    assert out.shape == (1, 21, 2, Dv) and out.dtype == dtype
    expected = attention_reference(q, k, v, causal=True)
    tolerance = SPEC.tolerances[str(dtype).removeprefix("torch.")]
    assert compare((out,), (expected,), tolerance).ok


def _bad_packings():
    q, k, v = _packed(QUERY_LENGTHS, KEY_LENGTHS)
    same_q, same_k, same_v = _packed(QUERY_LENGTHS, QUERY_LENGTHS)
    cu_q, cu_k = _offsets(QUERY_LENGTHS), _offsets(KEY_LENGTHS)
    total = int(cu_q[-1])
    return {
        "float offsets": ((same_q, same_k, same_v), {"cu_seqlens": cu_q.float()},
                          "cu_seqlens must be int32 or int64, got float32"),
        "not a tensor": ((same_q, same_k, same_v), {"cu_seqlens": [0, total]},
                         "cu_seqlens must be a torch.Tensor"),
        "2-D": ((same_q, same_k, same_v), {"cu_seqlens": cu_q[None]},
                r"cu_seqlens must have shape \[N \+ 1\]"),
        "not from 0": ((same_q, same_k, same_v), {"cu_seqlens": cu_q + 1},
                       r"cu_seqlens must start at 0, got cu_seqlens\[0\]=1"),
        "decreasing": ((same_q, same_k, same_v),
                       {"cu_seqlens": torch.tensor([0, 20, 10, total], dtype=torch.int32)},
                       r"non-decreasing, got cu_seqlens\[1\]=20 > cu_seqlens\[2\]=10"),
        "short end": ((same_q, same_k, same_v), {"cu_seqlens": cu_q[:-1]},
                      f"cu_seqlens must end at T={total}"),
        "batch 2": ((same_q.expand(2, -1, -1, -1), same_k.expand(2, -1, -1, -1),
                     same_v.expand(2, -1, -1, -1)), {"cu_seqlens": cu_q},
                    "batch 1 .* got batch 2"),
        "N mismatch": ((q, k, v), {"cu_seqlens": cu_q, "cu_seqlens_k": cu_k[:-1]},
                       "cu_seqlens_k must end at S|N=4 != N=5"),
        "k N mismatch": ((q, k, v), {"cu_seqlens": cu_q,
                                     "cu_seqlens_k": torch.tensor([0, 0, int(cu_k[-1])])},
                         "N=2 != N=5"),
        "keys without offsets": ((q, k, v), {"cu_seqlens": cu_q}, "pass cu_seqlens_k"),
        "k offsets alone": ((same_q, same_k, same_v), {"cu_seqlens_k": cu_q},
                            "cu_seqlens_k requires cu_seqlens"),
        "k offsets end": ((q, k, v), {"cu_seqlens": cu_q, "cu_seqlens_k": cu_q},
                          "cu_seqlens_k must end at S="),
    }


BAD_PACKINGS = _bad_packings()


@pytest.mark.parametrize("name", list(BAD_PACKINGS))
def test_bad_packing_raises_one_line_before_launch(name):
    args, kwargs, message = BAD_PACKINGS[name]
    with capture_launches() as launches, pytest.raises(ValueError, match=message) as raised:
        attention(*args, **kwargs)
    assert launches == []
    assert "\n" not in str(raised.value)


def test_old_profile_entries_match_the_same_dense_problems_only():
    """Entries tuned before N, varlen and Dv existed keep matching dense problems with
    Dv == D, and never a packed or Dv != D problem."""
    old_entry = _normalise(SPEC, {"B": 4, "T": 4096, "S": 4096, "Hq": 32, "Hkv": 8, "D": 128,
                                  "causal": True, "dtype": "bfloat16", "score": "softmax"})
    q = torch.empty(2, 3000, 32, 128, device="meta", dtype=torch.bfloat16)
    k = torch.empty(2, 3000, 8, 128, device="meta", dtype=torch.bfloat16)
    dense = _normalise(SPEC, problem_of(q, k, k, True, "softmax"))
    assert "Dv" not in dense and dense["N"] == 1 and dense["varlen"] is False
    assert problem_distance(SPEC, old_entry, dense) is not None
    mla = _normalise(SPEC, problem_of(q, k, k[..., :64], True, "softmax"))
    assert mla["Dv"] == 64 and problem_distance(SPEC, old_entry, mla) is None
    packed = _normalise(SPEC, {**dense, "B": 1, "N": 8, "varlen": True})
    assert problem_distance(SPEC, old_entry, packed) is None


def test_packed_problems_bucket_the_total_and_the_count_not_the_mix():
    a = SPEC.bucket({**SPEC.presets["tiny"][4], "T": 3000, "S": 3000, "N": 5})
    b = SPEC.bucket({**SPEC.presets["tiny"][4], "T": 4000, "S": 4000, "N": 7})
    assert a == b


@pytest.mark.parametrize("total, count", [(45, 5), (64, 4), (7, 3), (2, 6), (10, 1), (0, 3)])
def test_length_mixes_cover_the_edge_cases(total, count):
    for lengths in (sequence_lengths(total, count), key_lengths(total, count)):
        assert len(lengths) == count and sum(lengths) == total and min(lengths) >= 0
        if count >= 3 and total >= 1:
            assert 0 in lengths and 1 in lengths
