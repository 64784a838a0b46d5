"""The ``attention`` kernel as the tuner sees it: config space, validity, presets, reference."""
from __future__ import annotations

import torch

from seqtune.kernels.attention.baselines import BASELINES
from seqtune.kernels.attention.op import HEAD_DIMS, attention
from seqtune.kernels.attention.reference import attention_reference
from seqtune.spec import (DTYPES, Config, DeviceLimits, Inputs, KernelSpec, Outputs, Problem,
                          Tolerance, next_power_of_2, shared_memory_fits)

SPACE = {
    "BLOCK_M": (16, 32, 64, 128),
    "BLOCK_N": (16, 32, 64, 128),
    "num_warps": (2, 4, 8),
    "num_stages": (1, 2, 3, 4),
}
# Fits every head dim and dtype on sm_80 and sm_90 (D=256 float32 is the largest: ~129 KB).
# One stage: float32 D=256 with two stages of 64 x 32 tiles needs ~193 KB, over sm_80's 163 KB.
# Eight warps: with four, the 64 x 256 float32 accumulator alone takes 128 registers a thread
# and D=256 builds spill on sm_80.
DEFAULT_CONFIG = {"BLOCK_M": 64, "BLOCK_N": 32, "num_warps": 8, "num_stages": 1}

# tl.dot's smallest tile edge on NVIDIA GPUs; tiles this small are always allowed.
MIN_TILE = 16
# Static shared memory of sm_90 builds besides the tiles (cuobjdump reports 1 KB).
RESERVED_SHARED_BYTES = 1024


def _problem(B: int, T: int, S: int, Hq: int, Hkv: int, D: int, causal: bool, dtype: str,
             score: str = "softmax", **extra: float) -> Problem:
    return {"B": B, "T": T, "S": S, "Hq": Hq, "Hkv": Hkv, "D": D, "causal": causal,
            "dtype": dtype, "score": score, **extra}


def check(config: Config, problem: Problem, limits: DeviceLimits) -> str | None:
    """None if ``config`` can run ``problem`` on a device with ``limits``, else why not."""
    if problem["D"] not in HEAD_DIMS:
        return f"head dim D={problem['D']} is not one of {HEAD_DIMS}"
    for tile, length in (("BLOCK_M", "T"), ("BLOCK_N", "S")):
        padded = max(MIN_TILE, next_power_of_2(problem[length]))
        if config[tile] > padded:
            return f"{tile}={config[tile]} exceeds {length}={problem[length]} padded to {padded}"
    return shared_memory_fits(shared_memory_estimate(config, problem), limits)


def shared_memory_estimate(config: Config, problem: Problem) -> int:
    """Bytes of shared memory: the query tile, plus one key and one value tile per pipeline
    stage (a single stage still stages them through shared memory for the dot). Exact for
    sm_90 builds; sm_80 builds keep the query tile in registers and use less."""
    element = DTYPES[problem["dtype"]].itemsize
    head_dim = problem["D"]
    query_tile = config["BLOCK_M"] * head_dim * element
    key_value_tiles = 2 * config["BLOCK_N"] * head_dim * element
    return query_tile + config["num_stages"] * key_value_tiles + RESERVED_SHARED_BYTES


def make_inputs(problem: Problem, device: str, seed: int) -> Inputs:
    """Standard-normal q, k, v in the problem's dtype (and the score's arguments)."""
    generator = torch.Generator(device=device).manual_seed(seed)
    dtype = DTYPES[problem["dtype"]]

    def normal(length: int, heads: int) -> torch.Tensor:
        shape = (problem["B"], length, heads, problem["D"])
        return torch.randn(shape, generator=generator, device=device, dtype=dtype)

    inputs = {"q": normal(problem["T"], problem["Hq"]), "k": normal(problem["S"], problem["Hkv"]),
              "v": normal(problem["S"], problem["Hkv"]), "causal": problem["causal"],
              "score": problem.get("score", "softmax")}
    if "sigmoid_bias" in problem:
        inputs["sigmoid_bias"] = problem["sigmoid_bias"]
    return inputs


def run(inputs: Inputs, config: Config) -> Outputs:
    return (attention(**inputs, config=config),)


def reference(inputs: Inputs) -> Outputs:
    return (attention_reference(**inputs),)


def visible_pairs(problem: Problem) -> int:
    """(query, key) pairs that take part, per batch and head."""
    queries, keys = problem["T"], problem["S"]
    if not problem["causal"]:
        return queries * keys
    # The last min(T, S) queries see S, S - 1, ..., S - min(T, S) + 1 keys; the others none.
    seeing = min(queries, keys)
    return seeing * (2 * keys - seeing + 1) // 2


def flops(problem: Problem) -> float:
    """Two multiply-adds per head-dim element and visible pair: q.k, then the weight times v."""
    return 4.0 * problem["B"] * problem["Hq"] * problem["D"] * visible_pairs(problem)


def bytes_moved(problem: Problem) -> float:
    """Read q, k, v once and write o once."""
    element = DTYPES[problem["dtype"]].itemsize
    query_side = 2 * problem["B"] * problem["T"] * problem["Hq"]
    key_side = 2 * problem["B"] * problem["S"] * problem["Hkv"]
    return float((query_side + key_side) * problem["D"] * element)


TOLERANCES = {
    # float32 dots run as TF32 on GPUs (10-bit mantissa: ~1e-3 relative error in scores and
    # in the weighted sum); 1e-2 bounds that with room for cancellation.
    "float32": Tolerance(atol=1e-2, rtol=1e-2),
    # The softmax/sigmoid weights are rounded to the input dtype for the second dot and the
    # output is rounded once more: about two units of rounding (eps 9.8e-4 for float16,
    # 7.8e-3 for bfloat16), with atol for outputs that cancel to near zero.
    "float16": Tolerance(atol=2e-3, rtol=2e-3),
    "bfloat16": Tolerance(atol=1.6e-2, rtol=1.6e-2),
}

PRESETS = {
    # Interpreter-sized: 30 tile shapes in all, each ~0.2 s in the interpreter (x12 for the
    # num_warps/num_stages values, which the interpreter ignores). T >= 64 keeps the default's
    # BLOCK_M valid.
    "tiny": (
        _problem(1, 64, 64, 2, 1, 32, True, "bfloat16"),
        _problem(1, 64, 32, 2, 2, 32, False, "float32"),
        _problem(1, 64, 64, 2, 1, 32, True, "bfloat16", "sigmoid"),
        _problem(1, 64, 32, 2, 1, 32, False, "float32", "sigmoid"),
    ),
    "quick": (
        _problem(2, 1024, 1024, 16, 4, 128, True, "bfloat16"),
        _problem(2, 1024, 1024, 16, 4, 64, False, "bfloat16"),
        _problem(2, 1024, 1024, 16, 4, 128, True, "bfloat16", "sigmoid"),
    ),
    # Realistic LLM prefill: B*Hq from 32 to 256, T from 1k to 16k, GQA, bf16.
    "default": (
        _problem(16, 1024, 1024, 16, 16, 64, False, "bfloat16"),
        _problem(8, 2048, 2048, 32, 8, 128, True, "bfloat16"),
        _problem(4, 4096, 4096, 32, 8, 128, True, "bfloat16"),
        _problem(2, 8192, 8192, 32, 8, 64, True, "bfloat16"),
        _problem(1, 16384, 16384, 32, 8, 128, True, "bfloat16"),
        _problem(4, 4096, 4096, 32, 8, 128, True, "bfloat16", "sigmoid"),
        _problem(8, 2048, 2048, 16, 16, 64, False, "bfloat16", "sigmoid"),
    ),
}
PRESETS["full"] = PRESETS["default"] + (
    _problem(4, 4096, 4096, 32, 8, 128, False, "bfloat16"),
    _problem(4, 4096, 4096, 32, 8, 128, True, "float16"),
    _problem(4, 2048, 2048, 16, 16, 256, True, "bfloat16"),
    _problem(4, 2048, 2048, 32, 1, 128, True, "bfloat16"),  # multi-query
    _problem(2, 2048, 2048, 16, 4, 128, True, "float32"),
    _problem(4, 1024, 8192, 32, 8, 128, True, "bfloat16"),  # chunked prefill: T < S
    _problem(1, 16384, 16384, 32, 8, 128, True, "bfloat16", "sigmoid"),
)

# Odd shapes: T and S not multiples of any block, causal with T < S and T > S (first rows see no
# key), grouped- and multi-query heads, every head dim up to 128. ``sigmoid_bias`` is not a
# problem field (it does not change the work): a case may carry it to test an explicit bias.
VERIFY_CASES = (
    _problem(1, 37, 53, 4, 2, 32, False, "float32"),
    _problem(2, 37, 53, 4, 2, 64, True, "bfloat16"),
    _problem(1, 53, 37, 3, 1, 16, True, "float32"),
    _problem(1, 77, 77, 2, 1, 128, True, "bfloat16"),
    _problem(1, 45, 19, 2, 2, 16, True, "float16"),
    _problem(1, 37, 53, 4, 2, 32, True, "bfloat16", "sigmoid"),
    _problem(1, 53, 37, 2, 1, 16, False, "float32", "sigmoid", sigmoid_bias=-1.5),
)

SPECS = (
    KernelSpec(
        name="attention",
        family="attention",
        description="softmax or sigmoid attention forward, tiled with online softmax "
                    "(FlashAttention-2 style), GQA/MQA, causal",
        space=SPACE,
        default_config=DEFAULT_CONFIG,
        size_fields=("B", "T", "S", "Hq", "Hkv"),
        presets=PRESETS,
        verify_cases=VERIFY_CASES,
        check=check,
        make_inputs=make_inputs,
        run=run,
        reference=reference,
        tolerances=TOLERANCES,
        flops=flops,
        bytes_moved=bytes_moved,
        problem_defaults={"score": "softmax"},
        baselines=BASELINES,
    ),
)
