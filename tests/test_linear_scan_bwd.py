"""linear_scan's backward: every gradient against float64 autograd of the independent reference,
through the op (autograd) and through the ``linear_scan_bwd`` spec."""
import pytest
import torch

from seqtune.agreement import check_case
from seqtune.registry import get_spec
from tile_cases import assert_configs_agree, distinct_tiles
from seqtune.kernels.linear_scan.op import linear_scan

SPEC = get_spec("linear_scan_bwd")
FORWARD = get_spec("linear_scan")


@pytest.mark.parametrize("problem", SPEC.verify_cases, ids=str)
def test_default_config_agrees_on_odd_shapes(problem):
    agreement = check_case(SPEC, problem, dict(SPEC.default_config))
    assert agreement.ok, agreement.detail


@pytest.mark.parametrize("problem", SPEC.presets["tiny"], ids=str)
def test_every_tiny_preset_tile_agrees(problem):
    configs = distinct_tiles(SPEC, problem, ("BLOCK_D", "BLOCK_T"))
    assert len(configs) > 1
    assert_configs_agree(SPEC, problem, configs)


def _leaves(B, T, D, dtype, state_dtype=None, seed=0):
    generator = torch.Generator().manual_seed(seed)
    a = (0.5 + 0.5 * torch.rand(B, T, D, generator=generator)).to(dtype)
    b = torch.randn(B, T, D, generator=generator).to(dtype)
    h0 = torch.randn(B, D, generator=generator).to(state_dtype) if state_dtype else None
    dh = torch.randn(B, T, D, generator=generator).to(dtype)
    return a, b, h0, dh


def _expected(a, b, h0, dh):
    inputs = {"a": a, "b": b, "initial_state": h0, "dh": dh}
    return SPEC.reference(inputs)


@pytest.mark.parametrize("dtype, state_dtype", [
    (torch.float32, None), (torch.float32, torch.float32), (torch.bfloat16, None),
    (torch.bfloat16, torch.float32)], ids=str)
def test_gradients_through_the_op(dtype, state_dtype):
    a, b, h0, dh = _leaves(2, 45, 37, dtype, state_dtype)
    leaves = [x.requires_grad_() for x in (a, b, h0) if x is not None]
    h = linear_scan(a, b, initial_state=h0)
    assert h.grad_fn is not None and h.dtype == dtype
    h.backward(dh)
    tolerance = SPEC.tolerances[str(dtype).removeprefix("torch.")]
    for leaf, expected in zip(leaves, _expected(a.detach(), b.detach(),
                                                h0.detach() if h0 is not None else None, dh)):
        assert leaf.grad.dtype == leaf.dtype
        torch.testing.assert_close(leaf.grad.double(), expected, atol=tolerance.atol,
                                   rtol=tolerance.rtol)


@pytest.mark.parametrize("wanted", ["a", "b", "initial_state"])
def test_only_inputs_requiring_grad_get_one(wanted):
    a, b, h0, dh = _leaves(1, 7, 5, torch.float32, torch.float32, seed=1)
    named = {"a": a, "b": b, "initial_state": h0}
    named[wanted].requires_grad_()
    linear_scan(a, b, initial_state=h0).backward(dh)
    expected = dict(zip(named, _expected(a, b, h0, dh)))
    for name, tensor in named.items():
        if name == wanted:
            torch.testing.assert_close(tensor.grad.double(), expected[name], atol=1e-5,
                                       rtol=1e-5)
        else:
            assert tensor.grad is None


def test_without_grad_nothing_is_recorded():
    a, b, _, _ = _leaves(1, 7, 5, torch.float32)
    a.requires_grad_()
    with torch.no_grad():
        assert linear_scan(a, b).grad_fn is None
    assert linear_scan(a.detach(), b).grad_fn is None


def test_bwd_config_is_used_and_checked():
    a, b, h0, dh = _leaves(1, 37, 20, torch.float32, torch.float32, seed=2)
    a.requires_grad_()
    linear_scan(a, b, initial_state=h0, bwd_config={"BLOCK_T": 16, "BLOCK_D": 16,
                                                    "num_warps": 1}).backward(dh)
    torch.testing.assert_close(a.grad.double(), _expected(a.detach(), b, h0, dh)[0],
                               atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="linear_scan_bwd: unknown config key"):
        linear_scan(a, b, bwd_config={"BLOCK_M": 16})


def test_empty_sequence_gives_zero_state_gradient():
    a, b, h0, dh = _leaves(2, 0, 3, torch.float32, torch.float32)
    for leaf in (a, b, h0):
        leaf.requires_grad_()
    linear_scan(a, b, initial_state=h0).backward(dh)
    assert a.grad.shape == (2, 0, 3) and b.grad.shape == (2, 0, 3)
    assert torch.equal(h0.grad, torch.zeros(2, 3))
