"""The selective_scan kernel as the tool sees it.

Problem fields: the size fields ``b`` (batch), ``d`` (channels) and ``L`` (sequence length),
bucketed to powers of two; categorical ``n`` (state size), ``groups`` (of B and C; 1 is Mamba's
ungrouped [b, n, L] layout), ``has_z``, ``has_D``, ``has_delta_bias``, ``delta_softplus`` and
``dtype`` (of u, delta, B, C, z). The flags default to Mamba's usual call (all set);
``has_initial_state`` (a state to resume from) defaults to False, what profiles tuned before it
existed measured.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from seqtune.baselines import autograd_of
from seqtune.kernels.selective_scan.autograd import INPUTS, run_backward
from seqtune.kernels.selective_scan.baselines import BASELINES
from seqtune.kernels.selective_scan.op import MAX_BWD_STATE_DIM, problem_of, selective_scan
from seqtune.kernels.selective_scan.step_spec import STEP_SPEC
from seqtune.spec import (DTYPES, Config, DeviceLimits, Inputs, KernelSpec, Outputs, Problem,
                          Tolerance, next_power_of_2, shared_memory_fits)

SPACE = {
    "BLOCK_D": (4, 8, 16, 32),
    "BLOCK_N": (8, 16, 32),
    "BLOCK_T": (16, 32, 64, 128),
    "num_warps": (2, 4, 8),
    # The compiler does not software-pipeline these loads (no tl.dot): measured on sm_80/sm_90,
    # num_stages changes neither registers nor shared memory. Kept as a knob for newer compilers.
    "num_stages": (1, 2),
}
DEFAULT = {"BLOCK_D": 8, "BLOCK_N": 16, "BLOCK_T": 32, "num_warps": 8, "num_stages": 1}

# The [BLOCK_D, BLOCK_N, BLOCK_T] tile lives in registers several times over (decay, drive, their
# prefixes, x, C). Measured with cuobjdump on sm_80 and sm_90: 16 values of the tile per thread
# take <= 172 registers without spills; 32 take 168-255 and spill for long BLOCK_T.
MAX_TILE_VALUES_PER_THREAD = 16
PROBLEM_DEFAULTS = {"groups": 1, "has_z": True, "has_D": True, "has_delta_bias": True,
                    "delta_softplus": True, "has_initial_state": False}


def check(config: Config, problem: Problem, limits: DeviceLimits) -> str | None:
    """Tiles within the padded problem, registers without spills, shared memory on the device."""
    for tile, dim in (("BLOCK_D", "d"), ("BLOCK_N", "n"), ("BLOCK_T", "L")):
        # A tile past the padded dim only adds masked work, so it is pruned; tiles up to the
        # default's stay valid so the default runs every problem.
        if config[tile] > max(next_power_of_2(problem[dim]), DEFAULT[tile]):
            return f"{tile}={config[tile]} exceeds the padded {dim}={problem[dim]}"
    tile_values = config["BLOCK_D"] * config["BLOCK_N"] * config["BLOCK_T"]
    threads = 32 * config["num_warps"]
    if tile_values > MAX_TILE_VALUES_PER_THREAD * threads:
        return f"{tile_values} tile values over {threads} threads would spill registers"
    if tile_values < threads:
        return f"{threads} threads for {tile_values} tile values leave threads idle"
    return shared_memory_fits(shared_memory_estimate(config), limits)


def shared_memory_estimate(config: Config) -> int:
    """Bytes: the scan's cross-warp exchange of the fp32 (decay, drive) tile, an upper bound of
    what sm_80/sm_90 builds use (none when the time axis stays within a warp)."""
    return 2 * 4 * config["BLOCK_D"] * config["BLOCK_N"] * config["BLOCK_T"]


def make_inputs(problem: Problem, device: str, seed: int) -> Inputs:
    """Mamba-like values: S4D-real A = -(1..n) with per-channel jitter; step sizes ~1e-3..1e-1
    (with softplus: of a unit-scale projection plus Mamba's bias init, the inverse softplus of
    U(1e-3, 1e-1)); unit-normal u, B, C, z, D; fp32 parameters (A, D, delta_bias) as Mamba
    keeps them."""
    problem = {**PROBLEM_DEFAULTS, **problem}
    generator = torch.Generator().manual_seed(seed)
    b, d, L, n, groups = (problem[k] for k in ("b", "d", "L", "n", "groups"))
    dtype = DTYPES[problem["dtype"]]

    def normal(*shape):
        return torch.randn(*shape, generator=generator)

    def uniform(low, high, *shape):
        return low + (high - low) * torch.rand(*shape, generator=generator)

    A = -torch.arange(1, n + 1, dtype=torch.float32) * uniform(0.5, 1.5, d, 1)
    delta_bias = None
    if problem["delta_softplus"] and problem["has_delta_bias"]:
        delta = 0.5 * normal(b, d, L)
        delta_bias = torch.log(torch.expm1(uniform(1e-3, 1e-1, d)))
    elif problem["delta_softplus"]:
        delta = 0.5 * normal(b, d, L) - 3.0  # softplus: ~0.02..0.13
    else:
        delta = uniform(1e-3, 1e-1, b, d, L)
        if problem["has_delta_bias"]:
            delta_bias = uniform(0.0, 1e-2, d)
    bc_shape = (b, n, L) if groups == 1 else (b, groups, n, L)
    streams = {"u": normal(b, d, L), "delta": delta, "B": normal(*bc_shape),
               "C": normal(*bc_shape), "z": normal(b, d, L) if problem["has_z"] else None}
    inputs = {name: t.to(device, dtype) if t is not None else None for name, t in streams.items()}
    parameters = {"A": A, "D": normal(d) if problem["has_D"] else None, "delta_bias": delta_bias}
    inputs.update({name: t.to(device) if t is not None else None for name, t in parameters.items()})
    inputs["delta_softplus"] = problem["delta_softplus"]
    # A state as a previous chunk leaves it: O(1) entries (|x| of unit-normal inputs after many
    # steps), fp32 as Mamba caches it.
    inputs["initial_state"] = (normal(b, d, n).to(device) if problem["has_initial_state"]
                               else None)
    return inputs


def run(inputs: Inputs, config: Config) -> Outputs:
    return selective_scan(**inputs, return_last_state=True, config=config)


def reference(inputs: Inputs) -> Outputs:
    """The recurrence stepped one t at a time in float64 on the CPU: (y, last state)."""
    def f64(name):
        value = inputs[name]
        return value.to("cpu", torch.float64) if value is not None else None

    u, delta, A, B, C, D, z, delta_bias, initial_state = map(
        f64, ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state"))
    batch, channels, length = u.shape
    if delta_bias is not None:
        delta = delta + delta_bias[:, None]
    if inputs["delta_softplus"]:
        delta = F.softplus(delta)
    if B.dim() == 3:
        B, C = B[:, None], C[:, None]
    groups, state_dim = B.shape[1], A.shape[1]
    # Channels as [group, channel in group] so that B and C broadcast over a group's channels;
    # time-major so that each step reads contiguous slices.
    by_group = (batch, groups, channels // groups)
    u_steps, delta_steps = (x.reshape(*by_group, length).permute(3, 0, 1, 2).contiguous()
                            for x in (u, delta))
    B_steps, C_steps = (x.permute(3, 0, 1, 2)[:, :, :, None, :].contiguous() for x in (B, C))
    A = A.reshape(groups, channels // groups, state_dim)
    x = torch.zeros(*by_group, state_dim, dtype=torch.float64)
    if initial_state is not None:
        x = initial_state.reshape(*by_group, state_dim).clone()
    y = torch.empty(length, *by_group, dtype=torch.float64)
    for t in range(length):
        x = (torch.exp(delta_steps[t, ..., None] * A) * x
             + (delta_steps[t] * u_steps[t])[..., None] * B_steps[t])
        y[t] = (x * C_steps[t]).sum(-1)
    y = y.permute(1, 2, 3, 0).reshape(batch, channels, length)
    if D is not None:
        y = y + D[:, None] * u
    if z is not None:
        y = y * z * torch.sigmoid(z)
    return y, x.reshape(batch, channels, state_dim)


def flops(problem: Problem) -> float:
    """Per channel, state and step: delta*A, exp, the affine update (2), delta*u*B (1 with
    delta*u shared), C*x and its sum (2): 7; per channel and step: D u, softplus, silu gate."""
    b, d, L, n = (problem[k] for k in ("b", "d", "L", "n"))
    return float(b * d * L * (7 * n + 8))


def bytes_moved(problem: Problem) -> float:
    """Read u, delta, z, B, C; write y and the fp32 last state; read fp32 A, D, delta_bias and
    the initial state."""
    problem = {**PROBLEM_DEFAULTS, **problem}
    b, d, L, n, groups = (problem[k] for k in ("b", "d", "L", "n", "groups"))
    element = DTYPES[problem["dtype"]].itemsize
    streams = (3 + problem["has_z"]) * b * d * L + 2 * b * groups * n * L
    parameters = d * n + d * (problem["has_D"] + problem["has_delta_bias"])
    states = (1 + problem["has_initial_state"]) * b * d * n
    return float(element * streams + 4 * (parameters + states))


def _problems(shapes, dtypes=("bfloat16",)) -> list[Problem]:
    return [{"b": b, "d": d, "L": L, "n": 16, "dtype": dtype, **PROBLEM_DEFAULTS}
            for b, d, L in shapes for dtype in dtypes]


PRESETS = {
    "tiny": [{"b": 1, "d": 8, "L": 32, "n": 16, "dtype": "float32", **PROBLEM_DEFAULTS},
             {**PROBLEM_DEFAULTS, "b": 1, "d": 8, "L": 32, "n": 8, "groups": 2,
              "has_initial_state": True, "dtype": "bfloat16"}],
    "quick": _problems([(2, 2048, 2048), (4, 4096, 4096)]),
    "default": _problems([(8, 2048, 1024), (4, 2560, 2048), (2, 4096, 4096), (1, 5120, 8192)],
                         dtypes=("bfloat16", "float32")),
    "full": _problems([(b, d, L) for b in (1, 8) for d in (2048, 3072, 5120)
                       for L in (1024, 2048, 4096, 8192)], dtypes=("bfloat16", "float32")),
}


def _case(b, d, L, n, groups, flags, dtype, has_initial_state=False) -> Problem:
    has_z, has_D, has_delta_bias, delta_softplus = flags
    return {"b": b, "d": d, "L": L, "n": n, "groups": groups, "has_z": has_z, "has_D": has_D,
            "has_delta_bias": has_delta_bias, "delta_softplus": delta_softplus,
            "has_initial_state": has_initial_state, "dtype": dtype}


ALL = (True, True, True, True)
NONE = (False, False, False, False)
VERIFY_CASES = [
    _case(1, 3, 1, 4, 1, ALL, "float32"),  # T = 1
    # grouped, 3 channels per group: tiles span groups; resumed from a state
    _case(2, 6, 37, 16, 2, ALL, "bfloat16", has_initial_state=True),
    _case(2, 12, 100, 16, 4, (True, True, True, False), "float32"),  # bias without softplus
    _case(1, 16, 67, 12, 2, ALL, "bfloat16"),  # n not a power of two, 8 channels per group
    # n > BLOCK_N: states split over programs, each resuming its part of the state
    _case(1, 4, 50, 24, 1, ALL, "float32", has_initial_state=True),
    _case(1, 5, 2000, 8, 1, NONE, "float32"),  # long L, plain recurrence
    _case(1, 2, 1500, 4, 1, ALL, "bfloat16"),  # long L
]

# No tl.dot: all arithmetic is fp32 on every device. fp32: exp, softplus and sigmoid to a few ulp
# and the scan's reassociation; measured <= 1.3e-6 absolute on the verify cases (|y| up to ~10).
# Half types: u, delta, B, C, z are exact in both computations (the reference reads the same
# rounded values), so the error is the output's rounding, half an ulp (2^-9 bf16, 2^-12 fp16),
# allowed ~4x.
TOLERANCES = {
    "float32": Tolerance(atol=1e-5, rtol=1e-4),
    "float16": Tolerance(atol=2e-3, rtol=2e-3),
    "bfloat16": Tolerance(atol=1e-2, rtol=1e-2),
}

BWD_SPACE = {
    "BLOCK_T": (8, 16, 32, 64),  # the checkpoint interval and both kernels' time tile
    "states.BLOCK_D": (2, 4, 8, 16),
    "states.num_warps": (2, 4, 8),
    "reverse.BLOCK_D": (1, 2, 4, 8),
    "reverse.num_warps": (2, 4, 8),
    "num_stages": (1, 2),  # no tl.dot, no pipelining: kept as a knob as in the forward
}
BWD_DEFAULT = {"BLOCK_T": 32, "states.BLOCK_D": 4, "states.num_warps": 4, "reverse.BLOCK_D": 4,
               "reverse.num_warps": 8, "num_stages": 1}
# Values of a [BLOCK_D, n padded, BLOCK_T] tile per thread that compile without spills
# (cuobjdump on sm_80 and sm_90, n = 16): the checkpoint kernel holds the forward's tiles but C
# (16 per thread: <= 115 registers); the reverse kernel about twice as many (the recomputed
# states, the shifted decay, g and its scan; 8 per thread: <= 225 registers).
MAX_BWD_TILE_VALUES_PER_THREAD = {"states": 16, "reverse": 8}
# The forward's n = 24 case tests states split over programs (n > BLOCK_N); the backward holds all
# of n in one tile, and at n padded to 32 its default would exceed the register budget above, so
# it checks that case at n = 12 (still not a power of two).
BWD_VERIFY_CASES = [case if case["n"] <= 16 else {**case, "n": 12} for case in VERIFY_CASES]


def check_bwd(config: Config, problem: Problem, limits: DeviceLimits) -> str | None:
    if problem["n"] > MAX_BWD_STATE_DIM:
        return f"the backward supports n <= {MAX_BWD_STATE_DIM}, got n={problem['n']}"
    if config["BLOCK_T"] > max(next_power_of_2(problem["L"]), BWD_DEFAULT["BLOCK_T"]):
        return f"BLOCK_T={config['BLOCK_T']} exceeds the padded L={problem['L']}"
    shared = 0
    for stage, scans in (("states", 1), ("reverse", 2)):
        block_d = config[f"{stage}.BLOCK_D"]
        if block_d > max(next_power_of_2(problem["d"]), BWD_DEFAULT[f"{stage}.BLOCK_D"]):
            return f"{stage}.BLOCK_D={block_d} exceeds the padded d={problem['d']}"
        tile = block_d * next_power_of_2(problem["n"]) * config["BLOCK_T"]
        threads = 32 * config[f"{stage}.num_warps"]
        if tile > MAX_BWD_TILE_VALUES_PER_THREAD[stage] * threads:
            return f"{stage}: {tile} tile values over {threads} threads would spill registers"
        if tile < threads:
            return f"{stage}: {threads} threads for {tile} tile values leave threads idle"
        shared = max(shared, scans * 2 * 4 * tile)  # each scan's fp32 pair, exchanged
    return shared_memory_fits(shared, limits)


def make_bwd_inputs(problem: Problem, device: str, seed: int) -> Inputs:
    """The forward's inputs and unit-normal upstream gradients: ``dy`` (of y, in u's dtype) and
    ``dlast_state`` (of the fp32 last state). The forward saves nothing else: the backward
    recomputes the states."""
    inputs = make_inputs(problem, device, seed)
    generator = torch.Generator().manual_seed(seed + 1)
    u = inputs["u"]
    inputs["dy"] = torch.randn(u.shape, generator=generator).to(device, u.dtype)
    inputs["dlast_state"] = torch.randn(*u.shape[:2], problem["n"], generator=generator).to(device)
    return inputs


def _present(inputs: Inputs) -> list[str]:
    return [name for name in INPUTS if inputs.get(name) is not None]


def run_bwd(inputs: Inputs, config: Config) -> Outputs:
    """The gradients of u, delta, A, B, C, then of D, z, delta_bias, initial_state where given."""
    tensors = {name: inputs.get(name) for name in INPUTS}
    problem = problem_of(tensors["u"], tensors["A"], tensors["B"], tensors["D"], tensors["z"],
                         tensors["delta_bias"], inputs["delta_softplus"],
                         tensors["initial_state"])
    grads = run_backward(problem, config, tensors, inputs["dy"], inputs["dlast_state"])
    return tuple(g for g in grads if g is not None)


def reference_bwd(inputs: Inputs) -> Outputs:
    """The gradients of sum(y * dy) + sum(last_state * dlast_state) by float64 autograd through
    ``reference``."""
    leaves = {n: inputs[n].to("cpu", torch.float64).requires_grad_() for n in _present(inputs)}
    y, last_state = reference({**inputs, **leaves})
    upstream = (inputs["dy"].to("cpu", torch.float64),
                inputs["dlast_state"].to("cpu", torch.float64))
    return torch.autograd.grad((y, last_state), list(leaves.values()), upstream)


def bwd_flops(problem: Problem) -> float:
    """Per channel, state and step: the checkpoint pass (5), the recomputed states (5), the
    shifted decay (2), the g scan (3), du, d delta, dA, dB, dC (12): 27."""
    b, d, L, n = (problem[k] for k in ("b", "d", "L", "n"))
    return float(b * d * L * (27 * n + 12))


def bwd_bytes_moved(problem: Problem) -> float:
    """Read u, delta (twice), z, dy, B, C (twice: both passes); write du, d delta, dz, dB, dC
    (fp32 accumulators) and the fp32 checkpoints, whose size does not count: a bound."""
    problem = {**PROBLEM_DEFAULTS, **problem}
    b, d, L, n, groups = (problem[k] for k in ("b", "d", "L", "n", "groups"))
    element = DTYPES[problem["dtype"]].itemsize
    streams = element * (7 + 2 * problem["has_z"]) * b * d * L
    return float(streams + (2 * element + 8) * b * groups * n * L + 12 * d * n)


# fp32: the recomputed states, the g scan and the sums over steps and channels (dA, dB, dC) are
# fp32 reassociations: measured <= 1.1e-6 of the largest gradient (|grads| up to ~165), a tenth of
# the bound at most. Half types: the inputs are exact in both computations; the gradients are
# rounded once to the dtype (2^-8 relative, 2^-7 where the interpreter truncates bf16), but du
# and d delta sum over n states products that cancel, so their error is absolute, relative to
# the largest gradient: measured <= 6.9e-3 of it for bf16, at most 0.3 of the bound.
BWD_TOLERANCES = {
    "float32": Tolerance(atol=5e-5, rtol=5e-5),
    "float16": Tolerance(atol=4e-3, rtol=4e-3),
    "bfloat16": Tolerance(atol=3e-2, rtol=2e-2),
}

FORWARD_SPEC = KernelSpec(
    name="selective_scan",
    family="scan",
    description="Mamba selective scan: x_t = exp(delta A) x_{t-1} + delta B u, y = C x + D u",
    space=SPACE,
    default_config=DEFAULT,
    size_fields=("b", "d", "L"),
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
    baselines=BASELINES,
)
# The backward tunes the forward's problems (same fields, buckets, presets and verify
# cases): only what differs is given.
BWD_SPEC = dataclasses.replace(
    FORWARD_SPEC,
    name="selective_scan_bwd",
    verify_cases=BWD_VERIFY_CASES,
    description="gradients of selective_scan: states recomputed per block, g scanned backwards",
    space=BWD_SPACE,
    default_config=BWD_DEFAULT,
    check=check_bwd,
    make_inputs=make_bwd_inputs,
    run=run_bwd,
    reference=reference_bwd,
    tolerances=BWD_TOLERANCES,
    flops=bwd_flops,
    bytes_moved=bwd_bytes_moved,
    stages=("states", "reverse"),
    stagewise=True,
    baselines={"torch": autograd_of(BASELINES["torch"], INPUTS, ("dy", "dlast_state"))},
)
SPECS = (FORWARD_SPEC, BWD_SPEC, STEP_SPEC)
