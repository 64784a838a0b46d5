"""Compile kernels for real GPU targets without a GPU, and read their resource usage.

A config's launches are recorded (``seqtune.launch.capture_launches``) instead of run, then each
recorded launch is specialised exactly as Triton's own launcher would (its binder, on the
target's backend) and compiled with ``triton.compile(..., target=GPUTarget(...))``. For NVIDIA
targets the cuobjdump bundled with Triton reads registers, stack (spills) and shared memory from
the cubin; for AMD targets (gfx*) the amdgcn assembly has them (``seqtune.tuning.amdgcn``).
Results are cached on disk, keyed by the compiled source's hash (kernel source, signature,
constexprs, specialisation), the target, the options and the Triton version.

The kernels must be real ``@triton.jit`` functions here, so this module must run in a process
where ``TRITON_INTERPRET`` was not set when the kernels were imported.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable

from seqtune.launch import Launch, capture_launches
from seqtune.spec import (HIP_KNOBS, INTERPRETER_LIMITS, Config, DeviceLimits, KernelSpec,
                          Problem)
from seqtune.tuning.amdgcn import (CDNA2, CDNA3, CDNA4, RDNA3, AmdgcnUsage, HipArch,
                                   hip_fit_reasons, parse_amdgcn, usage_fields)


@dataclasses.dataclass(frozen=True)
class Target:
    """A GPU architecture and the per-block limits a config must fit."""

    name: str
    capability: int
    shared_memory_per_block: int  # bytes, opt-in maximum
    gpus: str
    max_registers_per_thread: int = 255
    registers_per_sm: int = 65536
    max_threads_per_block: int = 1024
    backend: str = "cuda"  # or "hip": then ``name`` is the gfx architecture
    warp_size: int = 32

    @property
    def limits(self) -> DeviceLimits:
        if self.backend == "hip":
            return DeviceLimits(backend="hip", shared_memory_per_block=self.shared_memory_per_block,
                                arch=self.name, warp_size=self.warp_size)
        return DeviceLimits(backend="cuda", shared_memory_per_block=self.shared_memory_per_block,
                            compute_capability=divmod(self.capability, 10))

    @property
    def hip_arch(self) -> HipArch:
        return HIP_ARCHS[self.name]


def hip_target(name: str, gpus: str, arch: HipArch) -> Target:
    return Target(name, 0, arch.lds_per_cu, gpus, backend="hip", warp_size=arch.warp_size)


HIP_ARCHS: dict[str, HipArch] = {"gfx90a": CDNA2, "gfx942": CDNA3, "gfx950": CDNA4,
                                 "gfx1100": RDNA3}


TARGETS: dict[str, Target] = {
    "sm_80": Target("sm_80", 80, 166912, "A100"),
    "sm_86": Target("sm_86", 86, 101376, "RTX 30xx, A10, A40"),
    "sm_89": Target("sm_89", 89, 101376, "RTX 40xx, L4, L40"),
    "sm_90": Target("sm_90", 90, 232448, "H100, H200"),
    "gfx90a": hip_target("gfx90a", "MI210, MI250, MI250X", CDNA2),
    "gfx942": hip_target("gfx942", "MI300X, MI300A, MI325X", CDNA3),
    "gfx950": hip_target("gfx950", "MI350X, MI355X", CDNA4),
    "gfx1100": hip_target("gfx1100", "Radeon RX 7900, Radeon PRO W7900", RDNA3),
}

# Representative problems keep every categorical field of the preset (dtype, head dims, flags)
# but cap sizes: code generation depends on those fields and on alignment, not on length.
REPRESENTATIVE_SIZE_CAP = 512


def target_named(name: str) -> Target:
    key = name.lower()
    if not key.startswith("gfx"):
        key = key.replace("sm", "sm_").replace("__", "_")
    if key not in TARGETS:
        raise ValueError(f"unknown target {name!r}; known: {', '.join(TARGETS)}")
    return TARGETS[key]


def target_for_capability(major: int, minor: int) -> Target | None:
    return next((t for t in TARGETS.values() if t.capability == major * 10 + minor), None)


@dataclasses.dataclass
class LaunchResources:
    """What one compiled kernel of a config needs per program."""

    kernel: str
    registers: int
    spill_bytes: int  # NVIDIA: stack; AMD: scratch per lane
    shared_bytes: int
    threads: int
    # AMD only (None for NVIDIA): registers are VGPRs, these AGPRs included
    agprs: int | None = None
    sgprs: int | None = None
    vgpr_spills: int | None = None
    sgpr_spills: int | None = None
    occupancy: int | None = None  # waves per SIMD


@dataclasses.dataclass
class CheckResult:
    kernel: str
    target: str
    problem: Problem
    config: Config
    compiled: bool
    error: str | None = None
    launches: list[LaunchResources] = dataclasses.field(default_factory=list)
    reasons: list[str] = dataclasses.field(default_factory=list)
    is_default: bool = False  # the config the kernel runs untuned on this target

    @property
    def spills(self) -> bool:
        return any(r.spill_bytes > 0 or (r.vgpr_spills or 0) > 0 for r in self.launches)

    @property
    def fits(self) -> bool:
        return self.compiled and not self.reasons

    def as_dict(self) -> dict[str, Any]:
        return {"kernel": self.kernel, "target": self.target, "problem": self.problem,
                "config": self.config, "is_default": self.is_default, "compiled": self.compiled, "error": self.error,
                "fits": self.fits, "spills": self.spills, "reasons": self.reasons,
                "launches": [dataclasses.asdict(r) for r in self.launches],
                "registers": max((r.registers for r in self.launches), default=None),
                "spill_bytes": max((r.spill_bytes for r in self.launches), default=None),
                "shared_bytes": max((r.shared_bytes for r in self.launches), default=None),
                "occupancy": min((r.occupancy for r in self.launches
                                  if r.occupancy is not None), default=None)}


def representative_problems(spec: KernelSpec, preset: str = "default") -> list[Problem]:
    """The preset's problems with sizes capped, without duplicates."""
    problems = []
    for problem in spec.presets.get(preset) or spec.presets.get("tiny", ()):
        capped = {k: min(v, REPRESENTATIVE_SIZE_CAP) if k in spec.size_fields else v
                  for k, v in problem.items()}
        if capped not in problems:
            problems.append(capped)
    return problems


def check_config(spec: KernelSpec, problem: Problem, config: Config, target: Target,
                 cache_dir: Path | None = None, inputs: dict | None = None) -> CheckResult:
    """Compile every launch of ``config`` on ``problem`` for ``target``; never raises for a
    config that does not compile (the compiler's last line is the error). ``inputs`` (e.g. the
    tuner's, already on the GPU) save making CPU inputs."""
    result = CheckResult(spec.name, target.name, problem, dict(config), compiled=True)
    reason = spec.check(config, problem, target.limits) if config.keys() & HIP_KNOBS else None
    if reason is not None:  # an AMD knob this target does not take
        result.compiled, result.reasons = False, [reason]
        return result
    # The op runs here on the CPU, which takes no AMD knob: they go to the compiler instead.
    knobs = {k: v for k, v in config.items() if k in HIP_KNOBS}
    try:
        launches = record_launches(spec, problem, {k: v for k, v in config.items()
                                                   if k not in knobs}, inputs)
    except ValueError as exc:  # the op's own config check refused it: it does not fit
        result.compiled = False
        result.reasons = [_last_line(exc)]
        return result
    try:
        for launch in launches:
            result.launches.append(compile_launch(launch, target, cache_dir, knobs))
    except Exception as exc:  # a config that cannot compile is a finding, not a crash
        result.compiled = False
        result.error = _last_line(exc)
        return result
    result.reasons = fit_reasons(result.launches, target)
    return result


def record_launches(spec: KernelSpec, problem: Problem, config: Config,
                    inputs: dict | None = None) -> list[Launch]:
    if inputs is None:
        inputs = spec.make_inputs(problem, "cpu", 0)
    with capture_launches() as launches:
        spec.run(inputs, config)
    if not launches:
        raise RuntimeError(f"{spec.name} launched nothing through seqtune.launch.launch")
    return launches


def fit_reasons(resources: list[LaunchResources], target: Target) -> list[str]:
    if target.backend == "hip":  # judged as compiled (compile_launch keeps the reasons)
        return [reason for r in resources for reason in _hip_reasons(r, target)]
    reasons = []
    for r in resources:
        if r.shared_bytes > target.shared_memory_per_block:
            reasons.append(f"{r.kernel}: shared memory {r.shared_bytes} B > "
                           f"{target.shared_memory_per_block} B on {target.name}")
        if r.threads > target.max_threads_per_block:
            reasons.append(f"{r.kernel}: {r.threads} threads > {target.max_threads_per_block}")
        if r.registers * r.threads > target.registers_per_sm:
            reasons.append(f"{r.kernel}: {r.registers} registers x {r.threads} threads > "
                           f"{target.registers_per_sm} per SM")
    return reasons


def _hip_reasons(r: LaunchResources, target: Target) -> list[str]:
    usage = AmdgcnUsage(r.registers, r.agprs or 0, r.sgprs or 0, r.vgpr_spills or 0,
                        r.sgpr_spills or 0, r.spill_bytes, r.occupancy or 0)
    reasons = hip_fit_reasons(r.kernel, usage, r.shared_bytes, r.threads // target.warp_size,
                              target.hip_arch, target.name)
    if r.threads > target.max_threads_per_block:
        reasons.append(f"{r.kernel}: {r.threads} threads > {target.max_threads_per_block}")
    return reasons


def compile_launch(launch: Launch, target: Target, cache_dir: Path | None,
                   knobs: Config | None = None) -> LaunchResources:
    """Specialise a recorded launch as Triton's launcher would, compile it, read resources.
    ``knobs``: compile options the launch did not pass (AMD's, for a HIP target)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import JITFunction, create_function_from_signature

    kernel = launch.kernel
    if not isinstance(kernel, JITFunction):
        raise RuntimeError("kernels were imported under TRITON_INTERPRET=1; run the check in a "
                           "process without it")
    gpu_target = (GPUTarget("hip", target.name, target.warp_size) if target.backend == "hip"
                  else GPUTarget("cuda", target.capability, 32))
    backend = make_backend(gpu_target)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    kwargs = {"debug": False, **launch.kwargs, **(knobs or {})}
    bound, specialization, options = binder(*launch.args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound,
                                                              specialization, options)
    source = ASTSource(kernel, signature, constexprs, attrs)
    key = hashlib.sha256(json.dumps([source.hash(), target.name, repr(sorted(
        options.__dict__.items())), triton.__version__]).encode()).hexdigest()[:32]
    cache_file = (cache_dir or default_cache_dir()) / f"{key}.json"
    if cache_file.exists():
        return LaunchResources(**json.loads(cache_file.read_text()))
    compiled = triton.compile(source, target=gpu_target, options=options.__dict__)
    resources = _resources(kernel.__name__, compiled, target)
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    cache_file.write_text(json.dumps(dataclasses.asdict(resources)))
    return resources


def default_cache_dir() -> Path:
    """``$SEQTUNE_COMPILE_CACHE`` or the user cache dir's ``compile/``."""
    import platformdirs

    if os.environ.get("SEQTUNE_COMPILE_CACHE"):
        return Path(os.environ["SEQTUNE_COMPILE_CACHE"])
    return Path(platformdirs.user_cache_dir("seqtune")) / "compile"


def _resources(name: str, compiled: Any, target: Target) -> LaunchResources:
    shared, warps = int(compiled.metadata.shared), int(compiled.metadata.num_warps)
    if target.backend == "hip":
        usage = parse_amdgcn(compiled.asm["amdgcn"])
        return LaunchResources(name, usage.vgprs, usage.scratch_bytes, shared,
                               warps * target.warp_size,
                               **usage_fields(usage, shared, warps, target.hip_arch))
    registers, spills = _cubin_usage(compiled.asm["cubin"])
    return LaunchResources(name, registers, spills, shared, warps * 32)


def _cubin_usage(cubin: bytes) -> tuple[int, int]:
    """(registers per thread, stack bytes) of the kernel in a cubin, via Triton's cuobjdump."""
    import triton

    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "kernel.cubin"
        path.write_bytes(cubin)
        text = subprocess.run([str(tool), "--dump-resource-usage", str(path)], check=True,
                              capture_output=True, text=True).stdout
    match = re.search(r"REG:(\d+)\s+STACK:(\d+)", text)
    if match is None:
        raise RuntimeError(f"cannot read cuobjdump's resource usage: {text.strip()[:200]}")
    return int(match.group(1)), int(match.group(2))


def _last_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    last = lines[-1].strip() if lines else ""
    if last in ("", "^") and exc.__cause__ is not None:
        # Triton's CompilationError ends with a caret under the source; its cause says why
        return _last_line(exc.__cause__)
    return f"{type(exc).__name__}: {last}"[:300]


def configs_to_check(spec: KernelSpec, problem: Problem, target: Target, all_configs: bool,
                     config: Config | None = None) -> list[Config]:
    """``config`` if given (unfiltered: to see what the compiler says of it), else the default
    for this problem on this target (``KernelSpec.default_for``), or every config of the space
    that the spec deems valid on the target."""
    if config is not None:
        return [config]
    if not all_configs:
        return [spec.default_for(problem, target.limits)]
    return [c for c in spec.configs(target.limits)
            if spec.check(c, problem, target.limits) is None]


def run_check(specs: list[KernelSpec], targets: list[Target], all_configs: bool,
              preset: str = "default", jobs: int = 1,
              config: Config | None = None) -> list[CheckResult]:
    """Every (kernel, target, representative problem, config), compiled ``jobs`` at a time."""
    work = [(spec, problem, candidate, target)
            for spec in specs for target in targets
            for problem in representative_problems(spec, preset)
            for candidate in configs_to_check(spec, problem, target, all_configs, config)]
    if jobs <= 1:
        return [check_config(*item) for item in work]
    with ProcessPoolExecutor(max_workers=jobs, initializer=_worker_init) as pool:
        return list(pool.map(_check_by_name, [(s.name, p, c, t) for s, p, c, t in work]))


def _worker_init() -> None:
    os.environ.pop("TRITON_INTERPRET", None)


def _check_by_name(item: tuple[str, Problem, Config, Target]) -> CheckResult:
    from seqtune.registry import get_spec

    name, problem, config, target = item
    return check_config(get_spec(name), problem, config, target)


class CompileAhead:
    """Compiles configs for a target in a pool of ``jobs`` processes ahead of their timing,
    then answers the tuner's pruning questions from the results: configs that do not compile,
    do not fit the target, or spill (unless ``keep_spilling``) are never launched.

    It compiles what the search will ask for, not the whole space: the configs the strategy
    announces as likely next (``expect``), at most ``jobs`` at a time, so the pool works while
    the GPU times the previous config; a config asked about before its compile is done is
    compiled at once, and ``verdict`` waits for it. (A stagewise tune of a 500,000-config space
    measures a few hundred; a 5% budget measures 5%.) The workers share Triton's on-disk cache,
    so the launch that follows finds its binary ready.

    ``compile_s``: wall time the tuner spent waiting on the compiler; ``compiled``: how many
    configs were compiled (announced ones the search never asked about included)."""

    def __init__(self, target: Target, jobs: int, keep_spilling: bool = False,
                 make_pool: Callable[[int], Executor] | None = None):
        self.target, self.jobs, self.keep_spilling = target, jobs, keep_spilling
        self.make_pool = make_pool or _spawn_pool
        self.results: dict[tuple, CheckResult] = {}
        self.compile_s = 0.0
        self.compiled = 0
        self._pending: dict[tuple, Future] = {}
        self._upcoming: Iterator[tuple[KernelSpec, Problem, Config]] = iter(())
        self._pool: Executor | None = None

    def expect(self, spec: KernelSpec, problem: Problem, configs: Sequence[Config]) -> None:
        """The configs the search will likely ask about next, likeliest first (replaces the
        previous announcement): compiled in this order as workers free up."""
        self._upcoming = ((spec, problem, config) for config in configs)
        self._top_up()

    def verdict(self, spec: KernelSpec, problem: Problem,
                config: Config) -> tuple[str, str] | None:
        """None to launch ``config``, else (failure kind, reason) to skip it."""
        key = self._key(spec, problem, config)
        if key not in self.results:
            start = time.perf_counter()
            future = self._pending.pop(key, None) or self._submit(spec, problem, config)
            self.results[key] = future.result()
            self.compile_s += time.perf_counter() - start
        self._top_up()
        result = self.results[key]
        if result.reasons:
            return "resources", "; ".join(result.reasons)
        if not result.compiled:
            return "compile", result.error or "does not compile"
        if result.spills and not self.keep_spilling:
            spilled = max(r.spill_bytes for r in result.launches)
            return "resources", f"spills {spilled} B of registers on {self.target.name}"
        return None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    def _submit(self, spec: KernelSpec, problem: Problem, config: Config) -> Future:
        if self._pool is None:
            self._pool = self.make_pool(self.jobs)
        self.compiled += 1
        work = (spec.name, compile_problem(spec, problem, config), config, self.target)
        return self._pool.submit(_check_by_name, work)

    def _top_up(self) -> None:
        """Collects finished compiles, then starts announced ones until every worker is busy."""
        for key in [k for k, future in self._pending.items() if future.done()]:
            self.results[key] = self._pending.pop(key).result()
        while len(self._pending) < self.jobs:
            item = next(self._upcoming, None)
            if item is None:
                return
            key = self._key(*item)
            if key not in self.results and key not in self._pending:
                self._pending[key] = self._submit(*item)

    @staticmethod
    def _key(spec: KernelSpec, problem: Problem, config: Config) -> tuple:
        return spec.name, tuple(sorted(problem.items())), tuple(sorted(config.items()))


def _spawn_pool(jobs: int) -> Executor:
    # spawn: children start clean, without this process's interpreted kernels
    return ProcessPoolExecutor(jobs, mp_context=get_context("spawn"), initializer=_worker_init)


def compile_problem(spec: KernelSpec, problem: Problem, config: Config) -> Problem:
    """A smaller problem that compiles to the same code as ``problem`` for ``config``: sizes
    capped (code depends on dtypes, flags and alignment, not on lengths), with the cap raised
    until the config is valid for it, so no one pays for full-size inputs just to compile."""
    for cap in (REPRESENTATIVE_SIZE_CAP, 4 * REPRESENTATIVE_SIZE_CAP, 16 * REPRESENTATIVE_SIZE_CAP):
        capped = {k: min(v, cap) if k in spec.size_fields else v for k, v in problem.items()}
        if spec._is_valid(config, capped, INTERPRETER_LIMITS):
            return capped
    return problem


def target_of_hip_device(arch: str | None, lds_per_block: int) -> Target | None:
    """The known target of an AMD GPU's architecture with its own LDS size, or None."""
    known = TARGETS.get(arch or "")
    if known is None or known.backend != "hip":
        return None
    return dataclasses.replace(known, shared_memory_per_block=lds_per_block)


def target_of_device(name: str, capability: str, shared_memory_per_block: int) -> Target:
    """The known target of a device's compute capability, or one built from its own facts."""
    major, minor = (int(x) for x in capability.split("."))
    known = target_for_capability(major, minor)
    if known is not None:
        return dataclasses.replace(known, shared_memory_per_block=shared_memory_per_block)
    return Target(f"sm_{major}{minor}", major * 10 + minor, shared_memory_per_block, name)
