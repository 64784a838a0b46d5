"""No host read while a packed op (forward and backward) or attention_decode runs: each op's
device path, taken on CPU tensors under ``forbid_host_reads()``, reads no tensor value on the
host and gives what its host path gives; its device-side checks still refuse bad offsets.
"""
from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

from host_reads import SEQTUNE_SOURCES, HostRead, forbid_host_reads
from seqtune.checks import expect_tensor
from seqtune.kernels import (attention, attention_decode, causal_conv1d, delta_rule,
                             linear_attention, ssd)
from seqtune.kernels.attention.op import prepare

LENGTHS = [5, 0, 21]  # an empty sequence, none a multiple of a chunk
LONGEST = max(LENGTHS)
T = sum(LENGTHS)
CU = torch.tensor([0, 5, 5, 26], dtype=torch.int32)


def _randn(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _attention_case():
    q, k, v = (_randn(1, T, heads, 16, seed=i) for i, heads in enumerate((2, 1, 1)))
    cu_k = torch.tensor([0, 7, 9, 26], dtype=torch.int64)
    run = functools.partial(attention, causal=True, cu_seqlens=CU, cu_seqlens_k=cu_k)
    return run, {"q": q, "k": k, "v": v}, {"max_seqlen": LONGEST, "max_seqlen_k": 17}


def _linear_attention_case(gate):
    q, k = (_randn(1, T, 1, 16, seed=i) for i in range(2))
    v = _randn(1, T, 1, 24, seed=2) * 0.3
    shape = {"none": None, "scalar": (1, T, 1), "channel": (1, T, 1, 16)}[gate]
    tensors = {"q": q, "k": k, "v": v, "initial_state": _randn(3, 1, 16, 24, seed=4)}
    if shape is not None:
        tensors["g"] = F.logsigmoid(_randn(*shape, seed=3) + 2)
    run = functools.partial(linear_attention, output_final_state=True, cu_seqlens=CU,
                            config={"BT": 16}, bwd_config={"BT": 16})
    return run, tensors, {"max_seqlen": LONGEST}


def _ssd_case():
    tensors = {"x": _randn(1, T, 2, 16, seed=0), "dt": _randn(1, T, 2, seed=1),
               "A": -torch.rand(2, generator=torch.Generator().manual_seed(2)) - 0.5,
               "B": _randn(1, T, 1, 16, seed=3), "C": _randn(1, T, 1, 16, seed=4),
               "initial_state": _randn(3, 2, 16, 16, seed=5)}
    run = functools.partial(ssd, dt_softplus=True, output_final_state=True, cu_seqlens=CU,
                            config={"BT": 16}, bwd_config={"BT": 16})
    return run, tensors, {"max_seqlen": LONGEST}


def _delta_rule_case():
    q, k = (F.normalize(_randn(1, T, 1, 16, seed=i), dim=-1) for i in range(2))
    tensors = {"q": q, "k": k, "v": _randn(1, T, 1, 16, seed=2),
               "beta": torch.sigmoid(_randn(1, T, 1, seed=3)),
               "g": F.logsigmoid(_randn(1, T, 1, 16, seed=4) + 2),
               "initial_state": _randn(3, 1, 16, 16, seed=5)}
    run = functools.partial(delta_rule, output_final_state=True, cu_seqlens=CU,
                            config={"BT": 16}, bwd_config={"BT": 16})
    return run, tensors, {"max_seqlen": LONGEST}


def _causal_conv1d_case():
    tensors = {"x": _randn(1, T, 8, seed=0), "weight": _randn(8, 4, seed=1),
               "bias": _randn(8, seed=2), "initial_state": _randn(3, 8, 3, seed=3)}
    run = functools.partial(causal_conv1d, activation="silu", output_final_state=True,
                            cu_seqlens=CU)
    return run, tensors, {}


CASES = {"attention": _attention_case,
         "linear_attention-none": lambda: _linear_attention_case("none"),
         "linear_attention-scalar": lambda: _linear_attention_case("scalar"),
         "linear_attention-channel": lambda: _linear_attention_case("channel"),
         "ssd": _ssd_case, "delta_rule": _delta_rule_case, "causal_conv1d": _causal_conv1d_case}


def _forward_backward(run, tensors, **kwargs):
    """The outputs and the gradients of every input of sum(outputs * fixed weights)."""
    leaves = {name: t.clone().requires_grad_() for name, t in tensors.items()}
    outputs = run(**leaves, **kwargs)
    outputs = [o for o in (outputs if isinstance(outputs, tuple) else (outputs,))
               if o is not None]
    loss = sum((o * _randn(*o.shape, seed=9)).sum() for o in outputs)
    grads = torch.autograd.grad(loss, list(leaves.values()))
    return [o.detach() for o in outputs] + list(grads)


@pytest.mark.parametrize("case", sorted(CASES))
def test_packed_op_reads_nothing_on_the_host(case):
    run, tensors, bounds = CASES[case]()
    expected = _forward_backward(run, tensors)
    with forbid_host_reads():
        got = _forward_backward(run, tensors)
        tightened = _forward_backward(run, tensors, **bounds) if bounds else got
    for want, have, tight in zip(expected, got, tightened):
        torch.testing.assert_close(have, want, rtol=0, atol=0)
        torch.testing.assert_close(tight, want, rtol=0, atol=0)


def _decode_inputs(lengths=(0, 9, 4)):
    q = _randn(3, 2, 16, seed=0)
    k_cache, v_cache = (_randn(3, 9, 1, 16, seed=i) for i in (1, 2))
    return q, k_cache, v_cache, torch.tensor(lengths, dtype=torch.int32)


def test_attention_decode_reads_nothing_on_the_host():
    inputs = _decode_inputs()
    expected = attention_decode(*inputs)
    with forbid_host_reads():
        got = attention_decode(*inputs)
    torch.testing.assert_close(got, expected, rtol=2e-6, atol=2e-6)
    assert got[0].abs().max() == 0  # an empty cache still outputs zeros


def test_the_helper_catches_host_reads_but_not_shapes():
    q, k, v = _attention_case()[1].values()
    with forbid_host_reads(device_path=False), pytest.raises(HostRead, match="tolist"):
        attention(q, q, q, cu_seqlens=CU)  # the CPU path reads the offsets on the host
    with forbid_host_reads():
        expect_tensor("q", q, 4)  # shapes, strides and dims are no read
        assert torch.tensor([3]).item() == 3  # nor is a read outside seqtune


READS = ["t[0].item()", "t.tolist()", "int(t[0])", "bool(t[0])", "float(t[1])", "f'{t[0]}'",
         "t.cpu()", "t.numpy()", "torch.nonzero(t)", "t.unique()", "torch.equal(t, t)",
         "torch.repeat_interleave(t, t)", "t.repeat_interleave(t)", "range(t[0])",
         "t[t > 1]", "t.__setitem__(t > 1, 0)"]
NOT_READS = ["t.shape[0]", "len(t)", "t.numel()", "int(t.shape[0])", "t + 1", "t.to(torch.int64)",
             "t[1:]", "t[t - 1]", "torch.where(t > 1, t, 0)",
             "torch.repeat_interleave(t, t, output_size=3)", "torch.repeat_interleave(t, 2)"]


def _as_seqtune_code(expression: str):
    """``expression`` compiled as if it were a line of seqtune's source."""
    return compile(expression, SEQTUNE_SOURCES[0] + "pretend.py", "eval")


@pytest.mark.parametrize("expression", READS)
def test_every_kind_of_host_read_from_seqtune_trips_the_helper(expression):
    t = torch.tensor([1, 2])
    with forbid_host_reads(), pytest.raises(HostRead):
        eval(_as_seqtune_code(expression), {"t": t, "torch": torch})
    eval(_as_seqtune_code(expression), {"t": t, "torch": torch})  # outside it: allowed


@pytest.mark.parametrize("expression", NOT_READS)
def test_shapes_and_device_work_do_not_trip_the_helper(expression):
    with forbid_host_reads():
        eval(_as_seqtune_code(expression), {"t": torch.tensor([1, 2]), "torch": torch})


BAD_CU = torch.tensor([0, 9, 5, 26], dtype=torch.int32)
BAD_CALLS = {
    "attention": lambda: attention(*(_randn(1, T, 1, 16, seed=0),) * 3, cu_seqlens=BAD_CU),
    "linear_attention": lambda: linear_attention(*(_randn(1, T, 1, 16, seed=0),) * 3,
                                                 cu_seqlens=BAD_CU),
    "ssd": lambda: ssd(**dict(_ssd_case()[1], initial_state=None), cu_seqlens=BAD_CU),
    "delta_rule": lambda: delta_rule(**dict(_delta_rule_case()[1], initial_state=None),
                                     cu_seqlens=BAD_CU),
    "causal_conv1d": lambda: causal_conv1d(_randn(1, T, 8, seed=0), _randn(8, 4, seed=1),
                                           cu_seqlens=BAD_CU),
}


@pytest.mark.parametrize("op", sorted(BAD_CALLS))
def test_device_path_checks_offsets_on_the_device(op):
    with forbid_host_reads(), pytest.raises(RuntimeError, match="cu_seqlens must be "
                                                                "non-decreasing"):
        BAD_CALLS[op]()
    with pytest.raises(ValueError, match="cu_seqlens must"):  # the host path, as before
        BAD_CALLS[op]()


def test_device_path_checks_cache_lengths_and_max_seqlen():
    q, k_cache, v_cache, _ = _decode_inputs()
    too_long = torch.tensor([0, 10, 4], dtype=torch.int32)
    with forbid_host_reads(), pytest.raises(RuntimeError, match=r"cache_seqlens must lie in"):
        attention_decode(q, k_cache, v_cache, too_long)
    x = _randn(1, T, 1, 16, seed=0)
    with forbid_host_reads(), pytest.raises(RuntimeError, match="max_seqlen=20 is less"):
        linear_attention(x, x, x, cu_seqlens=CU, max_seqlen=20)
    with pytest.raises(ValueError, match=r"max_seqlen=20 is less .*cu_seqlens \(21\)"):
        attention(x, x, x, cu_seqlens=CU, max_seqlen=20)
    with pytest.raises(ValueError, match="max_seqlen .* only to packed"):
        delta_rule(**dict(_delta_rule_case()[1], initial_state=None), max_seqlen=4)


def test_max_seqlen_shrinks_the_grid():
    """Four sequences of 2 in tiles of 4: shapes bound the tiles by (8 + 4 * 3) // 4 = 5, the
    spare row naming a tile past the last sequence's end; max_seqlen=2 bounds them by 4."""
    x = _randn(1, 8, 1, 16, seed=0)
    cu = torch.tensor([0, 2, 4, 6, 8])
    loose = prepare(x, x, x, cu_seqlens=cu).packing.tiles(4)
    tight = prepare(x, x, x, cu_seqlens=cu, max_seqlen=2).packing.tiles(4)
    assert loose.tolist() == [[0, 0], [1, 0], [2, 0], [3, 0], [3, 1]]
    assert tight.tolist() == [[0, 0], [1, 0], [2, 0], [3, 0]]
