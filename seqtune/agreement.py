"""Numerical agreement of a kernel's outputs with its float64 reference."""
from __future__ import annotations

import dataclasses
from typing import Mapping

import torch

from seqtune.launch import poisoned_outputs
from seqtune.spec import Config, DeviceLimits, KernelSpec, Outputs, Problem, Tolerance, dtype_name


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
        allowed = tol.atol + tol.rtol * ref64.abs()
        bad = diff > allowed
        if bad.any():
            problems.append(f"output {index}: {int(bad.sum())}/{bad.numel()} elements "
                            f"outside atol={tol.atol:g} rtol={tol.rtol:g}"
                            + (f" ({int(not_finite.sum())} not finite)" if not_finite.any() else "")
                            + _worst(diff, allowed, ref64, bad))
    return Agreement(not problems, worst_abs, worst_rel, "; ".join(problems))


def _worst(diff: torch.Tensor, allowed: torch.Tensor, ref64: torch.Tensor,
           bad: torch.Tensor) -> str:
    """The element furthest outside its tolerance: its error, what was allowed there and the
    reference's value and largest magnitude (whether the tolerance ignores the output's scale)."""
    at = int(torch.argmax(torch.where(bad, diff / allowed, -1.0)))
    return (f", worst |err| {diff.flatten()[at].item():.3g} where {allowed.flatten()[at].item():.3g}"
            f" allowed (ref {ref64.flatten()[at].item():.3g}, max |ref| "
            f"{ref64.abs().max().item():.3g})")


def tolerance_for(spec: KernelSpec, problem: Problem) -> Tolerance:
    return spec.tolerances[dtype_name(problem.get("dtype", "float32"))]


def check_case(spec: KernelSpec, problem: Problem, config: Config, device: str = "cpu",
               seed: int = 0, reference: Outputs | None = None,
               inputs: Mapping | None = None, tolerance: Tolerance | None = None) -> Agreement:
    """Run ``config`` on ``problem`` with NaN-poisoned outputs and compare to the reference
    (the spec's float64 reference unless given), within the dtype's tolerance unless given."""
    inputs = dict(inputs) if inputs is not None else spec.make_inputs(problem, device, seed)
    if reference is None:
        reference = spec.reference(inputs)
    with poisoned_outputs():
        outputs = spec.run(inputs, config)
    return compare(outputs, reference, tolerance or tolerance_for(spec, problem))


# Above this many FLOPs the float64 reference (naive, often on the CPU) would take minutes to
# hours; such problems are checked against the verified untuned config instead.
REFERENCE_FLOP_LIMIT = 2e10
# Size cap of the small twin problem on which the untuned config is checked in float64.
TWIN_SIZE_CAP = 256


class ReferenceError(RuntimeError):
    """The untuned config disagrees with the float64 reference: nothing can be trusted."""


def reference_outputs(spec: KernelSpec, problem: Problem, inputs: Mapping, limits: DeviceLimits,
                      device: str, seed: int = 0) -> tuple[Outputs, Tolerance | None]:
    """What candidates are compared with, and the tolerance (None: the dtype's).

    Small problems: the spec's float64 reference. Large ones: the output of the untuned config
    (``spec.default_for``) on the same inputs, after that config was itself checked against the
    float64 reference on a small twin problem (same dtypes and flags, sizes capped); candidate
    and untuned config both carry rounding error, so the tolerance is doubled."""
    if spec.flops(problem) <= REFERENCE_FLOP_LIMIT:
        return spec.reference(inputs), None
    twin = {k: min(v, TWIN_SIZE_CAP) if k in spec.size_fields else v for k, v in problem.items()}
    untuned_twin = spec.default_for(twin, limits)
    agreement = check_case(spec, twin, untuned_twin, device=device, seed=seed)
    if not agreement.ok:
        raise ReferenceError(f"{spec.name}: untuned config {untuned_twin} disagrees with the "
                             f"float64 reference on {twin}: {agreement.detail}")
    with poisoned_outputs():
        outputs = spec.run(dict(inputs), spec.default_for(problem, limits))
    tol = tolerance_for(spec, problem)
    return tuple(o.detach().double() for o in outputs), Tolerance(2 * tol.atol, 2 * tol.rtol)
