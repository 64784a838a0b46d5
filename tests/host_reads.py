"""``forbid_host_reads()``: while it is active, any read of a tensor's values on the host from
seqtune's own code (``seqtune/`` and ``kernels/``) raises ``HostRead``.

A host read (``.item()``, ``.tolist()``, ``int(t)``, ``bool(t)``, ``.cpu()``, ``nonzero``, ...)
syncs a GPU stream and aborts a CUDA-graph capture. On the CPU nothing syncs, so the reads are
caught where they are made instead: the tensor methods and torch functions that read values are
wrapped, and a wrapper raises only when its caller's frame is seqtune's source (torch's and
Triton's interpreter's own reads, and the test's, pass). Shapes are Python ints, never tensors:
``x.shape[0]``, ``len(x)`` or ``x.numel()`` never trip it. ``Tensor.to("cpu")`` is not caught:
on CPU tensors it cannot be told from a move to the tensor's own device.

The ops keep a host-side check on the CPU (``seqtune.checks.host_reads_allowed``); the context
switches that predicate off, so the ops take their device (GPU) path on CPU tensors.
"""
from __future__ import annotations

import contextlib
import functools
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

import seqtune
import seqtune.checks
import seqtune.kernels

SEQTUNE_SOURCES = tuple(str(Path(module.__file__).parent) + "/"
                        for module in (seqtune, seqtune.kernels))
# Tensor methods whose result is the tensor's values on the host, or whose output size depends
# on them (so the host must wait for the values before allocating).
TENSOR_READS = ("item", "tolist", "numpy", "cpu", "__int__", "__index__", "__float__",
                "__complex__", "__bool__", "__format__", "__repr__", "__str__", "__array__",
                "__contains__", "nonzero", "argwhere", "unique",
                "unique_consecutive", "masked_select", "equal", "allclose", "is_nonzero",
                "bincount", "repeat_interleave", "__getitem__", "__setitem__")
TORCH_READS = ("nonzero", "argwhere", "unique", "unique_consecutive", "masked_select", "equal",
               "allclose", "is_nonzero", "bincount", "repeat_interleave")


class HostRead(AssertionError):
    """seqtune read a tensor's values on the host while an op ran."""


def _caller_in_seqtune() -> str | None:
    """``file:line`` of the guarded call's caller when it is seqtune's source, else None."""
    frame = sys._getframe(2)
    filename = frame.f_code.co_filename
    if filename.startswith(SEQTUNE_SOURCES):
        return f"{filename}:{frame.f_lineno}"
    return None


def _reads_values(name: str, args: tuple, kwargs: dict) -> bool:
    """Whether this call reads values: indexing only by a boolean mask (its size depends on the
    mask: a nonzero inside), repeat_interleave only with tensor repeats and no ``output_size``
    (with it, the output size is known without a read)."""
    if name in ("__getitem__", "__setitem__"):
        parts = args[1] if isinstance(args[1], tuple) else (args[1],)
        return any(isinstance(p, torch.Tensor) and p.dtype == torch.bool for p in parts)
    if name != "repeat_interleave":
        return True
    repeats = args[1] if len(args) > 1 else kwargs.get("repeats")
    if repeats is None and len(args) == 1:
        repeats = args[0]  # torch.repeat_interleave(repeats): the repeats are the input
    return isinstance(repeats, torch.Tensor) and kwargs.get("output_size") is None


def _guard(name: str, original: Callable) -> Callable:
    @functools.wraps(original)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        where = _caller_in_seqtune()
        if where is not None and _reads_values(name, args, kwargs):
            raise HostRead(f"{name} reads a tensor's values on the host at {where}")
        return original(*args, **kwargs)
    return guarded


@contextlib.contextmanager
def forbid_host_reads(device_path: bool = True) -> Iterator[None]:
    """Raise HostRead on any host read from seqtune's code inside the block; with
    ``device_path`` the ops also take their GPU path (no host-side checks) on CPU tensors."""
    saved: list[tuple[Any, str, Any, bool]] = []

    def patch(owner: Any, name: str, value: Any) -> None:
        saved.append((owner, name, getattr(owner, name), name in vars(owner)))
        setattr(owner, name, value)

    try:
        for name in TENSOR_READS:
            patch(torch.Tensor, name, _guard(name, getattr(torch.Tensor, name)))
        for name in TORCH_READS:
            patch(torch, name, _guard(name, getattr(torch, name)))
        if device_path:
            patch(seqtune.checks, "host_reads_allowed", lambda tensor: False)
        yield
    finally:
        for owner, name, value, own in reversed(saved):
            if own:
                setattr(owner, name, value)
            else:
                delattr(owner, name)
