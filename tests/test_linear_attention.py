"""linear_attention and ssd against their float64 recurrences (run with TRITON_INTERPRET=1)."""
from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

import seqtune.kernels
from seqtune.kernels.linear_attention.op import linear_attention
from seqtune.kernels.linear_attention.reference import linear_attention_reference, ssd_reference
from seqtune.kernels.linear_attention.ssd import ssd
from seqtune.launch import capture_launches
from seqtune.registry import get_spec
from seqtune.spec import INTERPRETER_LIMITS
from seqtune.agreement import check_case, compare

SPEC_NAMES = ("linear_attention", "ssd")
LA, SSD = get_spec("linear_attention"), get_spec("ssd")


def _case_id(problem: dict) -> str:
    return "-".join(f"{k}{v}" for k, v in problem.items())


@pytest.mark.parametrize("name,problem", [(name, case) for name in SPEC_NAMES
                                          for case in get_spec(name).verify_cases],
                         ids=lambda p: p if isinstance(p, str) else _case_id(p))
def test_verify_cases_agree_with_recurrence(name, problem):
    """Odd shapes (T not a multiple of BT, K != V), all gates, with and without initial state,
    fp32 and bf16, outputs and final state, with NaN-poisoned outputs."""
    spec = get_spec(name)
    agreement = check_case(spec, problem, dict(spec.default_config))
    assert agreement.ok, agreement.detail


def _distinct_configs(spec, problem):
    """The valid configs of a problem, one per distinct computation: num_warps and num_stages
    do not change what the interpreter computes, so they stay at their defaults."""
    tiles = [k for k in spec.space if not k.endswith(("num_warps", "num_stages"))]
    configs = [{**spec.default_config, **dict(zip(tiles, values))}
               for values in itertools.product(*(spec.space[k] for k in tiles))]
    return [c for c in configs if spec.check(c, problem, INTERPRETER_LIMITS) is None]


@pytest.mark.parametrize("name,problem", [(name, p) for name in SPEC_NAMES
                                          for p in get_spec(name).presets["tiny"]],
                         ids=lambda p: p if isinstance(p, str) else _case_id(p))
def test_every_valid_tiny_config_agrees(name, problem):
    spec = get_spec(name)
    inputs = spec.make_inputs(problem, "cpu", 0)
    reference = spec.reference(inputs)
    configs = _distinct_configs(spec, problem)
    assert len(configs) >= 3  # every chunk size that fits the sequence
    for config in configs:
        agreement = check_case(spec, problem, config, inputs=inputs, reference=reference)
        assert agreement.ok, f"{config}: {agreement.detail}"


# Every tile size of every stage, on a head size that makes every tile valid and none divide
# it. The stages meet only through BT-shaped buffers, so covering each knob's values (with
# BK != BV mixes) covers their products.
TILE_PROBLEM = {"B": 1, "T": 40, "H": 1, "K": 100, "V": 72, "gate": "channel",
                "initial_state": True, "dtype": "bfloat16"}
TILE_CONFIGS = [
    {"BT": 32, "intra.BK": tile, "h.BK": tile, "h.BV": tile, "o.BK": tile, "o.BV": tile,
     "h.num_warps": 8 if tile == 128 else 4, "o.num_warps": 8 if tile == 128 else 4}
    for tile in (32, 64, 128)
] + [{"BT": 16, "intra.BK": 64, "h.BK": 128, "h.BV": 32, "o.BK": 32, "o.BV": 128}]


def test_every_stage_tile_agrees():
    inputs = LA.make_inputs(TILE_PROBLEM, "cpu", 1)
    reference = LA.reference(inputs)
    for config in TILE_CONFIGS:
        full = LA.validate_config(config)
        assert LA.check(full, TILE_PROBLEM, INTERPRETER_LIMITS) is None
        agreement = check_case(LA, TILE_PROBLEM, full, inputs=inputs, reference=reference)
        assert agreement.ok, f"{config}: {agreement.detail}"


def _strong_decay(*shape: int, generator: torch.Generator) -> torch.Tensor:
    """Log decays from -0.001 to -30 per step: exp of a chunk's cumulative decay is far below
    the fp32 range, and exp of its negation far above."""
    return -torch.exp(torch.empty(*shape).uniform_(-7, 3.4, generator=generator))


@pytest.mark.parametrize("gate,T,BT", [("scalar", 2048, 64), ("channel", 1024, 64)])
def test_strong_decay_long_sequence_is_finite_and_exact(gate, T, BT):
    gen = torch.Generator().manual_seed(3)
    B, H, K, V = 1, 1, 16, 16
    q, k, v = (torch.randn(B, T, H, D, generator=gen) for D in (K, K, V))
    g = _strong_decay(B, T, H, *((K,) if gate == "channel" else ()), generator=gen)
    # exp(-cumulative decay) over the first chunk already overflows fp32 (max ~ e^88.7)
    assert (-g[:, :BT].sum(dim=1)).max() > 88.8
    o, final = linear_attention(q, k, v, g, output_final_state=True, config={"BT": BT})
    assert torch.isfinite(o).all() and torch.isfinite(final).all()
    expected = linear_attention_reference(q, k, v, g)
    agreement = compare((o, final), expected, LA.tolerances["float32"])
    assert agreement.ok, agreement.detail


def test_ssd_strong_decay_long_sequence_is_finite_and_exact():
    gen = torch.Generator().manual_seed(4)
    b, T, h, g, n, p = 1, 2048, 2, 1, 16, 16
    x = torch.randn(b, T, h, p, generator=gen)
    B, C = torch.randn(b, T, g, n, generator=gen), torch.randn(b, T, g, n, generator=gen)
    dt = torch.rand(b, T, h, generator=gen) * 2
    A = torch.tensor([-40.0, -0.01])
    assert (-(dt[:, :64, 0] * A[0]).sum()) > 88.8  # one default chunk overflows exp(-b) in fp32
    y, final = ssd(x, dt, A, B, C, output_final_state=True)
    assert torch.isfinite(y).all() and torch.isfinite(final).all()
    agreement = compare((y, final), ssd_reference(x, dt, A, B, C), SSD.tolerances["float32"])
    assert agreement.ok, agreement.detail


def test_default_config_scale_and_no_final_state():
    gen = torch.Generator().manual_seed(5)
    q, k = torch.randn(2, 50, 2, 24, generator=gen), torch.randn(2, 50, 2, 24, generator=gen)
    v = torch.randn(2, 50, 2, 20, generator=gen)
    g = F.logsigmoid(torch.randn(2, 50, 2, generator=gen) + 2)
    o, final = linear_attention(q, k, v, g, scale=0.3)
    assert final is None and o.dtype == q.dtype
    expected, _ = linear_attention_reference(q, k, v, g, scale=0.3)
    assert compare((o,), (expected,), LA.tolerances["float32"]).ok


def test_float16():
    problem = {"B": 1, "T": 50, "H": 2, "K": 40, "V": 24, "gate": "scalar",
               "initial_state": True, "dtype": "float16"}
    agreement = check_case(LA, problem, dict(LA.default_config))
    assert agreement.ok, agreement.detail


def test_ssd_without_bias_softplus_or_skip():
    gen = torch.Generator().manual_seed(6)
    b, T, h, g, n, p = 1, 37, 4, 2, 24, 40
    x = torch.randn(b, T, h, p, generator=gen)
    B, C = torch.randn(b, T, g, n, generator=gen), torch.randn(b, T, g, n, generator=gen)
    dt = torch.rand(b, T, h, generator=gen) * 0.2
    A = -torch.rand(h, generator=gen) * 4
    y, final = ssd(x, dt, A, B, C, output_final_state=True)
    agreement = compare((y, final), ssd_reference(x, dt, A, B, C), SSD.tolerances["float32"])
    assert agreement.ok, agreement.detail


def test_non_contiguous_inputs():
    gen = torch.Generator().manual_seed(7)
    B, T, H, K, V = 2, 45, 2, 24, 40
    fused = torch.randn(B, T, H, 2 * K + V, generator=gen)  # q, k, v sliced out of one tensor
    q, k, v = fused[..., :K], fused[..., K:2 * K], fused[..., 2 * K:]
    g = F.logsigmoid(torch.randn(B, H, K, T, generator=gen) + 2).permute(0, 3, 1, 2)
    state = torch.randn(B, H, V, K, generator=gen).transpose(2, 3)
    assert not any(t.is_contiguous() for t in (q, k, v, g, state))
    out = linear_attention(q, k, v, g, initial_state=state, output_final_state=True)
    expected = linear_attention_reference(q, k, v, g, initial_state=state)
    assert compare(out, expected, LA.tolerances["float32"]).ok


def test_ssd_non_contiguous_inputs():
    gen = torch.Generator().manual_seed(8)
    b, T, h, g, n, p = 1, 33, 2, 1, 16, 24
    x = torch.randn(b, h, T, p, generator=gen).transpose(1, 2)
    BC = torch.randn(b, T, g, 2 * n, generator=gen)
    B, C = BC[..., :n], BC[..., n:]
    dt = torch.randn(b, h, T, generator=gen).transpose(1, 2)
    A, D, bias = -torch.rand(h, generator=gen) * 8, torch.randn(2 * h, generator=gen)[::2], None
    out = ssd(x, dt, A, B, C, D=D, dt_bias=bias, dt_softplus=True, output_final_state=True)
    expected = ssd_reference(x, dt, A, B, C, D, bias, True)
    assert compare(out, expected, SSD.tolerances["float32"]).ok


def _la_args(B=1, T=20, H=2, K=16, V=8, dtype=torch.float32):
    return [torch.randn(B, T, H, K, dtype=dtype), torch.randn(B, T, H, K, dtype=dtype),
            torch.randn(B, T, H, V, dtype=dtype)]


def _replace(args, index, value):
    return [value if i == index else a for i, a in enumerate(args)]


LA_BAD = [
    ("q rank", lambda a: (_replace(a, 0, a[0][0]), {}), ValueError, "q must have 4 dimensions"),
    ("k shape", lambda a: (_replace(a, 1, a[1][:, :10]), {}), ValueError, "k must have shape"),
    ("v batch", lambda a: (_replace(a, 2, torch.randn(2, 20, 2, 8)), {}), ValueError,
     "v must have shape"),
    ("int q", lambda a: (_replace(a, 0, a[0].to(torch.int32)), {}), TypeError, "q has dtype int32"),
    ("mixed", lambda a: (_replace(a, 1, a[1].bfloat16()), {}), TypeError, "mixed dtypes"),
    ("head dim", lambda a: (_la_args(K=600), {}), ValueError, "K (the last dim of q and k)"),
    ("g shape", lambda a: (a + [torch.zeros(1, 20, 3)], {}), ValueError, "g must have shape"),
    ("g rank", lambda a: (a + [torch.zeros(1, 20)], {}), ValueError, "g must have shape"),
    ("g dtype", lambda a: (a + [torch.zeros(1, 20, 2, dtype=torch.float16)], {}), TypeError,
     "g has dtype float16"),
    ("state", lambda a: (a, {"initial_state": torch.zeros(1, 2, 8, 16)}), ValueError,
     "initial_state must have shape (1, 2, 16, 8)"),
    ("device", lambda a: (_replace(a, 2, a[2].to("meta")), {}), ValueError, "different devices"),
    ("config key", lambda a: (a, {"config": {"BK": 32}}), ValueError, "unknown config key"),
    ("config value", lambda a: (a, {"config": {"BT": 48}}), ValueError, "BT=48"),
    ("config fit", lambda a: (a, {"config": {"BT": 128}}), ValueError, "BT=128 exceeds"),
]


@pytest.mark.parametrize("make,error,message", [c[1:] for c in LA_BAD],
                         ids=[c[0] for c in LA_BAD])
def test_linear_attention_bad_arguments(make, error, message):
    args, kwargs = make(_la_args())
    with capture_launches() as launched, pytest.raises(error, match=message.replace("(", r"\(")
                                                       .replace(")", r"\)")):
        linear_attention(*args, **kwargs)
    assert not launched


def _ssd_args(b=1, T=12, h=4, g=2, n=8, p=16):
    return {"x": torch.randn(b, T, h, p), "dt": torch.rand(b, T, h), "A": -torch.rand(h),
            "B": torch.randn(b, T, g, n), "C": torch.randn(b, T, g, n)}


SSD_BAD = [
    ("groups", {"B": torch.randn(1, 12, 3, 8), "C": torch.randn(1, 12, 3, 8)}, ValueError,
     "multiple of the groups"),
    ("C shape", {"C": torch.randn(1, 12, 2, 4)}, ValueError, "C must have shape"),
    ("dt shape", {"dt": torch.rand(1, 12, 2)}, ValueError, "dt must have shape"),
    ("A rank", {"A": -torch.rand(4, 1)}, ValueError, "A must have 1 dimensions"),
    ("D shape", {"D": torch.ones(3)}, ValueError, "D must have shape"),
    ("dt_bias dtype", {"dt_bias": torch.ones(4, dtype=torch.int64)}, TypeError, "dt_bias has"),
    ("x dtype", {"x": torch.randn(1, 12, 4, 16).bfloat16()}, TypeError, "mixed dtypes"),
    ("state", {"initial_state": torch.zeros(1, 4, 16, 8)}, ValueError, "initial_state must"),
]


@pytest.mark.parametrize("override,error,message", [c[1:] for c in SSD_BAD],
                         ids=[c[0] for c in SSD_BAD])
def test_ssd_bad_arguments(override, error, message):
    kwargs = {**_ssd_args(), **override}
    with capture_launches() as launched, pytest.raises(error, match=message):
        ssd(**kwargs)
    assert not launched


@pytest.mark.parametrize("with_state", [False, True])
def test_empty_sequence_launches_nothing(with_state):
    q, k, v = _la_args(T=0)
    state = torch.randn(1, 2, 16, 8) if with_state else None
    with capture_launches() as launched:
        o, final = linear_attention(q, k, v, torch.zeros(1, 0, 2), initial_state=state,
                                    output_final_state=True)
        y, ssd_final = ssd(**_ssd_args(T=0), output_final_state=True)
    assert not launched
    assert o.shape == (1, 0, 2, 8) and y.shape == (1, 0, 4, 16)
    expected = state if with_state else torch.zeros(1, 2, 16, 8)
    assert torch.equal(final, expected) and final.dtype == torch.float32
    assert torch.equal(ssd_final, torch.zeros(1, 4, 8, 16))


def test_public_names_call_the_ops():
    """``seqtune.kernels.linear_attention`` is also the name of the kernel package, which the
    registry has imported by now: it must still call the op."""
    q, k, v = _la_args(T=5)
    expected = linear_attention(q, k, v)[0]
    assert torch.equal(seqtune.kernels.linear_attention(q, k, v)[0], expected)
    args = _ssd_args(T=5)
    assert torch.equal(seqtune.kernels.ssd(**args)[0], ssd(**args)[0])
