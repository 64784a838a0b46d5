"""Commands that study kernels and searches: check, bench, replay. Nothing heavy is imported
before a command runs (``--help`` loads neither torch nor Triton)."""
from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any, Optional

import typer

from seqtune.cli.app import ConsoleReporter, app, emit_json, err, folder, out
from seqtune.errors import UsageError

# Triton 3.9 warns on every first compile that its FP-fusion default will change in 3.10. The
# check compiles exactly as the kernels do at run time (Triton's default, or the user's
# TRITON_DEFAULT_FP_FUSION), so the warning tells a `check` user nothing: it is not shown.
FP_FUSION_WARNING = "TRITON_DEFAULT_FP_FUSION is unset"


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
    from seqtune import api

    payload = api.replay(logs, strategy, budget, repeats)
    if as_json:
        emit_json(payload)
        return
    from seqtune.cli.render import show_replay

    show_replay(out, payload)


@app.command()
def check(
    kernels: Optional[list[str]] = typer.Argument(None, help="Kernels to check (default: all)."),
    target: Optional[list[str]] = typer.Option(None, help="GPU target, repeatable: sm_80, "
                                               "sm_86, sm_89, sm_90; AMD gfx90a, gfx942, gfx950, "
                                               "gfx1100 (default: sm_80 and sm_90)."),
    all_configs: bool = typer.Option(False, "--all-configs", help="Every valid config, not "
                                     "just the default."),
    preset: str = typer.Option("default", help="Preset whose problems (sizes capped) are "
                               "compiled."),
    jobs: int = typer.Option(1, min=1, help="Compile in this many processes."),
    config: Optional[list[str]] = typer.Option(None, help="KEY=VALUE, repeatable: check this "
                                               "config (completed from the default) instead."),
    as_json: bool = typer.Option(False, "--json", help="Print results as JSON on stdout."),
    model_config: Optional[Path] = typer.Option(None, help="A model's config.json: compile "
                                                "exactly the problems its layers run (KERNELs, "
                                                "if named, filter them)."),
    lengths: Optional[str] = typer.Option(None, help="With --model-config: prefill lengths "
                                          "(default 1k,4k)."),
    batch: Optional[str] = typer.Option(None, help="With --model-config: batch sizes."),
    decode: bool = typer.Option(False, "--decode", help="With --model-config: also the decode "
                                "steps."),
    training: bool = typer.Option(False, "--training", help="With --model-config: also the "
                                  "backward passes."),
) -> None:
    """Compile kernels for GPU targets without a GPU: registers, spills, shared memory, fit."""
    from seqtune import api

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=FP_FUSION_WARNING)
        results = api.check(kernels, target or ["sm_80", "sm_90"], all_configs, preset, jobs,
                            config=_parse_config(config or []) or None,
                            model_config=model_config, lengths=lengths, batch=batch,
                            decode=decode, training=training)
    bad_defaults = [r for r in results if r.is_default and (not r.fits or r.spills)]
    if as_json:
        emit_json([r.as_dict() for r in results])
    else:
        from seqtune.cli.render import show_check

        show_check(out, results)
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
    profile_dir: Optional[Path] = typer.Option(None, parser=folder, help="Profile dir whose tuned configs are "
                                               "timed (else $SEQTUNE_PROFILE_DIR, else the "
                                               "user cache dir; then the shipped profiles)."),
    as_json: bool = typer.Option(False, "--json", help="Print results as JSON on stdout "
                                 "(sorted keys, stable for CI diffs)."),
    html: Optional[Path] = typer.Option(None, "--html", help="Also write a self-contained HTML "
                                        "page with the figures to this file."),
) -> None:
    """Time tuned configs, default configs and baselines (PyTorch, SDPA, fla) across lengths."""
    from seqtune import api
    from seqtune.analysis.bench import failed, to_json
    from seqtune.cli.render_bench import show_bench

    payload = api.bench(kernels, preset, lengths, profile_dir, reporter=ConsoleReporter(err))
    if html is not None:
        from seqtune.cli.html import bench_page, write_page

        write_page(html, bench_page(payload), err if as_json else out)
    if as_json:
        sys.stdout.write(to_json(payload))
    else:
        show_bench(out, payload)
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
