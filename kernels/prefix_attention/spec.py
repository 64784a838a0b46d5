"""The prefix_attention kernel and its backward ``prefix_attention_bwd`` as the tool sees them.

Problem fields (both specs): the size fields ``B`` (batch), ``T`` (sequence length) and ``H``
(heads), bucketed to powers of two; categorical ``D`` (head dim) and ``dtype`` (of q, k, v).
"""
from __future__ import annotations

import dataclasses

import torch

from seqtune.baselines import autograd_of
from seqtune.kernels.linear_scan.interpreter import kernels_can_run
from seqtune.kernels.prefix_attention.autograd import run_backward, run_forward
from seqtune.kernels.prefix_attention.baselines import BASELINES, torch_prefix_attention
from seqtune.kernels.prefix_attention.op import prefix_attention
from seqtune.spec import (DTYPES, Config, DeviceLimits, Inputs, KernelSpec, Outputs, Problem,
                          Tolerance, next_power_of_2, shared_memory_fits)

SPACE = {
    # Scans of 128 steps with 8 warps take 255 registers on sm_80 whatever BLOCK_DV: left out.
    "BLOCK_T": (16, 32, 64),
    "BLOCK_DV": (16, 32, 64, 128),
    "num_warps": (1, 2, 4, 8),
    # The compiler does not software-pipeline these loads (no tl.dot): measured on sm_80/sm_90,
    # num_stages changes neither registers nor shared memory. Kept as a knob for newer compilers.
    "num_stages": (1, 2),
}
DEFAULT = {"BLOCK_T": 32, "BLOCK_DV": 64, "num_warps": 4, "num_stages": 1}

# The k tile [BLOCK_T, D] and the scan's three [BLOCK_T, BLOCK_DV] operands live in registers
# (tile_values). Measured with cuobjdump on sm_80 and sm_90 for D = 64, 128, 256: up to 112 such
# values per thread take <= 221 registers; 128 and more reach the 255 limit.
MAX_TILE_VALUES_PER_THREAD = 112


def tile_values(config: Config, problem: Problem) -> int:
    """Register-resident values of one block: k, then (max, norm, sum) scanned over value dims."""
    return config["BLOCK_T"] * (next_power_of_2(problem["D"]) + 3 * config["BLOCK_DV"])


def check(config: Config, problem: Problem, limits: DeviceLimits) -> str | None:
    """Tiles within the padded problem, registers without spills, shared memory on the device."""
    for tile, dim in (("BLOCK_DV", "D"), ("BLOCK_T", "T")):
        # A tile past the padded dim only adds masked work, so it is pruned; tiles up to the
        # default's stay valid so the default runs every problem.
        if config[tile] > max(next_power_of_2(problem[dim]), DEFAULT[tile]):
            return f"{tile}={config[tile]} exceeds the padded {dim}={problem[dim]}"
    values = tile_values(config, problem)
    threads = 32 * config["num_warps"]
    if values > MAX_TILE_VALUES_PER_THREAD * threads:
        return f"{values} tile values over {threads} threads would spill registers"
    if config["BLOCK_T"] * config["BLOCK_DV"] < threads:
        return (f"{threads} threads for a {config['BLOCK_T']}x{config['BLOCK_DV']} tile leave "
                f"threads idle")
    return shared_memory_fits(shared_memory_estimate(config, problem), limits)


def shared_memory_estimate(config: Config, problem: Problem) -> int:
    """Bytes: the cross-warp exchange of the fp32 scan operands (sm_80/sm_90 builds use
    12 * BLOCK_T * BLOCK_DV when the time axis spans warps) and of the score reduction."""
    return 4 * tile_values(config, problem)


def make_inputs(problem: Problem, device: str, seed: int) -> Inputs:
    """Unit-normal q, k, v: with scale D**-0.5 the scores are ~N(0, 1), as in trained models."""
    generator = torch.Generator().manual_seed(seed)
    B, T, H, D = (problem[k] for k in ("B", "T", "H", "D"))
    dtype = DTYPES[problem["dtype"]]
    q, k, v = (torch.randn(*shape, generator=generator).to(device, dtype)
               for shape in ((B, H, D), (B, T, H, D), (B, T, H, D)))
    return {"q": q, "k": k, "v": v, "scale": None}


def run(inputs: Inputs, config: Config) -> Outputs:
    return (prefix_attention(inputs["q"], inputs["k"], inputs["v"], scale=inputs["scale"],
                             config=config),)


def reference(inputs: Inputs) -> Outputs:
    """o_t = sum_{s<=t} w_s v_s / sum_{s<=t} w_s with w_s = exp(score_s - max score), as prefix
    sums in float64 on the CPU, one head at a time (no running max, no merging of states).

    Exact while the scores of a sequence span less than ~700 (float64's exp range), which the
    check enforces; kernels are verified well inside that (|score| ~ 100 at the most).
    """
    q, k, v = (inputs[name].to("cpu", torch.float64) for name in ("q", "k", "v"))
    scale = inputs["scale"] if inputs["scale"] is not None else q.shape[-1] ** -0.5
    o = torch.empty_like(v)
    for head in range(k.shape[2]):
        scores = torch.einsum("bd,btd->bt", q[:, head], k[:, :, head]) * scale
        spread = (scores.amax(dim=1) - scores.amin(dim=1)).max().item()
        if spread > 700:
            raise ValueError(f"reference: scores span {spread:.0f}, past float64's exp range")
        weights = torch.exp(scores - scores.amax(dim=1, keepdim=True))
        weighted_values = torch.cumsum(weights[:, :, None] * v[:, :, head], dim=1)
        o[:, :, head] = weighted_values / torch.cumsum(weights, dim=1)[:, :, None]
    return (o,)


def flops(problem: Problem) -> float:
    """Per (batch, head, step): the score q.k (2D), rescaling and accumulating the weighted sum
    (3D) and normalising the output (D)."""
    return 6.0 * problem["B"] * problem["T"] * problem["H"] * problem["D"]


def bytes_moved(problem: Problem) -> float:
    """Read q, k, v and write o."""
    B, T, H, D = (problem[k] for k in ("B", "T", "H", "D"))
    return float(DTYPES[problem["dtype"]].itemsize * (B * H * D + 3 * B * T * H * D))


def _problems(shapes, dtypes=("bfloat16",)) -> list[Problem]:
    return [{"B": b, "T": t, "H": h, "D": d, "dtype": dtype}
            for b, t, h, d in shapes for dtype in dtypes]


PRESETS = {
    "tiny": _problems([(1, 64, 1, 32)], ("float32",)) + _problems([(1, 32, 1, 64)]),
    "quick": _problems([(4, 2048, 16, 64), (2, 4096, 32, 128)]),
    "default": _problems([(8, 1024, 8, 64), (4, 4096, 16, 128), (2, 8192, 32, 128),
                          (1, 16384, 32, 64), (1, 16384, 8, 128)],
                         dtypes=("bfloat16", "float32")),
    "full": _problems([(b, t, h, d) for b in (1, 8) for t in (1024, 4096, 16384)
                       for h in (8, 32) for d in (64, 128)], dtypes=("bfloat16", "float32")),
}

VERIFY_CASES = [
    {"B": 2, "T": 1, "H": 3, "D": 40, "dtype": "float32"},  # T = 1
    {"B": 1, "T": 37, "H": 2, "D": 64, "dtype": "bfloat16"},  # T not a multiple of BLOCK_T
    {"B": 2, "T": 100, "H": 1, "D": 24, "dtype": "float32"},  # head dim not a power of two
    {"B": 1, "T": 45, "H": 2, "D": 128, "dtype": "bfloat16"},  # value dims over two programs
    {"B": 1, "T": 2000, "H": 1, "D": 16, "dtype": "float32"},  # long T
    {"B": 1, "T": 1100, "H": 1, "D": 8, "dtype": "bfloat16"},  # long T
]

# No tl.dot: all arithmetic is fp32 on every device. fp32: a score's rounding (~D ulp of
# |q||k|) perturbs its weight relatively by as much; outputs are convex combinations of v
# (|o| <~ 3); measured <= ~1e-6 at unit-scale scores. Half types: q, k, v are exact in both
# computations, so the error is the output's rounding, half an ulp (2^-9 bf16, 2^-12 fp16),
# allowed ~4x.
TOLERANCES = {
    "float32": Tolerance(atol=2e-5, rtol=2e-5),
    "float16": Tolerance(atol=2e-3, rtol=2e-3),
    "bfloat16": Tolerance(atol=1e-2, rtol=1e-2),
}

BWD_SPACE = {
    "BLOCK_T": (8, 16, 32, 64),
    "num_warps": (1, 2, 4, 8),
    "num_stages": (1, 2),  # no tl.dot, no pipelining: kept as a knob as in the forward
}
BWD_DEFAULT = {"BLOCK_T": 16, "num_warps": 8, "num_stages": 1}
# A program holds every head dim: k, v, o, dO, the G scan's operands and prefixes, dK and dV,
# [BLOCK_T, D] each. Measured with cuobjdump on sm_80 and sm_90 (D = 64, 128): 16 values of the
# tile per thread take <= 197 registers without spills; 32 reach 255 and spill.
MAX_BWD_TILE_VALUES_PER_THREAD = 16


def check_bwd(config: Config, problem: Problem, limits: DeviceLimits) -> str | None:
    if config["BLOCK_T"] > max(next_power_of_2(problem["T"]), BWD_DEFAULT["BLOCK_T"]):
        return f"BLOCK_T={config['BLOCK_T']} exceeds the padded T={problem['T']}"
    tile = config["BLOCK_T"] * next_power_of_2(problem["D"])
    threads = 32 * config["num_warps"]
    if tile > MAX_BWD_TILE_VALUES_PER_THREAD * threads:
        return f"{tile} tile values over {threads} threads would spill registers"
    # The scan's and the reductions' cross-warp exchange: two fp32 tiles at most.
    return shared_memory_fits(2 * 4 * tile, limits)


def make_bwd_inputs(problem: Problem, device: str, seed: int) -> Inputs:
    """The forward's inputs, an upstream gradient ``do`` (unit normal), and what the forward
    saves: o and lse (every prefix's log-sum-exp of scores, [B, H, T] fp32), made by the forward
    kernel with its default config where kernels run, else (a compile-only check) by PyTorch."""
    inputs = make_inputs(problem, device, seed)
    generator = torch.Generator().manual_seed(seed + 1)
    inputs["do"] = torch.randn(inputs["k"].shape, generator=generator).to(device,
                                                                          inputs["v"].dtype)
    if kernels_can_run(device):
        inputs["o"], inputs["lse"] = run_forward(inputs["q"], inputs["k"], inputs["v"],
                                                 _scale(inputs), DEFAULT, store_lse=True)
    else:
        scores = torch.einsum("bhd,bthd->bht", inputs["q"].float(), inputs["k"].float())
        inputs["o"] = torch_prefix_attention(inputs)[0]
        inputs["lse"] = torch.logcumsumexp(scores * _scale(inputs), dim=-1)
    return inputs


def _scale(inputs: Inputs) -> float:
    return inputs["q"].shape[-1] ** -0.5 if inputs["scale"] is None else float(inputs["scale"])


def run_bwd(inputs: Inputs, config: Config) -> Outputs:
    """(dq, dk, dv)."""
    return run_backward(inputs["q"], inputs["k"], inputs["v"], inputs["o"], inputs["lse"],
                        inputs["do"], _scale(inputs), config)


def reference_bwd(inputs: Inputs) -> Outputs:
    """The gradients of sum(o * do) by float64 autograd through ``reference``."""
    leaves = {n: inputs[n].to("cpu", torch.float64).requires_grad_() for n in ("q", "k", "v")}
    (o,) = reference({**inputs, **leaves})
    return torch.autograd.grad(o, list(leaves.values()), inputs["do"].to("cpu", o.dtype))


def bwd_flops(problem: Problem) -> float:
    """Per (batch, head, step): the score (2D), delta = dO.o (2D), the G scan (2D), dV (D),
    v.G (2D), dK (D), dQ (2D)."""
    return 12.0 * problem["B"] * problem["T"] * problem["H"] * problem["D"]


def bwd_bytes_moved(problem: Problem) -> float:
    """Read q, k, v, o, dO and lse; write dq, dk, dv."""
    B, T, H, D = (problem[k] for k in ("B", "T", "H", "D"))
    element = DTYPES[problem["dtype"]].itemsize
    return float(element * (2 * B * H * D + 6 * B * T * H * D) + 4 * B * H * T)


# fp32: G, E and dq are sums over up to T steps of fp32 products; measured <= 4e-6 absolute
# (|grads| up to ~9) at T = 2000. Half types: q, k, v, dO are exact in both computations, but the
# backward reads the saved o rounded to the dtype (delta = dO.o enters dx by a difference, so its
# error is absolute, ~2^-8 |dO||o|) and rounds dq, dk, dv (2^-8 relative, 2^-7 where the
# interpreter truncates bf16): measured at most half the bf16 bound on the verify cases.
BWD_TOLERANCES = {
    "float32": Tolerance(atol=5e-5, rtol=5e-5),
    "float16": Tolerance(atol=4e-3, rtol=4e-3),
    "bfloat16": Tolerance(atol=3e-2, rtol=2e-2),
}

FORWARD_SPEC = KernelSpec(
    name="prefix_attention",
    family="scan",
    description="attention as an RNN (Aaren): every prefix's softmax attention by a scan",
    space=SPACE,
    default_config=DEFAULT,
    size_fields=("B", "T", "H"),
    presets=PRESETS,
    verify_cases=VERIFY_CASES,
    check=check,
    make_inputs=make_inputs,
    run=run,
    reference=reference,
    tolerances=TOLERANCES,
    flops=flops,
    bytes_moved=bytes_moved,
    baselines=BASELINES,
)
# The backward tunes the forward's problems (same fields, buckets, presets and verify
# cases): only what differs is given.
BWD_SPEC = dataclasses.replace(
    FORWARD_SPEC,
    name="prefix_attention_bwd",
    description="gradients of prefix_attention: reverse scans over the saved log-sum-exps",
    space=BWD_SPACE,
    default_config=BWD_DEFAULT,
    check=check_bwd,
    make_inputs=make_bwd_inputs,
    run=run_bwd,
    reference=reference_bwd,
    tolerances=BWD_TOLERANCES,
    flops=bwd_flops,
    bytes_moved=bwd_bytes_moved,
    baselines={"torch": autograd_of(torch_prefix_attention, ("q", "k", "v"), ("do",))},
)
SPECS = (FORWARD_SPEC, BWD_SPEC)
