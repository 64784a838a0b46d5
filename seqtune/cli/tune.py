"""``seqtune tune``: search each kernel's config space on this device and write its profile."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from seqtune.cli.app import ConsoleReporter, app, emit_json, err, folder, out


@app.command()
def tune(
    kernels: Optional[list[str]] = typer.Argument(None, help="Kernels to tune (default: all)."),
    preset: Optional[str] = typer.Option(None, help="tiny | quick | default | full "
                                         "(default: 'default' on a GPU, 'tiny' on the CPU)."),
    profile_dir: Optional[Path] = typer.Option(None, parser=folder, help="Where profiles are written "
                                               "(default: $SEQTUNE_PROFILE_DIR, else the user "
                                               "cache dir, where the runtime, report, verify, "
                                               "bench and info read)."),
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
    model_config: Optional[Path] = typer.Option(None, help="A model's config.json: tune exactly "
                                                "the problems its layers produce (KERNELs, if "
                                                "named, filter them)."),
    lengths: Optional[str] = typer.Option(None, help="With --model-config: prefill lengths "
                                          "(1k,4k,32k; default: the preset's)."),
    batch: Optional[str] = typer.Option(None, help="With --model-config: batch sizes (1,8; "
                                        "default 1)."),
    decode: bool = typer.Option(False, "--decode", help="With --model-config: also the "
                                "one-token decode steps (attention over the cache, step "
                                "kernels)."),
    training: bool = typer.Option(False, "--training", help="With --model-config: also the "
                                  "backward passes."),
    backward: bool = typer.Option(True, "--backward/--forward-only", help="A named kernel's "
                                  "backward (<name>_bwd) is tuned with it, since training runs "
                                  "both; --forward-only leaves it out."),
    workload: Optional[Path] = typer.Option(None, help="A file of `seqtune record`: tune the "
                                            "recorded calls of its kernels (KERNELs, if named, "
                                            "filter them), each config checked against the "
                                            "default config's outputs."),
) -> None:
    """Search each kernel's config space on this device and write its profile.

    Under torchrun (or any launcher that sets RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) each
    rank tunes its share and rank 0 writes the profiles."""
    from seqtune import api

    console = err if as_json else out
    try:
        results = api.tune(kernels, preset=preset, profile_dir=profile_dir,
                           max_configs=max_configs, budget_s=budget_s, seed=seed,
                           strategy=strategy, keep_spilling=keep_spilling, isolate=isolate,
                           timeout_s=timeout_s, resume=resume, jobs=jobs,
                           compile_target=compile_target, gpus=gpus, shard=shard,
                           interpreter_devices=interpreter_devices,
                           model_config=model_config, lengths=lengths, batch=batch,
                           decode=decode, training=training, with_backward=backward,
                           workload=workload, reporter=ConsoleReporter(console))
    except KeyboardInterrupt:
        err.print("seqtune: interrupted. Every measured candidate is in the tuning log and every "
                  "finished problem in the profile; continue with the same command plus --resume.")
        raise typer.Exit(130) from None
    from seqtune.cli.render import show_tune  # after the tune: it loads torch, and a bad
    # --model-config is refused before anything does

    if results.get("rank", 0) == 0 and "problems" in results:  # rank 0 speaks for all
        show_tune(console, results)
    if as_json and results.get("rank", 0) == 0:
        emit_json(results)
    if results.get("errors") or any(r["winner"] is None for r in results["problems"]):
        raise typer.Exit(1)

