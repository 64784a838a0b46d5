"""The linear_scan kernel and its backward ``linear_scan_bwd`` as the tool sees them.

Problem fields (both specs): ``B`` (batch), ``T`` (sequence length), ``D`` (channels) -- the
size fields, bucketed to powers of two -- and the categorical ``initial_state`` (bool: an
h_{-1} is given) and ``dtype`` (of a and b).
"""
from __future__ import annotations

import dataclasses

import torch

from seqtune.baselines import autograd_of
from seqtune.kernels.linear_scan.autograd import run_backward, run_forward
from seqtune.kernels.linear_scan.baselines import BASELINES, torch_linear_scan
from seqtune.kernels.linear_scan.interpreter import kernels_can_run
from seqtune.kernels.linear_scan.op import linear_scan
from seqtune.spec import (DTYPES, Config, DeviceLimits, Inputs, KernelSpec, Outputs, Problem,
                          Tolerance, next_power_of_2, shared_memory_fits)

SPACE = {
    "BLOCK_D": (16, 32, 64, 128, 256),
    "BLOCK_T": (16, 32, 64, 128),
    "num_warps": (1, 2, 4, 8),
    # The compiler does not software-pipeline these loads (no tl.dot): measured on sm_80/sm_90,
    # num_stages changes neither registers nor shared memory. Kept as a knob for newer compilers.
    "num_stages": (1, 2),
}
DEFAULT = {"BLOCK_D": 64, "BLOCK_T": 32, "num_warps": 4, "num_stages": 1}

# Tile values (a, b, their prefixes and h) live in registers. Measured with cuobjdump on sm_80 and
# sm_90: 16 values of the tile per thread take <= 107 registers, 32 take up to 254 (at the limit).
MAX_TILE_VALUES_PER_THREAD = 16


def check(config: Config, problem: Problem, limits: DeviceLimits) -> str | None:
    """Tiles within the padded problem, registers without spills, shared memory on the device."""
    for tile, dim in (("BLOCK_D", "D"), ("BLOCK_T", "T")):
        # A tile past the padded dim only adds masked work, so it is pruned; tiles up to the
        # default's stay valid so the default runs every problem.
        if config[tile] > max(next_power_of_2(problem[dim]), DEFAULT[tile]):
            return f"{tile}={config[tile]} exceeds the padded {dim}={problem[dim]}"
    tile_values = config["BLOCK_T"] * config["BLOCK_D"]
    threads = 32 * config["num_warps"]
    if tile_values > MAX_TILE_VALUES_PER_THREAD * threads:
        return f"{tile_values} tile values over {threads} threads would spill registers"
    if tile_values < threads:
        return f"{threads} threads for {tile_values} tile values leave threads idle"
    return shared_memory_fits(shared_memory_estimate(config), limits)


def shared_memory_estimate(config: Config) -> int:
    """Bytes: the scan's cross-warp exchange of the fp32 (a, b) tile (what sm_80/sm_90 builds
    use when the time axis spans warps; none when it does not)."""
    return 2 * 4 * config["BLOCK_T"] * config["BLOCK_D"]


def make_inputs(problem: Problem, device: str, seed: int) -> Inputs:
    """Decay rates in (0.5, 1) as in RG-LRU/LRU, standard normal inputs, fp32 initial state."""
    generator = torch.Generator().manual_seed(seed)
    shape = (problem["B"], problem["T"], problem["D"])
    dtype = DTYPES[problem["dtype"]]
    a = 0.5 + 0.5 * torch.rand(shape, generator=generator)
    b = torch.randn(shape, generator=generator)
    initial_state = None
    if problem["initial_state"]:
        initial_state = torch.randn(shape[0], shape[2], generator=generator).to(device)
    return {"a": a.to(device, dtype), "b": b.to(device, dtype), "initial_state": initial_state}


def run(inputs: Inputs, config: Config) -> Outputs:
    return (linear_scan(inputs["a"], inputs["b"], initial_state=inputs["initial_state"],
                        config=config),)


def reference(inputs: Inputs) -> Outputs:
    """The recurrence stepped one t at a time in float64 on the CPU."""
    a = inputs["a"].to("cpu", torch.float64)
    b = inputs["b"].to("cpu", torch.float64)
    state = torch.zeros(b.shape[0], b.shape[2], dtype=torch.float64)
    if inputs["initial_state"] is not None:
        state = inputs["initial_state"].to("cpu", torch.float64)
    h = torch.empty_like(b)
    for t in range(b.shape[1]):
        state = a[:, t] * state + b[:, t]
        h[:, t] = state
    return (h,)


def flops(problem: Problem) -> float:
    """One multiply and one add per element."""
    return 2.0 * problem["B"] * problem["T"] * problem["D"]


def bytes_moved(problem: Problem) -> float:
    """Read a and b, write h, read the fp32 initial state if given."""
    element = DTYPES[problem["dtype"]].itemsize
    elements = problem["B"] * problem["T"] * problem["D"]
    initial = 4 * problem["B"] * problem["D"] if problem["initial_state"] else 0
    return float(3 * element * elements + initial)


def _problems(shapes, dtypes=("bfloat16",), initial_state=(False,)) -> list[Problem]:
    return [{"B": b, "T": t, "D": d, "initial_state": init, "dtype": dtype}
            for b, t, d in shapes for dtype in dtypes for init in initial_state]


PRESETS = {
    "tiny": [{"B": 1, "T": 64, "D": 32, "initial_state": False, "dtype": "float32"},
             {"B": 1, "T": 64, "D": 64, "initial_state": True, "dtype": "bfloat16"}],
    "quick": _problems([(4, 2048, 1024), (8, 4096, 2048)]),
    "default": _problems([(8, 1024, 1024), (8, 4096, 2048), (4, 8192, 2560), (2, 16384, 4096)],
                         dtypes=("bfloat16", "float32")),
    "full": _problems([(b, t, d) for b in (1, 8) for t in (1024, 4096, 16384)
                       for d in (1024, 2560, 4096)],
                      dtypes=("bfloat16", "float32"), initial_state=(False, True)),
}

VERIFY_CASES = [
    {"B": 2, "T": 1, "D": 33, "initial_state": True, "dtype": "float32"},
    {"B": 3, "T": 37, "D": 50, "initial_state": False, "dtype": "bfloat16"},
    {"B": 2, "T": 100, "D": 70, "initial_state": True, "dtype": "float32"},
    {"B": 1, "T": 3001, "D": 5, "initial_state": True, "dtype": "float32"},
    {"B": 1, "T": 2500, "D": 3, "initial_state": False, "dtype": "bfloat16"},
]

# No tl.dot: all arithmetic is fp32 on every device. fp32: the scan's reassociation and the
# carried state give errors of a few ulp of the running |h| (~1e-6 here). Half types: rounding the
# output alone costs half an ulp (2^-9 for bf16, 2^-12 for fp16), and the bound allows ~4x that.
TOLERANCES = {
    "float32": Tolerance(atol=1e-5, rtol=1e-5),
    "float16": Tolerance(atol=2e-3, rtol=2e-3),
    "bfloat16": Tolerance(atol=1e-2, rtol=1e-2),
}

# The backward holds a few more tiles than the forward (the shifted decay, dh, their prefixes,
# g, h_{t-1}). Measured with cuobjdump on sm_80 and sm_90: 32 values per thread take <= 183
# registers without spills; 64 spill.
MAX_BWD_TILE_VALUES_PER_THREAD = 32
BWD_DEFAULT = {"BLOCK_D": 64, "BLOCK_T": 32, "num_warps": 4, "num_stages": 1}


def check_bwd(config: Config, problem: Problem, limits: DeviceLimits) -> str | None:
    for tile, dim in (("BLOCK_D", "D"), ("BLOCK_T", "T")):
        if config[tile] > max(next_power_of_2(problem[dim]), BWD_DEFAULT[tile]):
            return f"{tile}={config[tile]} exceeds the padded {dim}={problem[dim]}"
    tile_values = config["BLOCK_T"] * config["BLOCK_D"]
    threads = 32 * config["num_warps"]
    if tile_values > MAX_BWD_TILE_VALUES_PER_THREAD * threads:
        return f"{tile_values} tile values over {threads} threads would spill registers"
    if tile_values < threads:
        return f"{threads} threads for {tile_values} tile values leave threads idle"
    return shared_memory_fits(shared_memory_estimate(config), limits)


def make_bwd_inputs(problem: Problem, device: str, seed: int) -> Inputs:
    """The forward's inputs, an upstream gradient ``dh`` (unit normal) and the forward's output
    ``h``, which the backward reads for h_{t-1}: made by the forward kernel with its default
    config where kernels run, else (a compile-only check) by plain PyTorch."""
    inputs = make_inputs(problem, device, seed)
    generator = torch.Generator().manual_seed(seed + 1)
    dh = torch.randn(problem["B"], problem["T"], problem["D"], generator=generator)
    inputs["dh"] = dh.to(device, DTYPES[problem["dtype"]])
    if kernels_can_run(device):
        inputs["h"] = run_forward(inputs["a"], inputs["b"], inputs["initial_state"], DEFAULT)
    else:
        inputs["h"] = torch_linear_scan(inputs)[0]
    return inputs


def run_bwd(inputs: Inputs, config: Config) -> Outputs:
    """(da, db) and d initial_state when there is one."""
    grads = run_backward(inputs["a"], inputs["h"], inputs["initial_state"], inputs["dh"], config)
    return tuple(g for g in grads if g is not None)


def reference_bwd(inputs: Inputs) -> Outputs:
    """The gradients of sum(h * dh) by float64 autograd through ``reference``."""
    names = [n for n in ("a", "b", "initial_state") if inputs[n] is not None]
    leaves = {n: inputs[n].to("cpu", torch.float64).requires_grad_() for n in names}
    (h,) = reference({**inputs, **leaves})
    return torch.autograd.grad(h, [leaves[n] for n in names], inputs["dh"].to("cpu", h.dtype))


def bwd_flops(problem: Problem) -> float:
    """Per element: the reverse scan's multiply-add (2) and da = g h (1)."""
    return 3.0 * problem["B"] * problem["T"] * problem["D"]


def bwd_bytes_moved(problem: Problem) -> float:
    """Read a, h, dh; write da, db; the initial state and its gradient in fp32."""
    element = DTYPES[problem["dtype"]].itemsize
    elements = problem["B"] * problem["T"] * problem["D"]
    initial = 8 * problem["B"] * problem["D"] if problem["initial_state"] else 0
    return float(5 * element * elements + initial)


# fp32: the reverse scan reassociates like the forward's (a few ulp of the running |g|, which
# reaches ~10 for decays near 1; measured <= 3e-6 absolute); da = g h adds one rounding. Half
# types: g is exact up to fp32 rounding, so db's error is its own rounding and da's that plus the
# rounding of the saved h: two roundings, each at most 2^-8 relative for bf16 (2^-11 fp16) on a
# GPU, but up to 2^-7 for bf16 in the Triton interpreter, which truncates: measured 1.2e-2
# relative for bf16 da there, within the bound of two truncations (1.6e-2).
BWD_TOLERANCES = {
    "float32": Tolerance(atol=2e-5, rtol=1e-5),
    "float16": Tolerance(atol=2e-3, rtol=4e-3),
    "bfloat16": Tolerance(atol=1e-2, rtol=2e-2),
}

FORWARD_SPEC = KernelSpec(
    name="linear_scan",
    family="scan",
    description="diagonal linear recurrence h_t = a_t h_{t-1} + b_t (RG-LRU/LRU/S5)",
    space=SPACE,
    default_config=DEFAULT,
    size_fields=("B", "T", "D"),
    presets=PRESETS,
    verify_cases=VERIFY_CASES,
    check=check,
    make_inputs=make_inputs,
    run=run,
    reference=reference,
    tolerances=TOLERANCES,
    flops=flops,
    bytes_moved=bytes_moved,
    problem_defaults={"initial_state": False},
    baselines=BASELINES,
)
# The backward tunes the forward's problems (same fields, buckets, presets and verify
# cases): only what differs is given.
BWD_SPEC = dataclasses.replace(
    FORWARD_SPEC,
    name="linear_scan_bwd",
    description="gradients of linear_scan: a reverse scan g_t = dh_t + a_{t+1} g_{t+1}",
    default_config=BWD_DEFAULT,
    check=check_bwd,
    make_inputs=make_bwd_inputs,
    run=run_bwd,
    reference=reference_bwd,
    tolerances=BWD_TOLERANCES,
    flops=bwd_flops,
    bytes_moved=bwd_bytes_moved,
    baselines={"torch": autograd_of(torch_linear_scan, ("a", "b", "initial_state"), ("dh",))},
)
SPECS = (FORWARD_SPEC, BWD_SPEC)
