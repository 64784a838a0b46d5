"""Kernel specs of the backward passes ``linear_attention_bwd`` and ``ssd_bwd``
(``gradients.py``): the same problems, presets and verify cases as the forward, so the
backward reads its config for the forward's problem.

Stages, in launch order: ``intra`` and ``h`` (the forward's kernels, recomputing the intra-chunk
matrices and per-chunk states), ``dh`` (state gradients, reverse over chunks), ``dv``, ``dqk``
and ``dg``; the chunk size ``BT`` is shared. Given BT the stages meet only through BT-shaped
buffers, so they tune one at a time (``stagewise``).

``run`` returns, in order, only the gradients that exist for the problem:
- linear_attention_bwd: dq, dk, dv, dg (with decay), d initial_state (with one);
- ssd_bwd: dx, ddt, dA, dB, dC, dD (with D), ddt_bias, d initial_state (with one).
The upstream gradients are ``do`` (of the output) and ``dht`` (of the final state, which the
spec always uses).
"""
from __future__ import annotations

import dataclasses

import torch

from seqtune.baselines import autograd_of
from seqtune.kernels.linear_attention import spec as forward
from seqtune.kernels.linear_attention.baselines import torch_linear_attention, torch_ssd
from seqtune.kernels.linear_attention.reference import (varlen_linear_attention_reference,
                                                        varlen_ssd_reference)
from seqtune.spec import (DTYPES, Config, DeviceLimits, Inputs, Outputs, Problem,
                          Tolerance, shared_memory_fits)

WARPS = forward.WARPS
SPACE: dict[str, tuple] = {
    **{key: values for key, values in forward.SPACE.items() if not key.startswith("o.")},
    "dh.BK": (32, 64, 128), "dh.BV": (32, 64, 128), "dh.num_warps": WARPS,
    "dh.num_stages": (2, 3),
    "dv.BK": (32, 64, 128), "dv.BV": (32, 64, 128), "dv.num_warps": WARPS,
    "dv.num_stages": (2, 3),
    "dqk.BK": (16, 32, 64), "dqk.BV": (32, 64), "dqk.num_warps": WARPS,
    "dqk.num_stages": (1, 2),
    "dg.BK": (32, 64), "dg.num_warps": WARPS,
}
DEFAULT: dict = {
    **{key: value for key, value in forward.DEFAULT.items() if not key.startswith("o.")},
    "dh.BK": 32, "dh.BV": 32, "dh.num_warps": 8, "dh.num_stages": 2,
    "dv.BK": 32, "dv.BV": 32, "dv.num_warps": 4, "dv.num_stages": 2,
    "dqk.BK": 16, "dqk.BV": 32, "dqk.num_warps": 8, "dqk.num_stages": 1,
    "dg.BK": 32, "dg.num_warps": 8,
}
STAGES = ("intra", "h", "dh", "dv", "dqk", "dg")
# Defaults chosen with `seqtune check` (sm_80, sm_90, default preset): dqk.BK=16 keeps the
# per-channel diagonal products [16, 16, BK] in registers; dg at 4 warps spilled 8 B on sm_90
# for scalar decay, at 8 warps none.

# Gradients sum more terms than outputs (over the rest of the sequence), of magnitude ~10-100
# for the spec's inputs. fp32 runs exact fp32 dots: only accumulation order differs (errors
# seen ~3e-5 on gradients of ~100). bf16/fp16 round the dot operands (scores, decayed q/k; the
# fp32 states and state gradients go in two parts, ~16 bits, see backward.py) to 8 / 11
# mantissa bits: errors up to ~0.5% of the largest gradient (bf16 dg of the tiny preset's
# problems, T=64: at most 0.09 of ~100 with scalar decay, 0.15 of ~27 per channel), so the
# absolute term is sized to a few tenths for bf16.
TOLERANCES = {
    "float32": Tolerance(atol=2e-3, rtol=2e-4),
    "float16": Tolerance(atol=6e-2, rtol=2e-2),
    "bfloat16": Tolerance(atol=0.4, rtol=6e-2),
}
MAX_FP32_PER_THREAD = forward.MAX_FP32_PER_THREAD


def _registers(config: Config, gate: str, itemsize: int) -> str | None:
    """A reason when a backward stage's fp32 tiles need more registers per thread than fit."""
    BT, SUB = config["BT"], forward.SUB
    fma = itemsize == 4
    bk, bv = config["dh.BK"], config["dh.BV"]
    dh = bk * bv + (gate == "channel") * BT * bk + fma * BT * (bk + bv)
    bk, bv = config["dv.BK"], config["dv.BV"]
    dv = BT * bv + (gate == "channel") * BT * bk + fma * max(BT * BT + BT * bv, BT * bk + bk * bv)
    bk, bv = config["dqk.BK"], config["dqk.BV"]
    if gate == "channel":
        dqk = 2 * SUB * BT + 2 * SUB * bk + 2 * BT * bk + 2 * SUB * SUB * bk
    else:  # scalar decay adds dg's pair products, a second [BT, BT] tile
        dqk = (1 + (gate == "scalar")) * BT * BT + 2 * BT * bk + fma * BT * (bk + bv)
    dg = BT * config["dg.BK"] * 3
    for stage, values in (("dh", dh), ("dv", dv), ("dqk", dqk), ("dg", dg)):
        per_thread = values // (32 * config[f"{stage}.num_warps"])
        if per_thread > MAX_FP32_PER_THREAD:
            return (f"the {stage} stage holds {per_thread} fp32 values per thread (more than "
                    f"{MAX_FP32_PER_THREAD}): more warps or smaller tiles")
    return None


def _shared_memory(config: Config, gate: str, itemsize: int) -> int:
    """Estimated shared memory of the largest backward kernel: per loop, num_stages buffers of
    each iteration's loads, and the dot operands staged once."""
    BT = config["BT"]
    decay = 4 if gate == "channel" else 0
    bk, bv = config["dh.BK"], config["dh.BV"]
    dh = config["dh.num_stages"] * (BT * (bk + bv) * itemsize + BT * bk * decay) + BT * bk * itemsize
    bk, bv = config["dv.BK"], config["dv.BV"]
    dv = (config["dv.num_stages"] * (BT * bk + bk * bv) * itemsize + BT * BT * itemsize
          + BT * bv * 4)
    bk, bv = config["dqk.BK"], config["dqk.BV"]
    dqk = (config["dqk.num_stages"] * (2 * BT * bv + 2 * bk * bv) * itemsize
           + 2 * BT * bk * itemsize + BT * BT * 4)
    return max(dh, dv, dqk)


def _check(config: Config, T: int, K: int, V: int, gate: str, dtype: str,
           limits: DeviceLimits) -> str | None:
    recompute = {**config, **{k: v for k, v in forward.DEFAULT.items() if k.startswith("o.")}}
    reason = forward._check(recompute, T, K, V, gate, dtype, limits)
    if reason is not None:
        return reason
    for knob, size, dim in (("dh.BK", K, "K"), ("dh.BV", V, "V"), ("dv.BK", K, "K"),
                            ("dv.BV", V, "V"), ("dqk.BK", K, "K"), ("dqk.BV", V, "V"),
                            ("dg.BK", K, "K")):
        limit = forward._tile_limit(size, DEFAULT[knob])  # the default runs every problem
        if config[knob] > limit:
            return f"{knob}={config[knob]} exceeds the padded {dim}={limit}"
    itemsize = DTYPES[dtype].itemsize
    reason = _registers(config, gate, itemsize)
    if reason is not None:
        return reason
    return shared_memory_fits(_shared_memory(config, gate, itemsize), limits)


def check_la_bwd(config: Config, problem: Problem, limits: DeviceLimits) -> str | None:
    return _check(config, problem["T"], problem["K"], problem["V"], problem["gate"],
                  problem["dtype"], limits)


def check_ssd_bwd(config: Config, problem: Problem, limits: DeviceLimits) -> str | None:
    return _check(config, problem["T"], problem["n"], problem["p"], "scalar", problem["dtype"],
                  limits)


def _upstream(inputs: Inputs, out_shape: tuple[int, ...], state_shape: tuple[int, ...],
              dtype: torch.dtype, seed: int, device: str) -> Inputs:
    gen = torch.Generator().manual_seed(seed + 1)
    return {**inputs, "do": torch.randn(*out_shape, generator=gen).to(device, dtype),
            "dht": torch.randn(*state_shape, generator=gen).to(device)}


def make_la_bwd_inputs(problem: Problem, device: str, seed: int) -> Inputs:
    """The forward's inputs, and do [B, T, HV, V] in their dtype, dht [N, HV, K, V] fp32."""
    inputs = forward.make_linear_attention_inputs(problem, device, seed)
    HV = problem["H"] * problem.get("GV", 1)
    rows = forward._state_rows(problem, "B")
    return _upstream(inputs, tuple(inputs["v"].shape), (rows, HV, problem["K"], problem["V"]),
                     inputs["q"].dtype, seed, device)


def run_la_bwd(inputs: Inputs, config: Config) -> Outputs:
    from seqtune.kernels.linear_attention.gradients import run_backward
    from seqtune.kernels.linear_attention.op import prepare

    recurrence, _, _ = prepare(inputs["q"], inputs["k"], inputs["v"], inputs["g"], None,
                               inputs["initial_state"], inputs["cu_seqlens"])
    grads = run_backward(recurrence, config, inputs["do"], inputs["dht"])
    return tuple(t for t in (grads.dq, grads.dk, grads.dv.to(inputs["v"].dtype), grads.dg,
                             grads.dh0 if inputs["initial_state"] is not None else None)
                 if t is not None)


def _leaves(inputs: Inputs, names: tuple[str, ...]) -> dict[str, torch.Tensor | None]:
    return {name: None if inputs[name] is None
            else inputs[name].detach().to("cpu", torch.float64).requires_grad_()
            for name in names}


def _backprop(outputs: tuple[torch.Tensor, torch.Tensor], inputs: Inputs,
              leaves: dict[str, torch.Tensor | None]) -> Outputs:
    out, final = outputs
    loss = (out * inputs["do"].double().cpu()).sum() + (final * inputs["dht"].double().cpu()).sum()
    loss.backward()
    return tuple(leaf.grad for leaf in leaves.values() if leaf is not None)


def reference_la_bwd(inputs: Inputs) -> Outputs:
    leaves = _leaves(inputs, ("q", "k", "v", "g", "initial_state"))
    outputs = varlen_linear_attention_reference(**leaves, cu_seqlens=inputs["cu_seqlens"])
    return _backprop(outputs, inputs, leaves)


def make_ssd_bwd_inputs(problem: Problem, device: str, seed: int) -> Inputs:
    """The forward's inputs, and dy [b, T, h, p] in x's dtype, dht [N, h, n, p] fp32."""
    inputs = forward.make_ssd_inputs(problem, device, seed)
    rows = forward._state_rows(problem, "b")
    return _upstream(inputs, tuple(inputs["x"].shape),
                     (rows, problem["h"], problem["n"], problem["p"]), inputs["x"].dtype,
                     seed, device)


def run_ssd_bwd(inputs: Inputs, config: Config) -> Outputs:
    from seqtune.kernels.linear_attention.autograd import ssd_input_grads, ssd_terms
    from seqtune.kernels.linear_attention.chunked import Recurrence
    from seqtune.kernels.linear_attention.gradients import run_backward
    from seqtune.kernels.linear_attention.ssd import check_ssd_inputs

    x, dt, A, B, C = (inputs[name] for name in ("x", "dt", "A", "B", "C"))
    D, bias, state = inputs["D"], inputs["dt_bias"], inputs["initial_state"]
    sequences, state = check_ssd_inputs(x, dt, A, B, C, D, bias, state, inputs["cu_seqlens"])
    raw, step, log_decay, v = ssd_terms(x, dt, A, bias, inputs["dt_softplus"])
    r = Recurrence(C, B, v, log_decay, 1.0, sequences, initial_state=state)
    grads = run_backward(r, config, inputs["do"], inputs["dht"])
    every = ssd_input_grads((True,) * 8, grads, x, dt, A, D, bias, state, inputs["do"], raw,
                            step, inputs["dt_softplus"])
    return tuple(t for t in every if t is not None)


def reference_ssd_bwd(inputs: Inputs) -> Outputs:
    leaves = _leaves(inputs, ("x", "dt", "A", "B", "C", "D", "dt_bias", "initial_state"))
    outputs = varlen_ssd_reference(
        leaves["x"], leaves["dt"], leaves["A"], leaves["B"], leaves["C"], leaves["D"],
        leaves["dt_bias"], inputs["dt_softplus"], leaves["initial_state"], inputs["cu_seqlens"])
    return _backprop(outputs, inputs, leaves)


def _twice(count):
    """A backward does about twice the forward's work and traffic."""
    return lambda problem: 2.0 * count(problem)


LINEAR_ATTENTION_BWD = dataclasses.replace(
    forward.LINEAR_ATTENTION, name="linear_attention_bwd",
    description="backward of chunkwise linear attention: dq, dk, dv, dg, d initial state",
    space=SPACE, default_config=DEFAULT, check=check_la_bwd, make_inputs=make_la_bwd_inputs,
    run=run_la_bwd, reference=reference_la_bwd, tolerances=TOLERANCES,
    flops=_twice(forward.flops_linear_attention),
    bytes_moved=_twice(forward.bytes_linear_attention), stages=STAGES,
    baselines={"torch": autograd_of(torch_linear_attention, ("q", "k", "v", "g", "initial_state"),
                                    ("do", "dht"))})

SSD_BWD = dataclasses.replace(
    forward.SSD, name="ssd_bwd",
    description="backward of Mamba-2 SSD: dx, ddt, dA, dB, dC, dD, ddt_bias, d initial state",
    space=SPACE, default_config=DEFAULT, check=check_ssd_bwd, make_inputs=make_ssd_bwd_inputs,
    run=run_ssd_bwd, reference=reference_ssd_bwd, tolerances=TOLERANCES,
    flops=_twice(forward.flops_ssd), bytes_moved=_twice(forward.bytes_ssd), stages=STAGES,
    baselines={"torch": autograd_of(torch_ssd, ("x", "dt", "A", "B", "C", "D", "dt_bias",
                                                "initial_state"), ("do", "dht"))})

BWD_SPECS = (LINEAR_ATTENTION_BWD, SSD_BWD)
