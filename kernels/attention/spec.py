"""The ``attention`` kernel and its backward ``attention_bwd`` as the tuner sees them: config
spaces, validity, presets and references (problems, inputs and presets: ``problems.py``)."""
from __future__ import annotations

from seqtune.kernels.attention.baselines import BASELINES
from seqtune.kernels.attention.bwd_spec import BACKWARD_SPEC
from seqtune.kernels.attention.forward import (FORWARD_REGISTER_WORDS, WINDOW_WORDS, head_tile,
                                               register_words, registers_fit)
from seqtune.kernels.attention.op import attention
from seqtune.kernels.attention.problems import (PRESETS, PROBLEM_DEFAULTS,
                                                RESERVED_SHARED_BYTES, SIZE_FIELDS, VERIFY_CASES,
                                                check_shape, forward_flops, make_inputs,
                                                tensor_bytes, tile_fits, value_dim)
from seqtune.kernels.attention.reference import attention_reference
from seqtune.kernels.attention.window import windowed
from seqtune.spec import (DTYPES, Config, DeviceLimits, Inputs, KernelSpec, Outputs, Problem,
                          Tolerance, shared_memory_fits)

SPACE = {
    "BLOCK_M": (16, 32, 64, 128),
    "BLOCK_N": (16, 32, 64, 128),
    "num_warps": (2, 4, 8),
    "num_stages": (1, 2, 3, 4),
}
# Fits every head dim up to 256 and dtype on sm_80 and sm_90 (D=256 float32 is the largest:
# ~129 KB).
# One stage: float32 D=256 with two stages of 64 x 32 tiles needs ~193 KB, over sm_80's 163 KB.
# Eight warps: with four, the 64 x 256 float32 accumulator alone takes 128 registers a thread
# and D=256 builds spill on sm_80.
# Head dims over 256 hold twice the registers and spill with it: the register budget in
# ``check`` makes ``default_for`` take 32 query rows instead (16 for float32).
DEFAULT_CONFIG = {"BLOCK_M": 64, "BLOCK_N": 32, "num_warps": 8, "num_stages": 1}


def check(config: Config, problem: Problem, limits: DeviceLimits) -> str | None:
    """None if ``config`` can run ``problem`` on a device with ``limits``, else why not."""
    reason = (check_shape(problem) or tile_fits("BLOCK_M", config["BLOCK_M"], "T", problem)
              or tile_fits("BLOCK_N", config["BLOCK_N"], "S", problem)
              or shared_memory_fits(shared_memory_estimate(config, problem), limits))
    if reason or limits.backend == "interpreter":
        return reason
    return registers_fit("attention", register_estimate(config, problem), FORWARD_REGISTER_WORDS,
                         problem["D"], value_dim(problem), DTYPES[problem["dtype"]].itemsize)


def register_estimate(config: Config, problem: Problem) -> float:
    """Registers a thread of the forward holds: the float32 output accumulator, the query tile
    and one key tile (loaded through registers on its way to shared memory), and a window's
    band."""
    head_dim, value_tile = head_tile(problem["D"]), head_tile(value_dim(problem))
    rows, keys = config["BLOCK_M"], config["BLOCK_N"]
    return register_words(rows * value_tile, (rows + keys) * head_dim,
                          DTYPES[problem["dtype"]].itemsize,
                          config["num_warps"]) + WINDOW_WORDS * windowed(problem)


def shared_memory_estimate(config: Config, problem: Problem) -> int:
    """Bytes of shared memory: the query tile, plus one key and one value tile per pipeline
    stage (a single stage still stages them through shared memory for the dot), head dims
    padded to their tiles. Exact for sm_90 builds; sm_80 builds keep the query tile in
    registers and use less."""
    element = DTYPES[problem["dtype"]].itemsize
    head_dim, value_tile = head_tile(problem["D"]), head_tile(value_dim(problem))
    query_tile = config["BLOCK_M"] * head_dim * element
    key_value_tiles = config["BLOCK_N"] * (head_dim + value_tile) * element
    return query_tile + config["num_stages"] * key_value_tiles + RESERVED_SHARED_BYTES


def run(inputs: Inputs, config: Config) -> Outputs:
    return (attention(**inputs, config=config),)


def reference(inputs: Inputs) -> Outputs:
    return (attention_reference(**inputs),)


def bytes_moved(problem: Problem) -> float:
    """Read q, k, v once and write o once."""
    return float(sum(tensor_bytes(problem)))


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

SPECS = (
    KernelSpec(
        name="attention",
        family="attention",
        description="softmax or sigmoid attention forward, tiled with online softmax "
                    "(FlashAttention-2 style), GQA/MQA, causal, packed sequences, any head dim",
        space=SPACE,
        default_config=DEFAULT_CONFIG,
        size_fields=SIZE_FIELDS,
        presets=PRESETS,
        verify_cases=VERIFY_CASES,
        check=check,
        make_inputs=make_inputs,
        run=run,
        reference=reference,
        tolerances=TOLERANCES,
        flops=forward_flops,
        bytes_moved=bytes_moved,
        problem_defaults=PROBLEM_DEFAULTS,
        optional_fields=("Dv",),  # present only when it differs from D (see problems.py)
        baselines=BASELINES,
    ),
    BACKWARD_SPEC,
)
