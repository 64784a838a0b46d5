"""The ``seqtune`` command line: tune, verify, report, list, info.

Exit codes: 0 ok, 1 failures (a kernel disagrees, a profile cannot be read, nothing tunable),
2 bad usage. Every error is one line on stderr, never a traceback (``SEQTUNE_DEBUG=1`` shows it).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Autotune, verify and profile the Triton kernels of sequence models.")
out = Console()
err = Console(stderr=True)
PRESETS = ("tiny", "quick", "default", "full")


class UsageError(Exception):
    """Bad input from the user: exit 2."""


class Failure(Exception):
    """Something the user asked for failed (unreadable profile, ...): exit 1."""


def _prepare_backend() -> None:
    """Without a CUDA GPU the kernels must run in the Triton interpreter, which Triton reads when
    a kernel is defined: set it before any kernel module is imported."""
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")


def _specs(names: list[str] | None):
    from seqtune.registry import UnknownKernelError, all_specs, get_spec

    try:
        return [get_spec(n) for n in names] if names else list(all_specs().values())
    except UnknownKernelError as exc:
        raise UsageError(str(exc)) from None


def _preset_for(device, preset: str | None) -> str:
    """The preset to run: 'default' on a GPU and 'tiny' on the interpreter unless named; the
    interpreter runs nothing bigger than tiny."""
    preset = preset or ("tiny" if device.backend == "interpreter" else "default")
    if preset not in PRESETS:
        raise UsageError(f"unknown preset {preset!r}; expected one of {', '.join(PRESETS)}")
    if device.backend == "interpreter" and preset != "tiny":
        raise UsageError(f"preset {preset!r} needs a CUDA GPU; without one seqtune runs the "
                         "Triton interpreter with --preset tiny")
    return preset


def _emit_json(payload: Any) -> None:
    sys.stdout.write(json.dumps(payload, indent=2, default=str) + "\n")


@app.command()
def tune(
    kernels: Optional[list[str]] = typer.Argument(None, help="Kernels to tune (default: all)."),
    preset: Optional[str] = typer.Option(None, help="tiny | quick | default | full "
                                         "(default: 'default' on a GPU, 'tiny' on the CPU)."),
    profile_dir: Optional[Path] = typer.Option(None, help="Where profiles are written "
                                               "(else $SEQTUNE_PROFILE_DIR, else the cache dir)."),
    max_configs: Optional[int] = typer.Option(None, min=1, help="At most this many configs "
                                              "evaluated per problem."),
    budget_s: Optional[float] = typer.Option(None, min=0, help="Wall-clock budget of the whole "
                                             "tune, seconds; the default config is always run."),
    as_json: bool = typer.Option(False, "--json", help="Print results as JSON on stdout."),
    seed: int = typer.Option(0, help="Seed of the inputs and of the candidate order."),
    strategy: str = typer.Option("auto", help="Search strategy: auto (by space size and "
                                 "budget), exhaustive, stagewise, random, halving, local or "
                                 "model; compare them offline with `seqtune replay`."),
    keep_spilling: bool = typer.Option(False, "--keep-spilling", help="On a GPU, also time "
                                       "configs whose registers spill (skipped by default)."),
    isolate: bool = typer.Option(True, "--isolate/--no-isolate", help="Run candidates in a "
                                 "worker process, so a crash or hang costs only that candidate."),
    timeout_s: float = typer.Option(600.0, min=1, help="Abandon a candidate (isolated) after "
                                    "this many seconds."),
    resume: bool = typer.Option(False, "--resume", help="Reuse what the last (interrupted) tune "
                                "measured, from the tuning log."),
    jobs: int = typer.Option(os.cpu_count() or 1, min=1, help="Processes compiling candidates "
                             "ahead of timing."),
    compile_target: Optional[str] = typer.Option(None, help="On the interpreter: also compile "
                                                 "each candidate for this GPU target (sm_80, "
                                                 "sm_90, ...) before it runs, and skip what "
                                                 "would not fit it."),
    gpus: Optional[str] = typer.Option(None, help="all | 0,1,...: one worker process per local "
                                       "GPU, each tuning its share of the problems; GPUs of "
                                       "one name share one profile."),
    shard: Optional[str] = typer.Option(None, help="I/N: tune only share I (from 0) of N of the "
                                        "problems, e.g. in a job array; combine the profiles "
                                        "with `seqtune merge`."),
    interpreter_devices: Optional[int] = typer.Option(None, min=1, hidden=True, help="Tests: "
                                                      "run this many interpreter workers as if "
                                                      "they were GPUs."),
) -> None:
    """Search each kernel's config space on this device and write its profile.

    Under torchrun (or any launcher that sets RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) each
    rank tunes its share and rank 0 writes the profiles."""
    launch = _distributed_launch(gpus, shard, interpreter_devices)  # before CUDA initialises
    from seqtune.tuning.tune import TuneOptions

    _prepare_backend()
    from seqtune.device import detect_device

    device = detect_device()
    fleet = _local_fleet(gpus, interpreter_devices, shard)
    share = _shard(shard)
    preset = _preset_for(device, preset)
    specs = _specs(kernels)
    _check_strategy(strategy)
    if device.backend == "interpreter":
        err.print("No CUDA GPU: tuning in the Triton interpreter on the CPU with the tiny preset "
                  "(timings are CPU wall-clock, not GPU timings; warps and stages held at their "
                  "defaults).")
    if compile_target is not None:
        from seqtune.tuning.compiler import target_named

        try:
            target_named(compile_target)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    options = TuneOptions(preset, profile_dir, max_configs, budget_s, seed, keep_spilling,
                          isolate, timeout_s, resume, strategy=strategy, jobs=jobs,
                          compile_target=compile_target, shard=share)
    try:
        results = _run_tune_mode(specs, device, options, launch, fleet,
                                 console=err if as_json else out)
    except KeyboardInterrupt:
        err.print("seqtune: interrupted. Every measured candidate is in the tuning log and every "
                  "finished problem in the profile; continue with the same command plus --resume.")
        raise typer.Exit(130) from None
    if as_json and results.get("rank", 0) == 0:  # under torchrun rank 0 speaks for all
        _emit_json(results)
    if results.get("errors") or any(r["winner"] is None for r in results["problems"]):
        raise typer.Exit(1)


def _check_strategy(name: str) -> None:
    from seqtune.tuning.search import STRATEGIES

    if name not in STRATEGIES:
        raise UsageError(f"unknown strategy {name!r}; expected one of {', '.join(STRATEGIES)}")


def _distributed_launch(gpus: str | None, shard: str | None, interpreter_devices: int | None):
    """The torch.distributed launch this tune is part of, with this rank's GPU pinned; None
    outside one."""
    from seqtune.fleet.distributed import launch_env, pin_local_gpu

    try:
        launch = launch_env()
        if launch is not None and (gpus or shard or interpreter_devices):
            raise UsageError("--gpus and --shard do not combine with a torch.distributed launch: "
                             "the launcher starts one rank per GPU and the ranks share the work")
        if launch is not None:
            pin_local_gpu(launch)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return launch


def _local_fleet(gpus: str | None, interpreter_devices: int | None, shard: str | None):
    """The devices of ``--gpus`` (or of the hidden ``--interpreter-devices``), or None."""
    from seqtune.fleet.local import interpreter_devices as interpreter_fleet, local_gpus

    if gpus is None and interpreter_devices is None:
        return None
    if gpus is not None and interpreter_devices is not None:
        raise UsageError("--gpus and --interpreter-devices are exclusive")
    if shard is not None:
        raise UsageError("--shard and --gpus are exclusive: --gpus shares the work itself")
    if interpreter_devices is not None:
        return interpreter_fleet(interpreter_devices)
    try:
        return local_gpus(gpus)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _shard(text: str | None) -> tuple[int, int] | None:
    from seqtune.fleet.shard import parse_shard

    try:
        return None if text is None else parse_shard(text)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _run_tune_mode(specs, device, options, launch, fleet, console: Console) -> dict[str, Any]:
    """One process, one process per local device, or one rank of a distributed launch."""
    from seqtune.tuning.tune import run_tune

    if launch is not None:
        from seqtune.fleet.distributed import run_distributed

        return run_distributed(specs, device, options, launch, console)
    if fleet is not None:
        from seqtune.fleet.local import run_local_fleet

        return run_local_fleet(specs, options, fleet, console)
    return run_tune(specs, device, options, console)


@app.command()
def verify(
    kernels: Optional[list[str]] = typer.Argument(None, help="Kernels to verify (default: all)."),
    profile_dir: Optional[Path] = typer.Option(None, help="Profiles whose tuned configs are "
                                               "verified too."),
    as_json: bool = typer.Option(False, "--json", help="Print the cases as JSON on stdout."),
) -> None:
    """Check every kernel (default and tuned configs) against its float64 reference."""
    from seqtune.tuning.tune import run_verify

    _prepare_backend()
    rows = run_verify(_specs(kernels), profile_dir)
    if as_json:
        _emit_json(rows)
    else:
        table = Table(title="seqtune verify")
        for column in ("kernel", "case", "config", "max abs err", "max rel err", "result"):
            table.add_column(column, overflow="fold")
        for row in rows:
            table.add_row(row["kernel"], row["case"], row["config_source"],
                          f"{row['max_abs_err']:.2e}", f"{row['max_rel_err']:.2e}",
                          "[green]ok[/]" if row["ok"] else f"[red]FAIL[/] {row['detail']}")
        out.print(table)
    failures = sum(not r["ok"] for r in rows)
    if failures:
        err.print(f"{failures} of {len(rows)} cases failed")
        raise typer.Exit(1)


@app.command()
def report(
    files: Optional[list[Path]] = typer.Argument(None, help="Profile files (default: every "
                                                 "profile in the profile dir)."),
    profile_dir: Optional[Path] = typer.Option(None, help="Profile dir to report."),
    kernel: Optional[str] = typer.Option(None, help="Only this kernel."),
    as_json: bool = typer.Option(False, "--json", help="Print rows as JSON on stdout."),
) -> None:
    """Show profiles (best configs, time, TFLOP/s, GB/s, % of peak, speedup) and compare them."""
    from seqtune.tuning.tune import load_report

    profiles, rows_by_file, compared = load_report(files, profile_dir, kernel)
    if as_json:
        _emit_json({"profiles": [{"file": str(p), "rows": r}
                                 for (p, _), r in zip(profiles, rows_by_file)],
                    "comparison": compared})
        return
    from seqtune.analysis.report import comparison_table, profile_table

    for (path, profile), rows in zip(profiles, rows_by_file):
        out.print(profile_table(profile, path, rows))
    if compared:
        out.print(comparison_table(compared))


@app.command()
def merge(
    files: list[Path] = typer.Argument(..., help="Profiles of one device to merge."),
    output: Optional[Path] = typer.Option(None, help="Merged profile (default: "
                                          "<profile-dir>/<device-key>.yaml); merged into when "
                                          "it exists."),
    profile_dir: Optional[Path] = typer.Option(None, help="Profile dir of the default output."),
    force: bool = typer.Option(False, "--force", help="Merge profiles of different device "
                               "keys, under the first file's device."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
) -> None:
    """Merge profiles of one device: per problem the fastest fresh entry wins, with its origin."""
    from seqtune.store.merge import DeviceMismatch, merge_into

    try:
        summary = merge_into(files, output, profile_dir, force)
    except DeviceMismatch as exc:
        raise UsageError(str(exc)) from None
    if as_json:
        _emit_json(summary.as_dict())
        return
    table = Table(title=f"seqtune merge: {summary.device_key}")
    for column in ("kernel", "entries", "in several files", "stale kept"):
        table.add_column(column)
    for kernel, count in summary.entries.items():
        table.add_row(kernel, str(count), str(summary.contested[kernel]),
                      str(summary.stale_kept[kernel]))
    out.print(table)
    for source, count in summary.kept_from.items():
        out.print(f"{count} entries from {source}", highlight=False)
    out.print(f"merged profile: {summary.output}", highlight=False)


@app.command("list")
def list_kernels(as_json: bool = typer.Option(False, "--json")) -> None:
    """List the kernels, their config spaces and presets."""
    from seqtune.registry import all_specs

    rows = [{"kernel": s.name, "family": s.family, "space_size": s.space_size,
             "parameters": list(s.space), "stages": list(s.stages),
             "search": "stagewise (one stage at a time)" if s.stagewise else "full product",
             "presets": {k: len(v) for k, v in s.presets.items()}, "description": s.description}
            for s in all_specs().values()]
    if as_json:
        _emit_json(rows)
        return
    table = Table(title="seqtune kernels")
    for column in ("kernel", "family", "space", "stages", "search", "presets", "description"):
        table.add_column(column, overflow="fold")
    for r in rows:
        table.add_row(r["kernel"], r["family"], str(r["space_size"]),
                      ", ".join(r["stages"]) or "-", r["search"],
                      " ".join(f"{k}:{v}" for k, v in r["presets"].items()), r["description"])
    out.print(table)


@app.command()
def info(as_json: bool = typer.Option(False, "--json")) -> None:
    """Show the device, library versions and the active profile."""
    from seqtune.tuning.tune import describe_environment

    facts = describe_environment()
    if as_json:
        _emit_json(facts)
        return
    table = Table(title="seqtune info", show_header=False)
    for key, value in facts.items():
        table.add_row(key, json.dumps(value, default=str) if isinstance(value, (dict, list))
                      else str(value))
    out.print(table)


@app.command()
def replay(
    logs: list[Path] = typer.Argument(..., help="Tuning logs (.jsonl) or Kernel Tuner cache "
                                      "files (.json, .json.gz)."),
    strategy: str = typer.Option("auto", help="A strategy, a comma-separated list, or 'all'."),
    budget: str = typer.Option("5%", help="Configs per run: a count, or a share of each "
                               "space such as 5%."),
    repeats: int = typer.Option(50, min=1, help="Seeded runs per strategy and space."),
    as_json: bool = typer.Option(False, "--json", help="Print results as JSON on stdout."),
) -> None:
    """Replay search strategies on recorded tuning spaces instead of running kernels: how often
    each reaches within 3% of the best valid config within the budget, and how fast."""
    from seqtune.analysis.replay import ReplayError, replay_table, run_replay, strategy_names

    try:
        names = strategy_names(strategy)
        payload = run_replay(logs, names, budget, repeats)
    except ReplayError as exc:
        raise Failure(str(exc)) from None
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if as_json:
        _emit_json(payload)
    else:
        out.print(replay_table(payload))


@app.command()
def check(
    kernels: Optional[list[str]] = typer.Argument(None, help="Kernels to check (default: all)."),
    target: Optional[list[str]] = typer.Option(None, help="GPU target, repeatable: sm_80, "
                                               "sm_86, sm_89, sm_90 (default: sm_80 and sm_90)."),
    all_configs: bool = typer.Option(False, "--all-configs", help="Every valid config, not "
                                     "just the default."),
    preset: str = typer.Option("default", help="Preset whose problems (sizes capped) are "
                               "compiled."),
    jobs: int = typer.Option(1, min=1, help="Compile in this many processes."),
    config: Optional[list[str]] = typer.Option(None, help="KEY=VALUE, repeatable: check this "
                                               "config (completed from the default) instead."),
    as_json: bool = typer.Option(False, "--json", help="Print results as JSON on stdout."),
) -> None:
    """Compile kernels for GPU targets without a GPU: registers, spills, shared memory, fit."""
    # Compiling needs real @triton.jit kernels, which TRITON_INTERPRET would replace.
    os.environ.pop("TRITON_INTERPRET", None)
    from seqtune.tuning.compiler import run_check, target_named

    try:
        targets = [target_named(t) for t in (target or ["sm_80", "sm_90"])]
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    specs = _specs(kernels)
    if preset not in PRESETS:
        raise UsageError(f"unknown preset {preset!r}; expected one of {', '.join(PRESETS)}")
    overrides = _parse_config(config or [])
    if overrides and len(specs) != 1:
        raise UsageError("--config needs exactly one kernel")
    try:
        chosen = specs[0].validate_config(overrides) if overrides else None
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    results = run_check(specs, targets, all_configs, preset, jobs, config=chosen)
    by_name = {s.name: s for s in specs}

    def is_default(r) -> bool:
        return r.config == by_name[r.kernel].default_for(r.problem, target_named(r.target).limits)

    bad_defaults = [r for r in results if is_default(r) and (not r.fits or r.spills)]
    if as_json:
        _emit_json([r.as_dict() for r in results])
    else:
        out.print(_check_table(results, is_default))
    if bad_defaults:
        err.print(f"{len(bad_defaults)} default-config checks failed, spill or do not fit")
        raise typer.Exit(1)


@app.command()
def bench(
    kernels: Optional[list[str]] = typer.Argument(None, help="Kernels to bench (default: all)."),
    preset: Optional[str] = typer.Option(None, help="tiny | quick | default | full "
                                         "(default: 'default' on a GPU, 'tiny' on the CPU)."),
    lengths: Optional[str] = typer.Option(None, help="Comma-separated sequence lengths (512, "
                                          "1k = 1024, ..., 32k): every problem's T/S/L is set "
                                          "to each."),
    profile_dir: Optional[Path] = typer.Option(None, help="Profile dir whose tuned configs are "
                                               "timed (else $SEQTUNE_PROFILE_DIR, else the "
                                               "cache dir; then the shipped profiles)."),
    as_json: bool = typer.Option(False, "--json", help="Print results as JSON on stdout "
                                 "(sorted keys, stable for CI diffs)."),
) -> None:
    """Time tuned configs, default configs and baselines (PyTorch, SDPA, fla) across lengths."""
    from seqtune.analysis.bench import (BenchOptions, bench_tables, bench_work, chart_lines, failed,
                               parse_lengths, run_bench, to_json)

    _prepare_backend()
    from seqtune.device import detect_device

    device = detect_device()
    preset = _preset_for(device, preset)
    try:
        parsed_lengths = parse_lengths(lengths) if lengths is not None else None
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    specs = _specs(kernels)
    options = BenchOptions(preset, parsed_lengths, profile_dir)
    with progress_bar(err) as progress:
        task = progress.add_task("bench", total=len(bench_work(specs, options)))
        payload = run_bench(specs, device, options, on_problem=lambda done, label: progress.update(
            task, completed=done, description=label))
        progress.update(task, completed=len(payload["results"]), description="bench")
    if as_json:
        sys.stdout.write(to_json(payload))
    else:
        for table in bench_tables(payload):
            out.print(table)
        out.print(f"time against length ({payload['timer']}; one log scale for all lines)")
        for line in chart_lines(payload):
            out.print(line, markup=False, highlight=False)
    broken = failed(payload)
    if broken:
        err.print(f"{len(broken)} seqtune runs failed; first: {broken[0]}", markup=False)
        raise typer.Exit(1)


def _parse_config(pairs: list[str]) -> dict[str, Any]:
    """``["BLOCK_M=128", "causal=true"]`` -> ``{"BLOCK_M": 128, "causal": True}`` (YAML scalars)."""
    import yaml

    parsed = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key:
            raise UsageError(f"--config {pair!r}: expected KEY=VALUE")
        parsed[key.strip()] = yaml.safe_load(value)
    return parsed


def _check_table(results, is_default) -> Table:
    from seqtune.analysis.report import format_config, format_problem

    table = Table(title="seqtune check (compiled for GPU targets, no GPU needed)")
    for column in ("kernel", "target", "problem", "config", "regs", "spill B", "smem B",
                   "result"):
        table.add_column(column, overflow="fold")
    for r in results:
        info = r.as_dict()
        verdict = ("[red]does not fit[/] " + "; ".join(r.reasons) if r.reasons else
                   "[red]compile error[/] " + (r.error or "") if not r.compiled else
                   "[yellow]spills[/]" if r.spills else "[green]ok[/]")
        label = "default" if is_default(r) else format_config(r.config)
        table.add_row(r.kernel, r.target, format_problem(r.problem), label,
                      str(info["registers"]), str(info["spill_bytes"]),
                      str(info["shared_bytes"]), verdict)
    return table


def main() -> None:
    """Entry point: runs the app, turning known errors into one line and an exit code."""
    from seqtune.store.profile_file import ProfileError

    try:
        app(standalone_mode=True)
    except UsageError as exc:
        # soft_wrap: an error is one line however long its paths, not wrapped at the width
        err.print(f"seqtune: error: {exc}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
    except (Failure, ProfileError) as exc:
        err.print(f"seqtune: error: {exc}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        err.print("seqtune: interrupted")
        sys.exit(130)
    except Exception as exc:  # the last line of defence: one line, unless debugging
        if os.environ.get("SEQTUNE_DEBUG"):
            raise
        err.print(f"seqtune: error: {type(exc).__name__}: {exc} (SEQTUNE_DEBUG=1 for a "
                  "traceback)", markup=False, highlight=False, soft_wrap=True)
        sys.exit(1)


def progress_bar(console: Console) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, transient=False)
