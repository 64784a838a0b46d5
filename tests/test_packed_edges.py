"""The edge cases of a packed batch behave alike in the five packed ops.

``cu_seqlens = [0]`` (no sequence at all) is refused by every op with a one-line ValueError, as
fla's ops (whose states are ``[N, ...]`` per sequence) and flash-attn's varlen kernels (batch
size ``len(cu_seqlens) - 1`` must be positive) do. Sequences that are all empty
(``cu_seqlens = [0, 0]``, T = 0) are a batch like any other: an empty output and, per sequence,
the final state equal to its initial state.
"""
from __future__ import annotations

import pytest
import torch

from seqtune.kernels import attention, causal_conv1d, delta_rule, linear_attention, ssd
from seqtune.kernels.varlen import chunk_bound, chunk_tables


def _inputs(T: int) -> dict[str, dict[str, torch.Tensor]]:
    """Per op, tensors of total length T (heads and widths small and odd)."""
    def zeros(*shape):
        return torch.zeros(*shape)

    return {
        "attention": {"q": zeros(1, T, 2, 16), "k": zeros(1, T, 1, 16), "v": zeros(1, T, 1, 24)},
        "linear_attention": {"q": zeros(1, T, 1, 16), "k": zeros(1, T, 1, 16),
                             "v": zeros(1, T, 1, 24)},
        "ssd": {"x": zeros(1, T, 2, 8), "dt": zeros(1, T, 2), "A": -torch.ones(2),
                "B": zeros(1, T, 1, 16), "C": zeros(1, T, 1, 16)},
        "delta_rule": {"q": zeros(1, T, 1, 16), "k": zeros(1, T, 1, 16), "v": zeros(1, T, 1, 24),
                       "beta": zeros(1, T, 1)},
        "causal_conv1d": {"x": zeros(1, T, 8), "weight": zeros(8, 3)},
    }


OPS = {"attention": attention, "linear_attention": linear_attention, "ssd": ssd,
       "delta_rule": delta_rule, "causal_conv1d": causal_conv1d}
STATES = {"linear_attention": (1, 16, 24), "ssd": (2, 16, 8), "delta_rule": (1, 16, 24),
          "causal_conv1d": (8, 2)}


@pytest.mark.parametrize("op", sorted(OPS))
@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
def test_no_sequence_at_all_is_refused(op, dtype):
    with pytest.raises(ValueError, match=r"cu_seqlens must .*N \+ 1") as error:
        OPS[op](**_inputs(0)[op], cu_seqlens=torch.zeros(1, dtype=dtype))
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("op", sorted(OPS))
def test_only_empty_sequences_give_empty_outputs_and_unchanged_states(op):
    inputs = _inputs(0)[op]
    cu_seqlens = torch.zeros(3, dtype=torch.int32)
    if op == "attention":
        out = OPS[op](**inputs, cu_seqlens=cu_seqlens)
        assert out.shape == (1, 0, 2, 24)
        return
    initial = torch.randn(2, *STATES[op])
    out, final = OPS[op](**inputs, cu_seqlens=cu_seqlens, initial_state=initial,
                         output_final_state=True)
    assert out.shape[:2] == (1, 0)
    torch.testing.assert_close(final, initial.to(final.dtype), rtol=0, atol=0)


@pytest.mark.parametrize("op", sorted(OPS))
def test_offsets_on_another_device_are_refused_before_any_read(op):
    with pytest.raises(ValueError, match="cu_seqlens .*on meta") as error:
        OPS[op](**_inputs(5)[op], cu_seqlens=torch.tensor([0, 2, 5], device="meta"))
    assert "\n" not in str(error.value)


def test_chunk_table_lists_every_chunk_then_spare_rows_past_the_end():
    """Empty sequences have no chunk; the bound from shapes, (26 + 5 * 3) // 4 = 10 rows, leaves
    two spare rows, which name the chunk after the last sequence's last one."""
    cu = torch.tensor([0, 0, 5, 5, 21, 26])
    bound = chunk_bound(26, 5, 4)
    table, offsets = chunk_tables(cu, 4, bound)
    assert bound == 10 and offsets.tolist() == [0, 0, 2, 2, 6, 8]
    assert table.tolist() == [[1, 0], [1, 1], [3, 0], [3, 1], [3, 2], [3, 3], [4, 0], [4, 1],
                              [4, 2], [4, 2]]
    assert chunk_bound(26, 5, 4, max_seqlen=16) == 10 and chunk_bound(26, 5, 4, 4) == 5
