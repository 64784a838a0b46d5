"""A Triton autotuned kernel and one call of it, as seqtune sees them.

- The kernel: its name (``seqtune.autotune``'s ``name``, else ``module.qualname`` of the
  function), its configs as flat dicts (``{**kwargs, num_warps, num_stages}``, plus
  ``num_ctas``/``maxnreg`` when a config sets them) and a digest of its source and configs
  (the profile's ``source_hash``: entries of older code are flagged stale).
- A call's problem: the key arguments' values and every tensor argument's dtype (what
  ``triton.autotune`` keys its cache on), plus ``dtype``, the lowest float precision among the
  tensors (it picks the tolerance). Integer key values are sizes, bucketed and matched by nearest
  log2, unless ``buckets`` says otherwise.
- A call's record (a JSON line of ``seqtune record``): the problem, the configs, the grid of
  each config, the configs ``prune_configs_by`` keeps, and every argument: tensors by shape,
  dtype and strides (integer tensors of up to ``SMALL_INT_TENSOR`` elements by value too),
  scalars by value. ``rebuild_args`` makes arguments from it: random floats, recorded integers.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import math
from typing import Any, Mapping

import torch

SMALL_INT_TENSOR = 1 << 16
FLOAT_PRECISION = ("float32", "bfloat16", "float16")  # highest first (by mantissa bits)
LAUNCH_KWARGS = ("grid", "warmup")


def autotuner_of(kernel: Any) -> Any | None:
    """The ``triton.runtime.autotuner.Autotuner`` in a decorator chain (heuristics, autotune,
    jit), or None."""
    from triton.runtime.autotuner import Autotuner

    seen = 0
    while kernel is not None and seen < 16:
        if isinstance(kernel, Autotuner):
            return kernel
        kernel, seen = getattr(kernel, "fn", None), seen + 1
    return None


def kernel_name(autotuner: Any) -> str:
    base = autotuner.base_fn
    return getattr(autotuner, "seqtune_name", None) or f"{base.__module__}.{base.__qualname__}"


def flat_configs(configs: list) -> list[dict[str, Any]]:
    """Each ``triton.Config`` as a flat dict with the same knobs in all; ValueError when the
    configs set different meta-parameters (a profile entry must name every knob)."""
    names = [sorted(c.kwargs) for c in configs]
    if any(n != names[0] for n in names):
        raise ValueError(f"configs set different meta-parameters ({names[0]} vs "
                         f"{next(n for n in names if n != names[0])})")
    with_ctas = any(c.num_ctas != 1 for c in configs)
    with_maxnreg = any(c.maxnreg is not None for c in configs)
    flat = []
    for c in configs:
        item = {**{k: _plain(v) for k, v in c.kwargs.items()}, "num_warps": c.num_warps,
                "num_stages": c.num_stages}
        if with_ctas:
            item["num_ctas"] = c.num_ctas
        if with_maxnreg:
            item["maxnreg"] = c.maxnreg or 0
        flat.append(item)
    return flat


def kernel_digest(autotuner: Any) -> str:
    """16 hex digits of the kernel function's source and its configs."""
    digest = hashlib.sha256()
    try:
        digest.update(inspect.getsource(autotuner.base_fn).encode())
    except (OSError, TypeError):  # no source (a notebook cell): the name stands in for it
        digest.update(kernel_name(autotuner).encode())
    digest.update(json.dumps([str(c) for c in autotuner.configs]).encode())
    return digest.hexdigest()[:16]


def named_args(autotuner: Any, args: tuple, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The kernel's arguments by name, positional and keyword (as Triton keys them)."""
    named = dict(zip(autotuner.arg_names, args))
    named.update((k, v) for k, v in kwargs.items() if k in autotuner.arg_names)
    return named


def cache_key(autotuner: Any, named: Mapping[str, Any]) -> tuple:
    """Triton's own autotune key: the key values, then every tensor argument's dtype."""
    key = [named[k] for k in autotuner.keys if k in named]
    key += [str(v.dtype) for v in named.values() if hasattr(v, "dtype")]
    return tuple(key)


def call_problem(autotuner: Any, named: Mapping[str, Any]) -> dict[str, Any]:
    """The problem a call poses (see the module docstring), unbucketed."""
    problem = {k: _plain(named[k]) for k in autotuner.keys if k in named}
    floats = []
    for name, value in named.items():
        if isinstance(value, torch.Tensor):
            dtype = str(value.dtype).removeprefix("torch.")
            problem[f"{name}.dtype"] = dtype
            floats += [dtype] if dtype in FLOAT_PRECISION else []
    if floats:
        problem["dtype"] = max(floats, key=FLOAT_PRECISION.index)
    return problem


def size_fields(autotuner: Any, problem: Mapping[str, Any],
                buckets: Mapping[str, Any]) -> tuple[str, ...]:
    """Key fields matched by size: integer values, unless ``buckets`` maps them to None."""
    return tuple(k for k in autotuner.keys if k in problem and _is_int(problem[k])
                 and not (k in buckets and buckets[k] is None))


def describe_call(autotuner: Any, args: tuple, kwargs: Mapping[str, Any],
                  values: bool = True) -> dict[str, Any]:
    """The JSON-ready record of one call (see the module docstring); without integer tensor
    values if not ``values`` (the runtime needs only the call's fields, not its data)."""
    named = named_args(autotuner, args, kwargs)
    options = {k: _plain(v) for k, v in kwargs.items()
               if k not in autotuner.arg_names and k not in LAUNCH_KWARGS}
    base = autotuner.base_fn
    configs = autotuner.configs
    buckets = dict(getattr(autotuner, "seqtune_buckets", {}) or {})
    problem = call_problem(autotuner, named)
    return {
        "kernel": kernel_name(autotuner), "module": base.__module__,
        "qualname": base.__qualname__, "file": inspect.getsourcefile(base),
        "digest": kernel_digest(autotuner), "key": list(autotuner.keys),
        "buckets": {k: None if v is None else list(v) for k, v in buckets.items()},
        "size_fields": list(size_fields(autotuner, problem, buckets)),
        "configs": flat_configs(configs),
        "default": getattr(autotuner, "seqtune_default", 0),
        "problem": problem,
        "args": {name: encode_arg(value, values) for name, value in named.items()},
        "options": options,
        "grids": [_grid(kwargs.get("grid"), {**named, **kwargs, **c.all_kwargs()})
                  for c in configs],
        "allowed": allowed_configs(autotuner, args, kwargs),
        "restore_value": list(autotuner.restore_value),
        "reset_to_zero": list(autotuner.reset_to_zero),
    }


def call_identity(record: Mapping[str, Any]) -> str:
    """What makes two recorded calls the same call (everything but the grids)."""
    return json.dumps([record["kernel"], record["args"], record["options"]], sort_keys=True,
                      default=str)


def encode_arg(value: Any, values: bool = True) -> dict[str, Any]:
    if isinstance(value, torch.Tensor):
        item = {"shape": list(value.shape), "stride": list(value.stride()),
                "offset": value.storage_offset(),
                "dtype": str(value.dtype).removeprefix("torch."), "device": value.device.type}
        if values and not value.is_floating_point() and value.numel() <= SMALL_INT_TENSOR:
            item["values"] = value.detach().reshape(-1).cpu().tolist()
        return {"tensor": item}
    if value is None or isinstance(value, (bool, int, str)):
        return {"value": value}
    if isinstance(value, float):
        return {"value": value if math.isfinite(value) else repr(value), "float": True}
    return {"unsupported": f"{type(value).__name__} {str(value)[:80]}"}


def rebuild_args(record: Mapping[str, Any], device: str, seed: int) -> dict[str, Any]:
    """The call's arguments on ``device``: random floats in the recorded shapes, dtypes and
    strides, recorded integer tensors verbatim (others zero), scalars as recorded; ValueError
    for an argument that was not recordable."""
    generator = torch.Generator().manual_seed(seed)
    rebuilt = {}
    for name, item in record["args"].items():
        if "tensor" in item:
            rebuilt[name] = _tensor(item["tensor"], device, generator)
        elif "value" in item:
            value = item["value"]
            rebuilt[name] = float(value) if item.get("float") else value
        else:
            raise ValueError(f"{record['kernel']}: argument {name!r} ({item['unsupported']}) "
                             "cannot be rebuilt from a record")
    return rebuilt


def _tensor(item: Mapping[str, Any], device: str, generator: torch.Generator) -> torch.Tensor:
    shape, stride = item["shape"], item["stride"]
    dtype = getattr(torch, item["dtype"])
    extent = item["offset"] + 1 + sum((n - 1) * s for n, s in zip(shape, stride) if n > 0)
    if any(n == 0 for n in shape):
        extent = item["offset"]
    if torch.empty((), dtype=dtype).is_floating_point():
        storage = torch.randn(extent, generator=generator).to(device=device, dtype=dtype)
    else:
        storage = torch.zeros(extent, dtype=dtype, device=device)
    # Viewed in place on the device: the recorded strides (and the stride arguments a kernel
    # is given beside its pointers) hold; copying a strided view would make it contiguous.
    view = storage.as_strided(shape, stride, item["offset"])
    if "values" in item:
        view.copy_(torch.tensor(item["values"], dtype=dtype).reshape(shape))
    return view


def _grid(grid: Any, meta: dict[str, Any]) -> list[int] | None:
    """The launch grid of a config (a META grid called as Triton would), None if it fails."""
    try:
        value = grid(meta) if callable(grid) else grid
        return [int(g) for g in (value if isinstance(value, (tuple, list)) else (value,))]
    except Exception:  # a grid this config cannot form: the config is not a candidate
        return None


def allowed_configs(autotuner: Any, args: tuple, kwargs: Mapping[str, Any]) -> list[int]:
    """Indices of the configs ``prune_configs_by`` keeps for this call (all without one),
    asked exactly as Triton asks it."""
    configs = autotuner.configs
    if not (autotuner.early_config_prune or autotuner.perf_model) or len(configs) == 1:
        return list(range(len(configs)))
    saved = getattr(autotuner, "nargs", None)
    autotuner.nargs = dict(zip(autotuner.arg_names, args))
    try:
        kept = autotuner.prune_configs(dict(kwargs))
    finally:
        autotuner.nargs = saved
    return [i for i, c in enumerate(configs) if any(c is k or c == k for k in kept)]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _plain(value: Any) -> Any:
    """A profile-safe value: str, bool, int or finite float; anything else by its text."""
    if isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    if isinstance(value, torch.dtype):
        return str(value).removeprefix("torch.")
    return str(value)
