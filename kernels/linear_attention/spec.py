"""Kernel specs of ``linear_attention`` and ``ssd`` (family "linear-recurrence").

Both run the same three kernels (stages ``intra``, ``h``, ``o``; see ``kernels.py``) and share
one config space: the chunk size ``BT`` is shared, every other knob is per stage. The stages
only meet through buffers whose layout depends on ``BT`` alone, so given ``BT`` they tune
independently (``stagewise``).

Problem fields:
- linear_attention: ``B, T, H`` (sizes, bucketed: H counts q/k heads), ``K, V`` (head dims),
  ``gate`` ("none", "scalar" or "channel"), ``initial_state`` (bool), ``dtype``, ``GV`` (value
  heads per q/k head, GVA: v and g have H * GV heads).
- ssd: ``b, T, h`` (sizes, bucketed), ``g`` (groups of B/C), ``n`` (state dim), ``p`` (head
  dim), ``has_D``, ``initial_state`` (bools), ``dtype``. dt_bias and softplus are applied before
  the kernels and do not change them, so they are no problem fields; the spec's inputs always
  use both (as Mamba-2 does).
- both: ``varlen`` (sequences packed with cu_seqlens: the batch is 1 and T the packed length)
  and ``N`` (size, bucketed: the number of packed sequences, 1 when not packed). Bucketing the
  packed length and the sequence count means no re-tuning when the mix of lengths changes.
``problem_defaults`` give profiles tuned before these fields the old behaviour (not packed, one
value head per key head).
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from seqtune.kernels.linear_attention.baselines import BASELINES, SSD_BASELINES
from seqtune.kernels.linear_attention.kernels import SUB
from seqtune.kernels.linear_attention.step_spec import STEP_SPECS
from seqtune.kernels.linear_attention.reference import (packed_lengths,
                                                        varlen_linear_attention_reference,
                                                        varlen_ssd_reference)
from seqtune.spec import (DTYPES, Config, DeviceLimits, Inputs, KernelSpec, Outputs, Problem,
                          Tolerance, next_power_of_2, shared_memory_fits)

# Pipelining depths per stage: intra's loop runs over a few K tiles (1 or 2 stages), the state
# loop over every chunk and the output loop over K tiles feeding its dots (2 or 3 stages). Two
# warps are left out (too few for the tensor-core tiles here), which keeps the space at ~62k
# configs.
WARPS = (4, 8)
# Every tile is >= 16, so every tl.dot dimension meets Triton's minimum of 16 by construction.
SPACE: dict[str, tuple] = {
    "BT": (16, 32, 64, 128),
    "intra.BK": (32, 64, 128),
    "intra.num_warps": WARPS,
    "intra.num_stages": (1, 2),
    "h.BK": (32, 64, 128),
    "h.BV": (32, 64, 128),
    "h.num_warps": WARPS,
    "h.num_stages": (2, 3),
    "o.BK": (32, 64, 128),
    "o.BV": (32, 64, 128),
    "o.num_warps": WARPS,
    "o.num_stages": (2, 3),
}
# The smallest tiles, so that the default runs every problem (no tile exceeds a padded dim) at
# little shared memory; tuned entries pick larger tiles where they pay.
# 8 warps for the state stage: at 4 the per-channel-decay state kernel spills 16 B on sm_90
# (`seqtune check`); at 8 every default-preset problem compiles clean on sm_80 and sm_90.
DEFAULT: dict[str, Any] = {
    "BT": 64, "intra.BK": 32, "intra.num_warps": 4, "intra.num_stages": 2,
    "h.BK": 32, "h.BV": 32, "h.num_warps": 8, "h.num_stages": 2,
    "o.BK": 32, "o.BV": 32, "o.num_warps": 4, "o.num_stages": 2,
}
STAGE_NAMES = ("intra", "h", "o")

# fp32 runs its dots in exact fp32 (input_precision="ieee"), so only accumulation order differs
# from float64. bf16/fp16 round the dot operands (decayed q and k, the per-chunk states, A) to
# 8 / 11 mantissa bits; the outputs are O(1) by construction of the inputs, so the error is a few
# units of that rounding spread over the summed terms, plus the rounding of the stored output.
TOLERANCES = {
    "float32": Tolerance(atol=1e-4, rtol=1e-4),
    "float16": Tolerance(atol=1e-2, rtol=1e-2),
    "bfloat16": Tolerance(atol=6e-2, rtol=4e-2),
}


# ---------------------------------------------------------------------------------------- check

def _tile_limit(size: int, smallest: int) -> int:
    """Largest useful tile over a dim: its next power of two, but never below the smallest
    tile of the space (a tile wider than a short dim is masked), so every problem has a
    valid config."""
    return max(smallest, next_power_of_2(size))


def _shared_memory(config: Config, K: int, gate: str, itemsize: int) -> int:
    """Estimated shared memory of the largest of the three kernels, in bytes.

    Per kernel, the larger of its main loop and its epilogue (Triton reuses the buffers): a loop
    over K holds num_stages - 1 buffers of each iteration's loads (none when it is not
    pipelined: one stage, or a single iteration) plus the dot operands staged once; the
    epilogue holds its operands and the fp32 accumulator for layout conversion. Fitted to the
    sm_90/sm_80 compiler's figures on sampled configs, which it matches or overestimates.
    """
    BT = config["BT"]
    decay = 0 if gate == "none" else 4  # bytes per element of a (fp32) log-decay tile

    def buffers(knob: str, iterations: int) -> int:
        return config[f"{knob}.num_stages"] - 1 if iterations > 1 else 0

    bk = config["intra.BK"]
    k_steps = -(-K // bk)
    if gate == "channel":
        loads = (BT + SUB) * bk * (itemsize + 4)
        intra = max(buffers("intra", k_steps) * loads + (BT + SUB) * bk * itemsize, SUB * BT * 4)
    else:
        intra = max((buffers("intra", k_steps) + 1) * 2 * BT * bk * itemsize, BT * BT * 4)
    bk, bv = config["h.BK"], config["h.BV"]
    # the state loop keeps num_stages buffers of k and v, one fewer of g, and a transposed k
    g_tile = BT * (bk if gate == "channel" else 1) * decay
    kv_tile = BT * (bk + bv) * itemsize
    state = max(config["h.num_stages"] * kv_tile + (config["h.num_stages"] - 1) * g_tile
                + BT * bk * itemsize, bk * bv * 4)
    bk, bv = config["o.BK"], config["o.BV"]
    loads = (BT * bk + bk * bv) * itemsize + (BT * bk * decay if gate == "channel" else 0)
    output = max(buffers("o", -(-K // bk)) * loads + (BT * bk + bk * bv) * itemsize,
                 BT * (BT + bv) * itemsize + BT * bv * 4)
    return max(intra, state, output)


# Threads hold a stage's fp32 tiles (accumulator, and the decay tile of per-channel decay), and
# for fp32 inputs the dot operands too (exact fp32 dots run on FMA units from registers); past
# this many values per thread the compiler spills (seen on sm_90/sm_80: a [128, 128] state on 4
# warps, or on 8 warps beside a [128, 128] decay tile; fp32 [128, 128] dots spill tens of KB).
MAX_FP32_PER_THREAD = 80


def _registers(config: Config, gate: str, itemsize: int) -> str | None:
    """A reason when a stage's fp32 tiles need more registers per thread than fit."""
    BT = config["BT"]
    channel = gate == "channel"
    fma_dots = itemsize == 4
    bk = config["intra.BK"]
    intra = (SUB * BT + BT * bk + fma_dots * (SUB + BT) * bk if channel
             else BT * BT + fma_dots * 2 * BT * bk)
    bk, bv = config["h.BK"], config["h.BV"]
    state = bk * bv + channel * BT * bk + fma_dots * BT * (bk + bv)
    bk, bv = config["o.BK"], config["o.BV"]
    output = (BT * bv + channel * BT * bk
              + fma_dots * max(BT * bk + bk * bv, BT * BT + BT * bv))
    for stage, values in (("intra", intra), ("h", state), ("o", output)):
        per_thread = values // (32 * config[f"{stage}.num_warps"])
        if per_thread > MAX_FP32_PER_THREAD:
            return (f"the {stage} stage holds {per_thread} fp32 values per thread (more than "
                    f"{MAX_FP32_PER_THREAD}): more warps or smaller tiles")
    return None


def _check(config: Config, T: int, K: int, V: int, gate: str, dtype: str,
           limits: DeviceLimits) -> str | None:
    chunk_limit = _tile_limit(T, DEFAULT["BT"])
    if config["BT"] > chunk_limit:
        return f"BT={config['BT']} exceeds {chunk_limit}, the padded sequence length (or 64)"
    for knob, size, dim in (("intra.BK", K, "K"), ("h.BK", K, "K"), ("o.BK", K, "K"),
                            ("h.BV", V, "V"), ("o.BV", V, "V")):
        limit = _tile_limit(size, min(SPACE[knob]))
        if config[knob] > limit:
            return f"{knob}={config[knob]} exceeds the padded {dim}={limit}"
    itemsize = DTYPES[dtype].itemsize
    reason = _registers(config, gate, itemsize)
    if reason is not None:
        return reason
    return shared_memory_fits(_shared_memory(config, K, gate, itemsize), limits)


def check_linear_attention(config: Config, problem: Problem,
                           limits: DeviceLimits) -> str | None:
    return _check(config, problem["T"], problem["K"], problem["V"], problem["gate"],
                  problem["dtype"], limits)


def check_ssd(config: Config, problem: Problem, limits: DeviceLimits) -> str | None:
    return _check(config, problem["T"], problem["n"], problem["p"], "scalar", problem["dtype"],
                  limits)


# ------------------------------------------------------------------------------ linear attention

def _randn(generator: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=generator)


def _to(tensor: torch.Tensor | None, device: str, dtype: torch.dtype | None = None
        ) -> torch.Tensor | None:
    return None if tensor is None else tensor.to(device=device, dtype=dtype or tensor.dtype)


def _cu_seqlens(problem: Problem, generator: torch.Generator, device: str
                ) -> torch.Tensor | None:
    if not problem.get("varlen", False):
        return None
    lengths = packed_lengths(problem["T"], problem["N"], generator)
    return torch.tensor([0] + lengths, dtype=torch.int32).cumsum(0).to(torch.int32).to(device)


def _state_rows(problem: Problem, batch_field: str) -> int:
    return problem["N"] if problem.get("varlen", False) else problem[batch_field]


def make_linear_attention_inputs(problem: Problem, device: str, seed: int) -> Inputs:
    """q, k, v ~ N(0, 1) in the problem's dtype; log decays in fp32 that span weak to strong
    decay (logsigmoid of a wide normal); without decay v is scaled by T^-1/2 so that the
    outputs stay O(1) however long the sequence. Packed problems get N sequences whose lengths
    include 0 and 1 (``packed_lengths``)."""
    gen = torch.Generator().manual_seed(seed)
    B, T, H, K, V = (problem[f] for f in ("B", "T", "H", "K", "V"))
    HV = H * problem.get("GV", 1)
    dtype = DTYPES[problem["dtype"]]
    q, k, v = _randn(gen, B, T, H, K), _randn(gen, B, T, H, K), _randn(gen, B, T, HV, V)
    g = None
    if problem["gate"] == "none":
        v = v * max(T, 1) ** -0.5
    elif problem["gate"] == "scalar":
        g = F.logsigmoid(2 * _randn(gen, B, T, HV) + 3)
    else:
        g = F.logsigmoid(3 * _randn(gen, B, T, HV, K) + 2)
    rows = _state_rows(problem, "B")
    state = _randn(gen, rows, HV, K, V) if problem["initial_state"] else None
    return {"q": _to(q, device, dtype), "k": _to(k, device, dtype), "v": _to(v, device, dtype),
            "g": _to(g, device), "initial_state": _to(state, device),
            "cu_seqlens": _cu_seqlens(problem, gen, device)}


def run_linear_attention(inputs: Inputs, config: Config) -> Outputs:
    from seqtune.kernels.linear_attention.op import linear_attention

    return linear_attention(**inputs, output_final_state=True, config=config)


def reference_linear_attention(inputs: Inputs) -> Outputs:
    return varlen_linear_attention_reference(inputs["q"], inputs["k"], inputs["v"], inputs["g"],
                                             initial_state=inputs["initial_state"],
                                             cu_seqlens=inputs["cu_seqlens"])


def flops_linear_attention(problem: Problem) -> float:
    """The recurrence's work: the rank-1 state update and the read-out, 2*K*V each per step
    and value head."""
    HV = problem["H"] * problem.get("GV", 1)
    return 4.0 * problem["B"] * problem["T"] * HV * problem["K"] * problem["V"]


def bytes_linear_attention(problem: Problem) -> float:
    """q, k, v and g read once, o written once, the fp32 states read (if given) and written."""
    B, T, H, K, V = (problem[f] for f in ("B", "T", "H", "K", "V"))
    HV = H * problem.get("GV", 1)
    itemsize = DTYPES[problem["dtype"]].itemsize
    gate_elems = {"none": 0, "scalar": B * T * HV, "channel": B * T * HV * K}[problem["gate"]]
    states = (1 + int(problem["initial_state"])) * _state_rows(problem, "B") * HV * K * V * 4
    return (itemsize * B * T * (2 * H * K + 2 * HV * V) + 4 * gate_elems + states)


LA_DEFAULTS = {"N": 1, "varlen": False, "GV": 1}


def _la(B: int, T: int, H: int, K: int, V: int, gate: str, initial: bool = False,
        dtype: str = "bfloat16", N: int = 1, GV: int = 1) -> Problem:
    """A problem; N > 1 packs N sequences into one row of length T (B must be 1)."""
    return {"B": B, "T": T, "H": H, "K": K, "V": V, "gate": gate, "initial_state": initial,
            "dtype": dtype, "N": N, "varlen": N > 1, "GV": GV}


GATE_KINDS = ("none", "scalar", "channel")
# Realistic LLM shapes: ~16k tokens per batch, heads 16..32 of K = V = 64..256.
_LA_DEFAULT = [_la(max(1, 16384 // T), T, H, D, D, gate)
               for gate in GATE_KINDS for H, D in ((32, 64), (16, 128), (16, 256))
               for T in (1024, 4096, 32768)]
# Packed training batches (16k tokens of 8 or 64 sequences) and Qwen3-Next's GVA (16 q/k heads,
# 32 value heads of 128).
_LA_REAL = [_la(1, 16384, 16, 128, 128, gate, N=N) for gate in GATE_KINDS for N in (8, 64)] + [
    _la(4, 4096, 16, 128, 128, gate, GV=2) for gate in ("scalar", "channel")] + [
    _la(1, 16384, 16, 128, 128, "scalar", N=32, GV=2)]
_LA_DEFAULT += _LA_REAL
_LA_FULL = _LA_DEFAULT + [
    _la(B, T, H, K, V, gate, initial)
    for gate in GATE_KINDS
    for B, T in ((1, 2048), (8, 2048), (2, 16384))
    for H, K, V in ((8, 128, 128), (32, 128, 128), (16, 128, 256), (4, 256, 512))
    for initial in (False, True)
]

LINEAR_ATTENTION = KernelSpec(
    name="linear_attention",
    family="linear-recurrence",
    description="chunkwise linear attention: no, scalar (RetNet) or per-channel (GLA) decay",
    space=SPACE,
    default_config=DEFAULT,
    size_fields=("B", "T", "H", "N"),
    presets={
        "tiny": [_la(1, 64, 2, 32, 32, gate, gate == "scalar") for gate in GATE_KINDS]
        + [_la(1, 64, 1, 32, 32, "scalar", True, N=4, GV=2)],
        "quick": [_la(4, 4096, 16, 128, 128, gate) for gate in GATE_KINDS]
        + [_la(1, 16384, 16, 128, 128, "scalar", N=16, GV=2)],
        "default": _LA_DEFAULT,
        "full": _LA_FULL,
    },
    verify_cases=[
        _la(2, 100, 1, 48, 40, "none", True, "float32"),
        _la(1, 77, 2, 64, 48, "none", False, "bfloat16"),
        _la(1, 45, 2, 40, 64, "scalar", False, "float32"),
        _la(2, 99, 1, 56, 36, "scalar", True, "bfloat16"),
        _la(1, 70, 2, 40, 56, "channel", True, "float32"),
        _la(1, 100, 1, 64, 40, "channel", False, "bfloat16"),
        _la(1, 83, 2, 40, 24, "channel", True, "float32", N=5, GV=2),
        _la(1, 91, 1, 48, 40, "scalar", True, "bfloat16", N=4, GV=3),
        _la(1, 57, 2, 32, 48, "none", False, "float32", N=3),
    ],
    check=check_linear_attention,
    make_inputs=make_linear_attention_inputs,
    run=run_linear_attention,
    reference=reference_linear_attention,
    tolerances=TOLERANCES,
    flops=flops_linear_attention,
    bytes_moved=bytes_linear_attention,
    problem_defaults=LA_DEFAULTS,
    stages=STAGE_NAMES,
    stagewise=True,
    baselines=BASELINES,
)


# ------------------------------------------------------------------------------------------- ssd

def make_ssd_inputs(problem: Problem, device: str, seed: int) -> Inputs:
    """Mamba-2-like inputs: x, B, C ~ N(0, 1) in the problem's dtype; in fp32 dt ~ N(0, 1/4)
    around a dt_bias that puts softplus(dt + dt_bias) log-uniformly in [1e-3, 1e-1], A in
    [-16, -1], D ~ N(0, 1)."""
    gen = torch.Generator().manual_seed(seed)
    b, T, h, g, n, p = (problem[f] for f in ("b", "T", "h", "g", "n", "p"))
    dtype = DTYPES[problem["dtype"]]
    x, B, C = _randn(gen, b, T, h, p), _randn(gen, b, T, g, n), _randn(gen, b, T, g, n)
    dt = 0.5 * _randn(gen, b, T, h)
    target_dt = torch.exp(math.log(1e-3) + math.log(100) * torch.rand(h, generator=gen))
    dt_bias = target_dt + torch.log(-torch.expm1(-target_dt))  # softplus^-1(target_dt)
    A = -(1 + 15 * torch.rand(h, generator=gen))
    D = _randn(gen, h) if problem["has_D"] else None
    state = _randn(gen, _state_rows(problem, "b"), h, n, p) if problem["initial_state"] else None
    return {"x": _to(x, device, dtype), "dt": _to(dt, device), "A": _to(A, device),
            "B": _to(B, device, dtype), "C": _to(C, device, dtype), "D": _to(D, device),
            "dt_bias": _to(dt_bias, device), "dt_softplus": True,
            "initial_state": _to(state, device), "cu_seqlens": _cu_seqlens(problem, gen, device)}


def run_ssd(inputs: Inputs, config: Config) -> Outputs:
    from seqtune.kernels.linear_attention.ssd import ssd

    return ssd(**inputs, output_final_state=True, config=config)


def reference_ssd(inputs: Inputs) -> Outputs:
    return varlen_ssd_reference(inputs["x"], inputs["dt"], inputs["A"], inputs["B"],
                                inputs["C"], inputs["D"], inputs["dt_bias"],
                                inputs["dt_softplus"], inputs["initial_state"],
                                inputs["cu_seqlens"])


def flops_ssd(problem: Problem) -> float:
    """The recurrence's work: the rank-1 state update and the read-out, 2*n*p each per step."""
    return 4.0 * problem["b"] * problem["T"] * problem["h"] * problem["n"] * problem["p"]


def bytes_ssd(problem: Problem) -> float:
    """x, B, C and dt read once, y written once, the fp32 state read (if given) and written."""
    b, T, h, g, n, p = (problem[f] for f in ("b", "T", "h", "g", "n", "p"))
    itemsize = DTYPES[problem["dtype"]].itemsize
    states = (1 + int(problem["initial_state"])) * _state_rows(problem, "b") * h * n * p * 4
    return itemsize * b * T * (2 * h * p + 2 * g * n) + 4 * b * T * h + states


SSD_DEFAULTS = {"N": 1, "varlen": False}


def _ssd(b: int, T: int, h: int, g: int, n: int, p: int, has_D: bool = True,
         initial: bool = False, dtype: str = "bfloat16", N: int = 1) -> Problem:
    """A problem; N > 1 packs N sequences into one row of length T (b must be 1)."""
    return {"b": b, "T": T, "h": h, "g": g, "n": n, "p": p, "has_D": has_D,
            "initial_state": initial, "dtype": dtype, "N": N, "varlen": N > 1}


# Mamba-2 shapes: head dim p = 64, state n = 64..128, 24..80 heads, 1 or 8 groups.
_SSD_DEFAULT = [_ssd(max(1, 16384 // T), T, h, g, n, 64)
                for h, g, n in ((24, 1, 128), (32, 8, 64), (80, 1, 128))
                for T in (1024, 4096, 32768)]
_SSD_DEFAULT += [_ssd(1, 16384, h, g, n, 64, N=N)
                 for h, g, n in ((24, 1, 128), (32, 8, 64)) for N in (8, 64)]
_SSD_FULL = _SSD_DEFAULT + [
    _ssd(B, T, h, g, n, p, True, initial)
    for B, T in ((1, 2048), (8, 2048), (2, 16384))
    for h, g, n, p in ((32, 1, 128, 64), (64, 8, 128, 64), (16, 1, 256, 128))
    for initial in (False, True)
]

SSD = KernelSpec(
    name="ssd",
    family="linear-recurrence",
    description="Mamba-2 SSD (scalar-decay linear attention with grouped B/C, dt and D)",
    space=SPACE,
    default_config=DEFAULT,
    size_fields=("b", "T", "h", "N"),
    presets={
        "tiny": [_ssd(1, 64, 2, 1, 32, 32, True, False, "bfloat16"),
                 _ssd(1, 64, 2, 1, 32, 32, True, True, "bfloat16", N=4)],
        "quick": [_ssd(4, 4096, 32, 1, 128, 64), _ssd(1, 16384, 32, 1, 128, 64, N=16)],
        "default": _SSD_DEFAULT,
        "full": _SSD_FULL,
    },
    verify_cases=[
        _ssd(1, 70, 4, 2, 40, 48, True, True, "float32"),
        _ssd(1, 99, 2, 1, 64, 36, False, False, "bfloat16"),
        _ssd(2, 50, 2, 2, 48, 64, True, False, "bfloat16"),
        _ssd(1, 81, 4, 2, 24, 40, True, True, "float32", N=5),
        _ssd(1, 67, 2, 1, 32, 24, False, True, "bfloat16", N=3),
    ],
    check=check_ssd,
    make_inputs=make_ssd_inputs,
    run=run_ssd,
    reference=reference_ssd,
    tolerances=TOLERANCES,
    flops=flops_ssd,
    bytes_moved=bytes_ssd,
    problem_defaults=SSD_DEFAULTS,
    stages=STAGE_NAMES,
    stagewise=True,
    baselines=SSD_BASELINES,
)



def _all_specs() -> tuple[KernelSpec, ...]:
    from seqtune.kernels.linear_attention.bwd_spec import BWD_SPECS

    return (LINEAR_ATTENTION, SSD) + STEP_SPECS + BWD_SPECS


SPECS = _all_specs()
