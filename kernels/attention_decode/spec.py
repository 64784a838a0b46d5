"""The ``attention_decode`` kernel as the tool sees it: config space, validity, problems, inputs
and the float64 reference.

Problem ``{B, Hq, Hkv, D, S, dtype, block_size}``: ``S`` is the most keys a sequence of the
batch attends to, ``max(cache_seqlens)`` without left pads or windows (the op reads the lengths
anyway for its range check); ``block_size`` is the page size of a paged cache, 0 (the default)
for a contiguous one. Inputs built from a problem have a cache of capacity ``S`` (paged: in
shuffled blocks, the last one partial) and lengths spread evenly from ``S`` down to 1, so a batch
always holds the full length and a length-1 sequence, and FLOPs and bytes follow exactly.

A sliding window reaches the problem through ``S``, with no field of its own (unlike the
prefill's ``window``): the one query sees at most ``window[0] + 1`` keys, its splits cut only
those, so a windowed step does the work of a cache of that length and takes its entries.
"""
from __future__ import annotations

import torch

from seqtune.kernels.attention_decode.baselines import BASELINES
from seqtune.kernels.attention_decode.op import MIN_DOT_ROWS, attention_decode, group_rows
from seqtune.kernels.attention_decode.reference import attention_decode_reference
from seqtune.spec import (DTYPES, Config, DeviceLimits, Inputs, KernelSpec, Problem, Tolerance,
                          next_power_of_2, shared_memory_fits)

SPACE = {
    "NUM_SPLITS": (1, 2, 4, 8, 16, 32),
    "split.BLOCK_N": (16, 32, 64, 128),
    "split.num_warps": (2, 4, 8),
    "split.num_stages": (1, 2, 3, 4),
    "combine.num_warps": (1, 2, 4),
}
# A thread addresses at most 255 registers on sm_80 and sm_90.
MAX_REGISTERS_PER_THREAD = 255
# Valid for every preset and verify problem (all have S > 32); the split count that fills a GPU
# depends on B * Hkv, which is what tuning is for.
DEFAULT_CONFIG = {
    "NUM_SPLITS": 2,
    "split.BLOCK_N": 32,
    "split.num_warps": 4,
    "split.num_stages": 2,
    "combine.num_warps": 2,
}


def cache_lengths(batch: int, max_len: int) -> list[int]:
    """Lengths of a problem's batch: evenly spread from ``max_len`` down to 1."""
    if batch == 1:
        return [max_len]
    return [max_len - (max_len - 1) * b // (batch - 1) for b in range(batch)]


def check(config: Config, problem: Problem, limits: DeviceLimits) -> str | None:
    """Reject configs whose blocks or splits would hold only padding, configs that vary a knob
    of a stage that does not run, configs whose tiles overflow a thread's registers, and configs
    over the device's shared memory."""
    splits, block_n = config["NUM_SPLITS"], config["split.BLOCK_N"]
    padded_len = max(MIN_DOT_ROWS, next_power_of_2(problem["S"]))
    if splits * block_n > padded_len:
        return (f"NUM_SPLITS={splits} x split.BLOCK_N={block_n} exceeds the cache length padded "
                f"to {padded_len}: some blocks or splits would hold only padding")
    if splits == 1 and config["combine.num_warps"] != DEFAULT_CONFIG["combine.num_warps"]:
        return (f"NUM_SPLITS=1 runs no combine stage: leave combine.num_warps at "
                f"{DEFAULT_CONFIG['combine.num_warps']}")
    registers = register_estimate(config, problem)
    if registers > MAX_REGISTERS_PER_THREAD:
        return (f"split stage tiles need ~{registers} registers per thread with "
                f"split.num_warps={config['split.num_warps']}: it would spill")
    return shared_memory_fits(shared_memory_estimate(config, problem), limits)


def register_estimate(config: Config, problem: Problem) -> int:
    """32-bit registers per thread held by the split stage's tiles: the fp32 accumulator, scores
    and probabilities, and the K and V dot operands. Compiles for sm_80/sm_90 spill once this
    passes ~255 and fit (with up to ~60 registers of addressing and loop state) below."""
    element = DTYPES[problem["dtype"]].itemsize
    rows, head_dim = group_rows(problem["Hq"], problem["Hkv"]), problem["D"]
    block_n = config["split.BLOCK_N"]
    fp32_values = rows * head_dim + 2 * rows * block_n
    operand_words = 2 * block_n * head_dim * element // 4
    return (fp32_values + operand_words) // (32 * config["split.num_warps"])


def shared_memory_estimate(config: Config, problem: Problem) -> int:
    """Bytes of the split stage, as Triton lays it out: the q tile, the probabilities restaged
    for the second dot, and ``num_stages - 1`` async-copy buffers each for K and V (one tile,
    shared by K and V, without pipelining), plus 1 KB for barriers and reduction scratch."""
    element = DTYPES[problem["dtype"]].itemsize
    rows, head_dim = group_rows(problem["Hq"], problem["Hkv"]), problem["D"]
    block_n = config["split.BLOCK_N"]
    kv_tiles = max(1, 2 * (config["split.num_stages"] - 1))
    return element * (rows * head_dim + rows * block_n + kv_tiles * block_n * head_dim) + 1024


def make_inputs(problem: Problem, device: str, seed: int) -> Inputs:
    batch, max_len, head_dim = problem["B"], problem["S"], problem["D"]
    dtype = DTYPES[problem["dtype"]]
    block_size = problem.get("block_size", 0)
    generator = torch.Generator(device=device).manual_seed(seed)

    def normal(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=generator, device=device, dtype=dtype)

    inputs = {"q": normal(batch, problem["Hq"], head_dim),
              "cache_seqlens": torch.tensor(cache_lengths(batch, max_len), dtype=torch.int32,
                                            device=device)}
    if block_size == 0:
        cache_shape = (batch, max_len, problem["Hkv"], head_dim)
        return {**inputs, "k_cache": normal(*cache_shape), "v_cache": normal(*cache_shape)}
    blocks_per_sequence = -(-max_len // block_size)
    num_blocks = batch * blocks_per_sequence
    cache_shape = (num_blocks, block_size, problem["Hkv"], head_dim)
    order = torch.randperm(num_blocks, generator=generator, device=device)
    return {**inputs, "k_cache": normal(*cache_shape), "v_cache": normal(*cache_shape),
            "block_table": order.reshape(batch, blocks_per_sequence).to(torch.int32)}


def _flops(problem: Problem) -> float:
    """q.k and p.v: 2 * D multiply-adds per (query head, key) each."""
    keys = sum(cache_lengths(problem["B"], problem["S"]))
    return 4.0 * problem["Hq"] * problem["D"] * keys


def _bytes_moved(problem: Problem) -> float:
    """Each sequence's valid K and V rows once, q read and o written once, the lengths (and a
    paged cache's block table entries in use)."""
    element = DTYPES[problem["dtype"]].itemsize
    lengths = cache_lengths(problem["B"], problem["S"])
    kv = 2 * sum(lengths) * problem["Hkv"] * problem["D"]
    q_and_o = 2 * problem["B"] * problem["Hq"] * problem["D"]
    block_size = problem.get("block_size", 0)
    table = sum(-(-length // block_size) for length in lengths) if block_size else 0
    return float(element * (kv + q_and_o) + 4 * (problem["B"] + table))


def _problems(batches, lengths, **fields) -> list[Problem]:
    return [{"B": b, "S": s, **fields} for b in batches for s in lengths]


_SERVING = {"Hq": 32, "Hkv": 8, "D": 128, "dtype": "bfloat16"}

PRESETS = {
    "tiny": [
        {"B": 2, "Hq": 2, "Hkv": 1, "D": 16, "S": 64, "dtype": "float32"},
        {"B": 2, "Hq": 4, "Hkv": 1, "D": 32, "S": 64, "dtype": "bfloat16"},
    ],
    "quick": _problems((1, 16, 64), (4096,), **_SERVING),
    "default": _problems((1, 4, 16, 64), (1024, 4096, 16384, 32768), **_SERVING),
    "full": (_problems((1, 4, 16, 64), (1024, 4096, 16384, 32768), **_SERVING)
             + _problems((1, 16, 64), (4096, 32768), Hq=32, Hkv=8, D=128, dtype="float16")
             + _problems((1, 16), (4096, 65536), Hq=64, Hkv=8, D=128, dtype="bfloat16")
             + _problems((1, 16), (4096, 32768), Hq=32, Hkv=32, D=128, dtype="bfloat16")
             + _problems((1, 16), (4096, 32768), Hq=32, Hkv=1, D=128, dtype="bfloat16")
             + _problems((1, 16, 64), (4096, 32768), Hq=16, Hkv=2, D=256, dtype="bfloat16")
             + _problems((1, 16, 64), (4096, 32768), Hq=32, Hkv=8, D=64, dtype="bfloat16")),
}

VERIFY_CASES = [
    {"B": 3, "Hq": 4, "Hkv": 2, "D": 32, "S": 37, "dtype": "float32"},  # GQA
    {"B": 3, "Hq": 4, "Hkv": 2, "D": 32, "S": 37, "dtype": "bfloat16"},
    {"B": 3, "Hq": 4, "Hkv": 1, "D": 16, "S": 50, "dtype": "float32"},  # MQA
    {"B": 2, "Hq": 6, "Hkv": 1, "D": 16, "S": 45, "dtype": "bfloat16"},  # MQA, group of 6
    {"B": 2, "Hq": 3, "Hkv": 3, "D": 64, "S": 61, "dtype": "float16"},  # MHA
    {"B": 3, "Hq": 6, "Hkv": 2, "D": 64, "S": 45, "dtype": "bfloat16", "block_size": 16},  # paged
]

# The reference sees the same (rounded) inputs, so the error is the kernel's own arithmetic.
# float32: IEEE dots (no TF32) and fp32 accumulation; exp2/log2 are approximate on the GPU
# (~2 ulp) and the split merge re-rounds, so a few hundred ulp of slack.
# float16 / bfloat16: the probabilities are rounded to the input dtype for the p.v dot, and o is
# rounded on store: half an ulp is 2**-11 (fp16) and 2**-8 (bf16) relative.
TOLERANCES = {
    "float32": Tolerance(atol=2e-5, rtol=2e-5),
    "float16": Tolerance(atol=2e-3, rtol=2e-3),
    "bfloat16": Tolerance(atol=1.5e-2, rtol=1.5e-2),
}

SPECS = (
    KernelSpec(
        name="attention_decode",
        family="attention",
        description="KV-cache decoding (one query token per sequence, GQA) with split-KV",
        space=SPACE,
        default_config=DEFAULT_CONFIG,
        size_fields=("B", "Hq", "Hkv", "S"),
        problem_defaults={"block_size": 0},
        presets=PRESETS,
        verify_cases=VERIFY_CASES,
        check=check,
        make_inputs=make_inputs,
        run=lambda inputs, config: (attention_decode(**inputs, config=config),),
        reference=lambda inputs: (attention_decode_reference(**inputs),),
        tolerances=TOLERANCES,
        flops=_flops,
        bytes_moved=_bytes_moved,
        stages=("split", "combine"),
        stagewise=True,
        baselines=BASELINES,
    ),
)
