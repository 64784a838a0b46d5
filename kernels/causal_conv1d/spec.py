"""The causal_conv1d kernels as the tool sees them: the forward (``causal_conv1d``), its backward
(``causal_conv1d_bwd``, same problems) and the decode step (``causal_conv1d_step``).

Problems are described in ``problems.py``. The convolution is memory-bound (2W flops per loaded
element): the knobs trade tile shape (the W - 1 rows of halo each tile re-reads, the channel run
each row loads) against parallelism.
"""
from __future__ import annotations

import torch

from seqtune.spec import (Config, DeviceLimits, Inputs, KernelSpec, Outputs, Problem, Tolerance,
                          next_power_of_2, shared_memory_fits)

from seqtune.kernels.causal_conv1d.backward import backward
from seqtune.kernels.causal_conv1d.baselines import BACKWARD_BASELINES, FORWARD_BASELINES
from seqtune.kernels.causal_conv1d.op import causal_conv1d, check_arguments
from seqtune.kernels.causal_conv1d.problems import (PRESETS, PROBLEM_DEFAULTS, VERIFY_CASES,
                                                    element_bytes, make_forward_inputs, tokens)
from seqtune.kernels.causal_conv1d.reference import reference_conv
from seqtune.kernels.causal_conv1d.step_spec import STEP_SPEC

SPACE = {
    "BT": (16, 32, 64, 128),
    "BD": (16, 32, 64, 128, 256),
    "num_warps": (1, 2, 4, 8),
    # The taps are straight-line loads (no loop to pipeline but the packed batch's bisection);
    # kept as a knob for compilers that overlap them.
    "num_stages": (1, 2, 3),
}
DEFAULT = {"BT": 64, "BD": 64, "num_warps": 4, "num_stages": 1}
BWD_DEFAULT = {"BT": 32, "BD": 64, "num_warps": 4, "num_stages": 1}

# fp32 values of a [BT, BD] tile per thread. The forward holds the accumulator and one tap;
# the backward also dz, the recomputed pre-activation and dx: kept to half as many.
MAX_TILE_VALUES_PER_THREAD = {"causal_conv1d": 32, "causal_conv1d_bwd": 16}


def _checker(kernel: str, default: Config):
    def check(config: Config, problem: Problem, limits: DeviceLimits) -> str | None:
        """Tiles within the padded problem, registers without spills, shared memory."""
        for tile, dim in (("BT", "T"), ("BD", "D")):
            # A tile past the padded dim only adds masked work; up to the default's stays
            # valid so the default runs every problem.
            if config[tile] > max(next_power_of_2(problem[dim]), default[tile]):
                return f"{tile}={config[tile]} exceeds the padded {dim}={problem[dim]}"
        values = config["BT"] * config["BD"]
        threads = 32 * config["num_warps"]
        if values > MAX_TILE_VALUES_PER_THREAD[kernel] * threads:
            return f"{values} tile values over {threads} threads would spill registers"
        if values < threads:
            return f"{threads} threads for {values} tile values leave threads idle"
        # At most one fp32 tile through shared memory (a layout conversion; the backward's
        # column sums): sm_80/sm_90 builds of the defaults use 0.5-8 KiB, below this bound.
        return shared_memory_fits(4 * values, limits)
    return check


def _cu(inputs: Inputs):
    cu = inputs["cu_seqlens"]
    return cu.contiguous() if cu is not None else None


def run_forward(inputs: Inputs, config: Config) -> Outputs:
    return causal_conv1d(**inputs, output_final_state=True, config=config)


def reference_forward(inputs: Inputs) -> Outputs:
    return reference_conv(inputs["x"], inputs["weight"], inputs["bias"], inputs["initial_state"],
                          inputs["cu_seqlens"], inputs["activation"] is not None)


def make_backward_inputs(problem: Problem, device: str, seed: int) -> Inputs:
    """The forward's inputs and unit-normal upstream gradients of y and of the final state
    (the backward needs nothing else the forward computed: it recomputes from x)."""
    inputs = make_forward_inputs(problem, device, seed)
    generator = torch.Generator().manual_seed(seed + 1)
    x, weight = inputs["x"], inputs["weight"]
    num_seqs = problem["N"]
    inputs["grad_y"] = torch.randn(x.shape, generator=generator).to(device, x.dtype)
    inputs["grad_final_state"] = torch.randn(num_seqs, x.shape[2], weight.shape[1] - 1,
                                             generator=generator).to(device, x.dtype)
    return inputs


def run_backward(inputs: Inputs, config: Config) -> Outputs:
    """(dx, dweight[, dbias][, d initial_state]): the gradients of the inputs that exist."""
    x, weight, bias, state = (inputs[k] for k in ("x", "weight", "bias", "initial_state"))
    cu = _cu(inputs)
    layout = check_arguments(x, weight, bias, inputs["activation"], state, cu)
    grads = backward(x, weight, bias, state, cu, layout, inputs["grad_y"],
                     inputs["grad_final_state"], (True, True, True, True), config)
    return tuple(g for g in grads if g is not None)


def reference_backward(inputs: Inputs) -> Outputs:
    """Float64 autograd through the F.conv1d reference, same order as ``run_backward``."""
    leaves = [inputs[k].detach().double().requires_grad_()
              for k in ("x", "weight", "bias", "initial_state") if inputs[k] is not None]
    named = dict(zip([k for k in ("x", "weight", "bias", "initial_state")
                      if inputs[k] is not None], leaves))
    y, final_state = reference_conv(named["x"], named["weight"], named.get("bias"),
                                    named.get("initial_state"), inputs["cu_seqlens"],
                                    inputs["activation"] is not None)
    loss = ((y * inputs["grad_y"].double()).sum()
            + (final_state * inputs["grad_final_state"].double()).sum())
    return torch.autograd.grad(loss, leaves)


def forward_flops(problem: Problem) -> float:
    """Per output: W multiply-adds, the bias, and SiLU's exp, add, divide and multiply."""
    per_output = 2 * problem["W"] + problem["has_bias"] + 4 * problem["silu"]
    return float(tokens(problem) * problem["D"] * per_output)


def forward_bytes(problem: Problem) -> float:
    """Read x, write y, read weight and bias; the states' W - 1 columns per sequence."""
    D, W, N = problem["D"], problem["W"], problem["N"]
    streams = 2 * tokens(problem) * D
    states = N * D * (W - 1) * (1 + problem["has_initial_state"])
    return float(element_bytes(problem) * (streams + D * (W + 1) + states))


def backward_flops(problem: Problem) -> float:
    """Per element: dx's W multiply-adds, dw's W and dbias's add; with SiLU each of the W dz
    a row reads recomputes a pre-activation (the forward's work) and SiLU's derivative (6)."""
    W = problem["W"]
    per_element = 4 * W + 1
    if problem["silu"]:
        per_element += W * (2 * W + problem["has_bias"] + 6)
    return float(tokens(problem) * problem["D"] * per_element)


def backward_bytes(problem: Problem) -> float:
    """Read x and dy, write dx; the fp32 partial sums of dw and dbias are small."""
    return float(element_bytes(problem) * 3 * tokens(problem) * problem["D"])


# fp32: at most W + 1 terms and SiLU in fp32: a few ulp, measured < 1e-6 on the verify cases.
# Half types: x, weight, bias and states are exact in both computations (the reference reads
# the same rounded values); the error is the output's rounding, half an ulp (2^-8 relative in
# bf16, 2^-11 in fp16), allowed ~2x. The final state is an exact copy.
TOLERANCES = {
    "float32": Tolerance(atol=1e-5, rtol=1e-5),
    "float16": Tolerance(atol=1e-4, rtol=1e-3),
    "bfloat16": Tolerance(atol=1e-3, rtol=8e-3),
}
# Gradients: dx and d initial_state are like the forward (at most W terms); dweight and dbias
# sum over every token in fp32 (error ~ eps32 * sqrt(tokens) * |terms|, 1e-5 at the verify
# sizes, hence fp32's 1e-4) before one rounding to the parameter's dtype.
BWD_TOLERANCES = {
    "float32": Tolerance(atol=1e-4, rtol=1e-4),
    "float16": Tolerance(atol=1e-3, rtol=1e-3),
    "bfloat16": Tolerance(atol=2e-3, rtol=8e-3),
}

SPECS = (
    KernelSpec(
        name="causal_conv1d",
        family="convolution",
        description="depthwise causal conv1d (width 2-8, SiLU, states, packed sequences)",
        space=SPACE,
        default_config=DEFAULT,
        size_fields=("B", "T", "D", "N"),
        presets=PRESETS,
        verify_cases=VERIFY_CASES,
        check=_checker("causal_conv1d", DEFAULT),
        make_inputs=make_forward_inputs,
        run=run_forward,
        reference=reference_forward,
        tolerances=TOLERANCES,
        flops=forward_flops,
        bytes_moved=forward_bytes,
        problem_defaults=PROBLEM_DEFAULTS,
        baselines=FORWARD_BASELINES,
    ),
    KernelSpec(
        name="causal_conv1d_bwd",
        family="convolution",
        description="causal_conv1d backward: dx, dweight, dbias, d initial_state",
        space=SPACE,
        default_config=BWD_DEFAULT,
        size_fields=("B", "T", "D", "N"),
        presets=PRESETS,
        verify_cases=VERIFY_CASES,
        check=_checker("causal_conv1d_bwd", BWD_DEFAULT),
        make_inputs=make_backward_inputs,
        run=run_backward,
        reference=reference_backward,
        tolerances=BWD_TOLERANCES,
        flops=backward_flops,
        bytes_moved=backward_bytes,
        problem_defaults=PROBLEM_DEFAULTS,
        baselines=BACKWARD_BASELINES,
    ),
    STEP_SPEC,
)
