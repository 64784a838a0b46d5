"""``delta_rule_step`` as the tuner sees it: one decoding token against a state pool."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from seqtune.kernels.delta_rule.baselines import STEP_BASELINES
from seqtune.kernels.delta_rule.reference import delta_rule_reference
from seqtune.kernels.delta_rule.step import MAX_HEAD_DIM, MIN_HEAD_DIM, delta_rule_step
from seqtune.spec import (DTYPES, Config, DeviceLimits, Inputs, KernelSpec, Outputs, Problem,
                          Tolerance, next_power_of_2)

SPACE = {"BK": (16, 32, 64, 128, 256), "BV": (16, 32, 64, 128), "num_warps": (1, 2, 4, 8)}
# All of K at once for the usual heads (<= 128; the loader narrows BK to the padded K): the
# state is read and written once. BV=32 gives B * HV * V / 32 programs, enough to fill a GPU
# at batch 4 with 32 value heads of 128.
DEFAULT = {"BK": 128, "BV": 32, "num_warps": 4}
# A [BK, BV] fp32 state tile and the k/q columns stay in registers; beyond this many values
# per thread they spill.
TILE_VALUES_PER_THREAD = 64


def _check(config: Config, problem: Problem, limits: DeviceLimits) -> str | None:
    """Tiles within the padded head dims and the state tile within registers (no shared
    memory: nothing is staged)."""
    for dim in ("K", "V"):
        if not MIN_HEAD_DIM <= problem[dim] <= MAX_HEAD_DIM:
            return f"head dim {dim}={problem[dim]} outside [{MIN_HEAD_DIM}, {MAX_HEAD_DIM}]"
        # The default's tile runs any head dim (masked); larger tiles than the padded dim do
        # not, so the tuner never measures them.
        padded = max(next_power_of_2(problem[dim]), DEFAULT["B" + dim])
        if config["B" + dim] > padded:
            return f"B{dim}={config['B' + dim]} exceeds the padded {dim}={padded}"
    per_thread = config["BK"] * config["BV"] // (32 * config["num_warps"])
    if per_thread > TILE_VALUES_PER_THREAD:
        return (f"state tile BK x BV = {config['BK']} x {config['BV']} needs {per_thread} "
                f"registers per thread with num_warps={config['num_warps']}")
    return None


def make_inputs(problem: Problem, device: str, seed: int) -> Inputs:
    """One token per element (normalised q and k, beta in (0, 1), float32 log decays mostly in
    [-0.3, 0]) and a unit-scale state; indexed problems own shuffled rows of a pool of 2B + 1."""
    generator = torch.Generator().manual_seed(seed)
    batch, heads = problem["B"], problem["H"]
    value_heads, key_dim, value_dim = heads * problem["GV"], problem["K"], problem["V"]
    dtype = DTYPES[problem["dtype"]]

    def randn(*shape):
        return torch.randn(*shape, generator=generator)

    inputs: Inputs = {
        "q": F.normalize(randn(batch, heads, key_dim), dim=-1).to(device, dtype),
        "k": F.normalize(randn(batch, heads, key_dim), dim=-1).to(device, dtype),
        "v": randn(batch, value_heads, value_dim).to(device, dtype),
        "beta": torch.sigmoid(randn(batch, value_heads)).to(device, dtype),
    }
    gate_shape = {"none": None, "scalar": (batch, value_heads),
                  "channel": (batch, value_heads, key_dim)}[problem["gate"]]
    inputs["g"] = (None if gate_shape is None
                   else F.logsigmoid(randn(*gate_shape) + 3.0).to(device))
    rows = 2 * batch + 1 if problem["indexed"] else batch
    inputs["state"] = randn(rows, value_heads, key_dim, value_dim).to(device)
    inputs["state_indices"] = (torch.randperm(rows, generator=generator)[:batch].to(device)
                               if problem["indexed"] else None)
    return inputs


def _run(inputs: Inputs, config: Config) -> Outputs:
    """(o, the state pool after the step). The step updates the state in place, so it runs on
    a copy: every run (the tuner's repeats included) starts from the same state."""
    state = inputs["state"].clone()
    out = delta_rule_step(inputs["q"], inputs["k"], inputs["v"], inputs["beta"], inputs["g"],
                          state=state, state_indices=inputs["state_indices"], config=config)
    return out, state


def reference(inputs: Inputs) -> Outputs:
    """The float64 recurrence over a one-token sequence from each element's state row."""
    state = inputs["state"].detach().to("cpu", torch.float64)
    indices = inputs["state_indices"]
    rows = (torch.arange(state.shape[0]) if indices is None
            else indices.detach().to("cpu", torch.int64))
    g = inputs["g"]
    out, final = delta_rule_reference(
        inputs["q"][:, None], inputs["k"][:, None], inputs["v"][:, None],
        inputs["beta"][:, None], None if g is None else g[:, None], initial_state=state[rows])
    state = state.clone()
    state[rows] = final
    return out[:, 0], state


def flops(problem: Problem) -> float:
    """Decay, prediction S'^T k, rank-1 update and output S^T q: about 7 K V per value head."""
    return 7.0 * problem["B"] * problem["H"] * problem["GV"] * problem["K"] * problem["V"]


def bytes_moved(problem: Problem) -> float:
    """The state rows read and written (fp32) dominate; plus the token's inputs and output."""
    value_heads = problem["H"] * problem["GV"]
    element = DTYPES[problem["dtype"]].itemsize
    state = 2 * 4 * problem["B"] * value_heads * problem["K"] * problem["V"]
    tokens = element * problem["B"] * (2 * problem["H"] * problem["K"]
                                       + value_heads * (2 * problem["V"] + 1))
    return state + tokens


def _problem(batch: int, heads: int, dim: int, gate: str, dtype: str = "bfloat16",
             value_dim: int | None = None, group: int = 1, indexed: bool = False) -> Problem:
    return {"B": batch, "H": heads, "GV": group, "K": dim, "V": value_dim or dim, "gate": gate,
            "indexed": indexed, "dtype": dtype}


GATE_KINDS = ("none", "scalar", "channel")
PRESETS = {
    "tiny": [_problem(2, 1, 32, "scalar", "float32", indexed=True),
             _problem(3, 2, 16, "channel", "bfloat16", 32, group=2)],
    "quick": [_problem(8, 16, 128, gate, group=2, indexed=True) for gate in GATE_KINDS],
    "default": [_problem(batch, 16, dim, gate, group=group, indexed=True)
                for gate in GATE_KINDS for batch in (1, 8, 64) for dim, group in
                ((128, 2), (256, 1))],
    "full": [_problem(batch, heads, dim, gate, group=group, indexed=indexed)
             for gate in GATE_KINDS for batch in (1, 4, 16, 64, 256) for heads in (16, 32)
             for dim, group in ((64, 1), (128, 1), (128, 2), (256, 1))
             for indexed in (False, True)],
}
VERIFY_CASES = [
    _problem(3, 2, 48, "none", "float32", 40, group=2, indexed=True),
    _problem(2, 3, 48, "scalar", "float32", 64),
    _problem(3, 1, 48, "channel", "float32", 40, group=3, indexed=True),
    _problem(2, 2, 48, "scalar", "bfloat16", 40, group=2, indexed=True),
    _problem(3, 1, 16, "channel", "bfloat16", 16),
]
# One step in fp32 arithmetic: rounding of a few sums of K terms. bf16 inputs are exact for
# the reference and the state stays fp32; only the output is rounded to bf16 (2^-8 relative).
TOLERANCES = {
    "float32": Tolerance(atol=1e-5, rtol=1e-5),
    "float16": Tolerance(atol=2e-3, rtol=2e-3),
    "bfloat16": Tolerance(atol=1e-2, rtol=1e-2),
}

STEP_SPEC = KernelSpec(
    name="delta_rule_step",
    family="delta-rule",
    description="one decoding token of the delta rule (DeltaNet / Gated DeltaNet / KDA, "
                "grouped value heads) on a state pool, updated in place",
    space=SPACE,
    default_config=DEFAULT,
    size_fields=("B", "H", "GV"),
    presets=PRESETS,
    verify_cases=VERIFY_CASES,
    check=_check,
    make_inputs=make_inputs,
    run=_run,
    reference=reference,
    tolerances=TOLERANCES,
    flops=flops,
    bytes_moved=bytes_moved,
    baselines=STEP_BASELINES,
)
