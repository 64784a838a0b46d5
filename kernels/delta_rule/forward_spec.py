"""The chunkwise delta rule forward as the tuner sees it: problems, config space, checks, inputs,
reference."""
from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

from seqtune.kernels.delta_rule.baselines import BASELINES
from seqtune.kernels.delta_rule.op import MAX_HEAD_DIM, MIN_HEAD_DIM, delta_rule
from seqtune.kernels.delta_rule.reference import delta_rule_reference
from seqtune.spec import (DTYPES, Config, DeviceLimits, Inputs, KernelSpec, Outputs, Problem,
                          Tolerance, next_power_of_2, shared_memory_fits)

STAGES = ("wy", "h", "o")
# GV: value heads per key head; N: packed sequences (1 unless varlen). Both bucketed like the
# batch, so a new mix of packed lengths never needs a new tuning.
SIZE_FIELDS = ("B", "T", "H", "GV", "N")
# What the fields added with packed batches and grouped value heads mean when a profile entry
# predates them: one value head per key head, a plain [B, T] batch.
PROBLEM_DEFAULTS = {"GV": 1, "N": 1, "varlen": False}
WARPS, PIPELINE = (2, 4, 8), (1, 2, 3)
SPACE = {
    "BT": (16, 32, 64),
    "wy.BK": (32, 64, 128),
    "wy.BV": (32, 64, 128),
    "wy.num_warps": WARPS,
    "wy.num_stages": PIPELINE,
    "h.BV": (16, 32, 64),
    "h.num_warps": WARPS,
    "h.num_stages": PIPELINE,
    "o.BK": (32, 64, 128),
    "o.BV": (32, 64, 128),
    "o.num_warps": WARPS,
    "o.num_stages": PIPELINE,
}
# BT=32 with 8 warps in the wy and h stages: the default that compiles without spills for every
# gate and head dim of the default preset on sm_80 and sm_90 (`seqtune check`); at BT=64 the
# per-channel wy kernel sits at 255 registers and spills 16-24 B, and at 4 warps the state
# kernel of packed sequences spills 32-80 B at K=256 on sm_80.
DEFAULT = {
    "BT": 32,
    "wy.BK": 32, "wy.BV": 32, "wy.num_warps": 8, "wy.num_stages": 2,
    "h.BV": 32, "h.num_warps": 8, "h.num_stages": 2,
    "o.BK": 32, "o.BV": 32, "o.num_warps": 4, "o.num_stages": 2,
}
# The state kernel keeps a [K, h.BV] fp32 slice of the state in registers for the whole
# sequence, beside the chunk's key-wide rows (and, in bf16/fp16, the state's two rounded parts).
# Fit to `seqtune check` sweeps of h.BV x h.num_warps (sm_80 and gfx942, every gate, with and
# without an initial state): the slice's values per thread plus one per 16 key channels never
# spilled up to this budget; at 40 and beyond some gate spilled (K=256 with h.BV=32 at 8 warps
# by 8 B on sm_80, 68 B on gfx942).
STATE_REGISTER_BUDGET = 36


def _check(config: Config, problem: Problem, limits: DeviceLimits) -> str | None:
    """Tiles within the padded head dims, the state slice within registers, shared memory within
    the device. BT is a chunk length, not a tile: a chunk longer than the sequence is one partly
    filled chunk, still correct, so any BT runs any T. Every tile in the space is >= 16, as
    tl.dot needs. 16-wide K/V tiles are left out of the wy and o stages, where they only shrink
    the products (the state stage keeps them: they double its parallelism)."""
    key_dim, value_dim = problem["K"], problem["V"]
    if not (MIN_HEAD_DIM <= key_dim <= MAX_HEAD_DIM and MIN_HEAD_DIM <= value_dim <= MAX_HEAD_DIM):
        return f"head dims K={key_dim}, V={value_dim} outside [{MIN_HEAD_DIM}, {MAX_HEAD_DIM}]"
    reason = tiles_fit(config, problem, ("wy.BK", "wy.BV", "h.BV", "o.BK", "o.BV"))
    if reason is not None:
        return reason
    reason = state_slice_fits(config, problem, "h")
    if reason is not None:
        return reason
    for stage, estimate in (("wy", wy_shared), ("h", state_shared), ("o", _output_shared)):
        reason = shared_memory_fits(estimate(config, problem), limits)
        if reason is not None:
            return f"{stage}: {reason}"
    return None


def state_slice_fits(config: Config, problem: Problem, stage: str) -> str | None:
    """A reason when a sequential stage's [K, BV] fp32 slice of the state (or of its gradient)
    would not stay in registers."""
    padded, width = next_power_of_2(problem["K"]), config[f"{stage}.BV"]
    warps = config[f"{stage}.num_warps"]
    per_thread = padded * width // (32 * warps) + padded // 16
    if per_thread > STATE_REGISTER_BUDGET:
        return (f"state slice K x {stage}.BV = {padded} x {width} at {stage}.num_warps={warps} "
                f"needs ~{per_thread} registers per thread (budget {STATE_REGISTER_BUDGET})")
    return None


# A 32-wide tile also runs a 16-wide head (masked): the default's tiles fit every head dim.
ANY_HEAD_TILE = 32


def tiles_fit(config: Config, problem: Problem, params) -> str | None:
    """A reason when a K or V tile (named by its last letter) is wider than the padded head dim
    and than ANY_HEAD_TILE."""
    for param in params:
        dim = param[-1]
        padded = next_power_of_2(problem[dim])
        if config[param] > max(padded, ANY_HEAD_TILE):
            return f"{param}={config[param]} exceeds the padded {dim}={padded}"
    return None


def wy_shared(config: Config, problem: Problem) -> int:
    """Pipelined q, k, g and v tiles and two [BT, BT] fp32 operands of the solve (above every
    sm_90 build measured: 16-98 KB at BT=64)."""
    chunk, element = config["BT"], DTYPES[problem["dtype"]].itemsize
    # q, k and v tiles in the input dtype, the gate tile in up to fp32
    tiles = chunk * ((2 * config["wy.BK"] + config["wy.BV"]) * element + 4 * config["wy.BK"])
    return config["wy.num_stages"] * tiles + 8 * chunk * chunk


def state_shared(config: Config, problem: Problem) -> int:
    """Pipelined W and K chunks (all of K) and U0 tiles, the state slice and U as dot operands
    (what sm_90 builds allocate, to the byte, at 4 and 8 warps)."""
    chunk, width = config["BT"], config["h.BV"]
    key_dim, element = next_power_of_2(problem["K"]), DTYPES[problem["dtype"]].itemsize
    pipelined = config["h.num_stages"] * chunk * (2 * key_dim + width)
    return element * (pipelined + key_dim * width + chunk * width)


def _output_shared(config: Config, problem: Problem) -> int:
    """Pipelined q, state and (per-channel decay) g tiles, the scores and U as dot operands."""
    chunk, depth, width = config["BT"], config["o.BK"], config["o.BV"]
    element = DTYPES[problem["dtype"]].itemsize
    # the per-channel gate may come in fp32 (as the models compute it)
    gate_tile = 4 * chunk * depth if problem["gate"] == "channel" else 0
    tiles = (chunk * depth + depth * width) * element + gate_tile
    return config["o.num_stages"] * tiles + chunk * (chunk + width) * element


def sequence_bounds(problem: Problem, generator: torch.Generator) -> list[int] | None:
    """cu_seqlens of a varlen problem (None otherwise): N sequences summing to T, among them an
    empty one and a single token when N >= 3, the rest of random lengths."""
    if not problem["varlen"]:
        return None
    count, total = problem["N"], problem["T"]
    fixed = [0, 1][:max(0, min(count - 1, 2))]
    free = count - len(fixed)
    cuts = sorted(torch.randint(0, total - sum(fixed) + 1, (free - 1,),
                                generator=generator).tolist())
    free_lengths = [b - a for a, b in zip([0, *cuts], [*cuts, total - sum(fixed)])]
    lengths = free_lengths[:1] + fixed + free_lengths[1:]
    return [sum(lengths[:i]) for i in range(count + 1)]


def make_inputs(problem: Problem, device: str, seed: int) -> Inputs:
    """Normalised q and k (as the models feed them), beta in (0, 1), log decays mostly in
    [-0.3, 0] (a memory of tens of tokens, spanning several chunks) in float32 as the models
    compute them, a unit-scale state; varlen problems pack N sequences into batch 1."""
    generator = torch.Generator().manual_seed(seed)
    batch, length, heads = problem["B"], problem["T"], problem["H"]
    value_heads = heads * problem["GV"]
    key_dim, value_dim = problem["K"], problem["V"]
    dtype = DTYPES[problem["dtype"]]

    def randn(*shape):
        return torch.randn(*shape, generator=generator)

    tensors = {
        "q": F.normalize(randn(batch, length, heads, key_dim), dim=-1),
        "k": F.normalize(randn(batch, length, heads, key_dim), dim=-1),
        "v": randn(batch, length, value_heads, value_dim),
        "beta": torch.sigmoid(randn(batch, length, value_heads)),
    }
    inputs: Inputs = {name: t.to(device, dtype) for name, t in tensors.items()}
    gate_shape = {"none": None, "scalar": (batch, length, value_heads),
                  "channel": (batch, length, value_heads, key_dim)}[problem["gate"]]
    inputs["g"] = (None if gate_shape is None
                   else F.logsigmoid(randn(*gate_shape) + 3.0).to(device))
    bounds = sequence_bounds(problem, generator)
    inputs["cu_seqlens"] = (None if bounds is None
                            else torch.tensor(bounds, dtype=torch.int32, device=device))
    sequences = batch if bounds is None else len(bounds) - 1
    inputs["initial_state"] = (randn(sequences, value_heads, key_dim, value_dim).to(device)
                               if problem["initial_state"] else None)
    return inputs


def _run(inputs: Inputs, config: Config) -> Outputs:
    return delta_rule(inputs["q"], inputs["k"], inputs["v"], inputs["beta"], inputs["g"],
                      initial_state=inputs["initial_state"], output_final_state=True,
                      cu_seqlens=inputs["cu_seqlens"], config=config)


def reference(inputs: Inputs) -> Outputs:
    return delta_rule_reference(inputs["q"], inputs["k"], inputs["v"], inputs["beta"],
                                inputs["g"], initial_state=inputs["initial_state"],
                                cu_seqlens=inputs["cu_seqlens"])


def flops(problem: Problem) -> float:
    """The recurrence's work per token and value head: S'^T k, the rank-1 update and S^T q,
    each 2 K V (the chunkwise form does more, by a BT-dependent amount, which is not counted)."""
    value_heads = problem["H"] * problem["GV"]
    return 6.0 * problem["B"] * problem["T"] * value_heads * problem["K"] * problem["V"]


def bytes_moved(problem: Problem) -> float:
    """Read q, k, v, beta, g and the initial states; write o and the final states."""
    tokens = problem["B"] * problem["T"]
    heads, value_heads = problem["H"], problem["H"] * problem["GV"]
    element = DTYPES[problem["dtype"]].itemsize
    gate_bytes = {"none": 0, "scalar": 4, "channel": 4 * problem["K"]}[problem["gate"]]
    per_token = (element * (2 * heads * problem["K"] + value_heads * (2 * problem["V"] + 1))
                 + gate_bytes * value_heads)
    states = problem["N"] if problem["varlen"] else problem["B"]
    state = 4 * states * value_heads * problem["K"] * problem["V"]
    return tokens * per_token + state * (2 if problem["initial_state"] else 1)


def problem_of(batch: int, length: int, heads: int, dim: int, gate: str, initial_state: bool,
               dtype: str = "bfloat16", value_dim: int | None = None, group: int = 1,
               sequences: int | None = None) -> Problem:
    """A problem; ``sequences`` packs that many sequences into batch 1 (varlen)."""
    return {"B": batch, "T": length, "H": heads, "GV": group, "N": sequences or 1, "K": dim,
            "V": value_dim or dim, "gate": gate, "initial_state": initial_state,
            "varlen": sequences is not None, "dtype": dtype}


_problem = problem_of
GATE_KINDS = ("none", "scalar", "channel")
PRESETS = {
    "tiny": [_problem(1, 32, 1, 32, "none", False, "float32"),
             _problem(1, 32, 1, 32, "scalar", True, "bfloat16"),
             _problem(1, 32, 1, 32, "channel", True, "float32"),
             _problem(1, 48, 1, 16, "scalar", True, "float32", 32, group=2, sequences=4)],
    "quick": [_problem(4, 2048, 16, 128, gate, False) for gate in GATE_KINDS]
    + [_problem(1, 8192, 16, 128, "scalar", True, group=2, sequences=8)],
    "default": [problem for gate in GATE_KINDS for problem in (
        _problem(8, 1024, 16, 128, gate, False),
        _problem(2, 8192, 32, 128, gate, False),
        _problem(1, 32768, 16, 128, gate, False),
        _problem(4, 4096, 32, 64, gate, True),
        _problem(2, 4096, 16, 256, gate, True),
        _problem(1, 16384, 16, 128, gate, True, group=2, sequences=16))],
    "full": [_problem(max(1, 32768 // length), length, heads, dim, gate, initial_state)
             for gate, dim, length, heads, initial_state in itertools.product(
                 GATE_KINDS, (64, 128, 256), (1024, 4096, 16384, 32768), (16, 32), (False, True))
             if not (dim == 256 and heads == 32 and length == 32768)]
    + [_problem(1, length, 16, 128, gate, True, group=group, sequences=length // 2048)
       for gate, length, group in itertools.product(GATE_KINDS, (16384, 65536), (1, 2))],
}
# Odd shapes: T = 100 is three chunks and a bit of the default BT (and not a multiple of any
# BT), K = 48 and V = 40 or 64 pad their tiles, B = 2 for half the cases. Packed cases: 5
# sequences in 101 tokens (one empty, one of a single token), grouped value heads, K = 16.
VERIFY_CASES = [
    _problem(batch, 100, 3 - batch, 48, gate, initial_state, dtype, value_dim)
    for batch, gate, initial_state, dtype, value_dim in (
        (1, "none", False, "float32", 40), (2, "scalar", True, "float32", 64),
        (1, "channel", True, "float32", 40), (2, "none", True, "bfloat16", 64),
        (1, "scalar", False, "bfloat16", 40), (2, "channel", False, "bfloat16", 64))
] + [
    _problem(1, 101, 2, 48, "channel", True, "float32", 40, group=2, sequences=5),
    _problem(1, 101, 1, 16, "scalar", True, "bfloat16", 40, group=3, sequences=5),
    _problem(1, 101, 2, 32, "none", False, "float32", 16, group=1, sequences=5),
]

# fp32: the dots run as 3xTF32 (fp32-accurate products on tensor cores; the interpreter does
# them in plain fp32), so what remains is fp32 rounding through the triangular solve and the
# chunk recurrence, amplified a few-fold: 1e-4. bf16: inputs are exact for the reference, but
# W, U, the chunk states, the inverse and the scores are rounded to bf16 (8 significant bits,
# 4e-3) for the tensor cores and errors of a few such roundings add up over a chunk: 6e-2.
# fp16 keeps 11 significant bits, 8x finer than bf16: 1e-2.
TOLERANCES = {
    "float32": Tolerance(atol=1e-4, rtol=1e-4),
    "float16": Tolerance(atol=1e-2, rtol=1e-2),
    "bfloat16": Tolerance(atol=6e-2, rtol=6e-2),
}

FORWARD_SPEC = KernelSpec(
    name="delta_rule",
    family="delta-rule",
    description="chunkwise delta rule (DeltaNet / Gated DeltaNet / KDA): WY solve, state "
                "recurrence, output; stages tuned one at a time",
    space=SPACE,
    default_config=DEFAULT,
    size_fields=SIZE_FIELDS,
    presets=PRESETS,
    verify_cases=VERIFY_CASES,
    check=_check,
    make_inputs=make_inputs,
    run=_run,
    reference=reference,
    tolerances=TOLERANCES,
    flops=flops,
    bytes_moved=bytes_moved,
    problem_defaults=PROBLEM_DEFAULTS,
    stages=STAGES,
    stagewise=True,
    baselines=BASELINES,
)
