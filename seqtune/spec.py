"""The kernel-spec interface: all that the tool (search, timing, profiles, CLI) knows of a kernel.

Each kernel folder under ``kernels/`` (installed as ``seqtune.kernels``) defines a module
``spec.py`` with ``SPECS: tuple[KernelSpec, ...]``. The tool never imports anything else from a
kernel folder: it enumerates ``space``, filters with ``check``, builds inputs with
``make_inputs``, runs ``run`` and compares with ``reference``.

Problems are flat dicts of plain values (the YAML ``problem`` mapping): integer *size fields*
(bucketed to powers of two and matched by nearest log2), and categorical fields (bools, strings,
the dtype as a name such as ``"bfloat16"``) that must match exactly.

Configs are flat dicts. A multi-kernel op namespaces per-stage knobs as ``"<stage>.<param>"``
(e.g. ``"h.num_warps"``); un-namespaced knobs (e.g. the chunk size ``BT``) are shared by all stages.
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import reprlib
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

Config = dict[str, Any]
Problem = dict[str, Any]
Inputs = dict[str, Any]
Outputs = tuple[torch.Tensor, ...]

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


def dtype_name(dtype: torch.dtype | str) -> str:
    """``torch.bfloat16``, ``"torch.bfloat16"``, ``"bf16"`` -> ``"bfloat16"``."""
    aliases = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "half": "float16",
               "float": "float32"}
    name = str(dtype).removeprefix("torch.")
    name = aliases.get(name, name)
    if name not in DTYPES:
        raise ValueError(f"unsupported dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    return name


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """Elementwise bound ``|out - ref| <= atol + rtol * |ref|`` against a float64 reference."""

    atol: float
    rtol: float


@dataclasses.dataclass(frozen=True)
class DeviceLimits:
    """What a config must fit on the device it runs on."""

    backend: str  # "cuda", "hip" (AMD, ROCm) or "interpreter"
    shared_memory_per_block: int  # bytes, the opt-in maximum of one program (LDS on AMD)
    sm_count: int = 1  # CUs on AMD
    compute_capability: tuple[int, int] | None = None
    max_threads_per_block: int = 1024
    registers_per_sm: int = 65536
    arch: str | None = None  # AMD only: the gfx target, e.g. "gfx942"
    warp_size: int = 32  # threads of one of num_warps: 64 on AMD Instinct (wave64)


# Compile options of Triton's AMD (HIP) backend that change a kernel's code, searched on AMD GPUs
# only (a CUDA or interpreter config never has them): waves_per_eu asks the register allocator to
# leave room for that many waves per SIMD (0: the compiler's choice); matrix_instr_nonkdim picks
# 16x16 or 32x32 MFMA tiles for tl.dot; kpack=2 loads two k-elements per MFMA operand (Triton
# ignores it from gfx950 on, so it is not searched there). RDNA GPUs (wave32) have WMMA, not
# MFMA: only waves_per_eu applies to them. Un-namespaced: one value for all stages of an op.
HIP_KNOBS: dict[str, tuple] = {"waves_per_eu": (0, 1, 2, 4), "matrix_instr_nonkdim": (16, 32),
                               "kpack": (1, 2)}
HIP_KNOB_DEFAULTS: dict[str, int] = {"waves_per_eu": 0, "matrix_instr_nonkdim": 16, "kpack": 1}


def backend_knobs(limits: DeviceLimits) -> dict[str, tuple]:
    """The backend's own knobs on a device with ``limits``: AMD's compile options on HIP (per
    architecture), none on CUDA or the interpreter."""
    if limits.backend != "hip":
        return {}
    if limits.warp_size == 32:  # RDNA
        return {"waves_per_eu": HIP_KNOBS["waves_per_eu"]}
    if limits.arch == "gfx950":  # CDNA4: Triton overrides kpack to 1 there
        return {k: v for k, v in HIP_KNOBS.items() if k != "kpack"}
    return dict(HIP_KNOBS)


def backend_knob_reason(config: Config, limits: DeviceLimits) -> str | None:
    """Why ``config`` cannot carry its backend knobs on a device with ``limits``, or None."""
    allowed = backend_knobs(limits)
    for key in (knob for knob in HIP_KNOBS if knob in config):
        if key not in allowed:
            where = f"{limits.backend} {limits.arch or ''}".strip()
            return f"{key} is an AMD (HIP) compile option that {where} does not take"
        if not in_space(config[key], allowed[key]):
            return f"{key}={config[key]!r} is not one of {allowed[key]} on {limits.arch}"
    return None


def _check_with_backend_knobs(check: Callable, config: Config, problem: Problem,
                              limits: DeviceLimits) -> str | None:
    return backend_knob_reason(config, limits) or check(config, problem, limits)


# The Triton interpreter has no shared memory; hold configs to the largest real GPU's limit so that
# a space pruned on the CPU looks like one pruned on an H100.
INTERPRETER_LIMITS = DeviceLimits(backend="interpreter", shared_memory_per_block=232448)


@dataclasses.dataclass(frozen=True)
class KernelSpec:
    """A tunable kernel (or multi-kernel op) as the tool sees it.

    Attributes:
        name: the kernel's name on the CLI, in profiles and in ``best_config``.
        family: a group for listings ("attention", "linear-recurrence", "delta-rule", "scan").
        description: one line for ``seqtune list``.
        space: parameter -> allowed values (per-stage knobs as ``"stage.param"``).
        default_config: the config used when nothing is tuned; must be in ``space``.
        size_fields: problem fields bucketed to powers of two and matched by nearest log2.
        presets: preset name ("tiny", "quick", "default", "full") -> problems to tune.
        verify_cases: odd-shaped problems that ``seqtune verify`` checks every config against.
        check: ``(config, problem, limits) -> None`` if the config can run the problem on a
            device with those limits, else a one-line reason (tl.dot dims, tile vs padded
            problem, estimated shared memory).
        make_inputs: ``(problem, device, seed) -> inputs`` (keyword arguments for ``run``).
        run: ``(inputs, config) -> outputs`` launches the kernel(s).
        reference: ``(inputs) -> outputs`` in float64, computed independently of the kernel.
        tolerances: dtype name -> Tolerance for the outputs against the reference.
        flops: ``problem -> float`` useful floating-point operations, for TFLOP/s.
        bytes_moved: ``problem -> float`` minimum HBM traffic, for GB/s.
        problem_defaults: values of categorical fields a caller may leave out of a problem
            (e.g. ``{"score": "softmax"}``), filled in before matching.
        optional_fields: fields present only in some problems, with no constant default (e.g.
            attention's ``Dv``, present only when it differs from ``D``): a problem with one
            matches only entries with it.
        baselines: name -> ``(inputs) -> outputs`` other implementations of the same op to
            compare speed with in ``seqtune bench`` (plain PyTorch, SDPA, flash-linear-attention
            when installed); a baseline that cannot run raises and is reported as unavailable.
        stages: the namespaces of per-stage knobs, in launch order.
        stagewise: the stages are nearly independent once the shared knobs are fixed, so the
            tuner may search one stage at a time instead of the full product.
        source_dir: the kernel's folder (set by the registry); its sources are hashed to flag
            profile entries tuned with older code.
    """

    name: str
    family: str
    description: str
    space: Mapping[str, tuple]
    default_config: Mapping[str, Any]
    size_fields: tuple[str, ...]
    presets: Mapping[str, Sequence[Problem]]
    verify_cases: Sequence[Problem]
    check: Callable[[Config, Problem, DeviceLimits], str | None]
    make_inputs: Callable[[Problem, str, int], Inputs]
    run: Callable[[Inputs, Config], Outputs]
    reference: Callable[[Inputs], Outputs]
    tolerances: Mapping[str, Tolerance]
    flops: Callable[[Problem], float]
    bytes_moved: Callable[[Problem], float]
    problem_defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    optional_fields: tuple[str, ...] = ()
    baselines: Mapping[str, Callable[[Inputs], Outputs]] = dataclasses.field(default_factory=dict)
    stages: tuple[str, ...] = ()
    stagewise: bool = False
    source_dir: Path | None = None

    def __post_init__(self) -> None:
        for key, value in self.default_config.items():
            if not in_space(value, self.space.get(key, ())):
                raise ValueError(f"{self.name}: default {key}={value!r} is not in its space")
        if set(self.default_config) != set(self.space):
            raise ValueError(f"{self.name}: default config must set every parameter of the space")
        if not (isinstance(self.check, functools.partial)
                and self.check.func is _check_with_backend_knobs):
            # Every judge of a config (loader, tuner, check, ``config=``) goes through ``check``:
            # wrapped here, an AMD knob is refused off AMD without each kernel knowing of it.
            object.__setattr__(self, "check", functools.partial(_check_with_backend_knobs,
                                                                self.check))

    @property
    def space_size(self) -> int:
        return math.prod(len(v) for v in self.space.values())

    def configs(self, limits: DeviceLimits | None = None) -> list[Config]:
        """Every point of the space (on a device with ``limits``: with its backend's knobs),
        default first, then in a fixed order."""
        space = self.space_for(limits) if limits is not None else dict(self.space)
        keys = list(space)
        points = [dict(zip(keys, values)) for values in itertools.product(*space.values())]
        default = {**self.default_config, **_knob_defaults(space)}
        return [default] + [p for p in points if p != default]

    def space_for(self, limits: DeviceLimits) -> dict[str, tuple]:
        """The space searched on a device with ``limits``: the kernel's knobs, then its
        backend's (``backend_knobs``: AMD's compile options on HIP, none elsewhere)."""
        return {**self.space, **backend_knobs(limits)}

    def stage_of(self, param: str) -> str | None:
        """The stage a parameter belongs to, or None for a knob shared by all stages."""
        prefix, dot, _ = param.partition(".")
        return prefix if dot and prefix in self.stages else None

    def bucket(self, problem: Problem) -> Problem:
        """The profile key of a problem: size fields rounded up to powers of two, dtype by name."""
        key = {**self.problem_defaults, **problem}
        for field in self.size_fields:
            key[field] = next_power_of_2(int(key[field]))
        if "dtype" in key:
            key["dtype"] = dtype_name(key["dtype"])
        return key

    def default_for(self, problem: Problem, limits: DeviceLimits) -> Config:
        """What runs without tuning: the default config if it is valid for ``problem`` on a
        device with ``limits``, else a valid one close to it (first one knob changed, nearest
        values first; then two knobs; then knobs moved to their smallest values one after
        another, warps last, since what makes a config invalid is nearly always too large a
        tile or too many stages). A few hundred checks at most (milliseconds), so a new shape
        never stalls the launch path. On AMD it carries the backend's knobs at their defaults."""
        return {**self._default_for(problem, limits), **_knob_defaults(backend_knobs(limits))}

    def _default_for(self, problem: Problem, limits: DeviceLimits) -> Config:
        default = dict(self.default_config)
        if self._is_valid(default, problem, limits):
            return default
        nearest = {param: sorted((v for v in values if v != default[param]),
                                 key=lambda v, d=default[param]: value_distance(v, d))
                   for param, values in self.space.items()}
        for param, values in nearest.items():
            for value in values:
                trial = {**default, param: value}
                if self._is_valid(trial, problem, limits):
                    return trial
        # Two knobs at once (each to one of its two nearest values): a stage's tile and a
        # recomputed stage's tile may both need to shrink, as at the largest head dims.
        for first, second in itertools.combinations(nearest, 2):
            for a, b in itertools.product(nearest[first][:2], nearest[second][:2]):
                trial = {**default, first: a, second: b}
                if self._is_valid(trial, problem, limits):
                    return trial
        # Then knobs to their smallest values one after another: first leaving the warps (fewer
        # warps only give each thread more of a tile's registers), then all of them.
        for keep_warps in (True, False):
            shrunk = dict(default)
            for param, values in self.space.items():
                if keep_warps and param.endswith("num_warps"):
                    continue
                shrunk[param] = min(values, key=smallness)
                if self._is_valid(shrunk, problem, limits):
                    return shrunk
        return default

    def _is_valid(self, config: Config, problem: Problem, limits: DeviceLimits) -> bool:
        try:
            return self.check(config, problem, limits) is None
        except Exception:  # a check that cannot judge this problem does not vouch for it
            return False

    def validate_config(self, config: Mapping[str, Any]) -> Config:
        """A full config from a partial one (missing knobs take the default), or a one-line
        ValueError naming the bad key and value. Values must equal one of the space's values in
        type as well (``64.0`` and ``True`` are not ``64`` and ``1``): Triton needs the exact
        constexpr, and the loader, verify, merge and ``check --config`` all judge by this."""
        if not isinstance(config, Mapping):
            raise ValueError(f"{self.name}: config must be a mapping of knob names to values, "
                             f"got {reprlib.repr(config)} ({type(config).__name__})")
        # AMD's knobs are known to every spec; whether this device takes them is ``check``'s.
        space = {**HIP_KNOBS, **self.space}
        for key in config:
            if not isinstance(key, str) or key not in space:
                raise ValueError(f"{self.name}: unknown config key {reprlib.repr(key)}; "
                                 f"expected {sorted(self.space)}")
        full = {**self.default_config, **config}
        for key, value in full.items():
            if not in_space(value, space[key]):
                raise ValueError(f"{self.name}: {key}={reprlib.repr(value)} "
                                 f"({type(value).__name__}) is not one of {space[key]}")
        return full


def _knob_defaults(space: Mapping[str, tuple]) -> Config:
    return {k: v for k, v in HIP_KNOB_DEFAULTS.items() if k in space}


def in_space(value: Any, allowed: Sequence[Any]) -> bool:
    """Whether ``value`` is one of ``allowed`` with the same type (bool is not int, 64.0 is not
    64: Python's ``in`` would say both are)."""
    return any(type(value) is type(option) and value == option for option in allowed)


def value_distance(value: Any, default: Any) -> float:
    """How far a knob value is from another: the log2 ratio of sizes, else 0 or infinity."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 < default:
        return abs(math.log2(value) - math.log2(default))
    return 0.0 if value == default else math.inf


def smallness(value: Any) -> tuple:
    """Sort key putting numbers first, smallest first."""
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    return (0, value) if numeric else (1, str(value))


def next_power_of_2(n: int) -> int:
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def shared_memory_fits(estimate_bytes: int, limits: DeviceLimits) -> str | None:
    """The usual last clause of a ``check``: a reason when the estimate exceeds the device."""
    if estimate_bytes > limits.shared_memory_per_block:
        return (f"needs ~{estimate_bytes} B of shared memory, device allows "
                f"{limits.shared_memory_per_block} B")
    return None


def format_problem(problem: dict[str, Any]) -> str:
    """``B=4 T=4096 causal no-varlen dtype=bfloat16``: a problem on one line."""
    parts = []
    for key, value in problem.items():
        if isinstance(value, bool):
            parts.append(key if value else f"no-{key}")
        else:
            parts.append(f"{key}={value}")
    return " ".join(parts)


def format_config(config: dict[str, Any]) -> str:
    """``BLOCK_M=64 num_warps=4``: a config on one line."""
    return " ".join(f"{k}={v}" for k, v in config.items())
