"""The library API behind the command line: each function does what one ``seqtune`` command
does and returns data (dicts, lists, dataclasses) without printing. The CLI renders it; other
code and the tests call it directly::

    import seqtune
    result = seqtune.tune(["attention"], preset="tiny")
    rows = seqtune.verify(["attention"])

Bad arguments raise ``seqtune.errors.UsageError``, failures ``seqtune.errors.Failure``;
progress of long calls goes to a ``seqtune.events.Reporter`` (silent by default).
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
from pathlib import Path
from typing import Any, Sequence

from seqtune.errors import Failure, UsageError
from seqtune.events import SILENT, Reporter

PRESETS = ("tiny", "quick", "default", "full")


def prepare_backend() -> None:
    """Without a CUDA GPU the kernels must run in the Triton interpreter, which Triton reads when
    a kernel is defined: set it before any kernel module is imported."""
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")


def profile_folder(profile_dir: Path | None = None) -> Path:
    """The profile dir a command reads or writes: ``profile_dir``, else ``$SEQTUNE_PROFILE_DIR``,
    else the user cache dir (where the runtime reads); UsageError when it names a file."""
    from seqtune.store.profile_file import ENV_PROFILE_DIR, resolve_profile_dir

    from seqtune.registry import use_workload_dir

    folder = resolve_profile_dir(profile_dir)
    use_workload_dir(folder)  # the kernels recorded into it are known like built-in ones
    source = ("--profile-dir" if profile_dir else
              f"${ENV_PROFILE_DIR}" if os.environ.get(ENV_PROFILE_DIR) else "the profile dir")
    for part in (folder, *folder.parents):
        if part.exists():
            if not part.is_dir():
                where = "" if part == folder else f": {part}"
                raise UsageError(f"{source} {folder}{where} is a file, not a directory")
            break
    return folder


@dataclasses.dataclass(frozen=True)
class ProfileLocation:
    """Where a command reads or writes this device's profile."""

    folder: Path
    file: Path
    exists: bool


def profile_location(profile_dir: Path | None = None) -> ProfileLocation:
    """This device's profile file in the profile dir (see ``profile_folder``)."""
    from seqtune.store.profile_file import profile_path

    folder = profile_folder(profile_dir)
    prepare_backend()  # before anything below can define a kernel
    from seqtune.device import runtime_device

    path = profile_path(folder, runtime_device()[0])
    return ProfileLocation(folder, path, path.is_file())


def specs_named(names: Sequence[str] | None) -> list:
    """The specs of the named kernels (all when none are named); UsageError for an unknown one."""
    from seqtune.registry import UnknownKernelError, all_specs, get_spec

    try:
        return [get_spec(n) for n in names] if names else list(all_specs().values())
    except UnknownKernelError as exc:
        raise UsageError(str(exc)) from None


def with_backwards(kernels: Sequence[str] | None) -> list[str] | None:
    """The named kernels, each followed by its backward kernel where one exists."""
    if not kernels:
        return None
    from seqtune.registry import all_specs

    known = all_specs()
    named = []
    for name in kernels:
        named += [name] + ([f"{name}_bwd"] if f"{name}_bwd" in known else [])
    return list(dict.fromkeys(named))


def preset_for(device, preset: str | None) -> str:
    """The preset to run: 'default' on a GPU and 'tiny' on the interpreter unless named; the
    interpreter runs nothing bigger than tiny."""
    preset = preset or ("tiny" if device.backend == "interpreter" else "default")
    if preset not in PRESETS:
        raise UsageError(f"unknown preset {preset!r}; expected one of {', '.join(PRESETS)}")
    if device.backend == "interpreter" and preset != "tiny":
        raise UsageError(f"preset {preset!r} needs a CUDA GPU; without one seqtune runs the "
                         "Triton interpreter with --preset tiny")
    return preset


def tune(kernels: Sequence[str] | None = None, *, preset: str | None = None,
         profile_dir: Path | None = None, max_configs: int | None = None,
         budget_s: float | None = None, seed: int = 0, strategy: str = "auto",
         keep_spilling: bool = False, isolate: bool = True, timeout_s: float = 600.0,
         resume: bool = False, jobs: int | None = None, compile_target: str | None = None,
         gpus: str | None = None, shard: str | None = None,
         interpreter_devices: int | None = None, model_config: Path | None = None,
         lengths: str | None = None, batch: str | None = None, decode: bool = False,
         training: bool = False, with_backward: bool = True, workload: Path | None = None,
         reporter: Reporter = SILENT) -> dict[str, Any]:
    """Tune the kernels' preset problems on this device (one process, one worker per local GPU
    with ``gpus``, or this rank's share under torchrun) and write the profile; the results.
    A named kernel brings its backward (``<name>_bwd``) along unless ``with_backward`` is
    False: training runs both.

    With ``model_config`` (a model's config.json) it tunes exactly the problems that model's
    layers produce instead (see ``model_problems``), restricted to ``kernels`` if named.
    With ``workload`` (a file of ``seqtune record``) it tunes the recorded calls of its
    kernels instead (see ``workload_specs``)."""
    from seqtune.fleet.tuning import distributed_launch, local_fleet, run_tune_mode

    if model_config is not None:
        check_model_request(model_config, lengths, batch)
    folder = profile_folder(profile_dir)
    launch = distributed_launch(gpus, shard, interpreter_devices)  # before CUDA initialises
    from seqtune.fleet.shard import parse_shard
    from seqtune.tuning.search import STRATEGIES
    from seqtune.tuning.tune import TuneOptions

    prepare_backend()
    from seqtune.device import detect_device

    device = detect_device()
    fleet = local_fleet(gpus, interpreter_devices, shard)
    try:
        share = None if shard is None else parse_shard(shard)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    preset = preset_for(device, preset)
    if workload is not None:
        if model_config is not None:
            raise UsageError("--workload and --model-config are exclusive")
        specs, preset = workload_specs(workload, folder, kernels), "workload"
    elif model_config is None:
        specs = specs_named(with_backwards(kernels) if with_backward else kernels)
    else:
        from seqtune.integrations.model_config import specs_for_model

        if launch is not None or fleet is not None:
            raise UsageError("--model-config tunes in one process (or --shard I/N of it); it "
                             "does not combine with --gpus or a torch.distributed launch")
        specs = specs_for_model(model_problems(model_config, preset, device.backend, kernels,
                                               lengths, batch, decode, training), "model")
        preset = "model"
    if device.backend == "interpreter":
        reporter.message("No CUDA GPU: tuning in the Triton interpreter on the CPU with the tiny "
                         "preset (timings are CPU wall-clock, not GPU timings; warps and stages "
                         "held at their defaults).")
    if strategy not in STRATEGIES:
        raise UsageError(f"unknown strategy {strategy!r}; expected one of {', '.join(STRATEGIES)}")
    if compile_target is not None:
        from seqtune.tuning.compiler import target_named

        try:
            target_named(compile_target)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    options = TuneOptions(preset, folder, max_configs, budget_s, seed, keep_spilling,
                          isolate, timeout_s, resume, strategy=strategy,
                          jobs=jobs or os.cpu_count() or 1, compile_target=compile_target,
                          shard=share)
    return run_tune_mode(specs, device, options, launch, fleet, reporter)


def workload_specs(path: Path, folder: Path, kernels: Sequence[str] | None = None) -> list:
    """The specs of the kernels recorded in ``path`` (only ``kernels`` if named), each tuning
    one recorded call per bucket; their records are merged into ``<folder>/workloads/`` so
    that verify, report and the runtime there know them. UsageError for a bad file."""
    import dataclasses as dc

    from seqtune.registry import register
    from seqtune.store.safe_read import UnsafeFile
    from seqtune.workload.spec import (PRESET, by_kernel, read_workload, save_workload,
                                       spec_from_records)

    try:
        grouped = by_kernel(read_workload(path))
    except FileNotFoundError:
        raise UsageError(f"--workload {path}: no such file") from None
    except (ValueError, UnsafeFile) as exc:
        raise UsageError(f"--workload {path}: {exc}") from None
    unknown = sorted(set(kernels or ()) - set(grouped))
    if unknown:
        raise UsageError(f"{path} records no call of {', '.join(unknown)}; it records "
                         f"{', '.join(grouped) or 'nothing'}")
    if not grouped:
        raise Failure(f"{path} records no kernel call: was the program's kernel autotuned?")
    specs = []
    for name, records in grouped.items():
        if kernels and name not in kernels:
            continue
        merged = read_workload(save_workload(folder, name, records))
        mine = spec_from_records(records).presets[PRESET]
        specs.append(dc.replace(spec_from_records(merged), presets={PRESET: mine}))
        register(specs[-1])
    return specs


def record(command: Sequence[str], output: Path) -> dict[str, Any]:
    """Run ``command`` recording every distinct call of its autotuned Triton kernels
    (``triton.autotune`` and ``seqtune.autotune``) into ``output``; the summary (calls per
    kernel, the program's exit code). Nothing is benchmarked while recording."""
    from seqtune.recording import run_recorded

    if not command:
        raise UsageError("record needs a command to run: seqtune record --output W.jsonl -- "
                         "python train.py ...")
    try:
        return run_recorded(command, output)
    except FileNotFoundError as exc:
        raise UsageError(f"cannot run {command[0]!r}: {exc.strerror}") from None


def check_model_request(model_config: Path, lengths: str | None = None,
                        batch: str | None = None) -> None:
    """UsageError naming the file, the field and the value for a config that is unsafe to read
    or asks for sizes the kernels do not run: checked before torch loads or anything is
    allocated, so a bad config costs a fraction of a second and writes nothing."""
    from seqtune.integrations.model_config import DEFAULT_LENGTHS, validate_model

    with _model_errors(model_config):
        validate_model(model_config, _sizes(lengths, "--lengths") or DEFAULT_LENGTHS,
                       _sizes(batch, "--batch") or (1,))


def _sizes(text: str | None, flag: str) -> tuple[int, ...] | None:
    from seqtune.integrations.config_file import parse_sizes

    return parse_sizes(text, flag) if text else None


@contextlib.contextmanager
def _model_errors(model_config: Path):
    """A ValueError about the config as a UsageError naming the file once."""
    try:
        yield
    except ValueError as exc:
        message = str(exc)
        if str(model_config) not in message:
            message = f"--model-config {model_config}: {message}"
        raise UsageError(message) from None


def model_problems(model_config: Path, preset: str, backend: str,
                   kernels: Sequence[str] | None = None, lengths: str | None = None,
                   batch: str | None = None, decode: bool = False,
                   training: bool = False) -> dict[str, list[dict[str, Any]]]:
    """Kernel -> the problems a model's layers produce: prefill at ``lengths`` ("1k,4k"; else
    the preset's lengths), decode steps at the ``batch`` sizes ("1,8"; else 1) with
    ``decode``, backward passes with ``training``; only ``kernels`` if named. UsageError for an
    unreadable config, bad sizes, or lengths the interpreter cannot run."""
    from seqtune.analysis.bench import check_lengths
    from seqtune.integrations.model_config import PRESET_LENGTHS, problems_for_model

    with _model_errors(model_config):
        parsed = _sizes(lengths, "--lengths") or PRESET_LENGTHS[preset]
        check_lengths(backend, parsed)
        problems = problems_for_model(model_config, lengths=parsed,
                                      batch_sizes=_sizes(batch, "--batch") or (1,),
                                      decode=decode, training=training)
    if kernels:
        unknown = sorted(set(kernels) - set(problems))
        if unknown:
            raise UsageError(f"{model_config} produces no problem of {', '.join(unknown)}; it "
                             f"runs {', '.join(problems)}")
        problems = {k: v for k, v in problems.items() if k in kernels}
    return problems


def coverage(model_config: Path, profile_dir: Path | None = None, preset: str | None = None,
             lengths: str | None = None, batch: str | None = None, decode: bool = False,
             training: bool = False) -> list[dict[str, Any]]:
    """Which of a model's problems the profile of this device covers: per problem ``status``
    ``tuned`` (an entry in its own buckets), ``nearest`` (another bucket's entry, ``distance``
    log2 steps away) or ``default``."""
    check_model_request(model_config, lengths, batch)  # before torch loads
    from seqtune.device import detect_device
    from seqtune.integrations.model_config import model_coverage
    from seqtune.loader import read_profiles

    prepare_backend()
    device = detect_device()
    problems = model_problems(model_config, preset_for(device, preset), device.backend,
                              lengths=lengths, batch=batch, decode=decode, training=training)
    return model_coverage(problems, read_profiles(profile_dir=profile_folder(profile_dir)))


def verify(kernels: Sequence[str] | None = None,
           profile_dir: Path | None = None) -> list[dict[str, Any]]:
    """Each verify case of each kernel, with the default config, the config the loader picks
    from the profile, and every other tuned config of the profile that is valid for the case:
    one row per (case, distinct config) with its agreement with the float64 reference."""
    from seqtune.agreement import check_case
    from seqtune.device import runtime_device
    from seqtune.loader import load_profile
    from seqtune.spec import format_config, format_problem
    from seqtune.store.profile_file import profile_path, read_profile

    prepare_backend()
    folder = profile_folder(profile_dir)  # first: the kernels recorded into it are named too
    specs = specs_named(kernels)
    key, limits = runtime_device()
    path = profile_path(folder, key)
    if path.exists():
        read_profile(path)  # an unreadable profile is an error here, not a silent fallback
    profile = load_profile(path) if path.exists() else None
    device = "cpu" if limits.backend == "interpreter" else "cuda"
    rows = []
    for spec in specs:
        tuned = [e.config for e in profile.entries.get(spec.name, [])] if profile else []
        for case in spec.verify_cases:
            configs = {"default": dict(spec.default_config)}
            if profile is not None:
                configs["loader"] = profile.best_config(spec.name, case)
            for index, config in enumerate(tuned):
                configs.setdefault(f"tuned #{index}", config)
            seen: list[dict] = []
            inputs = spec.make_inputs(case, device, 0)
            reference = spec.reference(inputs)
            for source, config in configs.items():
                full = spec.validate_config(config)
                if full in seen or spec.check(full, case, limits) is not None:
                    continue
                seen.append(full)
                agreement = check_case(spec, case, full, inputs=inputs, reference=reference)
                rows.append({"kernel": spec.name, "case": format_problem(case),
                             "problem": dict(case),
                             "config_source": f"{source}: {format_config(full)}",
                             "config": full, "ok": agreement.ok,
                             "max_abs_err": agreement.max_abs_err,
                             "max_rel_err": agreement.max_rel_err, "detail": agreement.detail})
    return rows


@dataclasses.dataclass
class Report:
    """Profiles read for ``seqtune report``: (path, profile) pairs, each file's rows, and the
    comparison of the later files to the first; ``folder`` is the profile dir they were found
    in (None when the files were named)."""

    profiles: list[tuple[Path, dict[str, Any]]]
    rows_by_file: list[list[dict[str, Any]]]
    comparison: list[dict[str, Any]]
    folder: Path | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"profiles": [{"file": str(p), "rows": r}
                             for (p, _), r in zip(self.profiles, self.rows_by_file)],
                "comparison": self.comparison,
                "profile_dir": None if self.folder is None else str(self.folder)}


def report(files: Sequence[Path] | None = None, profile_dir: Path | None = None,
           kernel: str | None = None) -> Report:
    """The profile files (default: every profile in the profile dir) as report rows."""
    import triton

    from seqtune.analysis.report import comparison_rows, entry_rows
    from seqtune.loader import stale_reason
    from seqtune.registry import all_specs, source_hash
    from seqtune.store.profile_file import read_profile

    folder = None
    if files and profile_dir is not None:
        raise UsageError("give profile files or --profile-dir, not both")
    if not files:
        folder = profile_folder(profile_dir)
        if not folder.is_dir():
            raise Failure(f"the profile dir {folder} does not exist (mistyped --profile-dir or "
                          "$SEQTUNE_PROFILE_DIR? `seqtune tune` creates it)")
        files = sorted(folder.glob("*.yaml"))
        if not files:
            raise Failure(f"no profiles in {folder}; run `seqtune tune` first")
    for path in files:
        if Path(path).is_dir():
            raise UsageError(f"{path} is a directory, not a profile file; report the profiles "
                             f"in it with --profile-dir {path}")
        if not Path(path).exists():
            raise UsageError(f"{path}: no such profile file")
    profiles, rows_by_file = [], []
    if folder is None:
        from seqtune.registry import use_workload_dir

        for path in files:  # the kernels recorded next to the named profiles
            use_workload_dir(Path(path).parent)
    specs = all_specs()
    for path in files:
        profile = read_profile(path)
        software_triton = (profile.get("software") or {}).get("triton")
        stale = {}
        for name, section in (profile.get("kernels") or {}).items():
            for index, entry in enumerate(section.get("entries", [])):
                reason = ("unknown kernel" if name not in specs else
                          stale_reason(entry, section, software_triton, triton.__version__,
                                       source_hash(name)))
                if reason:
                    stale[(name, index)] = reason
        profiles.append((path, profile))
        rows_by_file.append(entry_rows(profile, path, kernel, stale))
    compared = comparison_rows(rows_by_file) if len(rows_by_file) > 1 else []
    return Report(profiles, rows_by_file, compared, folder)


def info(profile_dir: Path | None = None) -> dict[str, Any]:
    """The device, library versions, the profile dir, and the profile files the runtime reads
    for this device (the profile dir's, then the shipped one): per file whether it is used,
    with its entries per kernel, or skipped and why."""
    from seqtune.device import detect_device
    from seqtune.store.profile_file import profile_path, shipped_profile_dir, software_versions
    from seqtune.tuning.timing import INTERPRETER_NOTE

    device = detect_device()
    folder = profile_folder(profile_dir)
    files = [profile_file_status(profile_path(d, device.key))
             for d in (folder, shipped_profile_dir())]
    active: dict[str, int] = {}
    for status in files:
        for kernel, count in status["entries"].items():
            active[kernel] = active.get(kernel, 0) + count
    return {
        "device": dataclasses.asdict(device),
        "software": software_versions(),
        "profile_dir": str(folder),
        "shipped_profiles": str(shipped_profile_dir()),
        "profile_files": files,
        "active_profile_files": [s["file"] for s in files if s["state"] == "used"],
        "active_entries": active,
        "timings": INTERPRETER_NOTE if device.backend == "interpreter" else "do_bench on the GPU",
    }


def profile_file_status(path: Path) -> dict[str, Any]:
    """Whether the runtime uses the profile at ``path``: ``state`` "used" (with its entries per
    kernel; kernels this seqtune does not know are listed as ignored), "skipped" (with the
    reason: unreadable, not YAML, wrong schema, ...) or "not found"."""
    from seqtune.registry import all_specs
    from seqtune.store.profile_file import ProfileError, read_profile

    status: dict[str, Any] = {"file": str(path), "state": "not found", "reason": None,
                              "entries": {}, "ignored_kernels": []}
    if not path.exists():
        return status
    try:
        data = read_profile(path)
    except ProfileError as exc:
        reason = str(exc)
        reason = reason[len(str(path)) + 2:] if reason.startswith(f"{path}: ") else reason
        return {**status, "state": "skipped", "reason": reason}
    known = all_specs()
    for kernel, section in (data.get("kernels") or {}).items():
        if kernel in known:
            status["entries"][kernel] = len(section.get("entries", []))
        else:
            status["ignored_kernels"].append(kernel)
    return {**status, "state": "used"}


def list_kernels() -> list[dict[str, Any]]:
    """Every kernel with its config space, stages, search mode and presets."""
    from seqtune.registry import all_specs

    return [{"kernel": s.name, "family": s.family, "space_size": s.space_size,
             "parameters": list(s.space), "stages": list(s.stages),
             "search": "stagewise (one stage at a time)" if s.stagewise else "full product",
             "presets": {k: len(v) for k, v in s.presets.items()}, "description": s.description}
            for s in all_specs().values()]


def merge(files: Sequence[Path], output: Path | None = None, profile_dir: Path | None = None,
          force: bool = False, skip_invalid: bool = False):
    """Merge profiles of one device (see ``seqtune.store.merge``); the merge summary. A file
    with an invalid entry is refused (Failure) unless ``skip_invalid``, which leaves such
    entries out and lists them in the summary's ``skipped``."""
    from seqtune.store.merge import DeviceMismatch, merge_into

    try:
        return merge_into(list(files), output, profile_dir, force, skip_invalid=skip_invalid)
    except DeviceMismatch as exc:
        raise UsageError(str(exc)) from None


def replay(logs: Sequence[Path], strategy: str = "auto", budget: str = "5%",
           repeats: int = 50) -> dict[str, Any]:
    """Replay search strategies on recorded tuning spaces; the JSON-ready payload."""
    from seqtune.analysis.replay import ReplayError, run_replay, strategy_names

    try:
        names = strategy_names(strategy)
        return run_replay(list(logs), names, budget, repeats)
    except ReplayError as exc:
        raise Failure(str(exc)) from None
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def check(kernels: Sequence[str] | None = None, targets: Sequence[str] = ("sm_80", "sm_90"),
          all_configs: bool = False, preset: str = "default", jobs: int = 1,
          config: dict[str, Any] | None = None, *, model_config: Path | None = None,
          lengths: str | None = None, batch: str | None = None, decode: bool = False,
          training: bool = False) -> list:
    """Compile kernels for GPU targets without a GPU: one ``CheckResult`` per (kernel, target,
    problem, config), each with ``is_default`` set. With ``model_config``: exactly the problems
    that model runs (see ``model_problems``; ``kernels`` filter them)."""
    if model_config is not None:
        check_model_request(model_config, lengths, batch)
    # Compiling needs real @triton.jit kernels, which TRITON_INTERPRET would replace.
    os.environ.pop("TRITON_INTERPRET", None)
    from seqtune.tuning.compiler import run_check, target_named

    try:
        parsed = [target_named(t) for t in targets]
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if model_config is None:
        specs = specs_named(kernels)
    else:
        from seqtune.integrations.model_config import specs_for_model

        specs = specs_for_model(model_problems(model_config, preset, "compile", kernels, lengths,
                                               batch, decode, training), "model")
        preset = "model"
    if preset not in (*PRESETS, "model"):
        raise UsageError(f"unknown preset {preset!r}; expected one of {', '.join(PRESETS)}")
    if config and len(specs) != 1:
        raise UsageError("--config needs exactly one kernel")
    try:
        chosen = specs[0].validate_config(config) if config else None
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    results = run_check(specs, parsed, all_configs, preset, jobs, config=chosen)
    by_name = {s.name: s for s in specs}
    for r in results:
        r.is_default = r.config == by_name[r.kernel].default_for(
            r.problem, target_named(r.target).limits)
    return results


def bench(kernels: Sequence[str] | None = None, preset: str | None = None,
          lengths: str | None = None, profile_dir: Path | None = None,
          reporter: Reporter = SILENT) -> dict[str, Any]:
    """Time tuned configs, default configs and baselines; the JSON-ready payload."""
    from seqtune.analysis.bench import (BenchOptions, bench_work, check_lengths, parse_lengths,
                                        run_bench)

    prepare_backend()
    from seqtune.device import detect_device

    device = detect_device()
    preset = preset_for(device, preset)
    try:
        parsed_lengths = parse_lengths(lengths) if lengths is not None else None
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    check_lengths(device.backend, parsed_lengths)  # before any progress is shown
    specs = specs_named(kernels)
    profile_folder(profile_dir)  # a file named as the profile dir is bad usage, not a crash
    options = BenchOptions(preset, parsed_lengths, profile_dir)
    with reporter.progress() as progress:
        task = progress.add_task("bench", total=len(bench_work(specs, options)))
        payload = run_bench(specs, device, options,
                            on_problem=lambda done, label: progress.update(
                                task, completed=done, description=label))
        progress.update(task, completed=len(payload["results"]), description="bench")
    return payload
