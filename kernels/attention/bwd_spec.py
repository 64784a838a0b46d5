"""``attention_bwd``: the attention backward (delta, dK/dV and dQ kernels) as the tuner sees it.

Same problems, buckets, presets and verify cases as ``attention`` (``problems.py``). Its inputs
are the forward's plus the upstream gradient ``do`` and what the forward saves (``o``, and for
softmax the row log-sum-exp ``lse``), computed once with the forward's default config; ``run``
launches only the backward kernels and returns ``(dq, dk, dv)``; the reference is float64
autograd through the independent reference formula.
"""
from __future__ import annotations

import torch

from seqtune.kernels.attention.autograd import (LEAST_REGISTERS_DKDV, dkdv_launches,
                                               dkdv_registers, run_backward)
from seqtune.kernels.attention.baselines import BACKWARD_BASELINES
from seqtune.kernels.attention.forward import (BACKWARD_REGISTER_WORDS, DQ_REGISTER_WORDS,
                                               WINDOW_WORDS, head_tile, register_words,
                                               registers_fit)
from seqtune.kernels.attention.op import prepare
from seqtune.kernels.attention.problems import (PRESETS, PROBLEM_DEFAULTS,
                                                RESERVED_SHARED_BYTES, SIZE_FIELDS, VERIFY_CASES,
                                                check_shape, forward_flops, make_inputs,
                                                tensor_bytes, tile_fits, value_dim)
from seqtune.kernels.attention.reference import (NO_WINDOW, attention_math, attention_reference,
                                                 row_log_sum_exp)
from seqtune.kernels.attention.window import windowed
from seqtune.loader import config_for
from seqtune.spec import (DTYPES, Config, DeviceLimits, Inputs, KernelSpec, Outputs, Problem,
                          Tolerance, shared_memory_fits)

# Forward arguments among the inputs (the rest are the backward's: o, lse, do).
FORWARD_ARGUMENTS = ("q", "k", "v", "causal", "score", "sigmoid_bias", "cu_seqlens",
                     "cu_seqlens_k", "window")

SPACE = {
    "dkdv.BLOCK_M": (16, 32, 64),
    "dkdv.BLOCK_N": (16, 32, 64, 128),
    "dkdv.num_warps": (2, 4, 8),
    "dkdv.num_stages": (1, 2, 3),
    "dq.BLOCK_M": (16, 32, 64, 128),
    "dq.BLOCK_N": (16, 32, 64),
    "dq.num_warps": (2, 4, 8),
    "dq.num_stages": (1, 2, 3),
}
# Fits every problem of the default preset on sm_80 and sm_90 without spills (``seqtune check``):
# the dK/dV program keeps four tiles (k, v and their float32 gradients) of up to 256 padded
# columns (D=192) next to the streamed q and dO tiles, so 16 keys against 32 queries at four
# warps (ptxas holds these kernels to ~168 registers: 32-key tiles spilled for packed D=128 on
# sm_90, eight warps spilled at D=192, 16 x 16 tiles left a stack frame at D=64 on sm_90); the
# dQ program keeps three (q, dO, dQ), 64 queries with eight warps. Head dims over 256 hold
# twice the registers: the register budget in ``check`` makes ``default_for`` take eight warps
# for dK/dV and 32 queries for dQ there.
DEFAULT_CONFIG = {"dkdv.BLOCK_M": 32, "dkdv.BLOCK_N": 16, "dkdv.num_warps": 4,
                  "dkdv.num_stages": 1, "dq.BLOCK_M": 64, "dq.BLOCK_N": 32, "dq.num_warps": 8,
                  "dq.num_stages": 1}


def check(config: Config, problem: Problem, limits: DeviceLimits) -> str | None:
    """None if ``config`` can run ``problem`` on a device with ``limits``, else why not."""
    reason = check_shape(problem)
    for stage, rows, keys in (("dkdv", "BLOCK_M", "BLOCK_N"), ("dq", "BLOCK_M", "BLOCK_N")):
        reason = (reason or tile_fits(f"{stage}.{rows}", config[f"{stage}.{rows}"], "T", problem)
                  or tile_fits(f"{stage}.{keys}", config[f"{stage}.{keys}"], "S", problem))
    reason = reason or shared_memory_fits(shared_memory_estimate(config, problem), limits)
    if reason or limits.backend == "interpreter":
        return reason
    budgets = {"dkdv": BACKWARD_REGISTER_WORDS, "dq": DQ_REGISTER_WORDS}
    for stage, words in register_estimates(config, problem).items():
        reason = reason or registers_fit(f"attention_bwd {stage}", words, budgets[stage],
                                         problem["D"], value_dim(problem),
                                         DTYPES[problem["dtype"]].itemsize)
    return reason


def register_estimates(config: Config, problem: Problem) -> dict[str, float]:
    """Registers a thread holds, per kernel: dK/dV (the larger of its launches, see
    ``autograd.dkdv_registers``), and dQ: its float32 dq and the q and dO tiles it keeps (its
    streamed k and v tiles go to shared memory without staying live), plus a window's band
    (the dK/dV program's window arithmetic compiled within its budget on Gemma 2's D=256)."""
    element = DTYPES[problem["dtype"]].itemsize
    head_dim, dim_v = problem["D"], value_dim(problem)
    width = head_tile(head_dim) + head_tile(dim_v)
    rows = config["dq.BLOCK_M"]
    dkdv = max(dkdv_registers(config, head_dim, dim_v, element, grads)
               for grads in dkdv_launches(head_dim, dim_v, element))
    dq = register_words(rows * head_tile(head_dim), rows * width, element,
                        config["dq.num_warps"])
    return {"dkdv": dkdv, "dq": dq + WINDOW_WORDS * windowed(problem)}


def shared_memory_estimate(config: Config, problem: Problem) -> int:
    """Bytes of shared memory of the larger of the two kernels: the tiles a program keeps
    (dK/dV: k and v; dQ: q and dO) plus, per pipeline stage, the tiles it streams (dK/dV: q and
    dO; dQ: k and v), head dims padded to their tiles. One-stage dK/dV builds also hold a
    second copy of the query tile (one for the scores' dot, one for dK's), as cuobjdump shows
    on sm_80 and sm_90 (pipelined builds share one)."""
    element = DTYPES[problem["dtype"]].itemsize
    head_dim = head_tile(problem["D"])
    width = head_dim + head_tile(value_dim(problem))

    def kernel(kept_rows: int, streamed_rows: int, stages: int) -> int:
        return (kept_rows + stages * streamed_rows) * width * element + RESERVED_SHARED_BYTES

    query_copy = (config["dkdv.BLOCK_M"] * head_dim * element
                  if config["dkdv.num_stages"] == 1 else 0)
    return max(kernel(config["dkdv.BLOCK_N"], config["dkdv.BLOCK_M"], config["dkdv.num_stages"])
               + query_copy,
               kernel(config["dq.BLOCK_M"], config["dq.BLOCK_N"], config["dq.num_stages"]))


def make_backward_inputs(problem: Problem, device: str, seed: int) -> Inputs:
    """The forward's inputs, ``do`` (standard normal), and what the forward saves: ``o`` in the
    dtype and, for softmax, ``lse`` (float32). These come from the float64 formula, not the
    Triton forward: ``seqtune check`` builds inputs where no kernel can run (no GPU, no
    interpreter); they differ from the forward's by its rounding only."""
    inputs = make_inputs(problem, device, seed)
    forward = {name: inputs[name] for name in FORWARD_ARGUMENTS if name in inputs}
    out = attention_reference(**forward)
    generator = torch.Generator(device=device).manual_seed(seed + 1)
    dtype = inputs["q"].dtype
    inputs["do"] = torch.randn(out.shape, generator=generator, device=device, dtype=dtype)
    inputs["o"] = out.to(device, dtype)
    if inputs["score"] == "softmax":
        q, k = (inputs[name].to("cpu", torch.float64) for name in ("q", "k"))
        lse = row_log_sum_exp(q, k, causal=inputs["causal"], scale=None,
                              cu_seqlens=inputs.get("cu_seqlens"),
                              cu_seqlens_k=inputs.get("cu_seqlens_k"),
                              window=inputs.get("window", NO_WINDOW))
        inputs["lse"] = lse.to(device, torch.float32)
    return inputs


def _call(inputs: Inputs):
    return prepare(**{name: inputs[name] for name in FORWARD_ARGUMENTS if name in inputs})


def run(inputs: Inputs, config: Config) -> Outputs:
    """``(dq, dk, dv)`` from the backward kernels alone."""
    call = _call(inputs)
    cfg = config_for("attention_bwd", call.problem, config)
    return run_backward(inputs["q"], inputs["k"], inputs["v"], inputs["o"], inputs.get("lse"),
                        inputs["do"], call, cfg)


def reference(inputs: Inputs) -> Outputs:
    """``(dq, dk, dv)`` by float64 autograd through the reference formula, on the CPU."""
    leaves = [inputs[name].detach().to("cpu", torch.float64).requires_grad_()
              for name in ("q", "k", "v")]
    arguments = {name: inputs[name] for name in FORWARD_ARGUMENTS[3:] if name in inputs}
    arguments.setdefault("sigmoid_bias", None)
    with torch.enable_grad():
        out = attention_math(*leaves, scale=None, **arguments)
        grads = torch.autograd.grad(out, leaves, inputs["do"].to("cpu", torch.float64),
                                    allow_unused=True)
    return tuple(torch.zeros_like(leaf) if grad is None else grad
                 for leaf, grad in zip(leaves, grads))


def flops(problem: Problem) -> float:
    """Five matmuls per visible pair where the forward has two: scores again and dK over D,
    dP and dV over Dv, dQ over D."""
    head_dim, dim_v = problem["D"], value_dim(problem)
    return forward_flops(problem) * (3 * head_dim + 2 * dim_v) / (head_dim + dim_v)


def bytes_moved(problem: Problem) -> float:
    """Read q, k, v, o, dO; write dQ, dK, dV (each once; lse and delta are O(T) floats)."""
    query_side, key_side = tensor_bytes(problem)
    return float(2 * query_side + 2 * key_side)


# Gradients carry more rounding than the output: P and dS are rounded to the input dtype for the
# dots, dS = P (dP - delta) cancels (dP and delta are both ~|dO| |v| while their difference is
# smaller), and each gradient sums T or S such products. Measured worst errors relative to the
# largest gradient on the verify cases (interpreter): bfloat16 1.2e-2, float16 5e-4, float32 6e-7.
TOLERANCES = {
    # TF32 dots on GPUs (10-bit mantissa, like float16's) with the cancellation above: twice the
    # forward's float32 bound.
    "float32": Tolerance(atol=2e-2, rtol=2e-2),
    # eps 9.8e-4: ten units, room for the cancellation in dS and sums over ~100 terms.
    "float16": Tolerance(atol=1e-2, rtol=1e-2),
    # eps 7.8e-3: about eight units, five times the worst measured error.
    "bfloat16": Tolerance(atol=6e-2, rtol=6e-2),
}

# What ``default_for`` falls back to when no config near the default is valid: the smallest
# tiles with eight warps hold the fewest registers a thread. Float32 at head dims over 256 needs
# it (three knobs away from the default, one more than the search near the default moves).
LEAST_REGISTERS_CONFIG = {**LEAST_REGISTERS_DKDV, "dkdv.num_stages": 1, "dq.BLOCK_M": 16,
                          "dq.BLOCK_N": 16, "dq.num_warps": 8, "dq.num_stages": 1}


class BackwardSpec(KernelSpec):
    """attention_bwd's spec: ``default_for`` as any spec's, then LEAST_REGISTERS_CONFIG where
    that finds no valid config and it is valid."""

    def _default_for(self, problem: Problem, limits: DeviceLimits) -> Config:
        config = super()._default_for(problem, limits)
        if (not self._is_valid(config, problem, limits)
                and self._is_valid(LEAST_REGISTERS_CONFIG, problem, limits)):
            return dict(LEAST_REGISTERS_CONFIG)
        return config


BACKWARD_SPEC = BackwardSpec(
    name="attention_bwd",
    family="attention",
    description="attention backward (FlashAttention-2 style): delta, dK/dV summed over the "
                "query heads of a group, dQ; softmax or sigmoid, causal, packed sequences",
    space=SPACE,
    default_config=DEFAULT_CONFIG,
    size_fields=SIZE_FIELDS,
    presets=PRESETS,
    verify_cases=VERIFY_CASES,
    check=check,
    make_inputs=make_backward_inputs,
    run=run,
    reference=reference,
    tolerances=TOLERANCES,
    flops=flops,
    bytes_moved=bytes_moved,
    problem_defaults=PROBLEM_DEFAULTS,
    optional_fields=("Dv",),  # present only when it differs from D (see problems.py)
    baselines=BACKWARD_BASELINES,
    stages=("dkdv", "dq"),
    stagewise=True,
)
