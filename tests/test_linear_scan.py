"""linear_scan against its float64 recurrence: odd shapes, every tiny-preset tile, bad input."""
import pytest
import torch

from seqtune.launch import capture_launches
from seqtune.registry import get_spec
from seqtune.agreement import check_case
from tile_cases import assert_configs_agree, distinct_tiles
import seqtune.kernels
from seqtune.kernels.linear_scan.op import linear_scan

SPEC = get_spec("linear_scan")


@pytest.mark.parametrize("problem", SPEC.verify_cases, ids=str)
def test_default_config_agrees_on_odd_shapes(problem):
    agreement = check_case(SPEC, problem, dict(SPEC.default_config))
    assert agreement.ok, agreement.detail


@pytest.mark.parametrize("problem", SPEC.presets["tiny"], ids=str)
def test_every_tiny_preset_tile_agrees(problem):
    configs = distinct_tiles(SPEC, problem, ("BLOCK_D", "BLOCK_T"))
    assert len(configs) > 1
    assert_configs_agree(SPEC, problem, configs)


def test_ignores_steps_past_T_in_the_last_block():
    """T = BLOCK_T + 1 with a tile of 16: the second block holds one real step."""
    problem = {"B": 1, "T": 17, "D": 16, "initial_state": True, "dtype": "float32"}
    config = {"BLOCK_D": 16, "BLOCK_T": 16, "num_warps": 1}
    assert check_case(SPEC, problem, config).ok


def test_non_contiguous_inputs():
    generator = torch.Generator().manual_seed(1)
    a = 0.5 + 0.5 * torch.rand(2, 24, 80, generator=generator)
    b = torch.randn(2, 40, 24, generator=generator).transpose(1, 2)  # channels not unit-stride
    a = a[:, :, ::2]  # every other channel of a wider tensor
    initial_state = torch.randn(40, 2, generator=generator).t()
    h = linear_scan(a, b, initial_state=initial_state)
    expected = SPEC.reference({"a": a, "b": b, "initial_state": initial_state})[0]
    torch.testing.assert_close(h.double(), expected, atol=1e-5, rtol=1e-5)


def test_half_precision_initial_state_and_float16_inputs():
    generator = torch.Generator().manual_seed(2)
    a = (0.5 + 0.5 * torch.rand(2, 19, 9, generator=generator)).half()
    b = torch.randn(2, 19, 9, generator=generator).half()
    initial_state = torch.randn(2, 9, generator=generator).half()
    h = linear_scan(a, b, initial_state=initial_state)
    assert h.dtype == torch.float16
    expected = SPEC.reference({"a": a, "b": b, "initial_state": initial_state})[0]
    tolerance = SPEC.tolerances["float16"]
    torch.testing.assert_close(h.double(), expected, atol=tolerance.atol, rtol=tolerance.rtol)


def test_public_name_calls_the_op():
    a, b = torch.rand(1, 4, 3), torch.randn(1, 4, 3)
    for _ in range(2):  # the second lookup finds the imported package, which must still call
        torch.testing.assert_close(seqtune.kernels.linear_scan(a, b), linear_scan(a, b))


def test_empty_sequence_returns_without_launching():
    a = torch.rand(3, 0, 5)
    with capture_launches() as launches:
        h = linear_scan(a, torch.randn(3, 0, 5), initial_state=torch.zeros(3, 5))
    assert h.shape == (3, 0, 5) and launches == []


def _inputs(**overrides):
    inputs = {"a": torch.rand(2, 5, 3), "b": torch.randn(2, 5, 3), "initial_state": None}
    inputs.update(overrides)
    return inputs


@pytest.mark.parametrize("overrides, error, message", [
    ({"a": [[1.0]]}, TypeError, "a must be a torch.Tensor"),
    ({"b": torch.randn(2, 5)}, ValueError, "b must have 3 dimensions"),
    ({"a": torch.rand(2, 4, 3)}, ValueError, r"a must have shape \(2, 5, 3\)"),
    ({"b": torch.ones(2, 5, 3, dtype=torch.int32)}, TypeError, "b has dtype int32"),
    ({"a": torch.rand(2, 5, 3).double()}, TypeError, "a has dtype float64"),
    ({"a": torch.rand(2, 5, 3).bfloat16()}, TypeError, "mixed dtypes"),
    ({"initial_state": torch.zeros(2, 4)}, ValueError, r"initial_state must have shape \(2, 3\)"),
    ({"initial_state": torch.zeros(2, 3).half()}, TypeError, "initial_state has dtype float16"),
    ({"initial_state": torch.zeros(2, 3, device="meta")}, ValueError, "different devices"),
])
def test_bad_arguments_raise_before_launch(overrides, error, message):
    inputs = _inputs(**overrides)
    with capture_launches() as launches, pytest.raises(error, match=message):
        linear_scan(inputs["a"], inputs["b"], initial_state=inputs["initial_state"])
    assert launches == []


@pytest.mark.parametrize("config, message", [
    ({"BLOCK_Q": 16}, "unknown config key"),
    ({"BLOCK_T": 24}, "BLOCK_T=24 .*is not one of"),
    ({"BLOCK_T": 128}, "exceeds the padded T"),
    ({"BLOCK_D": 256, "num_warps": 1}, "would spill registers"),
])
def test_bad_configs_raise(config, message):
    with pytest.raises(ValueError, match=message):
        linear_scan(torch.rand(1, 5, 300), torch.randn(1, 5, 300), config=config)
