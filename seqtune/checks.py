"""Argument checks for the ops: one clear ValueError/TypeError naming the argument, raised
before any launch (never a traceback from inside Triton)."""
from __future__ import annotations

import math
from typing import Sequence

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# The kernels compute element offsets in 32-bit integers (program ids times strides): a tensor
# with more elements, or whose strides reach further, would silently wrap around.
MAX_INDEX = 2**31 - 1


def expect_tensor(name: str, value: object, ndim: int) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(value.shape)}")
    expect_indexable(name, value.shape, value.stride())
    return value


def expect_indexable(name: str, shape: Sequence[int], strides: Sequence[int] | None = None
                     ) -> None:
    """A one-line ValueError if a tensor of ``shape`` (and ``strides``; contiguous if None)
    has more elements, or a farther element, than 32-bit offsets reach. Checks sizes only, so
    it runs before any allocation and on expanded views or meta tensors alike."""
    elements = math.prod(shape)
    if strides is None:
        farthest = elements - 1
    else:
        farthest = sum((size - 1) * abs(stride) for size, stride in zip(shape, strides)
                       if size > 0)
    if elements > MAX_INDEX or farthest > MAX_INDEX:
        raise ValueError(f"{name} with shape {tuple(shape)} has {elements:,} elements "
                         f"(farthest offset {farthest:,}); seqtune's kernels index with 32-bit "
                         f"offsets, at most {MAX_INDEX:,}: split the batch or the sequence")


def expect_float(name: str, tensor: torch.Tensor,
                 dtypes: Sequence[torch.dtype] = FLOAT_DTYPES) -> None:
    if tensor.dtype not in dtypes:
        allowed = ", ".join(str(d).removeprefix("torch.") for d in dtypes)
        raise TypeError(f"{name} has dtype {str(tensor.dtype).removeprefix('torch.')}, "
                        f"expected one of {allowed}")


def expect_shape(name: str, tensor: torch.Tensor, shape: Sequence[int]) -> None:
    if tuple(tensor.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(tensor.shape)}")


def expect_same_dtype(named: dict[str, torch.Tensor]) -> None:
    dtypes = {name: t.dtype for name, t in named.items()}
    if len(set(dtypes.values())) > 1:
        listed = ", ".join(f"{n}={str(d).removeprefix('torch.')}" for n, d in dtypes.items())
        raise TypeError(f"mixed dtypes: {listed}; pass them all in one dtype")


def expect_same_device(named: dict[str, torch.Tensor | None]) -> None:
    devices = {name: t.device for name, t in named.items() if t is not None}
    if len(set(devices.values())) > 1:
        listed = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"tensors on different devices: {listed}")


def host_reads_allowed(tensor: torch.Tensor) -> bool:
    """Whether an op may read ``tensor``'s values on the host (``.tolist()``, ``int(t)``) to
    check them or size a launch. True on the CPU, where a read costs nothing and gives the
    clearest error; False on a GPU (and meta), where a read syncs the stream and aborts a
    CUDA-graph capture, so checks run on the device and grids come from shapes. The one switch
    every op consults (as ``checks.host_reads_allowed``), so tests can take the device path on
    the CPU by patching it."""
    return tensor.device.type == "cpu"
