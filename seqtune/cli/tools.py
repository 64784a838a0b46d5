"""Commands that study kernels and searches: check, bench, replay."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

import typer

from seqtune.cli import render
from seqtune.cli.app import ConsoleReporter, app, emit_json, err, out
from seqtune.errors import UsageError


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
    else:
        out.print(render.replay_table(payload))


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
    from seqtune import api

    results = api.check(kernels, target or ["sm_80", "sm_90"], all_configs, preset, jobs,
                        config=_parse_config(config or []) or None)
    bad_defaults = [r for r in results if r.is_default and (not r.fits or r.spills)]
    if as_json:
        emit_json([r.as_dict() for r in results])
    else:
        out.print(render.check_table(results))
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
    from seqtune import api
    from seqtune.analysis.bench import failed, to_json
    from seqtune.cli.render_bench import bench_tables, chart_lines

    payload = api.bench(kernels, preset, lengths, profile_dir, reporter=ConsoleReporter(err))
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
