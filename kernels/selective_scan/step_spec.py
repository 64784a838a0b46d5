"""``selective_scan_step`` as the tuner sees it: one decoded token of Mamba-1 on a state pool.

Problem fields: size fields ``B`` (tokens, one per sequence) and ``d`` (channels); categorical
``n`` (state size), ``groups`` (of B and C; 1 is the [B, n] layout), ``has_z``, ``has_D``,
``has_delta_bias``, ``delta_softplus`` (defaulting to Mamba's usual call, as the full op's),
``indexed`` (a state pool with state_indices; default False) and ``dtype`` (of u, delta, B, C,
z).

Baselines for ``seqtune bench`` (each returns ``(y, updated pool)`` like ``run``, stepping a copy
of the pool as it does): ``torch`` (the step in plain PyTorch, fp32), ``chunkwise_T1``
(seqtune's ``selective_scan`` at L = 1 from the owned rows, written back) and ``mamba_ssm``
(its Triton ``selective_state_update``, when installed and on a GPU; grouped B/C through its
per-head layout, the g groups as heads of d / g channels).
"""
from __future__ import annotations

import importlib

import torch
import torch.nn.functional as F

from seqtune.spec import (DTYPES, Config, DeviceLimits, Inputs, KernelSpec, Outputs, Problem,
                          Tolerance, next_power_of_2)

from seqtune.kernels.selective_scan.op import selective_scan
from seqtune.kernels.selective_scan.step import selective_scan_step

SPACE = {"BD": (4, 8, 16, 32, 64, 128), "BN": (8, 16, 32, 64, 128),
         "num_warps": (1, 2, 4, 8)}
# Mamba-1's n = 16 in one state tile; 32 channels per program: with d = 4096 that is 128
# programs per token, enough to fill a GPU from batch 1 to 2 on.
DEFAULT = {"BD": 32, "BN": 16, "num_warps": 4}
PROBLEM_DEFAULTS = {"groups": 1, "has_z": True, "has_D": True, "has_delta_bias": True,
                    "delta_softplus": True, "indexed": False}
# The [BD, BN] fp32 tiles of the state, A, B and C (and exp(delta A)) live in registers
# together; beyond this many values of one tile per thread they spill.
MAX_TILE_VALUES_PER_THREAD = 32


def check(config: Config, problem: Problem, limits: DeviceLimits) -> str | None:
    """Tiles within the padded problem (up to the default's, so the default runs every
    problem), the tiles within registers, no idle threads. No shared memory: nothing is
    staged or exchanged."""
    problem = {**PROBLEM_DEFAULTS, **problem}
    for tile, dim in (("BD", "d"), ("BN", "n")):
        if config[tile] > max(next_power_of_2(problem[dim]), DEFAULT[tile]):
            return f"{tile}={config[tile]} exceeds the padded {dim}={problem[dim]}"
    tile_values = config["BD"] * config["BN"]
    threads = 32 * config["num_warps"]
    if tile_values > MAX_TILE_VALUES_PER_THREAD * threads:
        return f"{tile_values} tile values over {threads} threads would spill registers"
    if tile_values < threads:
        return f"{threads} threads for {tile_values} tile values leave threads idle"
    return None


def make_inputs(problem: Problem, device: str, seed: int) -> Inputs:
    """The full op's Mamba-like values for one token (S4D-real A, small step sizes, unit-normal
    u, B, C, z, D, fp32 parameters) and an O(1) fp32 state; indexed problems own shuffled rows
    of a pool of 2B + 1."""
    problem = {**PROBLEM_DEFAULTS, **problem}
    generator = torch.Generator().manual_seed(seed)
    batch, channels, state_dim, groups = (problem[k] for k in ("B", "d", "n", "groups"))
    dtype = DTYPES[problem["dtype"]]

    def normal(*shape):
        return torch.randn(*shape, generator=generator)

    def uniform(low, high, *shape):
        return low + (high - low) * torch.rand(*shape, generator=generator)

    A = -torch.arange(1, state_dim + 1, dtype=torch.float32) * uniform(0.5, 1.5, channels, 1)
    delta_bias = None
    if problem["delta_softplus"] and problem["has_delta_bias"]:
        delta = 0.5 * normal(batch, channels)
        delta_bias = torch.log(torch.expm1(uniform(1e-3, 1e-1, channels)))
    elif problem["delta_softplus"]:
        delta = 0.5 * normal(batch, channels) - 3.0  # softplus: ~0.02..0.13
    else:
        delta = uniform(1e-3, 1e-1, batch, channels)
        if problem["has_delta_bias"]:
            delta_bias = uniform(0.0, 1e-2, channels)
    bc_shape = (batch, state_dim) if groups == 1 else (batch, groups, state_dim)
    streams = {"u": normal(batch, channels), "delta": delta, "B": normal(*bc_shape),
               "C": normal(*bc_shape),
               "z": normal(batch, channels) if problem["has_z"] else None}
    inputs = {name: None if t is None else t.to(device, dtype) for name, t in streams.items()}
    parameters = {"A": A, "D": normal(channels) if problem["has_D"] else None,
                  "delta_bias": delta_bias}
    inputs.update({name: None if t is None else t.to(device) for name, t in parameters.items()})
    inputs["delta_softplus"] = problem["delta_softplus"]
    rows = 2 * batch + 1 if problem["indexed"] else batch
    inputs["state"] = normal(rows, channels, state_dim).to(device)
    inputs["state_indices"] = (torch.randperm(rows, generator=generator)[:batch].to(device)
                               if problem["indexed"] else None)
    return inputs


def _step_arguments(inputs: Inputs) -> dict:
    return {name: inputs[name] for name in ("D", "z", "delta_bias", "delta_softplus",
                                            "state_indices")}


def run(inputs: Inputs, config: Config) -> Outputs:
    """(y, the state pool after the step). The step updates the pool in place, and the tuner
    runs the same inputs again and again, so it steps a copy: every config pays the same
    copy."""
    state = inputs["state"].clone()
    y = selective_scan_step(inputs["u"], inputs["delta"], inputs["A"], inputs["B"], inputs["C"],
                            state=state, config=config, **_step_arguments(inputs))
    return y, state


def _owned_rows(inputs: Inputs) -> torch.Tensor:
    """Each element's row of the pool (negative: a padding slot), int64 on the CPU."""
    indices = inputs["state_indices"]
    if indices is None:
        return torch.arange(inputs["u"].shape[0])
    return indices.detach().to("cpu", torch.int64)


def reference(inputs: Inputs) -> Outputs:
    """The recurrence's one step in float64 on the CPU, from each element's row: (y, the pool
    with those rows stepped; padding slots give y = 0 and leave the pool alone)."""
    def f64(name):
        value = inputs[name]
        return None if value is None else value.detach().to("cpu", torch.float64)

    u, delta, A, B, C, D, z, delta_bias, pool = map(
        f64, ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "state"))
    channels = u.shape[1]
    if delta_bias is not None:
        delta = delta + delta_bias
    if inputs["delta_softplus"]:
        delta = F.softplus(delta)
    if B.dim() == 2:
        B, C = B[:, None], C[:, None]
    per_group = channels // B.shape[1]
    B, C = (x.repeat_interleave(per_group, dim=1) for x in (B, C))  # [B, d, n]
    rows = _owned_rows(inputs)
    live = rows >= 0
    x = torch.exp(delta[..., None] * A) * pool[rows.clamp(min=0)] + (delta * u)[..., None] * B
    y = (x * C).sum(-1)
    if D is not None:
        y = y + D * u
    if z is not None:
        y = y * F.silu(z)
    pool = pool.clone()
    pool[rows[live]] = x[live]
    return torch.where(live[:, None], y, 0.0), pool


def flops(problem: Problem) -> float:
    """Per channel and state: delta A, exp, the affine update (2), B times delta u, C x and
    its sum (2): 7; per channel: bias, softplus, delta u, D u and the silu gate: ~8."""
    return float(problem["B"] * problem["d"] * (7 * problem["n"] + 8))


def bytes_moved(problem: Problem) -> float:
    """The owned fp32 state rows read and written and fp32 A dominate; plus the token's u,
    delta, z, B, C and y, and D and delta_bias."""
    problem = {**PROBLEM_DEFAULTS, **problem}
    batch, channels, state_dim = problem["B"], problem["d"], problem["n"]
    element = DTYPES[problem["dtype"]].itemsize
    states = 2 * 4 * batch * channels * state_dim
    parameters = 4 * channels * (state_dim + problem["has_D"] + problem["has_delta_bias"])
    tokens = element * batch * ((3 + problem["has_z"]) * channels
                                + 2 * problem["groups"] * state_dim)
    return float(states + parameters + tokens)


def torch_step(inputs: Inputs) -> Outputs:
    """The step in plain PyTorch, fp32, on a copy of the pool."""
    pool = inputs["state"].clone()
    rows = inputs["state_indices"]
    rows = torch.arange(pool.shape[0], device=pool.device) if rows is None else rows.long()
    u, delta = inputs["u"].float(), inputs["delta"].float()
    if inputs["delta_bias"] is not None:
        delta = delta + inputs["delta_bias"].float()
    if inputs["delta_softplus"]:
        delta = F.softplus(delta)
    B, C = inputs["B"].float(), inputs["C"].float()
    if B.dim() == 2:
        B, C = B[:, None], C[:, None]
    per_group = u.shape[1] // B.shape[1]
    B, C = (x.repeat_interleave(per_group, dim=1) for x in (B, C))
    x = torch.exp(delta[..., None] * inputs["A"].float()) * pool[rows] + (delta * u)[..., None] * B
    pool[rows] = x
    y = (x * C).sum(-1)
    if inputs["D"] is not None:
        y = y + inputs["D"].float() * u
    if inputs["z"] is not None:
        y = y * F.silu(inputs["z"].float())
    return y.to(inputs["u"].dtype), pool


def chunkwise_step(inputs: Inputs) -> Outputs:
    """seqtune's full ``selective_scan`` at L = 1 from the owned rows, written back."""
    pool = inputs["state"].clone()
    rows = inputs["state_indices"]
    rows = torch.arange(pool.shape[0], device=pool.device) if rows is None else rows.long()
    z = inputs["z"]
    y, last = selective_scan(inputs["u"][..., None], inputs["delta"][..., None], inputs["A"],
                             inputs["B"][..., None], inputs["C"][..., None], inputs["D"],
                             None if z is None else z[..., None], inputs["delta_bias"],
                             inputs["delta_softplus"], True, initial_state=pool[rows])
    pool[rows] = last
    return y[..., 0], pool


def mamba_step(inputs: Inputs) -> Outputs:
    """mamba_ssm's Triton ``selective_state_update``: the 2-D layout, or with grouped B/C its
    per-head layout (state [N, g, d / g, n]), on a copy of the pool."""
    u = inputs["u"]
    if u.device.type != "cuda":
        raise RuntimeError("mamba_ssm needs a CUDA device")
    module = importlib.import_module("mamba_ssm.ops.triton.selective_state_update")
    pool = inputs["state"].clone()
    batch, channels = u.shape
    groups = inputs["B"].shape[1] if inputs["B"].dim() == 3 else 1
    heads = (groups, channels // groups) if groups > 1 else (channels,)

    def split(x, lead=()):
        return None if x is None else x.reshape(*lead, *heads, *x.shape[len(lead) + 1:])

    y = module.selective_state_update(
        split(pool, (pool.shape[0],)), split(u, (batch,)), split(inputs["delta"], (batch,)),
        split(inputs["A"]), inputs["B"], inputs["C"], D=split(inputs["D"]),
        z=split(inputs["z"], (batch,)), dt_bias=split(inputs["delta_bias"]),
        dt_softplus=inputs["delta_softplus"], state_batch_indices=inputs["state_indices"])
    return y.reshape(batch, channels), pool


BASELINES = {"torch": torch_step, "chunkwise_T1": chunkwise_step, "mamba_ssm": mamba_step}


def _problem(batch, channels, state_dim=16, groups=1, flags=(True, True, True, True),
             dtype="bfloat16", indexed=False) -> Problem:
    has_z, has_D, has_delta_bias, delta_softplus = flags
    return {"B": batch, "d": channels, "n": state_dim, "groups": groups, "has_z": has_z,
            "has_D": has_D, "has_delta_bias": has_delta_bias, "delta_softplus": delta_softplus,
            "indexed": indexed, "dtype": dtype}


NONE = (False, False, False, False)
PRESETS = {
    "tiny": [_problem(2, 40, dtype="float32", indexed=True),
             _problem(3, 24, 8, groups=2, dtype="bfloat16")],
    "quick": [_problem(batch, 4096, indexed=True) for batch in (8, 64)],
    "default": [_problem(batch, channels, indexed=True) for batch in (1, 8, 64, 256)
                for channels in (2048, 5120)],
    "full": [_problem(batch, channels, state_dim, dtype=dtype, indexed=indexed)
             for batch in (1, 4, 16, 64, 256) for channels in (1536, 2048, 4096, 5120)
             for state_dim in (16, 64) for dtype in ("bfloat16", "float32")
             for indexed in (False, True)],
}
VERIFY_CASES = [
    _problem(3, 37, dtype="float32", indexed=True),
    # 3 channels per group: channel tiles span groups
    _problem(2, 12, 12, groups=4, dtype="bfloat16", indexed=True),
    # n = 24 > the default BN = 16: two state tiles, the second half masked
    _problem(1, 5, 24, flags=NONE, dtype="float32"),
    _problem(4, 20, 16, groups=2, flags=(True, True, True, False), dtype="bfloat16"),
    _problem(1, 3, 4, flags=(False, True, False, True), dtype="float32"),
]
# One step in fp32 arithmetic: exp, softplus and sigmoid to a few ulp and a sum of n terms
# (|y| up to ~10). Half types: u, delta, B, C, z are exact in both computations and the state
# stays fp32; only y is rounded to the dtype (half an ulp: 2^-9 bf16, 2^-12 fp16), allowed ~4x.
TOLERANCES = {
    "float32": Tolerance(atol=1e-5, rtol=1e-5),
    "float16": Tolerance(atol=2e-3, rtol=2e-3),
    "bfloat16": Tolerance(atol=1e-2, rtol=1e-2),
}

STEP_SPEC = KernelSpec(
    name="selective_scan_step",
    family="scan",
    description="one decoding token of Mamba's selective scan (grouped B/C) on a state pool, "
                "updated in place",
    space=SPACE,
    default_config=DEFAULT,
    size_fields=("B", "d"),
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
