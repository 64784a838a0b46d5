"""Any Triton kernel on tuned configs with no tuning at run time.

- ``autotune(configs, key, ...)``: a drop-in for ``triton.autotune`` whose calls take the
  profile's config for (name, bucketed key values, tensor dtypes), else ``default`` (else the
  first config), and never benchmark.
- ``freeze_triton_autotune(strict=False)``: every ``triton.autotune`` kernel of this process
  takes the profile's config when an entry matches, with no benchmark; otherwise Triton's own
  behaviour (``strict=False``) or the first config (``strict=True``).
- Recording (``seqtune record``): every distinct call of both kinds of kernel is appended to a
  workload file as it happens, and a kernel with no entry runs its default or first config, so
  recording never benchmarks (and works in the Triton interpreter).

Each kernel's choice is made once per distinct Triton key (key values and dtypes) and cached on
the kernel, as Triton caches its own: a warm call costs one dictionary lookup more than Triton's.
"""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import triton
from triton.runtime.autotuner import Autotuner as TritonAutotuner

from seqtune.loader import active_profile, log_choice, reread_profile, warn_once
from seqtune.workload.calls import (allowed_configs, cache_key, call_identity, call_problem,
                                    describe_call, flat_configs, kernel_name,
                                    named_args)

ENV_FREEZE = "SEQTUNE_FREEZE_AUTOTUNE"

_state: dict[str, Any] = {"freeze": None, "recorder": None}  # freeze: None, "keep", "strict"
_triton_run: Callable | None = None  # Triton's own Autotuner.run, once patched


class Autotuner(TritonAutotuner):
    """``triton.autotune``'s Autotuner, choosing from the profile instead of benchmarking."""

    def __init__(self, fn: Any, configs: list, key: list[str], name: str | None,
                 buckets: Mapping[str, Any], default: int, reference: Callable | None,
                 restore_value: Sequence[str], reset_to_zero: Sequence[str],
                 prune_configs_by: dict | None):
        super().__init__(fn, fn.arg_names, configs, key, list(reset_to_zero),
                         list(restore_value), prune_configs_by=prune_configs_by)
        self.seqtune_name = name or f"{self.base_fn.__module__}.{self.base_fn.__qualname__}"
        self.seqtune_buckets = dict(buckets)
        self.seqtune_default = default
        self.seqtune_reference = reference

    def run(self, *args: Any, **kwargs: Any) -> Any:
        return _run(self, args, kwargs)


def autotune(configs: list, key: list[str], *, name: str | None = None,
             buckets: Mapping[str, Sequence[int] | None] | None = None,
             default: Any = None, reference: Callable | None = None,
             restore_value: Sequence[str] = (), reset_to_zero: Sequence[str] = (),
             prune_configs_by: dict | None = None) -> Callable[[Any], Autotuner]:
    """Decorate a ``@triton.jit`` function like ``triton.autotune`` (same configs, key,
    ``restore_value``, ``reset_to_zero`` and ``prune_configs_by``; called as
    ``kernel[grid](...)``), tuned offline by ``seqtune record`` and ``seqtune tune --workload``.

    Args:
        name: the kernel's name in profiles (default ``module.qualname`` of the function).
        buckets: key name -> sorted sizes (a value rounds up to the first at or above it) or
            None (matched exactly); other integer keys are bucketed to powers of two and matched
            by the nearest entry in log2.
        default: the config (a ``triton.Config`` of ``configs`` or its index) used where the
            profile has no entry; default the first.
        reference: called with the kernel's arguments by name (no meta-parameters), it writes
            the expected results into the output arguments in place; tuning checks configs
            against it rather than against the default config.
    """
    configs, index = _checked(configs, key, buckets or {}, default, reference)

    def decorator(fn: Any) -> Autotuner:
        if not hasattr(fn, "arg_names"):
            raise TypeError(f"seqtune.autotune decorates a @triton.jit function, got "
                            f"{type(fn).__name__}")
        return Autotuner(fn, configs, list(key), name, buckets or {}, index, reference,
                         restore_value, reset_to_zero, prune_configs_by)
    return decorator


def _checked(configs: Any, key: Any, buckets: Mapping[str, Any], default: Any,
             reference: Any) -> tuple[list, int]:
    """The configs and the default's index; TypeError/ValueError naming a bad argument."""
    if not isinstance(configs, (list, tuple)) or not configs or not all(
            isinstance(c, triton.Config) for c in configs):
        raise TypeError(f"configs must be a non-empty list of triton.Config, got {configs!r}")
    if isinstance(key, str) or not all(isinstance(k, str) for k in key):
        raise TypeError(f"key must be a list of argument names, got {key!r}")
    for field, edges in buckets.items():
        if field not in key:
            raise ValueError(f"buckets names {field!r}, which is not in key {list(key)}")
        if edges is not None and (not edges or list(edges) != sorted(edges) or not all(
                isinstance(e, int) and not isinstance(e, bool) and e > 0 for e in edges)):
            raise ValueError(f"buckets[{field!r}]={edges!r}: expected increasing positive "
                             "integers, or None for exact matching")
    if reference is not None and not callable(reference):
        raise TypeError(f"reference must be callable, got {type(reference).__name__}")
    if default is None:
        return list(configs), 0
    if isinstance(default, int) and not isinstance(default, bool):
        if not 0 <= default < len(configs):
            raise ValueError(f"default={default} is not an index of the {len(configs)} configs")
        return list(configs), default
    if isinstance(default, triton.Config) and default in configs:
        return list(configs), list(configs).index(default)
    raise ValueError(f"default={default!r} is neither one of the configs nor an index of them")


def freeze_triton_autotune(strict: bool = False) -> None:
    """Make every ``triton.autotune`` kernel of this process take its config from the profile
    when an entry matches, with no benchmark. Otherwise ``strict=False`` keeps Triton's own
    behaviour and ``strict=True`` takes the first config (one ``SEQTUNE_LOG`` line says so)."""
    if not isinstance(strict, bool):
        raise TypeError(f"strict must be a bool, got {strict!r}")
    _state["freeze"] = "strict" if strict else "keep"
    _patch()


def freeze_from_env() -> None:
    """``SEQTUNE_FREEZE_AUTOTUNE=1|strict`` (read at ``import seqtune``)."""
    value = os.environ.get(ENV_FREEZE, "").strip().lower()
    if value in ("1", "strict"):
        freeze_triton_autotune(strict=value == "strict")
    elif value not in ("", "0"):
        warn_once(f"seqtune: {ENV_FREEZE}={value!r} ignored: expected 1 or strict")


def start_recording(path: str | os.PathLike) -> None:
    """Append every distinct call of every autotuned kernel of this process to ``path``."""
    _state["recorder"] = Recorder(Path(path))
    _patch()


def _patch() -> None:
    global _triton_run
    if _triton_run is None:
        _triton_run = TritonAutotuner.run
        TritonAutotuner.run = _patched_run


def _patched_run(self: TritonAutotuner, *args: Any, **kwargs: Any) -> Any:
    return _run(self, args, kwargs)


def _run(autotuner: TritonAutotuner, args: tuple, kwargs: dict[str, Any]) -> Any:
    """A call of an autotuned kernel: recorded when recording, launched on the chosen config
    (or left to Triton when nothing is chosen)."""
    recorder = _state["recorder"]
    if recorder is not None:
        recorder.record(autotuner, args, kwargs)
    config = _choice(autotuner, args, kwargs)
    if config is None:
        return _triton_run(autotuner, *args, **kwargs)
    autotuner.best_config = config
    if config.pre_hook is not None:
        config.pre_hook({**dict(zip(autotuner.arg_names, args)), **kwargs,
                         **config.all_kwargs()})
    return autotuner.fn.run(*args, **kwargs, **config.all_kwargs())


def _mode(autotuner: TritonAutotuner) -> str:
    """"keep" (Triton decides without an entry) or "default" (the default or first config)."""
    own = isinstance(autotuner, Autotuner)
    return "keep" if not own and _state["recorder"] is None and _state["freeze"] == "keep" \
        else "default"


def _choice(autotuner: TritonAutotuner, args: tuple, kwargs: dict[str, Any]) -> Any:
    """The config of this call, once per Triton key: the profile's, else by the mode."""
    if len(autotuner.configs) == 1:
        return autotuner.configs[0]
    named = named_args(autotuner, args, kwargs)
    key = (_mode(autotuner), cache_key(autotuner, named))
    choices = autotuner.__dict__.setdefault("_seqtune_choices", {})
    if key not in choices:
        choices[key] = _lookup(autotuner, args, kwargs, named, key[0])
    return choices[key]


def _lookup(autotuner: TritonAutotuner, args: tuple, kwargs: dict[str, Any],
            named: dict[str, Any], mode: str) -> Any:
    name = kernel_name(autotuner)
    problem: dict[str, Any] = {}
    allowed = list(range(len(autotuner.configs)))
    try:
        spec = _spec(autotuner, args, kwargs)
        problem = spec.bucket(call_problem(autotuner, named))
        allowed = allowed_configs(autotuner, args, kwargs)
        tuned = active_profile().tuned_config(name, problem)
        index = spec.kernel_configs.index(tuned) if tuned in spec.kernel_configs else None
    except Exception as exc:  # the launch path never fails because of seqtune
        warn_once(f"seqtune: {name}: no profile lookup ({type(exc).__name__}: {exc})")
        index = None
    if index is not None and index in allowed:
        return autotuner.configs[index]
    if mode == "keep":
        log_choice(f"{name} {problem}: no usable tuned entry; Triton autotunes it")
        return None
    default = getattr(autotuner, "seqtune_default", 0)
    index = default if default in allowed else allowed[0]
    which = "the default" if isinstance(autotuner, Autotuner) else "the first"
    log_choice(f"{name} {problem}: {which} config {_flat(autotuner, index)} (no usable tuned "
               "entry)")
    return autotuner.configs[index]


def _flat(autotuner: TritonAutotuner, index: int) -> Any:
    try:
        return flat_configs(autotuner.configs)[index]
    except ValueError:  # configs of different knobs: Triton's own text
        return str(autotuner.configs[index])


def _spec(autotuner: TritonAutotuner, args: tuple, kwargs: dict[str, Any]) -> Any:
    """The kernel's spec, made from its first call and registered (once per kernel), so the
    loader matches and validates its profile entries like a built-in kernel's."""
    spec = autotuner.__dict__.get("_seqtune_spec")
    if spec is None:
        from seqtune.registry import register
        from seqtune.workload.spec import live_spec

        spec = live_spec(describe_call(autotuner, args, kwargs, values=False))
        if register(spec):
            reread_profile()
        autotuner._seqtune_spec = spec
    return spec


class Recorder:
    """Appends each distinct call (kernel, arguments, options) to a workload file, one JSON line
    per call; a call that cannot be described warns once and is left out."""

    def __init__(self, path: Path):
        self.path = path
        self.seen: set[str] = set()
        self.lock = threading.Lock()

    def record(self, autotuner: TritonAutotuner, args: tuple, kwargs: dict[str, Any]) -> None:
        try:
            record = describe_call(autotuner, args, kwargs)
        except Exception as exc:  # recording must not break the program it watches
            warn_once(f"seqtune record: {kernel_name(autotuner)}: call not recorded "
                      f"({type(exc).__name__}: {exc})")
            return
        identity = call_identity(record)
        with self.lock:
            if identity in self.seen:
                return
            self.seen.add(identity)
            # One write per line with O_APPEND: processes recording into one file interleave
            # whole lines.
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, (json.dumps(record) + "\n").encode())
            finally:
                os.close(fd)
