"""delta_rule_step: token by token it equals the chunkwise delta_rule (outputs and final state)
from the same initial state, on a shuffled state pool too, with grouped value heads and every
gate kind; its verify cases and tile settings agree with the float64 recurrence."""
from __future__ import annotations

import pytest
import torch

from seqtune.kernels.delta_rule import step as step_module
from seqtune.kernels.delta_rule.op import delta_rule
from seqtune.kernels.delta_rule.reference import delta_rule_reference
from seqtune.kernels.delta_rule.step import delta_rule_step
from seqtune.registry import get_spec
from seqtune.spec import INTERPRETER_LIMITS
from seqtune.agreement import check_case, compare
from test_delta_rule_varlen import packed_inputs

SPEC = get_spec("delta_rule_step")
CHUNKED = get_spec("delta_rule")


def _label(problem):
    return (f"{problem['gate']}-{problem['dtype']}-K{problem['K']}-V{problem['V']}"
            f"-GV{problem['GV']}{'-pool' if problem['indexed'] else ''}")


@pytest.mark.parametrize("problem", SPEC.verify_cases, ids=_label)
def test_verify_cases_agree(problem):
    agreement = check_case(SPEC, problem, SPEC.default_for(problem, INTERPRETER_LIMITS))
    assert agreement.ok, agreement.detail


@pytest.mark.parametrize("tiles", [{"BK": 16, "BV": 16}, {"BK": 64, "BV": 64}],
                         ids=["three-passes", "one-pass"])
def test_tile_settings_agree(tiles):
    """K = 48 in 16-wide tiles: the prediction pass, then the update pass, over three tiles;
    in one 64-wide tile: one pass, the last 16 rows masked."""
    problem = SPEC.verify_cases[2]
    config = SPEC.validate_config(tiles)
    assert SPEC.check(config, problem, INTERPRETER_LIMITS) is None
    agreement = check_case(SPEC, problem, config)
    assert agreement.ok, agreement.detail


def _batched(lengths, **kwargs):
    """B sequences of one length as a [B, T] batch (from the packed helper's tensors)."""
    q, k, v, beta, g, state, _ = packed_inputs(lengths=lengths, **kwargs)
    batch, length = len(lengths), lengths[0]

    def split(x):
        return None if x is None else x.reshape(batch, length, *x.shape[2:])

    return (*(split(x) for x in (q, k, v, beta, g)), state)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("gate", ["none", "scalar", "channel"])
def test_token_by_token_equals_the_chunkwise_op(gate, dtype):
    q, k, v, beta, g, state = _batched((7, 7, 7), gate=gate, dtype=dtype, group=2)
    pool = state.clone()
    outs = []
    for t in range(q.shape[1]):
        outs.append(delta_rule_step(q[:, t], k[:, t], v[:, t], beta[:, t],
                                    None if g is None else g[:, t], state=pool))
    stepped = (torch.stack(outs, dim=1), pool)
    chunked = delta_rule(q, k, v, beta, g, initial_state=state, output_final_state=True)
    reference = delta_rule_reference(q, k, v, beta, g, initial_state=state)
    name = str(dtype).removeprefix("torch.")
    for outputs, spec in ((stepped, SPEC), (chunked, CHUNKED)):
        agreement = compare(outputs, reference, spec.tolerances[name])
        assert agreement.ok, agreement.detail
    # the two agree with each other within the chunkwise op's own error bound
    agreement = compare(stepped, tuple(x.double() for x in chunked), CHUNKED.tolerances[name])
    assert agreement.ok, agreement.detail


def test_shuffled_state_pool_with_indices():
    """Three sequences own rows 4, 0, 2 of a pool of 5; rows 1 and 3 must stay untouched."""
    q, k, v, beta, g, state = _batched((5, 5, 5), gate="channel", group=2, seed=3)
    rows = torch.tensor([4, 0, 2])
    pool = torch.randn(5, *state.shape[1:])
    pool[rows] = state
    untouched = pool[[1, 3]].clone()
    outs = []
    for t in range(q.shape[1]):
        outs.append(delta_rule_step(q[:, t], k[:, t], v[:, t], beta[:, t], g[:, t], state=pool,
                                    state_indices=rows.to(torch.int32)))
    reference = delta_rule_reference(q, k, v, beta, g, initial_state=state)
    agreement = compare((torch.stack(outs, dim=1), pool[rows]), reference,
                        SPEC.tolerances["float32"])
    assert agreement.ok, agreement.detail
    assert torch.equal(pool[[1, 3]], untouched)


def test_float32_gates_with_bfloat16_inputs_and_an_explicit_scale():
    q, k, v, beta, g, state = _batched((1, 1), gate="scalar", dtype=torch.bfloat16,
                                       gate_dtype=torch.float32)
    pool = state.clone()
    out = delta_rule_step(q[:, 0], k[:, 0], v[:, 0], beta[:, 0], g[:, 0], state=pool, scale=0.5)
    assert out.dtype == torch.bfloat16 and out.shape == (2, 4, 24)
    reference = delta_rule_reference(q, k, v, beta, g, initial_state=state, scale=0.5)
    agreement = compare((out, pool), (reference[0][:, 0], reference[1]),
                        SPEC.tolerances["bfloat16"])
    assert agreement.ok, agreement.detail


def _refuse_launch(*args, **kwargs):
    raise AssertionError("a kernel was launched")


def _bad_cases():
    def call(**changes):
        def build():
            q, k, v, beta, g, state = _batched((1, 1), gate="scalar")
            good = {"q": q[:, 0], "k": k[:, 0], "v": v[:, 0], "beta": beta[:, 0], "g": g[:, 0],
                    "state": state}
            return good | {n: c(good) if callable(c) else c for n, c in changes.items()}
        return build

    return [
        ("q-rank", call(q=lambda a: a["q"][None]), ValueError, "q must have 3 dimensions"),
        ("v-heads", call(v=lambda a: a["v"][:, :3]), ValueError, "HV a multiple of H=2"),
        ("beta-shape", call(beta=lambda a: a["beta"][:, :1]), ValueError, "beta must have"),
        ("g-shape", call(g=lambda a: a["g"][:, :1]), ValueError, "g must have shape"),
        ("state-dtype", call(state=lambda a: a["state"].double()), TypeError,
         "state has dtype float64"),
        ("state-shape", call(state=lambda a: a["state"][:, :, :8]), ValueError,
         "state must have shape (N, 4, 32, 24)"),
        ("rows-without-indices", call(state=lambda a: a["state"][:1]), ValueError,
         "state has 1 rows but the batch is 2"),
        ("indices-dtype", call(state_indices=torch.tensor([0.0, 1.0])), ValueError,
         "state_indices must be int32 or int64"),
        ("indices-shape", call(state_indices=torch.tensor([0])), ValueError,
         "state_indices must have shape (2,)"),
        ("indices-range", call(state_indices=torch.tensor([0, 2])), ValueError,
         "state_indices must be < N=2 (the state pool's rows; a negative index marks a "
         "padding slot), got 2"),
        ("state-missing", call(state=None), TypeError, "state must be a torch.Tensor"),
    ]


@pytest.mark.parametrize("build, error, message", [c[1:] for c in _bad_cases()],
                         ids=[c[0] for c in _bad_cases()])
def test_bad_arguments_raise_one_line_errors_before_launching(monkeypatch, build, error,
                                                              message):
    monkeypatch.setattr(step_module, "launch", _refuse_launch)
    with pytest.raises(error) as caught:
        delta_rule_step(**build())
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_chunkwise_baseline_agrees():
    """The bench's comparison point: the chunkwise op at T = 1 on the same pool."""
    problem = SPEC.verify_cases[2]
    inputs = SPEC.make_inputs(problem, "cpu", 0)
    agreement = compare(SPEC.baselines["chunkwise_T1"](inputs), SPEC.reference(inputs),
                        CHUNKED.tolerances["float32"])
    assert agreement.ok, agreement.detail
