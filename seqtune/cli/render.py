"""What the commands print, designed for 80 columns (wider consoles show more columns): each
view turns what a ``seqtune.api`` call returned into headings, tables (one per kernel, the
varying problem fields as columns, configs as compact strings) and notes, and computes
nothing of its own. ``render_report`` and ``render_bench`` hold the report and bench views."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from seqtune.cli.cells import (
    config_legend,
    config_text,
    count_text,
    number_text,
    problem_text,
    shorten,
    time_text,
)
from seqtune.cli.layout import (
    Column,
    heading,
    print_lines,
    print_path,
    print_table,
    with_problem,
)
from seqtune.tuning.timing import INTERPRETER_LABEL

NOTE_LENGTH = 150  # a reason in a note, at most two lines of 80 columns


def by_kernel(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        grouped.setdefault(row["kernel"], []).append(row)
    return grouped


def fixed_line(problems: list[dict[str, Any]]) -> str | None:
    """``"all: B=1 Hq=2 dtype=bf16"``: the fields every problem shares (a lone problem's
    fields as ``"problem: ..."``, since its table has no field that varies), or None."""
    from seqtune.cli.cells import fixed_fields

    if len(problems) == 1:
        return f"problem: {problem_text(problems[0])}" if problems[0] else None
    fixed = fixed_fields(problems)
    return f"all: {problem_text(fixed)}" if fixed else None


def speedup_cell(speedup: float | None, interpreter: bool) -> str:
    """The speedup over the default: on a GPU green when beyond the tuner's noise floor (within
    it the default wins the tie); on the interpreter never highlighted, since CPU wall-clock
    differences between configs are noise, not wins."""
    from seqtune.tuning.tuner import MIN_NOISE

    if speedup is None:
        return "-"
    text = f"{speedup:.2f}x"
    if interpreter:
        return f"[dim]{text}[/]"
    return f"[green]{text}[/]" if speedup > 1 + MIN_NOISE else text


def speedup_header(interpreter: bool) -> str:
    return "CPU vs default" if interpreter else "vs default"


INTERPRETER_SPEEDUPS = ("times and speedups are CPU wall-clock in the Triton interpreter, not "
                        "GPU timings: a config that is faster here is not a GPU win")


# ------------------------------------------------------------------------------------ tune

def show_tune(console: Console, results: dict[str, Any]) -> None:
    """Per profile the tune wrote (one, or one per device type for a fleet): a table per
    kernel, the time spent, and where the profile and the tuning log are."""
    for summary in results.get("summaries") or [results]:
        interpreter = summary["timer"] == INTERPRETER_LABEL
        for kernel, problems in by_kernel(summary["problems"]).items():
            heading(console, f"{kernel}: {count_text(len(problems), 'problem')} tuned")
            _tune_table(console, problems, interpreter)
        problems = summary["problems"]
        compile_s = sum(p["compile_s"] for p in problems)
        print_lines(console, [
            "",
            INTERPRETER_SPEEDUPS if interpreter else "times: do_bench median on the GPU",
            f"waiting on the compiler {compile_s:.1f} s ({sum(p['compiled'] for p in problems)} "
            f"configs compiled ahead), benchmarking "
            f"{sum(p['benchmark_s'] for p in problems):.1f} s"])
        print_path(console, "profile written", summary["profile"])
        print_path(console, "tuning log", summary["log"])


def _tune_table(console: Console, problems: list[dict[str, Any]], interpreter: bool) -> None:
    width = console.width
    line = fixed_line([p["problem"] for p in problems])
    if line:
        print_lines(console, [line])
    winners = [p["winner"] for p in problems]
    columns = with_problem([p["problem"] for p in problems], width, [
        Column("best config", [config_text(w) if w else "[red]none valid[/]" for w in winners]),
        Column("time", [time_text(p["time_us"]["median"]) if p["winner"] else "-"
                        for p in problems], justify="right"),
        Column(speedup_header(interpreter),
               [speedup_cell(p.get("speedup_vs_default"), interpreter) for p in problems],
               justify="right"),
        Column("tried", [str(p["tried"]) for p in problems], priority=1, justify="right"),
        Column("failed", [" ".join(f"{k} {v}" for k, v in p["failed"].items() if v) or "-"
                          for p in problems], priority=2, wrap=True, min_width=10),
        Column("compile", [f"{p['compile_s']:.1f}s" for p in problems], priority=3,
               justify="right"),
        Column("bench", [f"{p['benchmark_s']:.1f}s" for p in problems], priority=3,
               justify="right"),
    ])
    print_table(console, columns)
    legend = config_legend(next((w for w in winners if w), None))
    if legend:
        print_lines(console, [legend])
    # the whole reason, up to the worst error and its tolerance (--json has it too)
    print_lines(console, [shorten(f"none valid {problem_text(p['problem'])}: {p['reason']}",
                                  2 * NOTE_LENGTH)
                          for p in problems if not p["winner"] and p.get("reason")])


# ---------------------------------------------------------------------------------- verify

VERIFY_LEGEND = ("config: default = the kernel's own; loader = the one the runtime launches "
                 "this case with (from the profile); tuned #N = the profile's Nth other tuned "
                 "config valid for the case")

def show_verify(console: Console, rows: list[dict[str, Any]]) -> None:
    """Per kernel: each (case, config) with its error against the float64 reference; the
    first line of each failure's detail below the table."""
    for kernel, kernel_rows in by_kernel(rows).items():
        failed = [r for r in kernel_rows if not r["ok"]]
        heading(console, f"{kernel}: {len(kernel_rows) - len(failed)} of {len(kernel_rows)} "
                         "cases agree with the float64 reference")
        problems = [r["problem"] for r in kernel_rows]
        repeat = {i for i in range(1, len(problems)) if problems[i] == problems[i - 1]}
        line = fixed_line(problems)
        if line:
            print_lines(console, [line])
        sources = [r["config_source"].partition(":")[0] for r in kernel_rows]
        columns = with_problem(problems, console.width, blank=repeat, rest=[
            Column("config", sources),
            Column("tiles/warps", [config_text(r["config"]) for r in kernel_rows], priority=1),
            Column("max abs err", [f"{r['max_abs_err']:.1e}" for r in kernel_rows],
                   priority=2, justify="right"),
            Column("max rel err", [f"{r['max_rel_err']:.1e}" for r in kernel_rows],
                   justify="right"),
            Column("result", ["[green]ok[/]" if r["ok"] else "[red]FAIL[/]"
                              for r in kernel_rows]),
        ])
        print_table(console, columns)
        print_lines(console, [VERIFY_LEGEND])
        for row in failed:
            print_lines(console, [f"FAIL {problem_text(row['problem'])} "
                                  f"{row['config_source']}: "
                                  f"{shorten(row['detail'], NOTE_LENGTH)}"])


# --------------------------------------------------------------------------- merge, list

def show_merge(console: Console, summary) -> None:
    heading(console, f"merged profiles of {summary.device_key}")
    kernels = list(summary.entries)
    print_table(console, [
        Column("kernel", kernels),
        Column("entries", [str(summary.entries[k]) for k in kernels], justify="right"),
        Column("in several files", [str(summary.contested[k]) for k in kernels],
               justify="right"),
        Column("stale kept", [str(summary.stale_kept[k]) for k in kernels], justify="right"),
    ])
    for source, count in summary.kept_from.items():
        print_path(console, f"{count_text(count, 'entry')} from", source)
    print_path(console, "profile written", summary.output)


def show_kernels(console: Console, rows: list[dict[str, Any]]) -> None:
    search = {True: "stagewise", False: "product"}
    names = list(dict.fromkeys(k for r in rows for k in r["presets"]))
    print_table(console, [
        Column("kernel", [r["kernel"] for r in rows]),
        Column("family", [r["family"] for r in rows], priority=1),
        Column("configs", [str(r["space_size"]) for r in rows], justify="right"),
        Column("stages", [" ".join(r["stages"]) or "-" for r in rows], wrap=True,
               min_width=8),
        Column("search", [search[r["search"].startswith("stagewise")] for r in rows]),
        Column("presets", ["/".join(str(r["presets"].get(k, "-")) for k in names)
                           for r in rows], justify="right"),
        Column("description", [r["description"] for r in rows], priority=2, wrap=True,
               min_width=30),
    ])
    print_lines(console, ["configs: size of the config space; search: stagewise (one stage "
                          "at a time) or the full product; presets: problems in "
                          f"{'/'.join(names)} (`seqtune tune --preset NAME`); "
                          "`seqtune list --json` has every description"])


# ------------------------------------------------------------------------------------ info

def show_info(console: Console, facts: dict[str, Any]) -> None:
    device = facts["device"]
    software = facts["software"]
    print_lines(console, [
        f"device: {device['name']} (key {device['key']}, backend {device['backend']}"
        + (f", sm_{device['compute_capability'].replace('.', '')}"
           if device.get("compute_capability") else "")
        + (f", {device['arch']}, {device['sm_count']} CUs" if device.get("arch") else "") + ")",
        "software: " + ", ".join(f"{k} {v}" for k, v in software.items() if v),
        f"timings: {facts['timings']}"])
    print_path(console, "profile dir", facts["profile_dir"])
    print_lines(console, ["profile files the runtime reads for this device, in order:"])
    for status in facts["profile_files"]:
        print_path(console, f"  {status['state']}", status["file"])
        if status["state"] == "skipped":
            print_lines(console, [f"    why: {shorten(status['reason'], NOTE_LENGTH)}"])
        elif status["state"] == "used":
            entries = ", ".join(f"{k} {v}" for k, v in status["entries"].items()) or "none"
            print_lines(console, [f"    entries: {entries}"])
            if status["ignored_kernels"]:
                print_lines(console, ["    ignored (unknown kernels): "
                                      + ", ".join(status["ignored_kernels"])])
    if not facts["active_profile_files"]:
        print_lines(console, ["no usable profile: every kernel runs its default config"])


# ----------------------------------------------------------------------------------- check

def show_check(console: Console, results: list) -> None:
    """Per kernel: each (target, problem, config) compiled, with registers, spills, shared
    memory and the verdict; what does not fit or compile is explained below the table."""
    rows = [{**r.as_dict(), "result": r} for r in results]
    for kernel, kernel_rows in by_kernel(rows).items():
        targets = ", ".join(dict.fromkeys(r["target"] for r in kernel_rows))
        heading(console, f"{kernel}: compiled for {targets} (no GPU needed)")
        problems = [r["problem"] for r in kernel_rows]
        target = Column("target", [r["target"] for r in kernel_rows])
        columns = with_problem(problems, console.width, before=[target], rest=[
            Column("config", ["default" if r["is_default"] else config_text(r["config"])
                              for r in kernel_rows]),
            Column("regs", [number_text(r["registers"], "{}") for r in kernel_rows],
                   justify="right"),
            Column("spill B", [number_text(r["spill_bytes"], "{}") for r in kernel_rows],
                   justify="right"),
            Column("smem B", [number_text(r["shared_bytes"], "{}") for r in kernel_rows],
                   justify="right", priority=1),
            *_amd_columns(kernel_rows),
            Column("result", [_verdict(r["result"]) for r in kernel_rows]),
        ])
        print_table(console, columns)
        for r in kernel_rows:
            result = r["result"]
            why = "; ".join(result.reasons) if result.reasons else (
                result.error if not result.compiled else None)
            if why:
                print_lines(console, [f"{r['target']} {problem_text(r['problem'])}: "
                                      f"{shorten(why, NOTE_LENGTH)}"])


def _amd_columns(rows: list[dict]) -> list[Column]:
    """For AMD targets: the occupancy (waves per SIMD; regs are VGPRs, AGPRs included)."""
    if all(r["occupancy"] is None for r in rows):
        return []
    return [Column("waves", [number_text(r["occupancy"], "{}") for r in rows], justify="right",
                   priority=1)]


def _verdict(result) -> str:
    if result.reasons:
        return "[red]no fit[/]"
    if not result.compiled:
        return "[red]error[/]"
    return "[yellow]spills[/]" if result.spills else "[green]ok[/]"


# ---------------------------------------------------------------------------------- replay

def show_replay(console: Console, payload: dict[str, Any]) -> None:
    """Per recorded space: each strategy's share of runs reaching the best, its median
    evaluations, the final gap, and whether it beats random search."""
    print_lines(console, [f"seqtune replay: budget {payload['budget']}, {payload['repeats']} "
                          "seeded runs per strategy and recorded space"])
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in payload["results"]:
        groups.setdefault((row["source"], row["problem"]), []).append(row)
    for (source, problem), rows in groups.items():
        heading(console, f"{'/'.join(Path(source).parts[-2:])}: {problem}")
        print_lines(console, [f"{rows[0]['space']} configs recorded, budget {rows[0]['budget']}"
                              f" ({rows[0]['budget_share']:.1%})"])
        verdict = {None: "-", True: "[green]yes[/]", False: "[red]no[/]"}
        print_table(console, [
            Column("strategy", [r["strategy"] + (f" ({r['runs_as']})"
                                                 if r["runs_as"] != r["strategy"] else "")
                                for r in rows]),
            Column("reached", [f"{r['reached_share']:.0%}" for r in rows], justify="right"),
            Column("evaluations", ["-" if r["median_evaluations"] is None
                                   else f"{r['median_evaluations']:g}" for r in rows],
                   justify="right"),
            Column("final gap", [f"{r['mean_final_gap']:.2%}" for r in rows], justify="right"),
            Column("beats random", [verdict[r["beats_random"]] for r in rows]),
        ])
    print_lines(console, [
        "", f"reached: the share of runs whose pick is within {payload['tolerance']:.0%} of "
        "the best valid config; evaluations: the median configs measured to get there; final "
        "gap: how much slower than the best the final picks are, on average"])

