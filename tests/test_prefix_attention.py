"""prefix_attention against its float64 prefix-softmax formula: odd shapes, every tiny-preset
tile, large scores, bad input."""
import pytest
import torch

import seqtune.kernels
from seqtune.launch import capture_launches
from seqtune.registry import get_spec
from seqtune.agreement import check_case
from tile_cases import assert_configs_agree, distinct_tiles
from seqtune.kernels.prefix_attention.op import prefix_attention

SPEC = get_spec("prefix_attention")


def assert_matches_reference(o, inputs, dtype="float32"):
    tolerance = SPEC.tolerances[dtype]
    torch.testing.assert_close(o.double(), SPEC.reference(inputs)[0], atol=tolerance.atol,
                               rtol=tolerance.rtol)


@pytest.mark.parametrize("problem", SPEC.verify_cases, ids=str)
def test_default_config_agrees_on_odd_shapes(problem):
    agreement = check_case(SPEC, problem, dict(SPEC.default_config))
    assert agreement.ok, agreement.detail


@pytest.mark.parametrize("problem", SPEC.presets["tiny"], ids=str)
def test_every_tiny_preset_tile_agrees(problem):
    configs = distinct_tiles(SPEC, problem, ("BLOCK_T", "BLOCK_DV"))
    assert len(configs) > 1
    assert_configs_agree(SPEC, problem, configs)


def _large_score_inputs(dtype):
    """Scores of about +-100 that jump by ~200 between steps: exp of any score, or of a score
    less the max so far, overflows fp32; only non-positive differences are safe."""
    generator = torch.Generator().manual_seed(3)
    head_dim, length = 16, 70
    q = torch.randn(1, 2, head_dim, generator=generator)
    q = q / q.norm(dim=-1, keepdim=True)
    signs = torch.where(torch.rand(length, generator=generator) < 0.5, -1.0, 1.0)
    magnitudes = 60 + 40 * torch.rand(1, length, 2, 1, generator=generator)
    k = signs[None, :, None, None] * magnitudes * q[:, None]
    k = k + 0.1 * torch.randn(1, length, 2, head_dim, generator=generator)
    v = torch.randn(1, length, 2, head_dim, generator=generator)
    return {"q": q.to(dtype), "k": k.to(dtype), "v": v.to(dtype), "scale": 1.0}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_large_scores_stay_finite_and_exact(dtype):
    inputs = _large_score_inputs(dtype)
    scores = torch.einsum("bhd,bthd->bht", inputs["q"].double(), inputs["k"].double())
    assert scores.abs().max() > 90 and scores.max() - scores.min() > 150
    o = prefix_attention(inputs["q"], inputs["k"], inputs["v"], scale=1.0,
                         config={"BLOCK_T": 16})
    assert torch.isfinite(o).all()
    assert_matches_reference(o, inputs, "float32" if dtype == torch.float32 else "bfloat16")


def test_scale_defaults_to_inverse_sqrt_head_dim():
    inputs = SPEC.make_inputs({"B": 1, "T": 9, "H": 2, "D": 16, "dtype": "float32"}, "cpu", 0)
    explicit = prefix_attention(inputs["q"], inputs["k"], inputs["v"], scale=0.25)
    torch.testing.assert_close(prefix_attention(inputs["q"], inputs["k"], inputs["v"]), explicit)
    assert_matches_reference(explicit, {**inputs, "scale": 0.25})


def test_non_contiguous_inputs():
    generator = torch.Generator().manual_seed(4)
    q = torch.randn(20, 3, 2, generator=generator).permute(2, 1, 0)  # [2, 3, 20], D strided
    k = torch.randn(2, 3, 11, 20, generator=generator).transpose(1, 2)  # [2, 11, 3, 20]
    v = torch.randn(2, 11, 3, 40, generator=generator)[..., ::2]  # D strided
    assert q.stride(-1) != 1 and not k.is_contiguous() and v.stride(-1) != 1
    o = prefix_attention(q, k, v)
    assert_matches_reference(o, {"q": q, "k": k, "v": v, "scale": None})


def test_public_name_calls_the_op():
    inputs = SPEC.make_inputs({"B": 1, "T": 5, "H": 1, "D": 8, "dtype": "float32"}, "cpu", 0)
    for _ in range(2):  # the second lookup finds the imported package, which must still call
        torch.testing.assert_close(
            seqtune.kernels.prefix_attention(inputs["q"], inputs["k"], inputs["v"]),
            prefix_attention(inputs["q"], inputs["k"], inputs["v"]))


def test_empty_sequence_returns_without_launching():
    with capture_launches() as launches:
        o = prefix_attention(torch.randn(2, 3, 8), torch.randn(2, 0, 3, 8), torch.randn(2, 0, 3, 8))
    assert o.shape == (2, 0, 3, 8) and launches == []


def _bad(**overrides):
    inputs = {"q": torch.randn(2, 3, 8), "k": torch.randn(2, 5, 3, 8), "v": torch.randn(2, 5, 3, 8)}
    inputs.update(overrides)
    return inputs


@pytest.mark.parametrize("overrides, error, message", [
    ({"q": torch.randn(2, 1, 3, 8)}, ValueError, "q must have 3 dimensions"),
    ({"k": torch.randn(2, 5, 24)}, ValueError, "k must have 4 dimensions"),
    ({"v": torch.randn(2, 6, 3, 8)}, ValueError, r"v must have shape \(2, 5, 3, 8\)"),
    ({"q": torch.randn(2, 4, 8)}, ValueError, r"q must have shape \(2, 3, 8\)"),
    ({"q": torch.randn(2, 3, 512), "k": torch.randn(2, 5, 3, 512),
      "v": torch.randn(2, 5, 3, 512)}, ValueError, "head dim D=512 is not supported"),
    ({"k": torch.ones(2, 5, 3, 8, dtype=torch.int32)}, TypeError, "k has dtype int32"),
    ({"v": torch.randn(2, 5, 3, 8).half()}, TypeError, "mixed dtypes"),
    ({"q": torch.randn(2, 3, 8, device="meta")}, ValueError, "different devices"),
])
def test_bad_arguments_raise_before_launch(overrides, error, message):
    with capture_launches() as launches, pytest.raises(error, match=message):
        prefix_attention(**_bad(**overrides))
    assert launches == []


@pytest.mark.parametrize("config, message", [
    ({"BLOCK_M": 16}, "unknown config key"),
    ({"BLOCK_DV": 128}, "BLOCK_DV=128 exceeds the padded D"),
    ({"BLOCK_T": 64, "num_warps": 1}, "would spill registers"),
])
def test_bad_configs_raise(config, message):
    inputs = _bad(q=torch.randn(1, 1, 8), k=torch.randn(1, 200, 1, 8), v=torch.randn(1, 200, 1, 8))
    with pytest.raises(ValueError, match=message):
        prefix_attention(**inputs, config=config)
