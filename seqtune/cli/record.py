"""``seqtune record``: run a program and record the calls of its autotuned Triton kernels, for
``seqtune tune --workload``. Nothing heavy is imported before the command runs."""
from __future__ import annotations

from pathlib import Path

import typer

from seqtune.cli.app import app, emit_json, err, out


@app.command(context_settings={"allow_interspersed_args": False})
def record(
    command: list[str] = typer.Argument(..., help="The program to run, after --: "
                                        "seqtune record --output W.jsonl -- python train.py"),
    output: Path = typer.Option(..., "--output", "-o", help="The workload file to write "
                                "(JSON lines; replaced)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
) -> None:
    """Run a program and record the calls of its autotuned Triton kernels.

    Every distinct call of every triton.autotune and seqtune.autotune kernel in the program's
    Python processes: kernel, configs, key values, argument shapes, dtypes, strides, scalars,
    small integer tensors. Nothing is benchmarked: a kernel with no profile entry runs its
    default or first config. Tune the recording with `seqtune tune --workload W.jsonl`. Exits
    with the program's exit code."""
    from seqtune import api

    summary = api.record(command, output)
    if as_json:
        emit_json(summary)
    else:
        console = out
        for kernel, calls in summary["kernels"].items():
            console.print(f"{kernel}: {calls} distinct calls", markup=False, highlight=False)
        console.print(f"{summary['calls']} calls recorded in {summary['output']}; tune them with "
                      f"`seqtune tune --workload {summary['output']}`", markup=False,
                      highlight=False, soft_wrap=True)
    if summary["returncode"] != 0:
        err.print(f"seqtune record: the program exited with {summary['returncode']}",
                  markup=False, highlight=False)
        raise typer.Exit(summary["returncode"] if summary["returncode"] > 0 else 1)
