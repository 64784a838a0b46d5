"""Kernel specs of the decode steps ``linear_attention_step`` and ``ssd_step`` (``step.py``).

One kernel, one program per (value head, V block) of a batch element, looping over K tiles:
knobs BK, BV and num_warps. Problems: linear_attention_step ``B, H`` (sizes), ``K, V, gate,
dtype, GV`` and ``indexed`` (a state pool addressed by state_indices); ssd_step ``b, h``
(sizes), ``g, n, p, has_D, dtype, indexed``. Every spec run updates a copy of the input state,
so repeated runs (tuning) start from the same state.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from seqtune.spec import (DTYPES, Config, DeviceLimits, Inputs, KernelSpec, Outputs, Problem,
                          Tolerance, next_power_of_2)

SPACE = {"BK": (16, 32, 64, 128), "BV": (16, 32, 64, 128), "num_warps": (1, 2, 4, 8)}
DEFAULT = {"BK": 32, "BV": 32, "num_warps": 4}
# One step's state update is exact in fp32 (the state stays fp32); the output rounds once to the
# input dtype, the state's update reads inputs that are already in it: half types are bounded by
# their output rounding (8 mantissa bits for bf16) on O(1)-O(10) outputs.
TOLERANCES = {
    "float32": Tolerance(atol=1e-5, rtol=1e-5),
    "float16": Tolerance(atol=1e-2, rtol=1e-2),
    "bfloat16": Tolerance(atol=5e-2, rtol=2e-2),
}
# The [BK, BV] state block, its update and the product with q live in registers (fp32): past
# this many values per thread the compiler spills.
MAX_FP32_PER_THREAD = 64


def _check(config: Config, K: int, V: int) -> str | None:
    for knob, size, dim in (("BK", K, "K"), ("BV", V, "V")):
        # never below the default's tile, so that the default runs every problem (masked)
        limit = max(DEFAULT[knob], next_power_of_2(size))
        if config[knob] > limit:
            return f"{knob}={config[knob]} exceeds the padded {dim}={limit}"
    per_thread = 2 * config["BK"] * config["BV"] // (32 * config["num_warps"])
    if per_thread > MAX_FP32_PER_THREAD:
        return (f"a [{config['BK']}, {config['BV']}] state block holds {per_thread} fp32 values "
                f"per thread (more than {MAX_FP32_PER_THREAD}): more warps or smaller tiles")
    return None


def check_la_step(config: Config, problem: Problem, limits: DeviceLimits) -> str | None:
    return _check(config, problem["K"], problem["V"])


def check_ssd_step(config: Config, problem: Problem, limits: DeviceLimits) -> str | None:
    return _check(config, problem["n"], problem["p"])


def _indices(rows: int, batch: int, gen: torch.Generator, device: str) -> torch.Tensor:
    """A shuffled pool: batch element i owns a random distinct row of ``rows``."""
    return torch.randperm(rows, generator=gen)[:batch].to(device)


def make_la_step_inputs(problem: Problem, device: str, seed: int) -> Inputs:
    gen = torch.Generator().manual_seed(seed)
    B, H, K, V = (problem[f] for f in ("B", "H", "K", "V"))
    HV = H * problem["GV"]
    dtype = DTYPES[problem["dtype"]]
    q, k = (torch.randn(B, H, K, generator=gen).to(device, dtype) for _ in range(2))
    v = torch.randn(B, HV, V, generator=gen).to(device, dtype)
    g = None
    if problem["gate"] == "scalar":
        g = F.logsigmoid(2 * torch.randn(B, HV, generator=gen) + 3).to(device)
    elif problem["gate"] == "channel":
        g = F.logsigmoid(3 * torch.randn(B, HV, K, generator=gen) + 2).to(device)
    rows = B + 3 if problem["indexed"] else B
    state = torch.randn(rows, HV, K, V, generator=gen).to(device)
    indices = _indices(rows, B, gen, device) if problem["indexed"] else None
    return {"q": q, "k": k, "v": v, "g": g, "state": state, "state_indices": indices}


def run_la_step(inputs: Inputs, config: Config) -> Outputs:
    from seqtune.kernels.linear_attention.step import linear_attention_step

    state = inputs["state"].clone()
    out = linear_attention_step(**{**inputs, "state": state}, config=config)
    return out, state


def _stepped(state: torch.Tensor, indices: torch.Tensor | None, decay: torch.Tensor | None,
             k: torch.Tensor, v: torch.Tensor, q: torch.Tensor, scale: float
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """(o [B, HV, V], the whole state pool after the step) in k's dtype and device; k, q per
    value head."""
    pool = state.detach().to(k.device, k.dtype).clone()
    rows = torch.arange(k.shape[0]) if indices is None else indices.to(k.device).long()
    S = pool[rows]
    if decay is not None:
        S = S * (decay[..., None, None] if decay.dim() == 2 else decay[..., None])
    S = S + k[..., :, None] * v[..., None, :]
    pool[rows] = S
    return scale * torch.einsum("bhk,bhkv->bhv", q, S), pool


def _f64(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.detach().to("cpu", torch.float64)


def _fp32(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.detach().float()


def _la_step(inputs: Inputs, cast) -> Outputs:
    """One step, every tensor through ``cast`` (the reference: float64 on the CPU)."""
    q, k, v, g = (cast(inputs[n]) for n in ("q", "k", "v", "g"))
    group = v.shape[1] // q.shape[1]
    q, k = q.repeat_interleave(group, 1), k.repeat_interleave(group, 1)
    decay = None if g is None else g.exp()
    return _stepped(inputs["state"], inputs["state_indices"], decay, k, v, q, q.shape[2] ** -0.5)


def reference_la_step(inputs: Inputs) -> Outputs:
    return _la_step(inputs, _f64)


def torch_la_step(inputs: Inputs) -> Outputs:
    """Baseline: the step in plain PyTorch, fp32 on the inputs' device (o in v's dtype)."""
    out, pool = _la_step(inputs, _fp32)
    return out.to(inputs["v"].dtype), pool


def _pool_rows(inputs: Inputs) -> torch.Tensor:
    indices = inputs["state_indices"]
    return (torch.arange(inputs["state"].shape[0], device=inputs["state"].device)
            if indices is None else indices.long())


def chunkwise_la_step(inputs: Inputs) -> Outputs:
    """Baseline: ``linear_attention`` at T = 1 from the gathered rows, scattered back."""
    from seqtune.kernels.linear_attention.op import linear_attention

    pool, rows = inputs["state"].clone(), _pool_rows(inputs)
    g = inputs["g"]
    out, final = linear_attention(*(t[:, None] for t in (inputs["q"], inputs["k"], inputs["v"])),
                                  None if g is None else g[:, None],
                                  initial_state=pool[rows], output_final_state=True)
    pool[rows] = final
    return out[:, 0], pool


def make_ssd_step_inputs(problem: Problem, device: str, seed: int) -> Inputs:
    """As ``ssd``'s spec inputs, for one token."""
    gen = torch.Generator().manual_seed(seed)
    b, h, g, n, p = (problem[f] for f in ("b", "h", "g", "n", "p"))
    dtype = DTYPES[problem["dtype"]]
    x = torch.randn(b, h, p, generator=gen).to(device, dtype)
    B, C = (torch.randn(b, g, n, generator=gen).to(device, dtype) for _ in range(2))
    dt = (0.5 * torch.randn(b, h, generator=gen)).to(device)
    target_dt = torch.exp(math.log(1e-3) + math.log(100) * torch.rand(h, generator=gen))
    dt_bias = (target_dt + torch.log(-torch.expm1(-target_dt))).to(device)
    A = (-(1 + 15 * torch.rand(h, generator=gen))).to(device)
    D = torch.randn(h, generator=gen).to(device) if problem["has_D"] else None
    rows = b + 3 if problem["indexed"] else b
    state = torch.randn(rows, h, n, p, generator=gen).to(device)
    indices = _indices(rows, b, gen, device) if problem["indexed"] else None
    return {"x": x, "dt": dt, "A": A, "B": B, "C": C, "D": D, "dt_bias": dt_bias,
            "dt_softplus": True, "state": state, "state_indices": indices}


def run_ssd_step(inputs: Inputs, config: Config) -> Outputs:
    from seqtune.kernels.linear_attention.step import ssd_step

    state = inputs["state"].clone()
    out = ssd_step(**{**inputs, "state": state}, config=config)
    return out, state


def _ssd_step(inputs: Inputs, cast) -> Outputs:
    """One step, every tensor through ``cast`` (the reference: float64 on the CPU)."""
    x, dt, A, B, C = (cast(inputs[n]) for n in ("x", "dt", "A", "B", "C"))
    group = x.shape[1] // B.shape[1]
    if inputs["dt_bias"] is not None:
        dt = dt + cast(inputs["dt_bias"])
    if inputs["dt_softplus"]:
        dt = F.softplus(dt)
    B, C = B.repeat_interleave(group, 1), C.repeat_interleave(group, 1)
    y, pool = _stepped(inputs["state"], inputs["state_indices"], (dt * A).exp(), B,
                       dt[..., None] * x, C, 1.0)
    if inputs["D"] is not None:
        y = y + cast(inputs["D"])[:, None] * x
    return y, pool


def reference_ssd_step(inputs: Inputs) -> Outputs:
    return _ssd_step(inputs, _f64)


def torch_ssd_step(inputs: Inputs) -> Outputs:
    """Baseline: the step in plain PyTorch, fp32 on the inputs' device (y in x's dtype)."""
    y, pool = _ssd_step(inputs, _fp32)
    return y.to(inputs["x"].dtype), pool


def chunkwise_ssd_step(inputs: Inputs) -> Outputs:
    """Baseline: ``ssd`` at T = 1 from the gathered rows, scattered back."""
    from seqtune.kernels.linear_attention.ssd import ssd

    pool, rows = inputs["state"].clone(), _pool_rows(inputs)
    y, final = ssd(*(inputs[n][:, None] for n in ("x", "dt")), inputs["A"],
                   *(inputs[n][:, None] for n in ("B", "C")), D=inputs["D"],
                   dt_bias=inputs["dt_bias"], dt_softplus=inputs["dt_softplus"],
                   initial_state=pool[rows], output_final_state=True)
    pool[rows] = final
    return y[:, 0], pool

def _flops(batch: int, heads: int, K: int, V: int) -> float:
    return 4.0 * batch * heads * K * V


def _bytes(batch: int, heads: int, K: int, V: int) -> float:
    """The fp32 state rows read and written dominate; q, k, v, o are O(K + V) per head."""
    return 8.0 * batch * heads * K * V


def _la(B, H, K, V, gate, dtype="bfloat16", GV=1, indexed=False) -> Problem:
    return {"B": B, "H": H, "K": K, "V": V, "gate": gate, "dtype": dtype, "GV": GV,
            "indexed": indexed}


def _ssd(b, h, g, n, p, has_D=True, dtype="bfloat16", indexed=False) -> Problem:
    return {"b": b, "h": h, "g": g, "n": n, "p": p, "has_D": has_D, "dtype": dtype,
            "indexed": indexed}


GATES = ("none", "scalar", "channel")
_LA_DEFAULT = [_la(B, H, D, D, gate, GV=GV, indexed=True) for gate in GATES
               for B in (1, 16, 128) for H, D, GV in ((16, 128, 1), (16, 128, 2), (32, 64, 1))]
_SSD_DEFAULT = [_ssd(b, h, g, n, 64, indexed=True) for b in (1, 16, 128)
                for h, g, n in ((24, 1, 128), (32, 8, 64), (80, 1, 128))]

LINEAR_ATTENTION_STEP = KernelSpec(
    name="linear_attention_step",
    family="linear-recurrence",
    description="one decode step of linear attention (no, scalar or per-channel decay; GVA; "
                "state pool)",
    space=SPACE,
    default_config=DEFAULT,
    size_fields=("B", "H"),
    presets={
        "tiny": [_la(2, 2, 32, 32, "scalar", indexed=True), _la(2, 1, 32, 32, "channel", GV=2)],
        "quick": [_la(16, 16, 128, 128, gate, GV=2, indexed=True) for gate in GATES],
        "default": _LA_DEFAULT,
        "full": _LA_DEFAULT + [_la(B, 16, 256, 256, gate, indexed=True) for gate in GATES
                               for B in (1, 64)],
    },
    verify_cases=[
        _la(3, 2, 40, 24, "none", "float32", GV=1, indexed=True),
        _la(2, 2, 24, 40, "scalar", "bfloat16", GV=3, indexed=False),
        _la(3, 1, 72, 48, "channel", "float32", GV=2, indexed=True),
        _la(2, 2, 48, 36, "channel", "bfloat16", GV=1, indexed=True),
    ],
    check=check_la_step,
    make_inputs=make_la_step_inputs,
    run=run_la_step,
    reference=reference_la_step,
    tolerances=TOLERANCES,
    flops=lambda p: _flops(p["B"], p["H"] * p["GV"], p["K"], p["V"]),
    bytes_moved=lambda p: _bytes(p["B"], p["H"] * p["GV"], p["K"], p["V"]),
    baselines={"torch": torch_la_step, "chunkwise_T1": chunkwise_la_step},
)

SSD_STEP = KernelSpec(
    name="ssd_step",
    family="linear-recurrence",
    description="one decode step of Mamba-2 SSD (selective state update, state pool)",
    space=SPACE,
    default_config=DEFAULT,
    size_fields=("b", "h"),
    presets={
        "tiny": [_ssd(2, 2, 1, 32, 32, indexed=True)],
        "quick": [_ssd(16, 32, 1, 128, 64, indexed=True)],
        "default": _SSD_DEFAULT,
        "full": _SSD_DEFAULT + [_ssd(b, 64, 8, 128, 64, indexed=True) for b in (1, 64)],
    },
    verify_cases=[
        _ssd(3, 4, 2, 40, 24, True, "float32", indexed=True),
        _ssd(2, 2, 1, 24, 40, False, "bfloat16", indexed=False),
        _ssd(3, 6, 3, 16, 72, True, "bfloat16", indexed=True),
    ],
    check=check_ssd_step,
    make_inputs=make_ssd_step_inputs,
    run=run_ssd_step,
    reference=reference_ssd_step,
    tolerances=TOLERANCES,
    flops=lambda p: _flops(p["b"], p["h"], p["n"], p["p"]),
    bytes_moved=lambda p: _bytes(p["b"], p["h"], p["n"], p["p"]),
    baselines={"torch": torch_ssd_step, "chunkwise_T1": chunkwise_ssd_step},
)

STEP_SPECS = (LINEAR_ATTENTION_STEP, SSD_STEP)
