"""selective_scan against its float64 recurrence: odd shapes, every tiny-preset tile, bad input."""
import warnings

import pytest
import torch
import yaml

import seqtune.kernels
from seqtune.launch import capture_launches
from seqtune.registry import get_spec
from seqtune.agreement import check_case
from tile_cases import assert_configs_agree, distinct_tiles
from seqtune.kernels.selective_scan.op import selective_scan

SPEC = get_spec("selective_scan")
TILES = ("BLOCK_D", "BLOCK_N", "BLOCK_T")


def assert_matches_reference(outputs, inputs, dtype="float32"):
    tolerance = SPEC.tolerances[dtype]
    for output, expected in zip(outputs, SPEC.reference(inputs)):
        torch.testing.assert_close(output.double(), expected, atol=tolerance.atol,
                                   rtol=tolerance.rtol)


@pytest.mark.parametrize("problem", SPEC.verify_cases, ids=str)
def test_default_config_agrees_on_odd_shapes(problem):
    agreement = check_case(SPEC, problem, dict(SPEC.default_config))
    assert agreement.ok, agreement.detail


@pytest.mark.parametrize("problem", SPEC.presets["tiny"], ids=str)
def test_every_tiny_preset_tile_agrees(problem):
    configs = distinct_tiles(SPEC, problem, TILES)
    assert len({config["BLOCK_N"] for config in configs}) > 1  # fused and split over states
    assert_configs_agree(SPEC, problem, configs)


def test_grouped_tiles_spanning_groups_with_split_states():
    """3 channels per group with BLOCK_D=4, and n=12 over BLOCK_N=8 (two state tiles)."""
    problem = {"b": 2, "d": 9, "L": 21, "n": 12, "groups": 3, "dtype": "float32"}
    config = {"BLOCK_D": 4, "BLOCK_N": 8, "BLOCK_T": 16, "num_warps": 2}
    agreement = check_case(SPEC, problem, config)
    assert agreement.ok, agreement.detail


def _random_inputs(b=2, d=6, L=19, n=5, groups=None, seed=0):
    problem = {"b": b, "d": d, "L": L, "n": n, "groups": groups or 1, "dtype": "float32"}
    return SPEC.make_inputs(problem, "cpu", seed)


def test_non_contiguous_inputs():
    inputs = _random_inputs(groups=2)
    wide = {name: torch.cat([inputs[name], torch.zeros_like(inputs[name])], dim=1)
            for name in ("u", "z")}
    strided = {
        "u": wide["u"][:, ::2],  # channels strided, time unit-stride
        "z": wide["z"][:, ::2],
        "delta": inputs["delta"].transpose(1, 2).contiguous().transpose(1, 2),  # time strided
        "A": inputs["A"].t().contiguous().t(),
        "B": inputs["B"].transpose(2, 3).contiguous().transpose(2, 3),
        "C": inputs["C"][:, :, :, :],
    }
    assert not strided["u"].is_contiguous() and strided["delta"].stride(-1) != 1
    inputs.update(strided)
    outputs = selective_scan(**inputs, return_last_state=True)
    assert_matches_reference(outputs, inputs)


def test_one_group_in_the_grouped_layout_equals_the_ungrouped_layout():
    inputs = _random_inputs()
    ungrouped = selective_scan(**inputs, return_last_state=True)
    grouped = selective_scan(**{**inputs, "B": inputs["B"][:, None], "C": inputs["C"][:, None]},
                             return_last_state=True)
    for expected, actual in zip(ungrouped, grouped):
        torch.testing.assert_close(actual, expected)


def test_parameters_in_the_input_dtype():
    inputs = _random_inputs()
    inputs.update({name: inputs[name].bfloat16() for name in ("u", "delta", "B", "C", "z", "A",
                                                              "D", "delta_bias")})
    y, last_state = selective_scan(**inputs, return_last_state=True)
    assert y.dtype == torch.bfloat16 and last_state.dtype == torch.float32
    assert_matches_reference((y, last_state), inputs, "bfloat16")


@pytest.mark.parametrize("split", [1, 9])
def test_resuming_from_the_last_state_continues_the_sequence(split):
    """[0:t] then [t:L] from its last state equals [0:L], outputs and last state (the only
    difference: where the kernels' blocks start, i.e. the scan's reassociation)."""
    inputs = _random_inputs(L=23, groups=2, seed=3)
    whole = selective_scan(**inputs, return_last_state=True)
    head, tail = ({**inputs, **{name: inputs[name][..., part]
                                for name in ("u", "delta", "B", "C", "z")}}
                  for part in (slice(0, split), slice(split, None)))
    y_head, state = selective_scan(**head, return_last_state=True)
    y_tail, last_state = selective_scan(**{**tail, "initial_state": state},
                                        return_last_state=True)
    torch.testing.assert_close(torch.cat([y_head, y_tail], dim=-1), whole[0],
                               atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(last_state, whole[1], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("state_dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_initial_state_of_any_float_dtype(state_dtype):
    """The state is read in its own dtype and carried in fp32: the reference reads the same
    rounded values, so the bound is the inputs' dtype's (fp32 here)."""
    inputs = _random_inputs(n=20, seed=4)  # n=20 > BLOCK_N=16: each state tile reads its part
    inputs["initial_state"] = torch.randn(2, 6, 20).to(state_dtype)
    assert_matches_reference(selective_scan(**inputs, return_last_state=True), inputs)


def test_empty_sequence_returns_the_initial_state():
    inputs = _random_inputs(L=0)
    inputs["initial_state"] = torch.randn(2, 6, 5).half()
    with capture_launches() as launches:
        _, last_state = selective_scan(**inputs, return_last_state=True)
    assert launches == [] and last_state.dtype == torch.float32
    assert torch.equal(last_state, inputs["initial_state"].float())


def test_profiles_tuned_before_initial_state_existed_still_load(tmp_path):
    """An entry without the has_initial_state field means has_initial_state=False."""
    problem = {**SPEC.presets["tiny"][0]}
    del problem["has_initial_state"]
    config = {**SPEC.default_config, "BLOCK_T": 16}
    profile = {"schema": "seqtune-profile/1", "device": {}, "software": {}, "kernels": {
        "selective_scan": {"entries": [{"problem": problem, "config": config}]}}}
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump(profile))
    seqtune.load_profile(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the entry has no source hash: stale, used with a warning
        assert seqtune.best_config("selective_scan", **problem) == config
        assert seqtune.best_config("selective_scan", **problem, has_initial_state=True) != config


def test_returns_only_y_unless_asked():
    inputs = _random_inputs(L=3)
    y = selective_scan(**inputs)
    assert isinstance(y, torch.Tensor) and y.shape == (2, 6, 3)


def test_public_name_calls_the_op():
    inputs = _random_inputs(L=3)
    for _ in range(2):  # the second lookup finds the imported package, which must still call
        torch.testing.assert_close(seqtune.kernels.selective_scan(**inputs),
                                   selective_scan(**inputs))


def test_empty_sequence_returns_without_launching():
    inputs = _random_inputs(L=0)
    with capture_launches() as launches:
        y, last_state = selective_scan(**inputs, return_last_state=True)
    assert launches == [] and y.shape == (2, 6, 0)
    assert torch.equal(last_state, torch.zeros(2, 6, 5))


def _bad(**overrides):
    inputs = _random_inputs(b=2, d=6, L=4, n=3)
    inputs.update(overrides)
    return inputs


@pytest.mark.parametrize("overrides, error, message", [
    ({"u": torch.randn(6, 4)}, ValueError, "u must have 3 dimensions"),
    ({"delta": torch.rand(2, 6, 5)}, ValueError, r"delta must have shape \(2, 6, 4\)"),
    ({"A": torch.randn(5, 3)}, ValueError, r"A must have shape \(6, n\)"),
    ({"A": torch.randn(6, 0)}, ValueError, "n >= 1"),
    ({"B": torch.randn(2, 4)}, ValueError, "B must have 3 .* or 4"),
    ({"B": torch.randn(2, 3, 5)}, ValueError, r"B must have shape \(2, 3, 4\)"),
    ({"B": torch.randn(2, 4, 3, 4), "C": torch.randn(2, 4, 3, 4)}, ValueError,
     "4 groups, which must divide d=6"),
    ({"C": torch.randn(2, 2, 3, 4)}, ValueError, "C must have 3 dimensions"),
    ({"z": torch.randn(2, 6, 5)}, ValueError, r"z must have shape \(2, 6, 4\)"),
    ({"D": torch.randn(5)}, ValueError, r"D must have shape \(6,\)"),
    ({"delta_bias": torch.randn(6, 1)}, ValueError, "delta_bias must have 1 dimensions"),
    ({"u": torch.ones(2, 6, 4, dtype=torch.int64)}, TypeError, "u has dtype int64"),
    ({"delta": torch.rand(2, 6, 4).bfloat16()}, TypeError, "mixed dtypes"),
    ({"A": -torch.rand(6, 3).double()}, TypeError, "A has dtype float64"),
    ({"D": torch.randn(6).half()}, TypeError, "D has dtype float16"),
    ({"z": torch.randn(2, 6, 4, device="meta")}, ValueError, "different devices"),
    ({"initial_state": torch.randn(2, 6)}, ValueError, "initial_state must have 3 dimensions"),
    ({"initial_state": torch.randn(2, 6, 4)}, ValueError,
     r"initial_state must have shape \(2, 6, 3\)"),
    ({"initial_state": torch.zeros(2, 6, 3, dtype=torch.int32)}, TypeError,
     "initial_state has dtype int32"),
    ({"initial_state": torch.zeros(2, 6, 3, device="meta")}, ValueError, "different devices"),
])
def test_bad_arguments_raise_before_launch(overrides, error, message):
    with capture_launches() as launches, pytest.raises(error, match=message):
        selective_scan(**_bad(**overrides))
    assert launches == []


@pytest.mark.parametrize("config, message", [
    ({"BLOCK_M": 16}, "unknown config key"),
    ({"BLOCK_N": 32}, "BLOCK_N=32 exceeds the padded n"),
    ({"BLOCK_D": 32, "BLOCK_T": 64, "num_warps": 2}, "would spill registers"),
])
def test_bad_configs_raise(config, message):
    inputs = _random_inputs(b=1, d=32, L=64, n=3)
    with pytest.raises(ValueError, match=message):
        selective_scan(**inputs, config=config)
