"""linear_attention and ssd with packed sequences (cu_seqlens), grouped value heads (GVA) and the
dtypes models pass (fp32 gates with bf16 inputs, initial states of any float dtype)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from seqtune.kernels.linear_attention.op import linear_attention
from seqtune.kernels.linear_attention.reference import (varlen_linear_attention_reference,
                                                        varlen_ssd_reference)
from seqtune.kernels.linear_attention.ssd import ssd
from seqtune.launch import capture_launches
from seqtune.registry import get_spec
from seqtune.agreement import compare

LA, SSD = get_spec("linear_attention"), get_spec("ssd")
# Lengths 0 and 1, and others that no chunk size (16, 32, 64, 128) divides; 130 spans three
# chunks of 64 and two of 128.
LENGTHS = [0, 37, 1, 130, 0, 19]


def _cu(lengths: list[int]) -> torch.Tensor:
    return torch.tensor([0] + lengths).cumsum(0).to(torch.int32)


def _gate(kind: str, T: int, HV: int, K: int, gen: torch.Generator) -> torch.Tensor | None:
    if kind == "none":
        return None
    shape = (1, T, HV) if kind == "scalar" else (1, T, HV, K)
    return F.logsigmoid(torch.randn(*shape, generator=gen) + 2)  # fp32, as models compute it


def _la_case(gate: str, dtype: torch.dtype, H: int, GV: int, K: int = 24, V: int = 40,
             lengths: list[int] = LENGTHS, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    T, HV = sum(lengths), H * GV
    q, k = (torch.randn(1, T, H, K, generator=gen).to(dtype) for _ in range(2))
    v = (torch.randn(1, T, HV, V, generator=gen) * max(T, 1) ** -0.5).to(dtype)
    state = torch.randn(len(lengths), HV, K, V, generator=gen)
    return q, k, v, _gate(gate, T, HV, K, gen), state


def _alone(op, lengths, tensors: dict, state: torch.Tensor, **kwargs):
    """The op run on each sequence alone (its own call) with its own initial state."""
    bounds = _cu(lengths).tolist()
    outs, finals = [], []
    for n, (start, end) in enumerate(zip(bounds, bounds[1:])):
        sliced = {name: None if t is None else t[:, start:end] for name, t in tensors.items()}
        out, final = op(**sliced, initial_state=state[n:n + 1], output_final_state=True,
                        **kwargs)
        outs.append(out)
        finals.append(final)
    return torch.cat(outs, dim=1), torch.cat(finals)


@pytest.mark.parametrize("gate", ["none", "scalar", "channel"])
@pytest.mark.parametrize("dtype,GV,BT", [(torch.float32, 1, 16), (torch.bfloat16, 2, 64)])
def test_packed_equals_each_sequence_alone(gate, dtype, GV, BT):
    q, k, v, g, state = _la_case(gate, dtype, H=2, GV=GV)
    config = {"BT": BT}
    packed = linear_attention(q, k, v, g, initial_state=state, output_final_state=True,
                              cu_seqlens=_cu(LENGTHS), config=config)
    alone = _alone(linear_attention, LENGTHS, {"q": q, "k": k, "v": v, "g": g}, state,
                   config=config)
    # the same kernels on the same chunks: equal up to the order of fp32 accumulations
    tol = LA.tolerances["float32"]
    assert compare(packed, alone, tol).ok, compare(packed, alone, tol).detail
    expected = varlen_linear_attention_reference(q, k, v, g, initial_state=state,
                                                 cu_seqlens=_cu(LENGTHS))
    agreement = compare(packed, expected, LA.tolerances[str(dtype).removeprefix("torch.")])
    assert agreement.ok, agreement.detail
    assert packed[0].shape == v.shape and packed[1].shape == (len(LENGTHS), 2 * GV, 24, 40)


@pytest.mark.parametrize("gate", ["scalar", "channel"])
def test_gva_reads_the_key_head_of_each_value_head(gate):
    """Value head i equals a run with q/k head i // GV repeated (no repeat in the op)."""
    q, k, v, g, _ = _la_case(gate, torch.float32, H=2, GV=3, lengths=[45])
    o, final = linear_attention(q, k, v, g, output_final_state=True)
    repeated = linear_attention(q.repeat_interleave(3, 2), k.repeat_interleave(3, 2), v, g,
                                output_final_state=True)
    assert compare((o, final), repeated, LA.tolerances["float32"]).ok
    assert o.shape == (1, 45, 6, 40) and final.shape == (1, 6, 24, 40)


def test_fp32_gates_and_any_state_dtype_with_bf16_inputs():
    q, k, v, g, state = _la_case("channel", torch.bfloat16, H=1, GV=2, lengths=[7, 30])
    for state_dtype in (torch.float16, torch.bfloat16, torch.float32):
        cast = state.to(state_dtype)
        o, final = linear_attention(q, k, v, g, initial_state=cast, output_final_state=True,
                                    cu_seqlens=_cu([7, 30]))
        assert o.dtype == torch.bfloat16 and final.dtype == torch.float32
        expected = varlen_linear_attention_reference(q, k, v, g, initial_state=cast,
                                                     cu_seqlens=_cu([7, 30]))
        assert compare((o, final), expected, LA.tolerances["bfloat16"]).ok


def test_all_empty_sequences_return_the_initial_states():
    q, k, v, g, state = _la_case("scalar", torch.float32, H=1, GV=1, lengths=[0, 0])
    with capture_launches() as launched:
        o, final = linear_attention(q, k, v, g, initial_state=state, output_final_state=True,
                                    cu_seqlens=_cu([0, 0]))
    assert not launched and o.shape == (1, 0, 1, 40) and torch.equal(final, state)


@pytest.mark.parametrize("dtype,BT", [(torch.float32, 32), (torch.bfloat16, 64)])
def test_ssd_packed_equals_each_sequence_alone(dtype, BT):
    gen = torch.Generator().manual_seed(1)
    T, h, g, n, p = sum(LENGTHS), 4, 2, 16, 24
    x = torch.randn(1, T, h, p, generator=gen).to(dtype)
    B, C = (torch.randn(1, T, g, n, generator=gen).to(dtype) for _ in range(2))
    dt = torch.randn(1, T, h, generator=gen) * 0.5
    A, D = -(1 + 7 * torch.rand(h, generator=gen)), torch.randn(h, generator=gen)
    bias = torch.rand(h, generator=gen) - 2
    state = torch.randn(len(LENGTHS), h, n, p, generator=gen)
    common = {"A": A, "D": D, "dt_bias": bias, "dt_softplus": True, "config": {"BT": BT}}
    packed = ssd(x, dt, B=B, C=C, initial_state=state, output_final_state=True,
                 cu_seqlens=_cu(LENGTHS), **common)
    alone = _alone(ssd, LENGTHS, {"x": x, "dt": dt, "B": B, "C": C}, state, **common)
    assert compare(packed, alone, SSD.tolerances["float32"]).ok
    expected = varlen_ssd_reference(x, dt, A, B, C, D, bias, True, state, _cu(LENGTHS))
    agreement = compare(packed, expected, SSD.tolerances[str(dtype).removeprefix("torch.")])
    assert agreement.ok, agreement.detail


BAD_CU = [
    (torch.tensor([0, 3, 10.0]), "cu_seqlens must be int32 or int64"),
    (torch.tensor([1, 3, 10]), "cu_seqlens must start at 0"),
    (torch.tensor([0, 6, 3, 10]), r"non-decreasing, got cu_seqlens\[1\]=6 > cu_seqlens\[2\]=3"),
    (torch.tensor([0, 3, 9]), "must end at the packed length T=10"),
    (torch.tensor([[0, 10]]), r"shape \[N \+ 1\]"),
    (torch.tensor([0]), r"shape \[N \+ 1\]"),
]


@pytest.mark.parametrize("cu,message", BAD_CU, ids=lambda c: str(c)[:30])
def test_bad_cu_seqlens(cu, message):
    q, k, v, g, _ = _la_case("scalar", torch.float32, H=1, GV=1, lengths=[10])
    x, dt = torch.randn(1, 10, 2, 8), torch.rand(1, 10, 2)
    B = torch.randn(1, 10, 1, 8)
    with capture_launches() as launched:
        with pytest.raises(ValueError, match=message):
            linear_attention(q, k, v, g, cu_seqlens=cu)
        with pytest.raises(ValueError, match=message):
            ssd(x, dt, -torch.ones(2), B, B, cu_seqlens=cu)
    assert not launched


def test_bad_batch_and_value_heads():
    q, k, v, g, _ = _la_case("none", torch.float32, H=2, GV=1, lengths=[10])
    with pytest.raises(ValueError, match="batch size must be 1"):
        linear_attention(q.expand(2, -1, -1, -1), k.expand(2, -1, -1, -1),
                         v.expand(2, -1, -1, -1), cu_seqlens=_cu([10]))
    with pytest.raises(ValueError, match=r"value heads of v \(3\) must be a multiple"):
        linear_attention(q, k, torch.randn(1, 10, 3, 40))
    with pytest.raises(ValueError, match=r"initial_state must have shape \(2, 2, 24, 40\)"):
        linear_attention(q, k, v, initial_state=torch.zeros(1, 2, 24, 40),
                         cu_seqlens=_cu([4, 6]))
