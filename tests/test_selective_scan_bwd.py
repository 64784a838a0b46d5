"""selective_scan's backward: every input's gradient against float64 autograd of the
independent reference, through the op (autograd) and through the ``selective_scan_bwd`` spec."""
import pytest
import torch

from seqtune.agreement import check_case
from seqtune.launch import capture_launches
from seqtune.registry import get_spec
from seqtune.spec import INTERPRETER_LIMITS
from tile_cases import assert_configs_agree, distinct_tiles
from seqtune.kernels.selective_scan.autograd import INPUTS
from seqtune.kernels.selective_scan.op import selective_scan

SPEC = get_spec("selective_scan_bwd")


@pytest.mark.parametrize("problem", SPEC.verify_cases, ids=str)
def test_default_config_agrees_on_odd_shapes(problem):
    agreement = check_case(SPEC, problem, SPEC.default_for(problem, INTERPRETER_LIMITS))
    assert agreement.ok, agreement.detail


@pytest.mark.parametrize("problem", SPEC.presets["tiny"], ids=str)
def test_every_tiny_preset_tile_agrees(problem):
    configs = distinct_tiles(SPEC, problem, ("BLOCK_T", "reverse.BLOCK_D"))
    assert len({c["reverse.BLOCK_D"] for c in configs}) > 1 and len(configs) > 4
    assert_configs_agree(SPEC, problem, configs)


def _inputs(dtype="float32", seed=0, **fields):
    problem = {"b": 2, "d": 6, "L": 19, "n": 5, "groups": 2, "has_initial_state": True,
               "dtype": dtype, **fields}
    return SPEC.make_inputs(problem, "cpu", seed)


def _run_op(inputs, wanted=INPUTS, **kwargs):
    """The op's gradients of sum(y dy) + sum(last_state dlast_state) for the tensors in
    ``wanted`` (the others do not require grad), by name."""
    leaves = {n: inputs[n].detach().clone().requires_grad_(n in wanted)
              for n in INPUTS if inputs.get(n) is not None}
    arguments = {n: inputs.get(n) for n in INPUTS}
    y, last_state = selective_scan(**{**arguments, **leaves}, delta_softplus=inputs["delta_softplus"],
                                   return_last_state=True, **kwargs)
    ((y * inputs["dy"]).sum() + (last_state * inputs["dlast_state"]).sum()).backward()
    return leaves


def _assert_gradients(leaves, inputs, dtype):
    tolerance = SPEC.tolerances[dtype]
    expected = dict(zip([n for n in INPUTS if inputs.get(n) is not None],
                        SPEC.reference(inputs)))
    for name, leaf in leaves.items():
        if not leaf.requires_grad:
            assert leaf.grad is None, name
            continue
        assert leaf.grad.dtype == leaf.dtype and leaf.grad.shape == leaf.shape, name
        torch.testing.assert_close(leaf.grad.double(), expected[name], atol=tolerance.atol,
                                   rtol=tolerance.rtol, msg=lambda m: f"d{name}: {m}")


@pytest.mark.parametrize("fields", [
    {}, {"has_z": False}, {"has_D": False}, {"has_delta_bias": False},
    {"delta_softplus": False}, {"has_initial_state": False}, {"groups": 1},
    {"dtype": "bfloat16"}, {"dtype": "bfloat16", "groups": 3, "n": 16}], ids=str)
def test_gradients_through_the_op(fields):
    inputs = _inputs(**fields)
    _assert_gradients(_run_op(inputs), inputs, fields.get("dtype", "float32"))


@pytest.mark.parametrize("wanted", [("u",), ("A", "B"), ("C", "delta_bias"), ("initial_state",)],
                         ids=str)
def test_only_inputs_requiring_grad_get_one(wanted):
    inputs = _inputs(seed=1)
    _assert_gradients(_run_op(inputs, wanted), inputs, "float32")


def test_an_unused_last_state_gets_no_gradient():
    inputs = _inputs(seed=2)
    inputs["dlast_state"] = torch.zeros_like(inputs["dlast_state"])
    u = inputs["u"].clone().requires_grad_()
    selective_scan(**{**{n: inputs.get(n) for n in INPUTS}, "u": u},
                   delta_softplus=True).backward(inputs["dy"])
    torch.testing.assert_close(u.grad.double(), SPEC.reference(inputs)[0], atol=5e-5, rtol=5e-5)


def test_chunked_training_equals_the_whole_sequence():
    """Gradients flow through the state a chunk hands to the next: [0:9] then [9:L] from its
    last state gives the gradients of [0:L]."""
    inputs = _inputs(seed=3)
    whole = _run_op(inputs)
    leaves = {n: inputs[n].detach().clone().requires_grad_() for n in INPUTS}
    state = leaves["initial_state"]
    ys = []
    for part in (slice(0, 9), slice(9, None)):
        chunk = {n: leaves[n][..., part] if n in ("u", "delta", "B", "C", "z") else leaves[n]
                 for n in INPUTS}
        y, state = selective_scan(**{**chunk, "initial_state": state}, delta_softplus=True,
                                  return_last_state=True)
        ys.append(y)
    ((torch.cat(ys, dim=-1) * inputs["dy"]).sum() + (state * inputs["dlast_state"]).sum()).backward()
    for name in INPUTS:
        torch.testing.assert_close(leaves[name].grad, whole[name].grad, atol=2e-5, rtol=2e-5)


def test_bwd_config_is_used_and_checked():
    inputs = _inputs(seed=4)
    config = {"BLOCK_T": 8, "reverse.BLOCK_D": 1, "reverse.num_warps": 2,
              "states.BLOCK_D": 2, "states.num_warps": 2}
    _assert_gradients(_run_op(inputs, bwd_config=config), inputs, "float32")
    with pytest.raises(ValueError, match="selective_scan_bwd: unknown config key"):
        _run_op(inputs, bwd_config={"BLOCK_N": 16})


def test_too_many_states_for_the_backward_raise_before_launch():
    inputs = _inputs(n=300, L=3)
    with capture_launches() as launches, pytest.raises(ValueError, match="n <= 256, got n=300"):
        _run_op(inputs)
    assert launches == []


def test_empty_sequence_passes_the_state_gradient_through():
    inputs = _inputs(L=0)
    leaves = _run_op(inputs)
    torch.testing.assert_close(leaves["initial_state"].grad, inputs["dlast_state"])
    assert torch.equal(leaves["A"].grad, torch.zeros_like(inputs["A"]))
    assert leaves["u"].grad.shape == (2, 6, 0)
