"""prefix_attention's backward: dq, dk, dv against float64 autograd of the independent
reference, through the op (autograd) and through the ``prefix_attention_bwd`` spec."""
import pytest
import torch

from seqtune.agreement import check_case
from seqtune.registry import get_spec
from seqtune.spec import INTERPRETER_LIMITS
from tile_cases import assert_configs_agree, distinct_tiles
from seqtune.kernels.prefix_attention.op import prefix_attention

SPEC = get_spec("prefix_attention_bwd")


@pytest.mark.parametrize("problem", SPEC.verify_cases, ids=str)
def test_default_config_agrees_on_odd_shapes(problem):
    agreement = check_case(SPEC, problem, SPEC.default_for(problem, INTERPRETER_LIMITS))
    assert agreement.ok, agreement.detail


@pytest.mark.parametrize("problem", SPEC.presets["tiny"], ids=str)
def test_every_tiny_preset_tile_agrees(problem):
    configs = distinct_tiles(SPEC, problem, ("BLOCK_T",))
    assert len(configs) > 1
    assert_configs_agree(SPEC, problem, configs)


def _inputs(B, T, H, D, dtype, seed=0):
    generator = torch.Generator().manual_seed(seed)
    q, k, v, do = (torch.randn(*shape, generator=generator).to(dtype)
                   for shape in ((B, H, D), (B, T, H, D), (B, T, H, D), (B, T, H, D)))
    return {"q": q, "k": k, "v": v, "do": do, "scale": None}


def _assert_grads(named, inputs, dtype_name):
    tolerance = SPEC.tolerances[dtype_name]
    expected = dict(zip(("q", "k", "v"), SPEC.reference(inputs)))
    for name, tensor in named.items():
        if not tensor.requires_grad:
            assert tensor.grad is None
            continue
        assert tensor.grad.dtype == tensor.dtype
        torch.testing.assert_close(tensor.grad.double(), expected[name], atol=tolerance.atol,
                                   rtol=tolerance.rtol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_gradients_through_the_op(dtype):
    inputs = _inputs(2, 37, 3, 40, dtype)  # T, D not multiples of any tile
    named = {n: inputs[n].clone().requires_grad_() for n in ("q", "k", "v")}
    o = prefix_attention(named["q"], named["k"], named["v"])
    assert o.grad_fn is not None and o.dtype == dtype
    o.backward(inputs["do"])
    _assert_grads(named, inputs, str(dtype).removeprefix("torch."))


@pytest.mark.parametrize("wanted", ["q", "k", "v"])
def test_only_inputs_requiring_grad_get_one(wanted):
    inputs = _inputs(1, 7, 2, 8, torch.float32, seed=1)
    named = {n: inputs[n].clone() for n in ("q", "k", "v")}
    named[wanted].requires_grad_()
    prefix_attention(named["q"], named["k"], named["v"]).backward(inputs["do"])
    _assert_grads(named, inputs, "float32")


def test_large_scores_give_finite_exact_gradients():
    """Scores of +-100 that jump by ~200 between steps: every rescaling is exp of a
    non-positive number (lse never decreases), so nothing overflows."""
    generator = torch.Generator().manual_seed(3)
    q = torch.randn(1, 2, 16, generator=generator)
    q = q / q.norm(dim=-1, keepdim=True)
    signs = torch.where(torch.rand(45, generator=generator) < 0.5, -1.0, 1.0)
    k = signs[None, :, None, None] * (60 + 40 * torch.rand(1, 45, 2, 1, generator=generator)) * q[:, None]
    k = k + 0.1 * torch.randn(1, 45, 2, 16, generator=generator)
    inputs = {"q": q, "k": k, "v": torch.randn(1, 45, 2, 16, generator=generator),
              "do": torch.randn(1, 45, 2, 16, generator=generator), "scale": 1.0}
    named = {n: inputs[n].clone().requires_grad_() for n in ("q", "k", "v")}
    prefix_attention(named["q"], named["k"], named["v"], scale=1.0,
                     bwd_config={"BLOCK_T": 8, "num_warps": 1}).backward(inputs["do"])
    assert all(torch.isfinite(t.grad).all() for t in named.values())
    _assert_grads(named, inputs, "float32")


def test_bwd_config_is_checked():
    inputs = _inputs(1, 7, 1, 8, torch.float32)
    with pytest.raises(ValueError, match="prefix_attention_bwd: unknown config key"):
        prefix_attention(inputs["q"].requires_grad_(), inputs["k"], inputs["v"],
                         bwd_config={"BLOCK_DV": 16})


def test_without_grad_nothing_is_recorded():
    inputs = _inputs(1, 5, 1, 8, torch.float32)
    with torch.no_grad():
        assert prefix_attention(inputs["q"].requires_grad_(), inputs["k"],
                                inputs["v"]).grad_fn is None


def test_empty_sequence_gives_zero_query_gradient():
    inputs = _inputs(2, 0, 3, 8, torch.float32)
    named = {n: inputs[n].requires_grad_() for n in ("q", "k", "v")}
    prefix_attention(named["q"], named["k"], named["v"]).backward(inputs["do"])
    assert torch.equal(named["q"].grad, torch.zeros(2, 3, 8))
    assert named["k"].grad.shape == (2, 0, 3, 8)
