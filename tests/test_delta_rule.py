"""delta_rule against its independent float64 recurrence, in the Triton interpreter.

Covers the odd verify shapes (T not a multiple of BT, K != V, all three gates, with and without
an initial state, fp32 and bf16, final state included), every kernel instantiation of the tiny
preset's valid configs, bad arguments, empty sequences, non-contiguous inputs, unnormalised
keys, and long sequences with strong decay and beta near 1.
"""
from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from seqtune.kernels import delta_rule
from seqtune.kernels.delta_rule import stages as delta_stages
from seqtune.kernels.delta_rule.reference import delta_rule_reference
from seqtune.registry import get_spec
from seqtune.spec import INTERPRETER_LIMITS, DeviceLimits
from seqtune.agreement import check_case, compare

SPEC = get_spec("delta_rule")
TUNED_PER_DEVICE_ONLY = ("num_warps", "num_stages")
A100 = DeviceLimits(backend="cuda", shared_memory_per_block=166912, compute_capability=(8, 0))
H100 = DeviceLimits(backend="cuda", shared_memory_per_block=232448, compute_capability=(9, 0))


def _label(problem):
    return (f"{problem['gate']}-{problem['dtype']}-T{problem['T']}-K{problem['K']}"
            f"-V{problem['V']}-{'h0' if problem['initial_state'] else 'zero'}")


@pytest.mark.parametrize("problem", SPEC.verify_cases, ids=_label)
def test_default_config_agrees_on_odd_shapes(problem):
    agreement = check_case(SPEC, problem, dict(SPEC.default_config))
    assert agreement.ok, agreement.detail


def _stage_configs(problem):
    """Every distinct kernel launch among the valid configs: for each BT, each stage's tile
    settings with the other stages at their defaults. A stage's outputs depend only on BT, its
    own knobs and its inputs, so this launches every kernel any valid config launches; warps
    and stages change nothing in the interpreter."""
    default = dict(SPEC.default_config)
    configs = []
    for chunk in SPEC.space["BT"]:
        for stage in SPEC.stages:
            tiles = [p for p in SPEC.space if SPEC.stage_of(p) == stage
                     and not p.endswith(TUNED_PER_DEVICE_ONLY)]
            for values in itertools.product(*(SPEC.space[p] for p in tiles)):
                config = {**default, "BT": chunk, **dict(zip(tiles, values))}
                valid = SPEC.check(config, problem, INTERPRETER_LIMITS) is None
                if valid and config not in configs:
                    configs.append(config)
    return configs


@pytest.mark.parametrize("problem", SPEC.presets["tiny"], ids=_label)
def test_every_tiny_config_agrees(problem):
    inputs = SPEC.make_inputs(problem, "cpu", 0)
    reference = SPEC.reference(inputs)
    configs = _stage_configs(problem)
    assert {c["BT"] for c in configs} == set(SPEC.space["BT"])
    failures = []
    for config in configs:
        agreement = check_case(SPEC, problem, config, inputs=inputs, reference=reference)
        if not agreement.ok:
            failures.append(f"{config}: {agreement.detail}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("limits", [A100, H100], ids=["sm80", "sm90"])
def test_default_config_is_valid_for_every_preset_and_verify_problem(limits):
    """The default, except at K = 256 where the state slice narrows to h.BV = 16 (at 32 it
    spilled on sm_80)."""
    problems = [p for preset in SPEC.presets.values() for p in preset] + list(SPEC.verify_cases)
    narrowed = {**SPEC.default_config, "h.BV": 16}
    for problem in problems:
        config = SPEC.default_for(problem, limits)
        assert SPEC.check(config, problem, limits) is None, _label(problem)
        assert config == (narrowed if problem["K"] > 128 else SPEC.default_config), _label(problem)


def test_check_rejects_tiles_beyond_the_head_dims_and_oversized_state_slices():
    problem = SPEC.presets["tiny"][0]
    assert "wy.BK" in SPEC.check({**SPEC.default_config, "wy.BK": 64}, problem, H100)
    assert "o.BV" in SPEC.check({**SPEC.default_config, "o.BV": 128}, problem, H100)
    assert "h.BV" in SPEC.check({**SPEC.default_config, "h.BV": 64}, problem, H100)
    wide = {**problem, "K": 256, "V": 256}
    assert "registers" in SPEC.check(
        {**SPEC.default_config, "h.BV": 64, "h.num_warps": 2}, wide, H100)
    assert "shared memory" in SPEC.check(
        {**SPEC.default_config, "h.BV": 16, "h.num_warps": 8, "h.num_stages": 3}, wide, A100)


WIDE_TILES = {"wy.BK": 64, "wy.BV": 64, "h.BV": 64, "o.BK": 64, "o.BV": 64}


@pytest.mark.parametrize("problem", SPEC.verify_cases[:3], ids=_label)
def test_whole_head_tiles_agree(problem):
    """Tiles covering all of K and V at once (the tiny preset only reaches the narrow ones)."""
    agreement = check_case(SPEC, problem, SPEC.validate_config(WIDE_TILES))
    assert agreement.ok, agreement.detail


def test_float16_agrees():
    problem = {**SPEC.verify_cases[2], "dtype": "float16"}
    agreement = check_case(SPEC, problem, dict(SPEC.default_config))
    assert agreement.ok, agreement.detail


def _inputs(batch=1, length=37, heads=2, key_dim=32, value_dim=40, gate="scalar",
            dtype=torch.float32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(batch, length, heads, key_dim, generator=generator), dim=-1)
    k = F.normalize(torch.randn(batch, length, heads, key_dim, generator=generator), dim=-1)
    v = torch.randn(batch, length, heads, value_dim, generator=generator)
    beta = torch.sigmoid(torch.randn(batch, length, heads, generator=generator))
    gate_shape = {"none": None, "scalar": (batch, length, heads),
                  "channel": (batch, length, heads, key_dim)}[gate]
    g = None if gate_shape is None else F.logsigmoid(torch.randn(*gate_shape,
                                                                 generator=generator) + 2)
    cast = [t.to(dtype) for t in (q, k, v, beta)]
    return (*cast, None if g is None else g.to(dtype))


def _agreement(outputs, q, k, v, beta, g, initial_state=None, scale=None):
    reference = delta_rule_reference(q, k, v, beta, g, scale=scale, initial_state=initial_state)
    return compare(outputs, reference, SPEC.tolerances["float32"])


def test_no_final_state_unless_asked():
    q, k, v, beta, g = _inputs(length=20, gate="none")
    out, final = delta_rule(q, k, v, beta, g)
    assert final is None
    assert out.shape == (1, 20, 2, 40) and out.dtype == torch.float32


def test_non_contiguous_inputs_and_an_explicit_scale():
    """Head-major tensors seen as [B, T, H, D], and a strided state."""
    q, k, v, beta, g = _inputs(length=37, gate="channel")
    strided = [t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v, g)]
    beta_strided = beta.transpose(1, 2).contiguous().transpose(1, 2)
    state = torch.randn(1, 2, 40, 32).transpose(2, 3)
    assert not any(t.is_contiguous() for t in (*strided, beta_strided, state))
    q_s, k_s, v_s, g_s = strided
    outputs = delta_rule(q_s, k_s, v_s, beta_strided, g_s, scale=0.3, initial_state=state,
                         output_final_state=True)
    agreement = _agreement(outputs, q, k, v, beta, g, initial_state=state, scale=0.3)
    assert agreement.ok, agreement.detail


@pytest.mark.parametrize("with_state", [False, True])
def test_empty_sequence_returns_empty_outputs_without_launching(monkeypatch, with_state):
    monkeypatch.setattr(delta_stages, "launch", _refuse_launch)
    q, k, v, beta, g = _inputs(length=0, gate="scalar", dtype=torch.bfloat16)
    state = torch.randn(1, 2, 32, 40) if with_state else None
    out, final = delta_rule(q, k, v, beta, g, initial_state=state, output_final_state=True)
    assert out.shape == (1, 0, 2, 40) and out.dtype == torch.bfloat16
    expected = state if with_state else torch.zeros(1, 2, 32, 40)
    assert final.dtype == torch.float32 and torch.equal(final, expected)


def _refuse_launch(*args, **kwargs):
    raise AssertionError("a kernel was launched")


def _bad_arguments():
    """(case id, function of the good inputs returning call arguments, error, message part)."""
    def replace(**changes):
        def build(q, k, v, beta, g):
            good = {"q": q, "k": k, "v": v, "beta": beta, "g": g}
            return good | {name: change(good) if callable(change) else change
                           for name, change in changes.items()}
        return build

    def with_option(**options):
        return lambda q, k, v, beta, g: {"q": q, "k": k, "v": v, "beta": beta, "g": g,
                                         **options}

    return [
        ("q-rank", replace(q=lambda a: a["q"][0]), ValueError, "q must have 4 dimensions"),
        ("q-not-tensor", replace(q=lambda a: a["q"].tolist()), TypeError, "q must be a torch"),
        ("k-shape", replace(k=lambda a: a["k"][:, :-1]), ValueError, "k must have shape"),
        ("v-shape", replace(v=lambda a: a["v"][:, :, :1]), ValueError, "v must have shape"),
        ("beta-shape", replace(beta=lambda a: a["beta"][..., None]), ValueError, "beta must"),
        ("g-shape", replace(g=lambda a: a["g"][:, :, :1]), ValueError, "g must have shape"),
        ("head-dim-small", replace(q=lambda a: a["q"][..., :8], k=lambda a: a["k"][..., :8],
                                   g=None), ValueError, "head dim K=8 unsupported"),
        ("head-dim-large", replace(v=lambda a: torch.zeros(*a["v"].shape[:3], 320)),
         ValueError, "head dim V=320 unsupported"),
        ("integer", replace(q=lambda a: a["q"].to(torch.int32)), TypeError, "q has dtype int32"),
        ("mixed", replace(v=lambda a: a["v"].to(torch.bfloat16)), TypeError, "mixed dtypes"),
        ("gate-dtype", replace(g=lambda a: a["g"].double()), TypeError,
         "g has dtype float64, expected one of float32"),
        ("beta-dtype", replace(beta=lambda a: a["beta"].half()), TypeError,
         "beta has dtype float16"),
        ("value-heads", replace(v=lambda a: torch.zeros(1, 5, 3, 40)), ValueError,
         "HV a multiple of H=2"),
        ("device", replace(beta=lambda a: a["beta"].to("meta")), ValueError,
         "different devices"),
        ("state-shape", with_option(initial_state=torch.zeros(1, 2, 40, 32)), ValueError,
         "initial_state must have shape (1, 2, 32, 40)"),
        ("state-dtype", with_option(initial_state=torch.zeros(1, 2, 32, 40,
                                                                dtype=torch.int32)),
         TypeError, "initial_state has dtype int32"),
        ("scale-type", with_option(scale="big"), TypeError, "scale must be a real number"),
        ("config-tile", with_option(config={"wy.BK": 64}), ValueError, "wy.BK=64 exceeds"),
        ("config-key", with_option(config={"BLOCK_M": 64}), ValueError, "unknown config key"),
    ]


@pytest.mark.parametrize("build, error, message",
                         [case[1:] for case in _bad_arguments()],
                         ids=[case[0] for case in _bad_arguments()])
def test_bad_arguments_raise_one_line_errors_before_launching(monkeypatch, build, error,
                                                              message):
    monkeypatch.setattr(delta_stages, "launch", _refuse_launch)
    kwargs = build(*_inputs(length=5, gate="scalar"))
    with pytest.raises(error) as caught:
        delta_rule(**kwargs)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_unnormalised_keys_give_finite_agreeing_outputs():
    """Keys of norm 1.5 (beta ||k||^2 up to 2.25: the recurrence itself then grows)."""
    q, k, v, beta, g = _inputs(length=70, key_dim=32, value_dim=32, gate="scalar")
    k = 1.5 * k
    outputs = delta_rule(q, k, v, beta, g, output_final_state=True, config={"BT": 32})
    assert all(torch.isfinite(t).all() for t in outputs)
    agreement = _agreement(outputs, q, k, v, beta, g)
    assert agreement.max_rel_err < 1e-4, agreement


@pytest.mark.parametrize("gate", ["scalar", "channel"])
def test_long_sequence_with_strong_decay_and_beta_near_one(gate):
    """T in the thousands, log decays down to -30 per step (factors to 1e-13) and beta ~ 1:
    every exponent the kernels take is a decay, so nothing overflows."""
    q, k, v, beta, _ = _inputs(length=2000, heads=1, key_dim=32, value_dim=32, gate="none",
                               seed=1)
    generator = torch.Generator().manual_seed(2)
    gate_shape = (1, 2000, 1) if gate == "scalar" else (1, 2000, 1, 32)
    g = -30.0 * torch.rand(*gate_shape, generator=generator) ** 4
    beta = torch.full_like(beta, 0.999)
    outputs = delta_rule(q, k, v, beta, g, output_final_state=True)
    assert all(torch.isfinite(t).all() for t in outputs)
    agreement = _agreement(outputs, q, k, v, beta, g)
    assert agreement.ok, agreement.detail
