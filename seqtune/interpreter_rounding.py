"""The Triton interpreter's float32 -> bfloat16 cast, made to round to nearest even as GPUs do.

Triton's interpreter (``TRITON_INTERPRET=1``, triton 3.x) converts float32 to bfloat16 by
dropping the low 16 bits of the mantissa: it rounds toward zero. NVIDIA and AMD GPUs round to
nearest even (``cvt.rn.bf16.f32``). On the CPU every bf16 rounding then errs by up to a whole
unit toward zero instead of half a unit either way, and the errors of a sum of same-signed
terms (softmax weights, decayed states) add up instead of cancelling: bf16 errors measured on
the CPU came out up to ~3x what the same kernel gives on a GPU (attention's gradients at T=100
queries, S=3 keys, d=59, seeds 0-11: up to 3.09x PyTorch's bf16 error with the truncating cast,
at most 1.14x with this one; ``tests/test_interpreter_rounding.py``).

``gpu_rounding()`` swaps in a round-to-nearest-even cast (torch's, the GPU's rounding) while
it is entered; ``seqtune.launch.launch`` enters it around every interpreted kernel, so what the
tests and ``seqtune tune`` measure on the CPU is what a GPU computes. Compiled kernels never
reach the interpreter's builder.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import numpy as np
import torch


def _nearest_even_cast(original):
    """``InterpreterBuilder.cast_impl`` with float32 -> bfloat16 rounded to nearest even."""
    import triton.language as tl
    from triton.runtime.interpreter import TensorHandle

    def cast_impl(builder, src, dst_type):
        if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16:
            values = torch.from_numpy(np.array(src.data, dtype=np.float32))
            bits = values.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
            return TensorHandle(bits, dst_type.scalar)
        return original(builder, src, dst_type)

    cast_impl.rounds_to_nearest_even = True
    return cast_impl


@contextlib.contextmanager
def gpu_rounding() -> Iterator[None]:
    """Within it, the interpreter rounds float32 to bfloat16 to nearest even (re-entrant)."""
    from triton.runtime.interpreter import InterpreterBuilder

    original = InterpreterBuilder.cast_impl
    if getattr(original, "rounds_to_nearest_even", False):
        yield
        return
    InterpreterBuilder.cast_impl = _nearest_even_cast(original)
    try:
        yield
    finally:
        InterpreterBuilder.cast_impl = original
