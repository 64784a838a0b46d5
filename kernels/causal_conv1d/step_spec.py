"""The ``causal_conv1d_step`` spec: one decoded token per sequence through a state pool.

Problem fields: size fields ``B`` (tokens, one per sequence) and ``D`` (channels); categorical
``W``, ``has_bias``, ``silu`` and ``dtype`` (of x, weight, bias and the state pool).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from seqtune.spec import (DTYPES, Config, DeviceLimits, Inputs, KernelSpec, Outputs, Problem,
                          Tolerance, next_power_of_2)

from seqtune.kernels.causal_conv1d.baselines import STEP_BASELINES
from seqtune.kernels.causal_conv1d.step import causal_conv1d_step

SPACE = {"BD": (32, 64, 128, 256, 512, 1024), "num_warps": (1, 2, 4, 8)}
DEFAULT = {"BD": 256, "num_warps": 2}
PROBLEM_DEFAULTS = {"has_bias": True, "silu": True}
# Rows of the pool beyond the batch: the pool is shuffled, as a server's is.
SPARE_ROWS = 3


def check(config: Config, problem: Problem, limits: DeviceLimits) -> str | None:
    """A channel tile within the padded D (up to the default's), one channel per thread at
    least. No shared memory, a handful of registers."""
    if config["BD"] > max(next_power_of_2(problem["D"]), DEFAULT["BD"]):
        return f"BD={config['BD']} exceeds the padded D={problem['D']}"
    threads = 32 * config["num_warps"]
    if config["BD"] < threads:
        return f"{threads} threads for {config['BD']} channels leave threads idle"
    return None


def make_inputs(problem: Problem, device: str, seed: int) -> Inputs:
    """Unit-normal x and pool; PyTorch's Conv1d init for weight and bias; batch element i owns
    a random distinct row of a pool with spare rows."""
    problem = {**PROBLEM_DEFAULTS, **problem}
    generator = torch.Generator().manual_seed(seed)
    B, D, W = problem["B"], problem["D"], problem["W"]
    dtype = DTYPES[problem["dtype"]]
    bound = W ** -0.5

    def uniform(*shape):
        return ((2 * torch.rand(*shape, generator=generator) - 1) * bound).to(device, dtype)

    pool = B + SPARE_ROWS
    return {
        "x": torch.randn(B, D, generator=generator).to(device, dtype),
        "weight": uniform(D, W),
        "bias": uniform(D) if problem["has_bias"] else None,
        "state": torch.randn(pool, D, W - 1, generator=generator).to(device, dtype),
        "state_indices": torch.randperm(pool, generator=generator)[:B].to(device, torch.int32),
        "activation": "silu" if problem["silu"] else None,
    }


def run(inputs: Inputs, config: Config) -> Outputs:
    """(y, the updated pool). The step updates the pool in place, and the tuner runs the same
    inputs again and again, so it steps a copy: every config pays the same copy."""
    state = inputs["state"].clone()
    y = causal_conv1d_step(inputs["x"], inputs["weight"], inputs["bias"],
                           activation=inputs["activation"], state=state,
                           state_indices=inputs["state_indices"], config=config)
    return y, state


def reference(inputs: Inputs) -> Outputs:
    """F.conv1d (groups=D) over each owned state row followed by x, in float64; the pool with
    those rows shifted by one column."""
    x, weight = inputs["x"].double(), inputs["weight"].double()
    bias = inputs["bias"].double() if inputs["bias"] is not None else None
    pool = inputs["state"].double().clone()
    rows = inputs["state_indices"].long()
    window = torch.cat([pool[rows], x[:, :, None]], dim=2)  # [B, D, W]
    y = F.conv1d(window, weight[:, None, :], bias, groups=weight.shape[0])[:, :, 0]
    if inputs["activation"] is not None:
        y = F.silu(y)
    pool[rows] = window[:, :, 1:]
    return y, pool


def flops(problem: Problem) -> float:
    W = problem["W"]
    return float(problem["B"] * problem["D"] * (2 * W + problem.get("has_bias", True)
                                                + 4 * problem.get("silu", True)))


def bytes_moved(problem: Problem) -> float:
    """Read x, the owned state rows, weight and bias; write y and the state rows."""
    B, D, W = problem["B"], problem["D"], problem["W"]
    element = DTYPES[problem["dtype"]].itemsize
    return float(element * (2 * B * D + 2 * B * D * (W - 1) + D * (W + 1)))


def _case(B, D, W, dtype, has_bias=True, silu=True) -> Problem:
    return {"B": B, "D": D, "W": W, "has_bias": has_bias, "silu": silu, "dtype": dtype}


VERIFY_CASES = [
    _case(3, 37, 4, "float32"),
    _case(2, 100, 2, "bfloat16", has_bias=False, silu=False),
    _case(5, 20, 3, "bfloat16"),
    _case(1, 7, 3, "float32", has_bias=False),
    _case(3, 29, 7, "bfloat16", has_bias=False, silu=False),
    _case(2, 13, 8, "float32"),
]

PRESETS = {
    "tiny": [_case(2, 64, 4, "float32"), _case(3, 48, 4, "bfloat16", has_bias=False)],
    "quick": [_case(B, 8192, 4, "bfloat16", has_bias=False) for B in (8, 64)],
    "default": ([_case(B, D, 4, "bfloat16") for B in (1, 16, 128) for D in (5376, 8192)]
                + [_case(B, 4096, 4, "bfloat16", has_bias=False) for B in (1, 16, 128)]
                + [_case(16, 2048, 7, "bfloat16", has_bias=False, silu=False)]),  # LFM3
    "full": [_case(B, D, 4, dtype, has_bias) for B in (1, 8, 64, 256)
             for D in (2048, 4096, 8192) for dtype in ("bfloat16", "float32")
             for has_bias in (True, False)],
}

# As the forward's: at most W + 1 fp32 terms; half types only round the output. The state
# columns are copies, exact.
TOLERANCES = {
    "float32": Tolerance(atol=1e-5, rtol=1e-5),
    "float16": Tolerance(atol=1e-4, rtol=1e-3),
    "bfloat16": Tolerance(atol=1e-3, rtol=8e-3),
}

STEP_SPEC = KernelSpec(
    name="causal_conv1d_step",
    family="convolution",
    description="causal_conv1d decode step: one token, state pool shifted in place",
    space=SPACE,
    default_config=DEFAULT,
    size_fields=("B", "D"),
    presets=PRESETS,
    verify_cases=VERIFY_CASES,
    check=check,
    make_inputs=make_inputs,
    run=run,
    reference=reference,
    tolerances=TOLERANCES,
    flops=flops,
    bytes_moved=bytes_moved,
    problem_defaults=PROBLEM_DEFAULTS,
    baselines=STEP_BASELINES,
)
