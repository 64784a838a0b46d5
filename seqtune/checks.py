"""Argument checks for the ops: one clear ValueError/TypeError naming the argument, raised
before any launch (never a traceback from inside Triton)."""
from __future__ import annotations

import math
import numbers
from typing import Any, Sequence

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


# --- Step ops (decode): state pools and their indices --------------------------------------
# A step op must run inside CUDA-graph capture and torch.compile, so it never reads a tensor's
# values on the host there: value checks run on the device (torch._assert_async, and the
# kernels mask rows outside the pool). On the CPU (the interpreter) a read costs nothing and
# gives a clear one-line error, so there the same checks run on the host.


def host_reads_allowed(tensor: torch.Tensor) -> bool:
    """Whether an op may read ``tensor``'s values on the host (``.tolist()``, ``int(t)``) to
    check them or size a launch. True on the CPU, where a read costs nothing and gives the
    clearest error; False on a GPU (and meta), where a read syncs the stream and aborts a
    CUDA-graph capture, so checks run on the device and grids come from shapes. The one switch
    every op consults (as ``checks.host_reads_allowed``), so tests can take the device path on
    the CPU by patching it."""
    return tensor.device.type == "cpu"


def expect_step_tensors(named: dict[str, object]) -> None:
    """Every non-None entry a real (non-meta) tensor, all on one device."""
    for name, value in named.items():
        if value is None:
            continue
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
        if value.is_meta:
            raise ValueError(f"{name} is a meta tensor; a step op needs real data on the "
                             f"device of its inputs")
    expect_same_device(named)


def expect_state_pool(state: torch.Tensor, inputs: dict[str, torch.Tensor | None]) -> None:
    """A pool the kernel may write in place: no autograd history, no two elements at one
    address (a stride-0 or expanded pool would land several rows' updates in one), and no
    input sharing its memory (a view of a row written in the same call is undefined)."""
    if state.requires_grad:
        raise ValueError("state requires grad; a step op updates it in place outside "
                         "autograd: pass a pool without requires_grad (e.g. state.detach())")
    if _overlaps(state.shape, state.stride()):
        raise ValueError(f"state overlaps itself in memory (shape {tuple(state.shape)}, "
                         f"strides {tuple(state.stride())}): stride-0 or expanded pools would "
                         f"write several rows into one; pass a pool with its own memory")
    if state.numel() == 0:
        return
    pool_memory = state.untyped_storage().data_ptr()
    for name, tensor in inputs.items():
        if (tensor is not None and tensor.numel()
                and tensor.untyped_storage().data_ptr() == pool_memory):
            raise ValueError(f"{name} shares memory with state (the pool written in place): "
                             f"undefined, pass a copy (e.g. {name}.clone())")


def _overlaps(shape: Sequence[int], strides: Sequence[int]) -> bool:
    """True unless, ordered by stride, each dim steps over the whole extent of the smaller
    ones (sufficient for no overlap; the layouts of contiguous, sliced and permuted pools)."""
    dims = sorted((abs(stride), size) for size, stride in zip(shape, strides) if size > 1)
    if any(size == 0 for size in shape):
        return False
    extent = 1
    for stride, size in dims:
        if stride < extent:
            return True
        extent = stride * size
    return False


def expect_state_indices(state_indices: torch.Tensor, rows: int,
                         name: str = "state_indices") -> None:
    """Each index < ``rows`` (a negative one is a padding slot) and no row twice among the
    non-padding ones (two programs would race on it). On the CPU a one-line ValueError; on
    an accelerator a device-side assert, with no host read and nothing sized by values."""
    if state_indices.numel() == 0:
        return
    ordered = torch.sort(state_indices.reshape(-1)).values
    beyond = ordered[-1] >= rows
    repeated = (ordered[1:] == ordered[:-1]) & (ordered[1:] >= 0)
    if host_reads_allowed(state_indices):
        if bool(beyond):
            raise ValueError(f"{name} must be < N={rows} (the state pool's rows; a negative "
                             f"index marks a padding slot), got {int(ordered[-1])}")
        if bool(repeated.any()):
            row = int(ordered[1:][repeated][0])
            raise ValueError(f"{name} has row {row} more than once; each batch element "
                             f"needs its own state row")
        return
    torch._assert_async(~beyond, f"{name} must be < N={rows} (the state pool's rows)")
    torch._assert_async(~repeated.any(), f"{name} has a row more than once")


def window_pair(window: Any, name: str = "window") -> tuple[int, int]:
    """``(left, right)`` of a valid window (two ints >= -1), else a one-line ValueError naming
    the argument ``name``."""
    if (not isinstance(window, (tuple, list)) or len(window) != 2
            or not all(isinstance(edge, numbers.Integral) and not isinstance(edge, bool)
                       and edge >= -1 for edge in window)):
        raise ValueError(f"{name} must be (left, right), two ints >= -1 (-1: unbounded), "
                         f"got {window!r}")
    return int(window[0]), int(window[1])


def softcap_value(softcap: Any, name: str = "softcap") -> float:
    """A valid softcap as a float (finite, >= 0), else a one-line ValueError naming ``name``."""
    if (isinstance(softcap, bool) or not isinstance(softcap, numbers.Real)
            or not 0 <= softcap < math.inf):
        raise ValueError(f"{name} must be a finite real >= 0 (0: off), got {softcap!r}")
    return float(softcap)
