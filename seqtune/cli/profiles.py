"""Commands about profiles and kernels: verify, report, merge, list, info. Nothing heavy is
imported before a command runs (``--help`` loads neither torch nor Triton)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from seqtune.cli.app import app, emit_json, err, folder, out

PROFILE_DIR_HELP = ("Profile dir (default: $SEQTUNE_PROFILE_DIR, else the user cache dir, "
                    "where `seqtune tune` writes and the runtime reads).")


@app.command()
def verify(
    kernels: Optional[list[str]] = typer.Argument(None, help="Kernels to verify (default: all)."),
    profile_dir: Optional[Path] = typer.Option(None, parser=folder, help="Profile dir whose tuned configs are "
                                               "verified too (default: $SEQTUNE_PROFILE_DIR, "
                                               "else the user cache dir)."),
    as_json: bool = typer.Option(False, "--json", help="Print the cases as JSON on stdout."),
) -> None:
    """Check every kernel (default and tuned configs) against its float64 reference."""
    from seqtune import api
    from seqtune.cli.layout import print_path
    from seqtune.cli.render import show_verify

    location = api.profile_location(profile_dir)
    rows = api.verify(kernels, profile_dir)
    console = err if as_json else out
    if location.exists:
        print_path(console, "tuned configs from", location.file)
    else:
        print_path(console, "no profile (default configs only) at", location.file)
    if as_json:
        emit_json(rows)
    else:
        show_verify(out, rows)
    failures = sum(not r["ok"] for r in rows)
    if failures:
        err.print(f"{failures} of {len(rows)} cases failed")
        raise typer.Exit(1)


@app.command()
def report(
    files: Optional[list[Path]] = typer.Argument(None, help="Profile files (default: every "
                                                 "profile in the profile dir)."),
    profile_dir: Optional[Path] = typer.Option(None, parser=folder, help=PROFILE_DIR_HELP),
    kernel: Optional[str] = typer.Option(None, help="Only this kernel."),
    as_json: bool = typer.Option(False, "--json", help="Print rows as JSON on stdout."),
    html: Optional[Path] = typer.Option(None, "--html", help="Also write a self-contained HTML "
                                        "page with the figures to this file."),
    model_config: Optional[Path] = typer.Option(None, help="A model's config.json: show which "
                                                "of the problems it runs the profile covers."),
    lengths: Optional[str] = typer.Option(None, help="With --model-config: prefill lengths."),
    batch: Optional[str] = typer.Option(None, help="With --model-config: batch sizes."),
    decode: bool = typer.Option(False, "--decode", help="With --model-config: decode steps."),
    training: bool = typer.Option(False, "--training", help="With --model-config: backward "
                                  "passes."),
) -> None:
    """Show profiles (best configs, time, % of peak, speedup) and compare them: two or more
    files show the speedup of each over the first as a bar chart. With --model-config: which
    of a model's problems the profile covers."""
    from seqtune import api

    if model_config is not None:
        rows = api.coverage(model_config, profile_dir, lengths=lengths, batch=batch,
                            decode=decode, training=training)
        if as_json:
            emit_json(rows)
            return
        from seqtune.cli.render_report import show_coverage

        show_coverage(out, model_config, rows)
        return
    result = api.report(files, profile_dir, kernel)
    if html is not None:
        from seqtune.cli.html import report_page, write_page

        write_page(html, report_page(result), err if as_json else out)
    if as_json:
        emit_json(result.as_dict())
        return
    from seqtune.cli.render_report import show_report

    show_report(out, result)


@app.command()
def merge(
    files: list[Path] = typer.Argument(..., help="Profiles of one device to merge."),
    output: Optional[Path] = typer.Option(None, help="Merged profile (default: "
                                          "<profile-dir>/<device-key>.yaml); merged into when "
                                          "it exists."),
    profile_dir: Optional[Path] = typer.Option(None, parser=folder, help="Profile dir of the default output "
                                               "(default: $SEQTUNE_PROFILE_DIR, else the user "
                                               "cache dir)."),
    force: bool = typer.Option(False, "--force", help="Merge profiles of different device "
                               "keys, under the first file's device."),
    skip_invalid: bool = typer.Option(False, "--skip-invalid", help="Leave out invalid entries "
                                      "(each named on stderr) instead of refusing a file that "
                                      "has them."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
) -> None:
    """Merge profiles of one device: per problem the fastest fresh entry wins, with its origin."""
    from seqtune import api

    if output is None:
        api.profile_folder(profile_dir)  # a file named as the profile dir: bad usage
    summary = api.merge(files, output, profile_dir, force, skip_invalid)
    for skipped in summary.skipped:
        err.print(f"seqtune: skipped {skipped}", markup=False, highlight=False, soft_wrap=True)
    if as_json:
        emit_json(summary.as_dict())
        return
    from seqtune.cli.render import show_merge

    show_merge(out, summary)


@app.command("list")
def list_kernels(as_json: bool = typer.Option(False, "--json")) -> None:
    """List the kernels, their config spaces and presets."""
    from seqtune import api

    rows = api.list_kernels()
    if as_json:
        emit_json(rows)
        return
    from seqtune.cli.render import show_kernels

    show_kernels(out, rows)


@app.command()
def info(
    profile_dir: Optional[Path] = typer.Option(None, parser=folder, help="Show the profiles the runtime would "
                                               "read with SEQTUNE_PROFILE_DIR set to this dir "
                                               "(default: $SEQTUNE_PROFILE_DIR, else the user "
                                               "cache dir)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Show the device, library versions, the profile dir and the profile files the runtime
    reads (used, or skipped and why)."""
    from seqtune import api

    facts = api.info(profile_dir)
    if as_json:
        emit_json(facts)
        return
    from seqtune.cli.render import show_info

    show_info(out, facts)
