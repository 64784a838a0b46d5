"""The delta rule's backward as the tuner sees it (``delta_rule_bwd``): the forward's problems,
its own config (recomputed wy and h stages, the reverse state recurrence ``dh`` and the
per-chunk gradients ``dqk``, tuned one stage at a time), float64 autograd as the reference.

``run`` returns, in this order, the gradients that exist: dq, dk, dv, dbeta, then dg when there
is a gate and d initial_state when there is an initial state.
"""
from __future__ import annotations

import torch

from seqtune.kernels.delta_rule import forward_spec as fwd
from seqtune.kernels.delta_rule.autograd import run_backward
from seqtune.kernels.delta_rule.baselines import BWD_BASELINES
from seqtune.kernels.delta_rule.op import MAX_HEAD_DIM, MIN_HEAD_DIM
from seqtune.kernels.delta_rule.reference import delta_rule_reference
from seqtune.kernels.delta_rule.varlen import check_cu_seqlens, packing, uniform_bounds
from seqtune.spec import (DTYPES, Config, DeviceLimits, Inputs, KernelSpec, Outputs, Problem,
                          Tolerance, next_power_of_2, shared_memory_fits)

STAGES = ("wy", "h", "dh", "dqk")
SPACE = {
    **{key: values for key, values in fwd.SPACE.items() if not key.startswith("o.")},
    "dh.BV": (16, 32, 64),
    "dh.num_warps": fwd.WARPS,
    "dh.num_stages": fwd.PIPELINE,
    "dqk.BK": (32, 64, 128),
    "dqk.BV": (32, 64, 128),
    "dqk.num_warps": fwd.WARPS,
    "dqk.num_stages": fwd.PIPELINE,
}
# The recomputed stages as in the forward's default; the reverse recurrence like the forward
# one (8 warps keep the [K, 32] gradient slice and the chunk's operands in registers at K=256);
# the per-chunk gradients hold a dozen [BT, BT] and [BT, BK] fp32 tiles at once: BT=32 with
# 32-wide tiles and 8 warps.
DEFAULT = {
    **{key: value for key, value in fwd.DEFAULT.items() if not key.startswith("o.")},
    "dh.BV": 32, "dh.num_warps": 8, "dh.num_stages": 2,
    "dqk.BK": 32, "dqk.BV": 32, "dqk.num_warps": 8, "dqk.num_stages": 2,
}
# The reverse recurrence keeps its [K, dh.BV] fp32 gradient slice and the chunk's q, W and keys
# as fp32 [BT, K] operands in registers: beyond 16 slice values per thread it spills at K=256
# (40 B on sm_80 with dh.BV=32 and 8 warps), so there the loader takes dh.BV=16.
GRADIENT_VALUES_PER_THREAD = 16
TILES = ("wy.BK", "wy.BV", "h.BV", "dh.BV", "dqk.BK", "dqk.BV")


def _check(config: Config, problem: Problem, limits: DeviceLimits) -> str | None:
    """As the forward's: head dims, tiles within the padded head dims, both sequential stages'
    state (gradient) slices within registers, every stage's shared memory within the device."""
    key_dim, value_dim = problem["K"], problem["V"]
    if not (MIN_HEAD_DIM <= key_dim <= MAX_HEAD_DIM and MIN_HEAD_DIM <= value_dim <= MAX_HEAD_DIM):
        return f"head dims K={key_dim}, V={value_dim} outside [{MIN_HEAD_DIM}, {MAX_HEAD_DIM}]"
    reason = fwd.tiles_fit(config, problem, TILES) or fwd.state_slice_fits(config, problem, "h")
    if reason is not None:
        return reason
    per_thread = next_power_of_2(key_dim) * config["dh.BV"] // (32 * config["dh.num_warps"])
    if per_thread > GRADIENT_VALUES_PER_THREAD:
        return (f"state gradient slice K x dh.BV = {next_power_of_2(key_dim)} x "
                f"{config['dh.BV']} needs {per_thread} registers per thread with "
                f"dh.num_warps={config['dh.num_warps']}")
    for stage, estimate in (("wy", fwd.wy_shared), ("h", fwd.state_shared),
                            ("dh", _dstate_shared), ("dqk", _dchunk_shared)):
        reason = shared_memory_fits(estimate(config, problem), limits)
        if reason is not None:
            return f"{stage}: {reason}"
    return None


def _dstate_shared(config: Config, problem: Problem) -> int:
    """Pipelined q, W and key chunks (all of K), dO and score tiles; the gradient slice and dU
    as dot operands."""
    chunk, width = config["BT"], config["dh.BV"]
    key_dim, element = next_power_of_2(problem["K"]), DTYPES[problem["dtype"]].itemsize
    pipelined = config["dh.num_stages"] * chunk * (3 * key_dim + width + chunk)
    return element * (pipelined + key_dim * width + 2 * chunk * width)


def _dchunk_shared(config: Config, problem: Problem) -> int:
    """Pipelined state and state-gradient tiles and dO, dU, U tiles; the fp32 [BT, BT] and
    [BT, BK] operands of the products."""
    chunk, depth, width = config["BT"], config["dqk.BK"], config["dqk.BV"]
    element = DTYPES[problem["dtype"]].itemsize
    pipelined = config["dqk.num_stages"] * (2 * depth * width + 3 * chunk * width) * element
    return pipelined + 4 * (2 * chunk * chunk + 2 * chunk * depth)


def make_inputs(problem: Problem, device: str, seed: int) -> Inputs:
    """The forward's inputs plus the upstream gradients: ``do`` like the output and ``dht``
    (fp32) like the final states, both unit-scale."""
    inputs = fwd.make_inputs(problem, device, seed)
    generator = torch.Generator().manual_seed(seed + 1)
    value_heads, key_dim, value_dim = inputs["v"].shape[2], problem["K"], problem["V"]
    sequences = inputs["q"].shape[0] if inputs["cu_seqlens"] is None else problem["N"]
    inputs["do"] = torch.randn(inputs["v"].shape, generator=generator).to(device,
                                                                          inputs["v"].dtype)
    inputs["dht"] = torch.randn(sequences, value_heads, key_dim, value_dim,
                                generator=generator).to(device)
    return inputs


def _forward_arguments(inputs: Inputs) -> list[torch.Tensor | None]:
    return [inputs[name] for name in ("q", "k", "v", "beta", "g", "initial_state")]


def _run(inputs: Inputs, config: Config) -> Outputs:
    q, k, v, beta, g, h0 = (None if t is None else t.contiguous()
                            for t in _forward_arguments(inputs))
    batch, length = q.shape[:2]
    bounds = (uniform_bounds(batch, length) if inputs["cu_seqlens"] is None
              else check_cu_seqlens(inputs["cu_seqlens"], batch, length, q.device))
    pack = packing(bounds, config["BT"], q.device)
    grads = run_backward(q, k, v, beta, g, q.shape[-1] ** -0.5, h0, inputs["do"].contiguous(),
                         inputs["dht"].contiguous(), config, pack, h0 is not None)
    return tuple(grad for grad in grads if grad is not None)


def reference(inputs: Inputs) -> Outputs:
    """Float64 autograd of sum(o * do) + sum(final * dht) through the plain recurrence."""
    leaves = [None if t is None else t.detach().to("cpu", torch.float64).requires_grad_()
              for t in _forward_arguments(inputs)]
    out, final = delta_rule_reference(*leaves[:5], initial_state=leaves[5],
                                      cu_seqlens=inputs["cu_seqlens"], detach=False)
    loss = ((out * inputs["do"].detach().to("cpu", torch.float64)).sum()
            + (final * inputs["dht"].detach().to("cpu", torch.float64)).sum())
    present = [leaf for leaf in leaves if leaf is not None]
    return tuple(torch.autograd.grad(loss, present))


def flops(problem: Problem) -> float:
    """About twice the forward's recurrence work (the backward's products per token and head:
    dU, dS, dq, dk, dv and the recomputed forward)."""
    return 3.0 * fwd.flops(problem)


def bytes_moved(problem: Problem) -> float:
    """Read the inputs and upstream gradients, write the gradients: about twice the forward's."""
    return 2.0 * fwd.bytes_moved(problem)


# Gradients pass through twice the forward's products (the recomputed forward, then the
# backward's) and dk, dbeta add up contributions from every later token, reaching ~30 on the
# verify shapes (no decay) where dq, dv stay ~3. fp32: 3xTF32 products and an fp32 solve leave
# ~1e-6 of that scale: 2e-4. bf16: the recomputed W, U, scores and chunk states are bf16
# tensor-core operands (8 significant bits), and the large terms of dk largely cancel, so
# errors reach ~1% of dk's scale (0.35 at 33): atol 0.5, rtol 0.1. fp16 (11 bits): 8x finer.
TOLERANCES = {
    "float32": Tolerance(atol=2e-4, rtol=2e-4),
    "float16": Tolerance(atol=6e-2, rtol=2e-2),
    "bfloat16": Tolerance(atol=5e-1, rtol=1e-1),
}

BWD_SPEC = KernelSpec(
    name="delta_rule_bwd",
    family="delta-rule",
    description="backward of the chunkwise delta rule: recomputed WY and states, reverse state "
                "recurrence, per-chunk gradients through the triangular solve",
    space=SPACE,
    default_config=DEFAULT,
    size_fields=fwd.SIZE_FIELDS,
    presets=fwd.PRESETS,
    verify_cases=fwd.VERIFY_CASES,
    check=_check,
    make_inputs=make_inputs,
    run=_run,
    reference=reference,
    tolerances=TOLERANCES,
    flops=flops,
    bytes_moved=bytes_moved,
    problem_defaults=fwd.PROBLEM_DEFAULTS,
    baselines=BWD_BASELINES,
    stages=STAGES,
    stagewise=True,
)
