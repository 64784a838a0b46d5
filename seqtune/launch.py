"""The two helpers every kernel uses at launch time, so the tool can watch launches without
knowing a kernel's internals.

- ``launch(kernel, grid, *args, **kwargs)``: every Triton launch goes through it. Normally it is
  ``kernel[grid](*args, **kwargs)``; under ``capture_launches()`` it records the launch instead
  of running it (``seqtune check`` compiles the recorded launches for GPU targets).
  Interpreted launches round float32 to bfloat16 as GPUs do (``seqtune.interpreter_rounding``).
- ``new_output(shape, dtype, device)``: every output a kernel writes is allocated through it.
  Under ``poisoned_outputs()`` it is NaN-filled, so a config that leaves part of an output
  unwritten fails its correctness check instead of passing on leftover memory.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from typing import Any, Iterator, Mapping, Sequence

import torch

from seqtune.spec import HIP_KNOBS

_poison: contextvars.ContextVar[bool] = contextvars.ContextVar("seqtune_poison", default=False)
_capture: contextvars.ContextVar[list | None] = contextvars.ContextVar("seqtune_capture",
                                                                       default=None)


@dataclasses.dataclass(frozen=True)
class Launch:
    """One recorded kernel launch: the JIT function, its grid and its arguments."""

    kernel: Any
    grid: tuple[int, ...]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


def launch(kernel: Any, grid: Sequence[int], *args: Any, **kwargs: Any) -> None:
    """Launch ``kernel`` on ``grid`` (or record it under ``capture_launches``)."""
    grid = tuple(int(g) for g in grid)
    recorded = _capture.get()
    if recorded is not None:
        recorded.append(Launch(kernel, grid, args, kwargs))
        return
    if not _expect_runnable_here(kernel, args):
        kernel[grid](*args, **kwargs)
        return
    from seqtune.interpreter_rounding import gpu_rounding

    with gpu_rounding():
        kernel[grid](*args, **kwargs)


def _expect_runnable_here(kernel: Any, args: tuple[Any, ...]) -> bool:
    """Whether ``kernel`` runs in the Triton interpreter. CPU tensors run only there; a compiled
    kernel given them would fail deep inside Triton ("0 active drivers"): say so in one line."""
    interpreted = type(kernel).__name__ == "InterpretedFunction"
    if not interpreted and any(isinstance(a, torch.Tensor) and a.device.type == "cpu"
                               for a in args):
        name = getattr(kernel, "__name__", type(kernel).__name__)
        raise RuntimeError(f"{name}: CPU tensors need the Triton interpreter: set "
                           "TRITON_INTERPRET=1 before triton is first imported (or pass CUDA "
                           "tensors)")
    return interpreted


def new_output(shape: Sequence[int], dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    """An output buffer: uninitialised, or NaN-filled under ``poisoned_outputs()``. Sizes
    beyond 32-bit indexing are refused before anything is allocated."""
    from seqtune.checks import expect_indexable

    expect_indexable("output", shape)
    if _poison.get():
        return torch.full(tuple(shape), float("nan"), dtype=dtype, device=device)
    return torch.empty(tuple(shape), dtype=dtype, device=device)


def poisoning() -> bool:
    """Whether outputs are being poisoned now (kernels that write into buffers they were given,
    rather than ones from ``new_output``, poison those themselves)."""
    return _poison.get()


def capturing() -> bool:
    """Whether launches are being recorded instead of run now."""
    return _capture.get() is not None


@contextlib.contextmanager
def poisoned_outputs() -> Iterator[None]:
    token = _poison.set(True)
    try:
        yield
    finally:
        _poison.reset(token)


@contextlib.contextmanager
def capture_launches() -> Iterator[list[Launch]]:
    """Record launches instead of running them; yields the list they are appended to."""
    recorded: list[Launch] = []
    token = _capture.set(recorded)
    try:
        yield recorded
    finally:
        _capture.reset(token)


def backend_options(config: Mapping[str, Any]) -> dict[str, Any]:
    """The AMD compile options (``seqtune.spec.HIP_KNOBS``) ``config`` carries, for the launches
    of its kernels: ``launch(..., num_warps=cfg["num_warps"], **backend_options(cfg))``. Empty
    off AMD, where a config never has them (``KernelSpec.check`` refuses them there)."""
    return {key: config[key] for key in HIP_KNOBS if key in config}


def dot_precision(wanted, fallback, _semantic=None):
    """``wanted`` as a ``tl.dot`` input precision where the target being compiled allows it,
    else ``fallback`` (e.g. "tf32x3" on NVIDIA, "ieee" on AMD, whose backend has none). A
    Triton builtin: it reads the compile options as ``tl.dot`` does, so a build for gfx942 on
    any machine gets AMD's answer; the interpreter (no compile options) gets ``fallback``."""
    import triton.language as tl

    wanted, fallback = (tl.core._unwrap_if_constexpr(value) for value in (wanted, fallback))
    if _semantic is None:
        return tl.constexpr(fallback)
    allowed = _semantic.builder.options.allowed_dot_input_precisions
    return tl.constexpr(wanted if wanted in allowed else fallback)


dot_precision.__triton_builtin__ = True
