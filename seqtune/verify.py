"""Numerical agreement of a kernel's outputs with its float64 reference."""
from __future__ import annotations

import dataclasses
from typing import Mapping

import torch

from seqtune.launch import poisoned_outputs
from seqtune.spec import Config, KernelSpec, Outputs, Problem, Tolerance, dtype_name


@dataclasses.dataclass(frozen=True)
class Agreement:
    """How far outputs are from the reference. ``max_rel_err`` is relative to the largest
    reference magnitude of that output (robust where the reference crosses zero)."""

    ok: bool
    max_abs_err: float
    max_rel_err: float
    detail: str = ""


def compare(outputs: Outputs, reference: Outputs, tol: Tolerance) -> Agreement:
    """Every output within ``atol + rtol * |ref|`` elementwise and finite where ref is."""
    if len(outputs) != len(reference):
        return Agreement(False, float("inf"), float("inf"),
                         f"{len(outputs)} outputs, reference has {len(reference)}")
    worst_abs, worst_rel, problems = 0.0, 0.0, []
    for index, (out, ref) in enumerate(zip(outputs, reference)):
        if tuple(out.shape) != tuple(ref.shape):
            return Agreement(False, float("inf"), float("inf"),
                             f"output {index} has shape {tuple(out.shape)}, "
                             f"expected {tuple(ref.shape)}")
        out64, ref64 = out.detach().to("cpu", torch.float64), ref.detach().to("cpu", torch.float64)
        if out64.numel() == 0:
            continue
        diff = (out64 - ref64).abs()
        not_finite = ~torch.isfinite(out64) & torch.isfinite(ref64)
        diff = torch.where(not_finite, torch.full_like(diff, float("inf")), diff)
        scale = max(ref64.abs().max().item(), 1e-30)
        worst_abs = max(worst_abs, diff.max().item())
        worst_rel = max(worst_rel, diff.max().item() / scale)
        bad = diff > tol.atol + tol.rtol * ref64.abs()
        if bad.any():
            problems.append(f"output {index}: {int(bad.sum())}/{bad.numel()} elements "
                            f"outside atol={tol.atol:g} rtol={tol.rtol:g}"
                            + (f" ({int(not_finite.sum())} not finite)" if not_finite.any() else ""))
    return Agreement(not problems, worst_abs, worst_rel, "; ".join(problems))


def tolerance_for(spec: KernelSpec, problem: Problem) -> Tolerance:
    return spec.tolerances[dtype_name(problem.get("dtype", "float32"))]


def check_case(spec: KernelSpec, problem: Problem, config: Config, device: str = "cpu",
               seed: int = 0, reference: Outputs | None = None,
               inputs: Mapping | None = None) -> Agreement:
    """Run ``config`` on ``problem`` with NaN-poisoned outputs and compare to the reference."""
    inputs = dict(inputs) if inputs is not None else spec.make_inputs(problem, device, seed)
    if reference is None:
        reference = spec.reference(inputs)
    with poisoned_outputs():
        outputs = spec.run(inputs, config)
    return compare(outputs, reference, tolerance_for(spec, problem))
