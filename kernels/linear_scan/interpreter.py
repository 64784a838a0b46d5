"""A faster Triton-interpreter emulation of ``tl.associative_scan`` for the scan ops.

The interpreter (TRITON_INTERPRET=1) emulates a scan with a user combine function one element at
a time: a [BLOCK_T, BLOCK_D] tile costs BLOCK_T * BLOCK_D Python-level combine calls, which makes
the CPU tuning and verification of the scan kernels take hours instead of seconds. The combine of
a scan is elementwise by definition, so the same left fold can be applied to whole slices: one
combine call per position along the scan axis, with identical arithmetic and results.

``sliced_interpreter_scans()`` installs that fold for the duration of a launch and restores the
original afterwards. It only touches the interpreter; compiled launches never consult it. The
three scan ops (linear_scan, selective_scan, prefix_attention) launch under it.
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

import numpy as np
import torch
import triton.language as tl
from triton.runtime import interpreter


def _sliced_generic_scan(self, inputs):
    """``ScanOps.generic_scan`` with one combine call per position along ``self.axis``."""
    arrays = [arg.handle.data for arg in inputs]
    outputs = [np.empty_like(array) for array in arrays]
    length = arrays[0].shape[self.axis]

    def at(position: int) -> tuple:
        return (slice(None),) * self.axis + (position,)

    def slice_tensors(sources, position):
        return tuple(self.to_tensor(np.ascontiguousarray(source[at(position)]), arg.dtype)
                     for source, arg in zip(sources, inputs))

    def put(output, position, value):
        # The interpreter holds a scalar (a slice of a 1-d scan) as a 1-element array.
        data = value.handle.data if isinstance(value, tl.core.tensor) else value
        output[at(position)] = np.reshape(data, output[at(position)].shape)

    running = slice_tensors(arrays, 0)
    for output, value in zip(outputs, running):
        put(output, 0, value)
    for position in range(1, length):
        combined = self.combine_fn.fn(*running, *slice_tensors(arrays, position))
        running = combined if isinstance(combined, tuple) else (combined,)
        for output, value in zip(outputs, running):
            put(output, position, value)
        running = slice_tensors(outputs, position)
    return [self.to_tensor(output, arg.dtype) for output, arg in zip(outputs, inputs)]


@contextlib.contextmanager
def sliced_interpreter_scans() -> Iterator[None]:
    """Within the block, the interpreter folds scans slice by slice (no-op if it lacks ScanOps)."""
    scan_ops = getattr(interpreter, "ScanOps", None)
    if scan_ops is None or not hasattr(scan_ops, "generic_scan"):
        yield
        return
    original = scan_ops.generic_scan
    scan_ops.generic_scan = _sliced_generic_scan
    try:
        yield
    finally:
        scan_ops.generic_scan = original


def kernels_can_run(device: str | torch.device) -> bool:
    """Whether Triton kernels can execute on ``device`` here: on a GPU, or on the CPU under the
    interpreter. Not in a compile-only process (``seqtune check`` without a GPU), where a spec
    that needs the forward's outputs to build a backward's inputs computes them otherwise."""
    return torch.device(device).type != "cpu" or os.environ.get("TRITON_INTERPRET") == "1"
