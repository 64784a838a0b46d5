"""delta_rule with packed sequences (cu_seqlens), grouped value heads, float32 gates with
half-precision inputs, initial states of any float dtype and 16-wide heads.

Packed runs must equal running each sequence alone with its own initial state (the same
kernels on the same chunks, so to the last bit) and the float64 recurrence run per sequence.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from seqtune.kernels import delta_rule
from seqtune.kernels.delta_rule import stages as delta_stages
from seqtune.kernels.delta_rule.reference import delta_rule_reference
from seqtune.registry import get_spec
from seqtune.agreement import compare

SPEC = get_spec("delta_rule")
# lengths 0 and 1, and none a multiple of any chunk size (16, 32, 64)
LENGTHS = (37, 0, 1, 70, 5)


def packed_inputs(lengths=LENGTHS, heads=2, group=2, key_dim=32, value_dim=24, gate="scalar",
                  dtype=torch.float32, gate_dtype=torch.float32, seed=0):
    """Packed q, k [1, T, H, K], v [1, T, HV, V], beta, g (``gate_dtype``), per-sequence
    initial states [N, HV, K, V] and cu_seqlens."""
    generator = torch.Generator().manual_seed(seed)
    total, value_heads = sum(lengths), heads * group

    def randn(*shape):
        return torch.randn(*shape, generator=generator)

    q = F.normalize(randn(1, total, heads, key_dim), dim=-1).to(dtype)
    k = F.normalize(randn(1, total, heads, key_dim), dim=-1).to(dtype)
    v = randn(1, total, value_heads, value_dim).to(dtype)
    beta = torch.sigmoid(randn(1, total, value_heads)).to(gate_dtype)
    gate_shape = {"none": None, "scalar": (1, total, value_heads),
                  "channel": (1, total, value_heads, key_dim)}[gate]
    g = None if gate_shape is None else F.logsigmoid(randn(*gate_shape) + 2).to(gate_dtype)
    state = randn(len(lengths), value_heads, key_dim, value_dim)
    bounds = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    return q, k, v, beta, g, state, bounds


def _alone(q, k, v, beta, g, state, bounds, config=None):
    """Each sequence on its own through the op, outputs concatenated and states stacked."""
    outs, finals = [], []
    for n in range(len(bounds) - 1):
        steps = slice(int(bounds[n]), int(bounds[n + 1]))
        out, final = delta_rule(q[:, steps], k[:, steps], v[:, steps], beta[:, steps],
                                None if g is None else g[:, steps],
                                initial_state=state[n:n + 1], output_final_state=True,
                                config=config)
        outs.append(out)
        finals.append(final)
    return torch.cat(outs, dim=1), torch.cat(finals)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("gate", ["none", "scalar", "channel"])
def test_packed_equals_each_sequence_alone_and_the_reference(gate, dtype):
    q, k, v, beta, g, state, bounds = packed_inputs(gate=gate, dtype=dtype)
    packed = delta_rule(q, k, v, beta, g, initial_state=state, output_final_state=True,
                        cu_seqlens=bounds)
    assert packed[0].shape == (1, sum(LENGTHS), 4, 24) and packed[0].dtype == dtype
    assert packed[1].shape == (5, 4, 32, 24) and packed[1].dtype == torch.float32
    alone = _alone(q, k, v, beta, g, state, bounds)
    for have, want in zip(packed, alone):
        torch.testing.assert_close(have, want, rtol=0, atol=0)
    reference = delta_rule_reference(q, k, v, beta, g, initial_state=state, cu_seqlens=bounds)
    agreement = compare(packed, reference, SPEC.tolerances[str(dtype).removeprefix("torch.")])
    assert agreement.ok, agreement.detail


@pytest.mark.parametrize("chunk", [16, 64])
def test_packed_with_other_chunk_sizes(chunk):
    q, k, v, beta, g, state, bounds = packed_inputs(gate="channel", group=1, seed=1)
    packed = delta_rule(q, k, v, beta, g, initial_state=state, output_final_state=True,
                        cu_seqlens=bounds, config={"BT": chunk})
    alone = _alone(q, k, v, beta, g, state, bounds, config={"BT": chunk})
    for have, want in zip(packed, alone):
        torch.testing.assert_close(have, want, rtol=0, atol=0)


def test_grouped_value_heads_equal_repeated_keys():
    """Value head i reads key head i // (HV / H): the same as q and k repeated per group."""
    q, k, v, beta, g, state, _ = packed_inputs(lengths=(45,), heads=2, group=3, gate="channel")
    grouped = delta_rule(q, k, v, beta, g, initial_state=state, output_final_state=True)
    repeated = delta_rule(q.repeat_interleave(3, dim=2), k.repeat_interleave(3, dim=2), v, beta,
                          g, initial_state=state, output_final_state=True)
    for have, want in zip(grouped, repeated):
        torch.testing.assert_close(have, want, rtol=0, atol=0)


def test_float32_gates_and_a_bfloat16_state_with_bfloat16_inputs():
    """The models' dtypes: bf16 q, k, v; fp32 beta and g (their cumulative sums keep fp32
    precision); a bf16 initial state used in fp32."""
    q, k, v, beta, g, state, _ = packed_inputs(lengths=(45,), gate="scalar",
                                               dtype=torch.bfloat16, gate_dtype=torch.float32)
    state = state.to(torch.bfloat16)
    outputs = delta_rule(q, k, v, beta, g, initial_state=state, output_final_state=True)
    assert outputs[0].dtype == torch.bfloat16 and outputs[1].dtype == torch.float32
    reference = delta_rule_reference(q, k, v, beta, g, initial_state=state)
    agreement = compare(outputs, reference, SPEC.tolerances["bfloat16"])
    assert agreement.ok, agreement.detail


@pytest.mark.parametrize("gate", ["none", "channel"])
def test_sixteen_wide_heads(gate):
    q, k, v, beta, g, state, bounds = packed_inputs(key_dim=16, value_dim=16, gate=gate)
    outputs = delta_rule(q, k, v, beta, g, initial_state=state, output_final_state=True,
                         cu_seqlens=bounds)
    reference = delta_rule_reference(q, k, v, beta, g, initial_state=state, cu_seqlens=bounds)
    agreement = compare(outputs, reference, SPEC.tolerances["float32"])
    assert agreement.ok, agreement.detail


def test_all_sequences_empty_returns_the_initial_states_without_launching(monkeypatch):
    monkeypatch.setattr(delta_stages, "launch", _refuse_launch)
    q, k, v, beta, g, state, bounds = packed_inputs(lengths=(0, 0))
    out, final = delta_rule(q, k, v, beta, g, initial_state=state, output_final_state=True,
                            cu_seqlens=bounds)
    assert out.shape == (1, 0, 4, 24)
    assert torch.equal(final, state)


def _refuse_launch(*args, **kwargs):
    raise AssertionError("a kernel was launched")


def _good():
    return packed_inputs(lengths=(3, 0, 4))


BAD_CU_SEQLENS = [
    ("float", lambda b: b.float(), "cu_seqlens must be int32 or int64, got float32"),
    ("2-d", lambda b: b[None], "cu_seqlens must be 1-D"),
    ("one-entry", lambda b: b[:1], "cu_seqlens must be 1-D with N + 1 >= 2 entries"),
    ("start", lambda b: b + 1, "cu_seqlens must start at 0, got 1"),
    ("decreasing", lambda b: torch.tensor([0, 3, 2, 7], dtype=torch.int32),
     "cu_seqlens must be non-decreasing, got 3 then 2 at index 2"),
    ("end", lambda b: torch.tensor([0, 3, 3, 6], dtype=torch.int64),
     "cu_seqlens must end at the packed length T=7, got 6"),
]


@pytest.mark.parametrize("change, message", [c[1:] for c in BAD_CU_SEQLENS],
                         ids=[c[0] for c in BAD_CU_SEQLENS])
def test_bad_cu_seqlens_raise_one_line_errors_before_launching(monkeypatch, change, message):
    monkeypatch.setattr(delta_stages, "launch", _refuse_launch)
    q, k, v, beta, g, state, bounds = _good()
    with pytest.raises(ValueError) as caught:
        delta_rule(q, k, v, beta, g, initial_state=state, cu_seqlens=change(bounds))
    assert message in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("case", ["batch", "states"])
def test_packed_batch_and_state_count_are_checked(monkeypatch, case):
    monkeypatch.setattr(delta_stages, "launch", _refuse_launch)
    q, k, v, beta, g, state, bounds = _good()
    if case == "batch":
        q, k, v, beta, g = (torch.cat([x, x]) for x in (q, k, v, beta, g))
        message = "cu_seqlens needs packed inputs of batch 1, got batch 2"
    else:
        state = state[:2]
        message = "initial_state must have shape (3, 4, 32, 24)"
    with pytest.raises(ValueError) as caught:
        delta_rule(q, k, v, beta, g, initial_state=state, cu_seqlens=bounds)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_profiles_from_before_packed_batches_still_match(tmp_path):
    """An entry without GV, N and varlen means one value head per key head and a plain batch:
    the loader matches it for such a problem and not for a packed one."""
    import yaml

    import seqtune
    from seqtune.registry import source_hash

    old_problem = {"B": 4, "T": 2048, "H": 16, "K": 128, "V": 128, "gate": "scalar",
                   "initial_state": False, "dtype": "bfloat16"}
    config = {**SPEC.default_config, "BT": 64}
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump({
        "schema": "seqtune-profile/1", "device": {"key": "cpu-interpreter"},
        "software": {"triton": __import__("triton").__version__},
        "kernels": {"delta_rule": {"source_hash": source_hash("delta_rule"),
                                   "entries": [{"problem": old_problem, "config": config}]}}}))
    seqtune.load_profile(path)
    assert seqtune.best_config("delta_rule", **old_problem, GV=1, N=1, varlen=False) == config
    packed = {**old_problem, "B": 1, "T": 8192, "GV": 1, "N": 4, "varlen": True}
    assert seqtune.best_config("delta_rule", **packed) == SPEC.default_config
