"""selective_scan_step: token by token it equals the full selective_scan (outputs and last
state) from the same initial state, grouped or not, with and without D, z, delta_bias and
softplus; on a shuffled state pool with a padding slot; strided states are updated where they
lie; its verify cases, tile settings and CPU baselines agree with the float64 step; bad arguments
raise one line before any launch."""
from __future__ import annotations

import pytest
import torch

from seqtune.agreement import check_case, compare
from seqtune.kernels import selective_scan, selective_scan_step
from seqtune.launch import capture_launches
from seqtune.registry import get_spec
from seqtune.spec import INTERPRETER_LIMITS

SPEC = get_spec("selective_scan_step")
FULL = get_spec("selective_scan")
ALL = (True, True, True, True)  # has_z, has_D, has_delta_bias, delta_softplus


@pytest.mark.parametrize("problem", SPEC.verify_cases, ids=str)
def test_verify_cases_agree(problem):
    agreement = check_case(SPEC, problem, SPEC.default_for(problem, INTERPRETER_LIMITS))
    assert agreement.ok, agreement.detail


@pytest.mark.parametrize("problem, tiles", [
    # n = 24 in 8-wide state tiles: three passes over the state
    (SPEC.verify_cases[2], {"BD": 4, "BN": 8, "num_warps": 1}),
    # 3 channels per group in 4-wide channel tiles: tiles span groups; one 16-wide state tile
    # for n = 12, its last 4 columns masked
    (SPEC.verify_cases[1], {"BD": 4, "BN": 16, "num_warps": 2}),
], ids=["state-tiles", "tiles-span-groups"])
def test_tile_settings_agree(problem, tiles):
    config = SPEC.validate_config(tiles)
    assert SPEC.check(config, problem, INTERPRETER_LIMITS) is None
    agreement = check_case(SPEC, problem, config)
    assert agreement.ok, agreement.detail


@pytest.mark.parametrize("baseline", ["torch", "chunkwise_T1"])
def test_cpu_baselines_agree(baseline):
    """What ``bench`` compares with computes the same step (grouped, on a shuffled pool)."""
    problem = SPEC.verify_cases[1]
    inputs = SPEC.make_inputs(problem, "cpu", 0)
    before = inputs["state"].clone()
    agreement = compare(SPEC.baselines[baseline](inputs), SPEC.reference(inputs),
                        SPEC.tolerances[problem["dtype"]])
    assert agreement.ok, agreement.detail
    assert torch.equal(inputs["state"], before)


def _sequence(b, d, L, n, groups, flags, dtype, seed=0):
    """The full op's inputs (Mamba-like values) with an initial state."""
    has_z, has_D, has_delta_bias, delta_softplus = flags
    problem = {"b": b, "d": d, "L": L, "n": n, "groups": groups, "has_z": has_z, "has_D": has_D,
               "has_delta_bias": has_delta_bias, "delta_softplus": delta_softplus,
               "has_initial_state": True, "dtype": dtype}
    return FULL.make_inputs(problem, "cpu", seed)


def _step_through(inputs, pool, state_indices=None, config=None):
    """y [b, d, L] of stepping every token of ``inputs`` through ``pool`` (in place)."""
    z = inputs["z"]
    ys = [selective_scan_step(inputs["u"][..., t], inputs["delta"][..., t], inputs["A"],
                              inputs["B"][..., t], inputs["C"][..., t], state=pool,
                              D=inputs["D"], z=None if z is None else z[..., t],
                              delta_bias=inputs["delta_bias"],
                              delta_softplus=inputs["delta_softplus"],
                              state_indices=state_indices, config=config)
          for t in range(inputs["u"].shape[-1])]
    return torch.stack(ys, dim=-1)


@pytest.mark.parametrize("groups, flags, dtype", [
    (1, ALL, "float32"),
    (2, ALL, "bfloat16"),
    (3, (False, False, False, False), "float32"),
    (1, (True, False, True, False), "bfloat16"),  # z and a bias without softplus, no D
    (4, (False, True, False, True), "float32"),  # softplus without a bias, D without z
], ids=["plain-fp32", "grouped-bf16", "bare-grouped-fp32", "bias-no-softplus-bf16",
        "softplus-no-bias-grouped-fp32"])
def test_token_by_token_equals_the_full_op(groups, flags, dtype):
    inputs = _sequence(b=3, d=12, L=7, n=12, groups=groups, flags=flags, dtype=dtype)
    pool = inputs["initial_state"].clone()
    stepped = (_step_through(inputs, pool), pool)
    scanned = selective_scan(**inputs, return_last_state=True)
    reference = FULL.reference(inputs)
    tolerance = FULL.tolerances[dtype]
    for outputs in (stepped, scanned):
        agreement = compare(outputs, reference, tolerance)
        assert agreement.ok, agreement.detail
    # the step and the full op agree with each other within the full op's own bound
    agreement = compare(stepped, tuple(x.double() for x in scanned), tolerance)
    assert agreement.ok, agreement.detail
    assert stepped[0].dtype == scanned[0].dtype


@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_shuffled_pool_with_a_padding_slot(index_dtype):
    """Three sequences own rows 4, 0, 2 of a pool of 6, a padding slot (-1) sits between them:
    its y is zero and rows 1, 3, 5 are untouched; the owned rows end where the full op does."""
    inputs = _sequence(b=4, d=10, L=5, n=8, groups=2, flags=ALL, dtype="float32", seed=1)
    rows = torch.tensor([4, 0, -1, 2], dtype=index_dtype)
    generator = torch.Generator().manual_seed(2)
    pool = torch.randn(6, 10, 8, generator=generator)
    before = pool.clone()
    y = _step_through(inputs, pool, state_indices=rows)
    assert torch.equal(y[2], torch.zeros_like(y[2]))
    assert torch.equal(pool[[1, 3, 5]], before[[1, 3, 5]])
    live = [0, 1, 3]
    owned = rows[live].long()
    streams = ("u", "delta", "B", "C", "z")
    sequences = {name: value[live] if name in streams and value is not None else value
                 for name, value in inputs.items() if name != "initial_state"}
    scanned = selective_scan(**sequences, return_last_state=True, initial_state=before[owned])
    tolerance = FULL.tolerances["float32"]
    agreement = compare((y[live], pool[owned]), tuple(x.double() for x in scanned), tolerance)
    assert agreement.ok, agreement.detail


def test_strided_state_is_updated_where_it_lies():
    """A state pool seen through a permuted, channel-strided view gives the contiguous answer
    and is stepped in place."""
    inputs = SPEC.make_inputs(SPEC.verify_cases[0], "cpu", 0)
    expected_y, expected_pool = SPEC.run(inputs, SPEC.default_config)
    pool = inputs["state"]
    storage = torch.zeros(pool.shape[2], pool.shape[0], 2 * pool.shape[1])
    view = storage.permute(1, 2, 0)[:, ::2]
    view.copy_(pool)
    arguments = {name: inputs[name] for name in ("D", "z", "delta_bias", "delta_softplus",
                                                 "state_indices")}
    y = selective_scan_step(inputs["u"], inputs["delta"], inputs["A"], inputs["B"], inputs["C"],
                            state=view, **arguments)
    assert torch.equal(y, expected_y)
    assert torch.equal(view, expected_pool)
    assert torch.count_nonzero(storage.permute(1, 2, 0)[:, 1::2]) == 0


def test_empty_batch_launches_nothing():
    inputs = SPEC.make_inputs({**SPEC.verify_cases[2], "B": 0}, "cpu", 0)
    with capture_launches() as launches:
        y = selective_scan_step(inputs["u"], inputs["delta"], inputs["A"], inputs["B"],
                                inputs["C"], state=inputs["state"])
    assert y.shape == (0, 5) and not launches


def _arguments(**changes):
    """Valid arguments of a grouped, pooled step (B=2, d=6, n=4, g=2, N=5), then ``changes``."""
    arguments = {"u": torch.randn(2, 6), "delta": torch.rand(2, 6), "A": -torch.rand(6, 4),
                 "B": torch.randn(2, 2, 4), "C": torch.randn(2, 2, 4), "D": torch.randn(6),
                 "z": torch.randn(2, 6), "delta_bias": torch.rand(6),
                 "state": torch.zeros(5, 6, 4), "state_indices": torch.tensor([3, 1])}
    return {**arguments, **changes}


@pytest.mark.parametrize("changes, error, message", [
    ({"u": torch.randn(2, 6, 1)}, ValueError, "u must have 2 dimensions"),
    ({"delta": torch.rand(2, 5)}, ValueError, r"delta must have shape \(2, 6\)"),
    ({"A": -torch.rand(5, 4)}, ValueError, r"A must have shape \(6, n\)"),
    ({"B": torch.randn(2, 4, 4, 1)}, ValueError, "B must have 2"),
    ({"B": torch.randn(2, 4, 4), "C": torch.randn(2, 4, 4)}, ValueError,
     "4 groups, which must divide d=6"),
    ({"C": torch.randn(2, 2, 5)}, ValueError, r"C must have shape \(2, 2, 4\)"),
    ({"z": torch.randn(2, 6, dtype=torch.bfloat16)}, TypeError, "mixed dtypes"),
    ({"u": torch.randint(0, 3, (2, 6))}, TypeError, "u has dtype int64"),
    ({"D": torch.randn(6, 1)}, ValueError, "D must have 1 dimensions"),
    ({"delta_bias": torch.rand(6, dtype=torch.float64)}, TypeError, "delta_bias has dtype"),
    ({"state": torch.zeros(5, 6, 3)}, ValueError, r"state must have shape \(N, 6, 4\)"),
    ({"state": torch.zeros(5, 6, 4, dtype=torch.bfloat16)}, TypeError, "state has dtype"),
    ({"state": [0.0]}, TypeError, "state must be a torch.Tensor"),
    ({"state_indices": None}, ValueError, "pass state_indices"),
    ({"state_indices": torch.tensor([3.0, 1.0])}, TypeError, "int32 or int64"),
    ({"state_indices": torch.tensor([3, 1, 0])}, ValueError, "state_indices must have shape"),
    ({"state_indices": torch.tensor([5, 1])}, ValueError, "must be < N=5"),
    ({"state_indices": torch.tensor([3, 1], device="meta")}, ValueError, "meta tensor"),
])
def test_bad_arguments_raise_one_line_before_any_launch(changes, error, message):
    with capture_launches() as launches, pytest.raises(error, match=message) as raised:
        selective_scan_step(**_arguments(**changes))
    assert "\n" not in str(raised.value) and not launches


def test_a_bad_config_is_named():
    with pytest.raises(ValueError, match="BN=7"):
        selective_scan_step(**_arguments(), config={"BN": 7})
