"""A toy kernel spec for testing the tool without a real kernel: y = alpha * x, blockwise.

``SKIP_TAIL=True`` deliberately leaves the last block unwritten, so tests can show that the
tuner's NaN-poisoned outputs turn a partial write into a mismatch instead of a silent pass.
"""
from __future__ import annotations

import triton
import triton.language as tl
import torch

from seqtune.launch import launch, new_output
from seqtune.spec import DTYPES, KernelSpec, Tolerance, next_power_of_2


@triton.jit
def _scale_kernel(x_ptr, y_ptr, n, alpha, BLOCK: tl.constexpr, SKIP_TAIL: tl.constexpr):
    pid = tl.program_id(0)
    if SKIP_TAIL and pid == tl.num_programs(0) - 1:
        return
    offsets = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n
    # fp32 arithmetic: the interpreter mis-multiplies a bf16 tensor by an fp32 scalar
    x = tl.load(x_ptr + offsets, mask=mask).to(tl.float32)
    tl.store(y_ptr + offsets, (x * alpha).to(y_ptr.dtype.element_ty), mask=mask)


def scale(x: torch.Tensor, alpha: float, config: dict) -> torch.Tensor:
    y = new_output(x.shape, x.dtype, x.device)
    n = x.numel()
    launch(_scale_kernel, (triton.cdiv(n, config["BLOCK"]),), x, y, n, alpha,
           BLOCK=config["BLOCK"], SKIP_TAIL=config["SKIP_TAIL"], num_warps=config["num_warps"])
    return (y,)


def _check(config, problem, limits):
    if config["BLOCK"] > max(16, next_power_of_2(problem["N"])):
        return f"BLOCK={config['BLOCK']} exceeds the padded N"
    return None


def _inputs(problem, device, seed):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(problem["N"], generator=generator).to(device, DTYPES[problem["dtype"]])
    return {"x": x, "alpha": 1.5}


TOY = KernelSpec(
    name="toy_scale",
    family="test",
    description="y = alpha * x (test kernel)",
    space={"BLOCK": (16, 32, 64), "SKIP_TAIL": (False, True), "num_warps": (1, 2)},
    default_config={"BLOCK": 32, "SKIP_TAIL": False, "num_warps": 1},
    size_fields=("N",),
    presets={"tiny": [{"N": 64, "dtype": "float32"}, {"N": 128, "dtype": "bfloat16"}]},
    verify_cases=[{"N": 37, "dtype": "float32"}, {"N": 100, "dtype": "bfloat16"}],
    check=_check,
    make_inputs=_inputs,
    run=lambda inputs, config: scale(inputs["x"], inputs["alpha"], config),
    reference=lambda inputs: (inputs["x"].double() * inputs["alpha"],),
    tolerances={"float32": Tolerance(1e-6, 1e-6), "bfloat16": Tolerance(1e-2, 1e-2)},
    flops=lambda problem: float(problem["N"]),
    bytes_moved=lambda problem: 8.0 * problem["N"],
)
