"""Every op gives the same answer for strided views as for contiguous tensors (issue: a
non-contiguous ``D`` or ``delta_bias`` once made selective_scan return garbage).

For each kernel spec, the verify case with the most tensor arguments is run with the default
config twice: as made, and with one tensor argument replaced by a view whose every axis is
strided (last axis stride 2). Outputs must be equal to the last bit: an op that copies to
contiguous or reads through strides does the same arithmetic either way. A backward spec
(``<op>_bwd``, whose forward arguments are tested one by one through the forward spec) runs
once with every tensor strided at once: a backward run costs seconds in the interpreter.
"""
from __future__ import annotations

import pytest
import torch

from seqtune.registry import all_specs
from seqtune.spec import INTERPRETER_LIMITS


def strided_copy(tensor: torch.Tensor) -> torch.Tensor:
    """The same values as a view with stride 2 on the last axis (so no axis is unit-stride)."""
    base = torch.zeros(*tensor.shape[:-1], 2 * tensor.shape[-1], dtype=tensor.dtype,
                       device=tensor.device)
    view = base[..., ::2]
    view.copy_(tensor)
    return view


ALL = "every tensor"


def _tensor_names(inputs) -> list[str]:
    return [k for k, v in inputs.items() if isinstance(v, torch.Tensor) and v.dim() > 0]


def _tensor_count(spec, problem) -> int:
    inputs = spec.make_inputs(problem, "cpu", 0)
    return sum(isinstance(v, torch.Tensor) and v.dim() > 0 for v in inputs.values())


def _richest_case(spec):
    """The verify case with the most tensor arguments, the cheapest among those (a backward's
    counted by its forward's inputs: making a backward's inputs may run the forward)."""
    counted = all_specs().get(spec.name[:-4], spec) if spec.name.endswith("_bwd") else spec
    return max(spec.verify_cases, key=lambda p: (_tensor_count(counted, p), -spec.flops(p)))


def _cases():
    for name, spec in all_specs().items():
        problem = _richest_case(spec)
        if name.endswith("_bwd"):
            yield pytest.param(name, problem, ALL, id=f"{name}-every-tensor")
            continue
        inputs = spec.make_inputs(problem, "cpu", 0)
        for arg, value in inputs.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                yield pytest.param(name, problem, arg, id=f"{name}-{arg}")


def _outputs(spec, inputs, config):
    outputs = spec.run(inputs, config)
    return tuple(outputs) if isinstance(outputs, (tuple, list)) else (outputs,)


@pytest.mark.parametrize("kernel, problem, arg", list(_cases()))
def test_strided_argument_gives_the_contiguous_answer(kernel, problem, arg):
    spec = all_specs()[kernel]
    config = spec.default_for(problem, INTERPRETER_LIMITS)
    contiguous = spec.make_inputs(problem, "cpu", 0)
    expected = _outputs(spec, {k: v.clone() if isinstance(v, torch.Tensor) else v
                               for k, v in contiguous.items()}, config)
    strided = dict(contiguous)
    for name in _tensor_names(contiguous) if arg == ALL else [arg]:
        strided[name] = strided_copy(contiguous[name])
        assert not strided[name].is_contiguous()
    got = _outputs(spec, strided, config)
    for index, (want, have) in enumerate(zip(expected, got)):
        if want is None:
            assert have is None
            continue
        torch.testing.assert_close(have, want, rtol=0, atol=0,
                                   msg=lambda m: f"{kernel} output {index} with {arg} strided: {m}")
