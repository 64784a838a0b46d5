"""Commands about profiles and kernels: verify, report, merge, list, info."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from seqtune.cli import render
from seqtune.cli.app import app, emit_json, err, out


@app.command()
def verify(
    kernels: Optional[list[str]] = typer.Argument(None, help="Kernels to verify (default: all)."),
    profile_dir: Optional[Path] = typer.Option(None, help="Profiles whose tuned configs are "
                                               "verified too."),
    as_json: bool = typer.Option(False, "--json", help="Print the cases as JSON on stdout."),
) -> None:
    """Check every kernel (default and tuned configs) against its float64 reference."""
    from seqtune import api

    rows = api.verify(kernels, profile_dir)
    if as_json:
        emit_json(rows)
    else:
        out.print(render.verify_table(rows))
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
    from seqtune import api

    result = api.report(files, profile_dir, kernel)
    if as_json:
        emit_json(result.as_dict())
        return
    for (path, profile), rows in zip(result.profiles, result.rows_by_file):
        out.print(render.profile_table(profile, path, rows))
    if result.comparison:
        out.print(render.comparison_table(result.comparison))


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
    from seqtune import api

    summary = api.merge(files, output, profile_dir, force)
    if as_json:
        emit_json(summary.as_dict())
        return
    out.print(render.merge_table(summary))
    for source, count in summary.kept_from.items():
        out.print(f"{count} entries from {source}", highlight=False)
    out.print(f"merged profile: {summary.output}", highlight=False)


@app.command("list")
def list_kernels(as_json: bool = typer.Option(False, "--json")) -> None:
    """List the kernels, their config spaces and presets."""
    from seqtune import api

    rows = api.kernels()
    if as_json:
        emit_json(rows)
    else:
        out.print(render.kernels_table(rows))


@app.command()
def info(as_json: bool = typer.Option(False, "--json")) -> None:
    """Show the device, library versions and the active profile."""
    from seqtune import api

    facts = api.info()
    if as_json:
        emit_json(facts)
    else:
        out.print(render.info_table(facts))
