"""``seqtune bench``: the tuned config, the default config and every baseline of each kernel,
timed on the same inputs across sequence lengths.

For each kernel and each problem of a preset (with its length fields set to each of
``--lengths`` when given), three kinds of implementation run on one set of inputs:

- ``tuned``: the config the runtime loader picks from the profile of this device (the profile
  dir's ``<device-key>.yaml``, else the shipped one); it is the default where no tuned entry
  applies, and is then not timed twice;
- ``default``: ``spec.default_for(problem, limits)``, what runs without tuning;
- each of ``spec.baselines`` (plain PyTorch, SDPA, flash-linear-attention when installed). A
  baseline that raises (not installed, unsupported dtype, out of memory) is reported as
  unavailable with its one-line reason; it never stops the bench.

Length fields: the problem's size fields named ``T``, ``S`` or ``L`` (sequence length, key or
cache length, Mamba's ``L``). ``--lengths`` sets every one of them, so attention runs
self-attention prefill with T = S = length, decoding a cache of that length, and the recurrent
and scan kernels sequences of that length; the other fields keep the preset's values.

Times are ``triton.testing.do_bench`` medians on a GPU and wall-clock medians in the Triton
interpreter on the CPU, labelled as such everywhere (``timer``, ``timing_note``, table captions).
TFLOP/s and GB/s count the op's useful work (``spec.flops``, ``spec.bytes_moved``) for every
implementation alike; % of peak is the roofline share of ``device.KNOWN_PEAKS`` (dense bf16/fp16
tensor-core FLOP/s, HBM bandwidth). ``vs_baselines[name]`` is that baseline's time over this
implementation's: above 1, this implementation is faster.

JSON (``--json``, schema ``seqtune-bench/1``) has sorted keys, no timestamps, and lists in a
fixed order (kernels as given or by name; problems in preset order, then by length; tuned,
default, then baselines by name), so CI can diff runs. Keys: ``schema``, ``command``, ``preset``,
``lengths``, ``timer``, ``gpu_timings``, ``timing_note``, ``device``, ``software``, ``peak``,
``profile``, ``results`` (per problem: ``kernel``, ``problem``, ``length``, ``flops``,
``bytes``, ``implementations``: per implementation ``name``, ``kind``, ``config``, ``status``
(ok | unavailable | failed), ``reason``, ``time_us`` {median, p20, p80}, ``tflops``, ``gbps``,
``percent_of_peak``, ``vs_baselines``).
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path
from typing import Any, Callable

from seqtune.device import DeviceInfo, peak_for
from seqtune.errors import UsageError
from seqtune.spec import KernelSpec, Outputs, Problem

SCHEMA = "seqtune-bench/1"
LENGTH_FIELDS = ("T", "S", "L")
# The interpreter runs only the tiny preset (lengths up to 64); at 4x that a problem still takes
# seconds (attention at 256: ~1 s a call, 4 calls per config), while attention at 32k would run
# for hours with no output.
INTERPRETER_MAX_LENGTH = 256
GPU_TIMING_NOTE = "GPU timings: triton.testing.do_bench median [p20-p80], L2 flushed"


@dataclasses.dataclass(frozen=True)
class BenchOptions:
    """What a bench runs (the ``seqtune bench`` arguments)."""

    preset: str
    lengths: tuple[int, ...] | None = None
    profile_dir: Path | None = None
    seed: int = 0


def parse_lengths(text: str) -> tuple[int, ...]:
    """``"1k,2k,512"`` -> ``(512, 1024, 2048)``: positive integers, ``k`` = 1024, sorted and
    without repeats; ValueError naming the first bad item."""
    lengths = set()
    for item in text.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*([kK]?)\s*", item)
        value = int(match.group(1)) * (1024 if match.group(2) else 1) if match else 0
        if value <= 0:
            raise ValueError(f"--lengths: {item.strip()!r} is not a positive length (expected "
                             "e.g. 512, 1k, 32k)")
        lengths.add(value)
    return tuple(sorted(lengths))


def check_lengths(backend: str, lengths: tuple[int, ...] | None) -> None:
    """UsageError for lengths the Triton interpreter cannot bench in seconds."""
    too_long = [n for n in lengths or () if n > INTERPRETER_MAX_LENGTH]
    if backend == "interpreter" and too_long:
        raise UsageError(f"--lengths {','.join(map(str, too_long))}: the Triton interpreter (no "
                         f"CUDA GPU) benches lengths up to {INTERPRETER_MAX_LENGTH} only, as it "
                         "tunes only the tiny preset; longer lengths need a GPU")


def length_fields(spec: KernelSpec) -> tuple[str, ...]:
    return tuple(field for field in spec.size_fields if field in LENGTH_FIELDS)


def problem_length(spec: KernelSpec, problem: Problem) -> int | None:
    """The problem's sequence length: its first length field (None for a kernel without one)."""
    fields = length_fields(spec)
    return int(problem[fields[0]]) if fields else None


def bench_problems(spec: KernelSpec, preset: str,
                   lengths: tuple[int, ...] | None) -> list[Problem]:
    """The preset's problems, each at every length when ``lengths`` is given (repeats dropped):
    grouped by problem, then by length."""
    problems = [dict(p) for p in spec.presets.get(preset, ())]
    fields = length_fields(spec)
    if lengths is None or not fields:
        return problems
    seen, expanded = set(), []
    for problem in problems:
        for length in lengths:
            candidate = {**problem, **{field: length for field in fields}}
            key = json.dumps(candidate, sort_keys=True)
            if key not in seen:
                seen.add(key)
                expanded.append(candidate)
    return expanded


@dataclasses.dataclass
class Measurement:
    """One implementation on one problem: its time, or why there is none."""

    name: str
    kind: str  # "tuned" | "default" | "baseline"
    config: dict[str, Any] | None
    status: str  # "ok" | "unavailable" | "failed"
    reason: str | None = None
    timing: Any = None  # seqtune.tuning.timing.Timing when status is "ok"


def one_line(exc: BaseException) -> str:
    """``"Type: first line of the message"``."""
    message = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {message[0]}" if message else type(exc).__name__


def measure(name: str, kind: str, config: dict[str, Any] | None, call: Callable[[], Outputs],
            timer: Callable) -> Measurement:
    """Time ``call``; an exception makes the measurement unavailable (a baseline) or failed (a
    seqtune config) with its one-line reason."""
    try:
        timing = timer(call, config or {})
    except Exception as exc:  # reported, not raised: one implementation must not stop the bench
        _release_gpu_memory()
        return Measurement(name, kind, config,
                           "unavailable" if kind == "baseline" else "failed", one_line(exc))
    return Measurement(name, kind, config, "ok", timing=timing)


def _release_gpu_memory() -> None:
    """After an out-of-memory error, return the cached blocks so the next implementation starts
    from a clean allocator."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def tuned_profile(profile_dir: Path | None, device_key: str) -> tuple[Any, Path | None]:
    """(the loader's profile for this device, its file) from the profile dir, else the shipped
    profiles; (None, None) when neither has one. A malformed file raises ProfileError."""
    from seqtune.loader import load_profile
    from seqtune.store.profile_file import (
        profile_path,
        read_profile,
        resolve_profile_dir,
        shipped_profile_dir,
    )

    for folder in (resolve_profile_dir(profile_dir), shipped_profile_dir()):
        path = profile_path(folder, device_key)
        if path.exists():
            read_profile(path)  # an unreadable profile is an error here, not a silent default
            return load_profile(path), path
    return None, None


def bench_problem(spec: KernelSpec, problem: Problem, device: DeviceInfo, profile: Any,
                  timer: Callable, seed: int) -> list[Measurement]:
    """Tuned, default and every baseline on one set of inputs of ``problem``."""
    default = spec.default_for(problem, device.limits)
    try:
        inputs = spec.make_inputs(problem, device.torch_device, seed)
    except Exception as exc:  # e.g. out of memory at a long --lengths: nothing can run
        _release_gpu_memory()
        reason = f"inputs: {one_line(exc)}"
        return [Measurement("tuned", "tuned", None, "failed", reason),
                Measurement("default", "default", default, "failed", reason),
                *(Measurement(name, "baseline", None, "unavailable", reason)
                  for name in sorted(spec.baselines))]
    measured = [measure("default", "default", default,
                        lambda: spec.run(inputs, default), timer)]
    tuned = profile.best_config(spec.name, problem) if profile is not None else default
    if tuned == default:
        measured.insert(0, dataclasses.replace(measured[0], name="tuned", kind="tuned"))
    else:
        measured.insert(0, measure("tuned", "tuned", tuned, lambda: spec.run(inputs, tuned),
                                   timer))
    forward = _forward_of(spec)
    if forward is not None and measured[0].status == "ok":
        measured.insert(1, _with_forward(measured[0], forward, problem, device, profile, timer,
                                         seed))
    for name in sorted(spec.baselines):
        baseline = spec.baselines[name]
        measured.append(measure(name, "baseline", None, lambda: baseline(inputs), timer))
    return measured


def _forward_of(spec: KernelSpec) -> KernelSpec | None:
    """The forward spec of a backward spec (``<op>_bwd`` -> ``<op>``), else None."""
    from seqtune.registry import all_specs

    return all_specs().get(spec.name[:-4]) if spec.name.endswith("_bwd") else None


def _with_forward(backward: Measurement, forward: KernelSpec, problem: Problem,
                  device: DeviceInfo, profile: Any, timer: Callable, seed: int) -> Measurement:
    """``tuned fwd+bwd``: the forward's tuned config timed on the same problem, plus the tuned
    backward: what a training step costs, and what the autograd baselines (whose time includes
    their forward) compare with."""
    from seqtune.tuning.timing import Timing

    config = (profile.best_config(forward.name, problem) if profile is not None
              else forward.default_for(problem, device.limits))
    try:
        inputs = forward.make_inputs(problem, device.torch_device, seed)
    except Exception as exc:
        return Measurement("tuned fwd+bwd", "tuned", config, "failed", f"inputs: {one_line(exc)}")
    timed = measure("tuned fwd+bwd", "tuned", config, lambda: forward.run(inputs, config), timer)
    if timed.status != "ok":
        return timed
    both = Timing(*(getattr(timed.timing, f) + getattr(backward.timing, f)
                    for f in ("median_us", "p20_us", "p80_us")), timed.timing.samples)
    return dataclasses.replace(timed, timing=both)


def bench_work(specs: list[KernelSpec],
               options: BenchOptions) -> list[tuple[KernelSpec, Problem]]:
    """Every (kernel, problem) the bench runs, in order."""
    return [(spec, problem) for spec in specs
            for problem in bench_problems(spec, options.preset, options.lengths)]


def run_bench(specs: list[KernelSpec], device: DeviceInfo, options: BenchOptions,
              on_problem: Callable[[int, str], None] = lambda done, label: None
              ) -> dict[str, Any]:
    """Bench every problem of every kernel; the JSON-ready payload (see the module doc).
    ``on_problem(problems done, label)`` is called as each problem starts."""
    from seqtune.spec import format_problem
    from seqtune.store.profile_file import software_versions
    from seqtune.tuning.timing import INTERPRETER_NOTE, timer_for

    check_lengths(device.backend, options.lengths)
    timer, label = timer_for(device.backend)
    profile, profile_file = tuned_profile(options.profile_dir, device.key)
    results = []
    for done, (spec, problem) in enumerate(bench_work(specs, options)):
        on_problem(done, f"{spec.name} {format_problem(problem)}")
        measured = bench_problem(spec, problem, device, profile, timer, options.seed)
        results.append(problem_record(spec, problem, measured, device))
    interpreter = device.backend == "interpreter"
    peak = peak_for(device.name)
    return {
        "schema": SCHEMA, "command": command_line(specs, options), "preset": options.preset,
        "lengths": list(options.lengths) if options.lengths else None,
        "timer": label, "gpu_timings": not interpreter,
        "timing_note": INTERPRETER_NOTE if interpreter else GPU_TIMING_NOTE,
        "device": device.as_dict(), "software": {**software_versions(), "fla": fla_version()},
        "peak": None if peak is None else {"tflops": peak.tflops, "gbps": peak.gbps},
        "profile": None if profile_file is None else str(profile_file),
        "results": results,
    }


def command_line(specs: list[KernelSpec], options: BenchOptions) -> str:
    """The command that reproduces this bench (kernels by name, every option spelled out)."""
    parts = ["seqtune", "bench", *(s.name for s in specs), "--preset", options.preset]
    if options.lengths:
        parts += ["--lengths", ",".join(str(n) for n in options.lengths)]
    if options.profile_dir is not None:
        parts += ["--profile-dir", str(options.profile_dir)]
    return " ".join(parts)


def fla_version() -> str | None:
    """The installed flash-linear-attention version (either distribution name), or None."""
    from importlib import metadata

    for distribution in ("flash-linear-attention", "fla-core"):
        try:
            return metadata.version(distribution)
        except metadata.PackageNotFoundError:
            continue
    return None


def problem_record(spec: KernelSpec, problem: Problem, measured: list[Measurement],
                   device: DeviceInfo) -> dict[str, Any]:
    """One problem's JSON record: its work and every implementation's figures."""
    flops, moved = spec.flops(problem), spec.bytes_moved(problem)
    baseline_times = {m.name: m.timing.median_us for m in measured
                      if m.kind == "baseline" and m.status == "ok"}
    return {
        "kernel": spec.name, "problem": problem, "length": problem_length(spec, problem),
        "flops": flops, "bytes": moved,
        "implementations": [implementation_record(m, flops, moved, problem, device,
                                                  baseline_times) for m in measured],
    }


def implementation_record(m: Measurement, flops: float, moved: float, problem: Problem,
                          device: DeviceInfo, baseline_times: dict[str, float]
                          ) -> dict[str, Any]:
    """One implementation's JSON record: its time and roofline figures, or why it has none."""
    from seqtune.analysis.report import roofline_percent

    record = {"name": m.name, "kind": m.kind, "config": m.config, "status": m.status,
              "reason": m.reason, "time_us": None, "tflops": None, "gbps": None,
              "percent_of_peak": None, "vs_baselines": {}}
    if m.status != "ok":
        return record
    seconds = m.timing.median_us * 1e-6
    tflops = flops / seconds / 1e12 if seconds > 0 else None
    gbps = moved / seconds / 1e9 if seconds > 0 else None
    percent = roofline_percent(tflops, gbps, problem.get("dtype", "bfloat16"), device.name)
    record.update(
        time_us=m.timing.as_dict(), tflops=_significant(tflops), gbps=_significant(gbps),
        percent_of_peak=_significant(percent),
        vs_baselines={name: _significant(time / m.timing.median_us)
                      for name, time in baseline_times.items() if m.timing.median_us > 0})
    return record


def _significant(value: float | None, digits: int = 4) -> float | None:
    """Rounded to a few significant digits: what the measurement supports, and short diffs."""
    if value is None or not math.isfinite(value):
        return value
    return float(f"{value:.{digits}g}")


def to_json(payload: dict[str, Any]) -> str:
    return json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n"


def failed(payload: dict[str, Any]) -> list[str]:
    """``"kernel problem: implementation: reason"`` for every seqtune config that failed."""
    from seqtune.spec import format_problem

    return [f"{r['kernel']} {format_problem(r['problem'])}: {i['name']}: {i['reason']}"
            for r in payload["results"] for i in r["implementations"] if i["status"] == "failed"]
