"""attention_decode against its float64 reference (ragged caches, GQA/MQA/MHA, every tile config
of the tiny preset), its argument checks, empty inputs, strided inputs and its config rules."""
import math

import pytest
import torch

from seqtune.kernels.attention_decode.op import attention_decode
from seqtune.kernels.attention_decode.reference import attention_decode_reference
from seqtune.kernels.attention_decode.spec import cache_lengths
from seqtune.launch import capture_launches, poisoned_outputs
from seqtune.registry import get_spec
from seqtune.spec import DTYPES, INTERPRETER_LIMITS, DeviceLimits
from seqtune.agreement import check_case, compare

SPEC = get_spec("attention_decode")
A100_LIMITS = DeviceLimits(backend="cuda", shared_memory_per_block=166912, sm_count=108,
                           compute_capability=(8, 0))
H100_LIMITS = DeviceLimits(backend="cuda", shared_memory_per_block=232448, sm_count=132,
                           compute_capability=(9, 0))


def tile_configs(problem):
    """The valid configs of ``problem``, one per (NUM_SPLITS, split.BLOCK_N): configs differing
    only in warps or stages compute the same in the interpreter."""
    seen = {}
    for config in SPEC.configs():
        key = (config["NUM_SPLITS"], config["split.BLOCK_N"])
        if key not in seen and SPEC.check(config, problem, INTERPRETER_LIMITS) is None:
            seen[key] = config
    return list(seen.values())


def problem_id(problem):
    return "B{B}-Hq{Hq}-Hkv{Hkv}-D{D}-S{S}-{dtype}".format(**problem)


TINY_CASES = [(problem, config) for problem in SPEC.presets["tiny"]
              for config in tile_configs(problem)]


def run_and_compare(q, k_cache, v_cache, lengths, config, scale=None):
    with poisoned_outputs():
        out = attention_decode(q, k_cache, v_cache, lengths, scale=scale, config=config)
    assert out.dtype == q.dtype and out.shape == q.shape
    reference = attention_decode_reference(q, k_cache, v_cache, lengths, scale=scale)
    agreement = compare((out,), (reference,), SPEC.tolerances[str(q.dtype).removeprefix("torch.")])
    assert agreement.ok, agreement.detail
    return out


def random_inputs(batch, num_q_heads, num_kv_heads, head_dim, capacity, dtype, seed=0):
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, num_q_heads, head_dim, generator=generator).to(dtype)
    k_cache, v_cache = (torch.randn(batch, capacity, num_kv_heads, head_dim,
                                    generator=generator).to(dtype) for _ in range(2))
    return q, k_cache, v_cache


@pytest.mark.parametrize("problem", SPEC.verify_cases, ids=problem_id)
def test_verify_cases_agree_with_default_config(problem):
    agreement = check_case(SPEC, problem, SPEC.default_config)
    assert agreement.ok, agreement.detail


@pytest.mark.parametrize(
    "problem,config", TINY_CASES,
    ids=[f"{problem_id(p)}-splits{c['NUM_SPLITS']}-bn{c['split.BLOCK_N']}" for p, c in TINY_CASES])
def test_every_tile_config_of_tiny_preset_agrees(problem, config):
    agreement = check_case(SPEC, problem, config)
    assert agreement.ok, agreement.detail


def test_tiny_preset_covers_split_and_block_choices():
    splits = {config["NUM_SPLITS"] for _, config in TINY_CASES}
    blocks = {config["split.BLOCK_N"] for _, config in TINY_CASES}
    assert {1, 2, 4} <= splits and {16, 32, 64} <= blocks


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("splits,block_n", [(1, 16), (4, 16), (2, 32)])
def test_ragged_lengths_with_empty_sequence_and_garbage_past_the_end(dtype, splits, block_n):
    # Capacity 53 is no multiple of any BLOCK_N; lengths hold 0, 1, the capacity and odd values.
    lengths = torch.tensor([53, 0, 1, 30, 17], dtype=torch.int32)
    q, k_cache, v_cache = random_inputs(5, 6, 2, 32, 53, dtype)
    for b, length in enumerate(lengths.tolist()):
        k_cache[b, length:] = float("nan")  # must never be read
        v_cache[b, length:] = float("inf")
    config = {"NUM_SPLITS": splits, "split.BLOCK_N": block_n}
    out = run_and_compare(q, k_cache, v_cache, lengths, config)
    assert torch.equal(out[1], torch.zeros_like(out[1]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_explicit_scale(dtype):
    q, k_cache, v_cache = random_inputs(2, 4, 4, 16, 40, dtype, seed=1)
    lengths = torch.tensor([40, 9], dtype=torch.int32)
    run_and_compare(q, k_cache, v_cache, lengths, {"NUM_SPLITS": 2}, scale=0.9)


def test_large_group_multi_query():
    # 20 query heads on one kv head: the group tile is padded to 32 rows.
    q, k_cache, v_cache = random_inputs(2, 20, 1, 16, 33, torch.float32, seed=2)
    lengths = torch.tensor([33, 1], dtype=torch.int32)
    run_and_compare(q, k_cache, v_cache, lengths, {"NUM_SPLITS": 2, "split.BLOCK_N": 16})


def test_non_contiguous_inputs():
    batch, num_q_heads, num_kv_heads, head_dim, capacity = 3, 4, 2, 16, 37
    q, k_cache, v_cache = random_inputs(batch, num_q_heads, num_kv_heads, head_dim, capacity,
                                        torch.float32, seed=3)
    q_strided = q.transpose(0, 1).contiguous().transpose(0, 1)  # head-major q
    k_head_major = k_cache.permute(0, 2, 1, 3).contiguous().permute(0, 2, 1, 3)
    v_padded = torch.cat([v_cache, torch.full_like(v_cache, float("nan"))], dim=3)[..., :head_dim]
    lengths = torch.tensor([37, 99, 0, 99, 11, 99], dtype=torch.int32)[::2]
    assert not any(t.is_contiguous() for t in (q_strided, k_head_major, v_padded, lengths))
    out = run_and_compare(q_strided, k_head_major, v_padded, lengths,
                          {"NUM_SPLITS": 2, "split.BLOCK_N": 16})
    with poisoned_outputs():
        dense = attention_decode(q, k_cache, v_cache, lengths.contiguous(),
                                 config={"NUM_SPLITS": 2, "split.BLOCK_N": 16})
    assert torch.equal(out, dense)


def test_single_split_skips_the_combine_stage():
    q, k_cache, v_cache = random_inputs(2, 4, 2, 16, 64, torch.float32)
    lengths = torch.tensor([64, 3], dtype=torch.int32)
    for splits, launches in ((1, 1), (4, 2)):
        with capture_launches() as recorded:
            attention_decode(q, k_cache, v_cache, lengths,
                             config={"NUM_SPLITS": splits, "split.BLOCK_N": 16})
        assert len(recorded) == launches
        assert recorded[0].grid == (2 * 2, splits)


@pytest.mark.parametrize("shape", [(0, 4, 2, 16, 8), (2, 4, 2, 16, 0), (2, 0, 2, 16, 8)],
                         ids=["no-sequences", "no-cache", "no-query-heads"])
def test_empty_problems_launch_nothing(shape):
    batch, num_q_heads, num_kv_heads, head_dim, capacity = shape
    q, k_cache, v_cache = random_inputs(*shape, torch.bfloat16)
    lengths = torch.full((batch,), capacity, dtype=torch.int32)
    with capture_launches() as recorded:
        out = attention_decode(q, k_cache, v_cache, lengths)
    assert not recorded
    assert out.shape == (batch, num_q_heads, head_dim) and out.dtype == torch.bfloat16
    assert not out.any()


def test_all_sequences_empty_gives_zeros_without_launch():
    q, k_cache, v_cache = random_inputs(3, 4, 2, 16, 20, torch.float32)
    with capture_launches() as recorded:
        out = attention_decode(q, k_cache, v_cache, torch.zeros(3, dtype=torch.int32))
    assert not recorded and torch.equal(out, torch.zeros_like(q))


def _replace(**changes):
    """Valid arguments (B=2, Hq=4, Hkv=2, D=16, S_max=10) with some replaced."""
    q, k_cache, v_cache = random_inputs(2, 4, 2, 16, 10, torch.float32)
    arguments = {"q": q, "k_cache": k_cache, "v_cache": v_cache,
                 "cache_seqlens": torch.tensor([10, 3], dtype=torch.int32)}
    return {**arguments, **{name: make(arguments) for name, make in changes.items()}}


BAD_ARGUMENTS = {
    "q-rank": (_replace(q=lambda a: a["q"][0]), ValueError, "q must have 3 dimensions"),
    "q-not-tensor": (_replace(q=lambda a: a["q"].tolist()), TypeError, "q must be a torch.Tensor"),
    "k-rank": (_replace(k_cache=lambda a: a["k_cache"][0]), ValueError,
               "k_cache must have 4 dimensions"),
    "k-batch": (_replace(k_cache=lambda a: a["k_cache"][:1]), ValueError,
                r"k_cache must have shape \(2, 10, 2, 16\), got \(1, 10, 2, 16\)"),
    "k-head-dim": (_replace(k_cache=lambda a: a["k_cache"][..., :8]), ValueError,
                   r"k_cache must have shape \(2, 10, 2, 16\)"),
    "v-shape": (_replace(v_cache=lambda a: a["v_cache"][:, :9]), ValueError,
                r"v_cache must have shape \(2, 10, 2, 16\), got \(2, 9, 2, 16\)"),
    "head-dim": (_replace(q=lambda a: torch.randn(2, 4, 24),
                          k_cache=lambda a: torch.randn(2, 10, 2, 24),
                          v_cache=lambda a: torch.randn(2, 10, 2, 24)),
                 ValueError, "head dim D=24"),
    "group": (_replace(q=lambda a: torch.randn(2, 3, 16)), ValueError,
              "Hq=3 heads, expected a multiple of k_cache's Hkv=2"),
    "integer-q": (_replace(q=lambda a: a["q"].to(torch.int64)), TypeError,
                  "q has dtype int64, expected one of float32"),
    "mixed-dtypes": (_replace(v_cache=lambda a: a["v_cache"].to(torch.bfloat16)), TypeError,
                     "mixed dtypes: q=float32, k_cache=float32, v_cache=bfloat16"),
    "lengths-dtype": (_replace(cache_seqlens=lambda a: a["cache_seqlens"].long()), TypeError,
                      "cache_seqlens has dtype int64, expected one of int32"),
    "lengths-shape": (_replace(cache_seqlens=lambda a: torch.tensor([1, 2, 3], dtype=torch.int32)),
                      ValueError, r"cache_seqlens must have shape \(2,\), got \(3,\)"),
    "lengths-too-long": (_replace(cache_seqlens=lambda a: torch.tensor([11, 3],
                                                                       dtype=torch.int32)),
                         ValueError, r"cache_seqlens must lie in \[0, S_max=10\], got .*\[3, 11\]"),
    "lengths-negative": (_replace(cache_seqlens=lambda a: torch.tensor([-1, 3],
                                                                       dtype=torch.int32)),
                         ValueError, r"cache_seqlens must lie in \[0, S_max=10\]"),
    "devices": (_replace(cache_seqlens=lambda a: a["cache_seqlens"].to("meta")), ValueError,
                "tensors on different devices: .*cache_seqlens on meta"),
}


@pytest.mark.parametrize("name", list(BAD_ARGUMENTS))
def test_bad_arguments_raise_one_line_errors_before_launch(name):
    arguments, error, pattern = BAD_ARGUMENTS[name]
    with capture_launches() as recorded, pytest.raises(error, match=pattern) as raised:
        attention_decode(**arguments)
    assert not recorded and "\n" not in str(raised.value)


def test_bad_scale_and_bad_config():
    arguments = _replace()
    with pytest.raises(TypeError, match="scale must be a float or None, got str"):
        attention_decode(**arguments, scale="0.5")
    with pytest.raises(ValueError, match="NUM_SPLITS=4 x split.BLOCK_N=32 exceeds"):
        attention_decode(**arguments, config={"NUM_SPLITS": 4, "split.BLOCK_N": 32})
    with pytest.raises(ValueError, match=r"split.BLOCK_N=48 \(int\) is not one of"):
        attention_decode(**arguments, config={"split.BLOCK_N": 48})


ALL_PROBLEMS = [p for preset in SPEC.presets.values() for p in preset] + list(SPEC.verify_cases)


@pytest.mark.parametrize("limits", [INTERPRETER_LIMITS, A100_LIMITS, H100_LIMITS],
                         ids=["interpreter", "sm80", "sm90"])
def test_default_config_valid_for_every_preset_and_verify_problem(limits):
    for problem in ALL_PROBLEMS:
        assert SPEC.check(SPEC.default_config, problem, limits) is None, problem


def test_check_rules():
    problem = {"B": 1, "Hq": 32, "Hkv": 8, "D": 128, "S": 4096, "dtype": "float32"}
    config = {**SPEC.default_config, "NUM_SPLITS": 1, "split.BLOCK_N": 64, "split.num_stages": 4}
    # ~204 KB of K/V buffers: fits an H100, not an A100.
    assert SPEC.check(config, problem, H100_LIMITS) is None
    assert "shared memory" in SPEC.check(config, problem, A100_LIMITS)
    spilling = {**config, "split.BLOCK_N": 128, "split.num_warps": 2, "split.num_stages": 1}
    assert "would spill" in SPEC.check(spilling, problem, H100_LIMITS)
    idle_combine = {**SPEC.default_config, "NUM_SPLITS": 1, "combine.num_warps": 4}
    assert "no combine stage" in SPEC.check(idle_combine, problem, H100_LIMITS)
    short = {**problem, "S": 40}
    assert SPEC.check({**SPEC.default_config, "NUM_SPLITS": 2, "split.BLOCK_N": 32}, short,
                      H100_LIMITS) is None
    assert "padding" in SPEC.check({**SPEC.default_config, "NUM_SPLITS": 4}, short, H100_LIMITS)


def test_problem_lengths_and_roofline_figures():
    assert cache_lengths(5, 37) == [37, 28, 19, 10, 1]
    assert cache_lengths(1, 37) == [37]
    problem = {"B": 5, "Hq": 4, "Hkv": 2, "D": 16, "S": 37, "dtype": "bfloat16"}
    inputs = SPEC.make_inputs(problem, "cpu", 0)
    assert inputs["cache_seqlens"].tolist() == [37, 28, 19, 10, 1]
    assert inputs["k_cache"].shape == (5, 37, 2, 16) and inputs["q"].dtype == DTYPES["bfloat16"]
    keys = 37 + 28 + 19 + 10 + 1
    assert SPEC.flops(problem) == 4 * 4 * 16 * keys
    assert SPEC.bytes_moved(problem) == 2 * (2 * keys * 2 * 16 + 2 * 5 * 4 * 16) + 4 * 5
    assert math.isclose(SPEC.flops({**problem, "B": 1}), 4 * 4 * 16 * 37)
