"""What every op's ``torch.library`` registration shares (each kernel folder's ``library.py``).

Every public op is a custom op ``torch.ops.seqtune.<name>``: dynamo and AOT autograd see one
opaque call with a fake implementation (shapes and dtypes only), so compiled graphs never trace
the Python launch path, host reads or the config lookup, and never re-trace per length.
A schema cannot take a config mapping: it travels as its canonical literal text.
"""
from __future__ import annotations

import ast
import math
import numbers
from typing import Any, Mapping, Sequence

import torch

from seqtune.checks import expect_same_device
from seqtune.loader import config_for


def encode_config(name: str, config: Mapping[str, Any] | None) -> str | None:
    """``config`` as the canonical (sorted) literal text an op schema carries; None stays None.
    Values keep their types through the round trip (``64`` is not ``64.0``), so the kernel's
    spec validates exactly what the caller gave. Plain Python only: dynamo traces it into a
    constant."""
    if config is None:
        return None
    if not isinstance(config, Mapping):
        raise TypeError(f"{name} must be a mapping of knob names to values or None, "
                        f"got {type(config).__name__}")
    for key, value in config.items():
        if not isinstance(key, str) or not _is_literal(value):
            raise TypeError(f"{name} must map knob names to numbers, booleans or strings, "
                            f"got {key!r}: {value!r}")
    return "{" + ", ".join(f"{key!r}: {config[key]!r}" for key in sorted(config)) + "}"


def _is_literal(value: Any) -> bool:
    """Whether ``repr(value)`` reads back as ``value`` (non-finite floats do not)."""
    if isinstance(value, float):
        return math.isfinite(value)
    return value is None or isinstance(value, (bool, int, str))


def decode_config(text: str | None) -> dict[str, Any] | None:
    """The mapping ``encode_config`` wrote (None stays None)."""
    return None if text is None else ast.literal_eval(text)


def placeholder(like: torch.Tensor) -> torch.Tensor:
    """An empty tensor standing for an output the call does not produce (a schema returns
    tensors, never None): the optional final state, a sigmoid attention's row statistics."""
    return like.new_empty((0,))


def gradients(grads: Sequence[torch.Tensor], wanted: Sequence[bool]
              ) -> tuple[torch.Tensor | None, ...]:
    """The backward op's list as autograd takes it: None where no gradient was asked for (the
    op returns a placeholder there)."""
    return tuple(grad if want else None for grad, want in zip(grads, wanted))


def wanted(needs: Sequence[bool], tensors: Sequence[torch.Tensor | None]) -> list[bool]:
    """Which inputs get a gradient: those autograd asks for that are present."""
    return [bool(need) and tensor is not None for need, tensor in zip(needs, tensors)]


def refuse_double_backward(backward_op: Any, op_name: str) -> None:
    """Make a gradient of ``backward_op``'s gradients a one-line error when it is taken (the
    semantics of ``torch.autograd.function.once_differentiable``): the Triton backward kernels
    have no derivative of their own, and a silent zero would make a gradient penalty wrong."""

    def backward(ctx: Any, *grads: Any) -> None:
        raise RuntimeError(f"seqtune.{op_name}: double backward (a gradient of its gradient, "
                           f"e.g. a gradient penalty) is not supported")

    torch.library.register_autograd(backward_op, backward)


def expect_tensors(required: Mapping[str, Any],
                   optional: Mapping[str, Any] | None = None) -> None:
    """A one-line TypeError for an argument that is not a tensor (None allowed in ``optional``),
    and a ValueError for tensors on different devices, before the op's schema or the
    dispatcher sees them (their errors would name neither the argument nor the fix)."""
    optional = optional or {}
    named = {**required, **{k: v for k, v in optional.items() if v is not None}}
    for name, value in named.items():
        if not isinstance(value, torch.Tensor):
            kind = "a torch.Tensor or None" if name in optional else "a torch.Tensor"
            raise TypeError(f"{name} must be {kind}, got {type(value).__name__}")
    expect_same_device(named)


def real_or_none(name: str, value: Any) -> float | None:
    """A real scalar argument (``scale``...) as the float a schema takes; TypeError otherwise."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number or None, got {type(value).__name__}")
    return float(value)


def int_or_none(name: str, value: Any) -> int | None:
    """An integer argument (``max_seqlen``...) as the int a schema takes; TypeError otherwise."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int or None, got {type(value).__name__}")
    return int(value)


def non_differentiable(op: Any) -> None:
    """Declare an inference op's outputs constants for autograd (decode and step ops have no
    backward), as a kernel's fresh output always was: compiling a call whose inputs require
    grad traces no backward, and nothing records a graph through it."""

    def setup_context(ctx: Any, inputs: Any, output: Any) -> None:
        ctx.mark_non_differentiable(output)

    def backward(ctx: Any, *grads: Any) -> None:
        raise AssertionError("unreachable: the outputs are marked non-differentiable")

    torch.library.register_autograd(op, backward, setup_context=setup_context)


def forward_config(kernel: str, problem: Mapping[str, Any], config: Mapping[str, Any] | None,
                   bwd_config: Mapping[str, Any] | None) -> dict[str, Any]:
    """The forward's config for ``problem``. An explicit ``bwd_config`` is checked against the
    problem here too, so a bad one fails at the call, before any launch, not in the backward."""
    cfg = config_for(kernel, problem, config)
    if bwd_config is not None:
        config_for(kernel + "_bwd", problem, bwd_config)
    return cfg
