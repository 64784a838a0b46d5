"""Every view of the command line at 80 columns (a standard terminal) and with no terminal at all
(a pipe, a CI log): no line over 80 characters, kernel names and numbers whole, one table per
kernel with only the varying problem fields, compact configs, times with units; and how
interpreter speedups are labelled (issue 16, points 2 and 6)."""
from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import triton
import yaml
from rich.console import Console

from seqtune.cli.cells import config_lines, config_text, shorten, time_text, varying_fields
from seqtune.registry import get_spec, source_hash

ROOT = Path(__file__).parent.parent
H100 = {"key": "nvidia-h100-80gb-hbm3", "name": "NVIDIA H100 80GB HBM3", "backend": "cuda",
        "compute_capability": "9.0", "sm_count": 132, "memory_bytes": 85520809984,
        "shared_memory_per_block": 232448, "driver": "550.54.15"}
WIDE_KERNELS = ("attention", "delta_rule", "attention_decode")


def render(show, *args, width: int = 80) -> str:
    """What ``show(console, *args)`` prints on a console of ``width`` columns that is not a
    terminal (no colour codes, as in a pipe)."""
    console = Console(width=width, file=io.StringIO(), force_terminal=False, color_system=None)
    show(console, *args)
    return console.file.getvalue()


def tokens(text: str) -> set[str]:
    return {t.strip(":,;()[]") for t in text.split()}


def assert_fits(text: str, width: int = 80, words: tuple[str, ...] = ()) -> None:
    """No line wider than ``width``, and each of ``words`` appears whole somewhere."""
    for line in text.splitlines():
        assert len(line) <= width, f"{len(line)} columns: {line!r}"
    found = tokens(text)
    missing = [w for w in words if w not in found]
    assert not missing, f"not whole in the output: {missing}\n{text}"


def gpu_entry(spec, problem: dict, index: int, scale: float) -> dict:
    median = (123.456 + 997.0 * index) * scale
    return {"problem": dict(problem), "config": dict(spec.default_config),
            "time_us": {"median": median, "p20": median * 0.98, "p80": median * 1.04},
            "default_time_us": median * 1.31, "speedup_vs_default": 1.31,
            "tflops": spec.flops(problem) / median / 1e6,
            "gbps": spec.bytes_moved(problem) / median / 1e3, "max_rel_err": 1.5e-3,
            "tried": 40, "failed": {"compile": 0, "resources": 3, "mismatch": 1, "runtime": 0,
                                    "timeout": 0},
            "timer": "gpu-do_bench", "triton": triton.__version__,
            "source_hash": source_hash(spec.name)}


def gpu_profile(path: Path, scale: float = 1.0, kernels=WIDE_KERNELS) -> Path:
    """A profile as an H100 tune of the kernels' default presets would write (many problems,
    many varying fields, staged configs)."""
    sections = {}
    for name in kernels:
        spec = get_spec(name)
        sections[name] = {"source_hash": source_hash(name),
                          "entries": [gpu_entry(spec, p, i, scale)
                                      for i, p in enumerate(spec.presets["default"])]}
    path.write_text(yaml.safe_dump({
        "schema": "seqtune-profile/1", "device": H100,
        "software": {"seqtune": "0.1.0", "triton": triton.__version__, "torch": "2.13.0",
                     "cuda": "12.8", "python": "3.11.7"},
        "kernels": sections}, sort_keys=False))
    return path


def expected_times(path: Path) -> list[str]:
    data = yaml.safe_load(path.read_text())
    return [time_text(e["time_us"]["median"]) for s in data["kernels"].values()
            for e in s["entries"]]


# ------------------------------------------------------------------------------ the cells

def test_configs_are_compact_and_grouped_per_stage():
    assert config_lines({"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 8, "num_stages": 1}) == \
        ["64x64 w8 s1"]
    staged = {"BT": 32, "wy.BK": 32, "wy.BV": 64, "wy.num_warps": 8, "wy.num_stages": 2,
              "h.BV": 32, "h.num_warps": 4, "h.num_stages": 2}
    assert config_lines(staged) == ["BT=32", "wy 32x64 w8 s2", "h 32 w4 s2"]
    assert config_text({"BLOCK": 16, "SKIP_TAIL": False, "num_warps": 2}) == \
        "16 w2 no-SKIP_TAIL"


def test_times_have_units_and_reasons_are_cut_at_a_word():
    assert [time_text(t) for t in (3.21, 52536.2, 1.5e6)] == ["3.21µs", "52.5ms", "1.5s"]
    reason = "RuntimeError: flash-linear-attention (the fla package) is not installed"
    short = shorten(reason, 40)
    assert short == "RuntimeError: flash-linear-attention…" and len(short) <= 40
    assert shorten(reason, 200) == reason


def test_only_varying_fields_are_columns():
    problems = get_spec("attention").presets["default"]
    varying = varying_fields(problems)
    assert "dtype" not in varying and "T" in varying and "causal" in varying


# ---------------------------------------------------------------------------- the views

def report_of(*paths: Path):
    from seqtune import api

    return api.report(list(paths))


def test_report_of_a_gpu_profile_fits_80_columns(tmp_path, monkeypatch):
    from seqtune.cli.render_report import show_report

    monkeypatch.chdir(tmp_path)  # short paths: a path is printed whole, however long
    path = gpu_profile(Path("h100.yaml"))
    text = render(show_report, report_of(path))
    assert_fits(text, words=(*WIDE_KERNELS, *expected_times(path), "16k", "causal"))
    assert "% peak" in text and "[green]" not in text and "1.31x" in text
    assert "kind: the problem's categorical fields" in text  # the folded fields explained
    # one table per kernel; the fields all its problems share are said once, above it
    attention = text.split("attention: 10 entries\n")[1].split("delta_rule")[0]
    assert attention.startswith("all: dtype=bf16\n") and "bf16" not in attention[16:]
    wide = render(show_report, report_of(path), width=200)
    assert_fits(wide, width=200, words=(*WIDE_KERNELS, "16k"))
    assert wide.count("% peak") == len(WIDE_KERNELS)  # known peak: the roofline share
    narrow = text.split("delta_rule:")[0]
    assert "TFLOP/s" in wide and "TFLOP/s" not in narrow  # wider terminals show more


def test_report_comparison_draws_a_speedup_bar_per_problem(tmp_path, monkeypatch):
    from seqtune.cli.render_report import show_report

    monkeypatch.chdir(tmp_path)
    base = gpu_profile(Path("a.yaml"))
    faster = gpu_profile(Path("b.yaml"), scale=0.5)
    text = render(show_report, report_of(base, faster))
    assert_fits(text, words=(*WIDE_KERNELS, "2.00x"))
    comparison = text.split("speedup over")[1]
    bars = [line for line in comparison.splitlines() if "2.00x" in line]
    assert len(bars) == sum(len(get_spec(k).presets["default"]) for k in WIDE_KERNELS)
    assert all("│█" in line for line in bars)  # right of the axis: faster
    slower = render(show_report, report_of(faster, base))
    assert all("█│" in line for line in slower.split("speedup over")[1].splitlines()
               if "0.50x" in line)


def test_report_in_a_pipe_without_columns_fits_80(tmp_path):
    """The real command, stdout a pipe and no $COLUMNS: what a CI log or `| less` shows."""
    base = gpu_profile(tmp_path / "a.yaml")
    other = gpu_profile(tmp_path / "b.yaml", scale=0.8)
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    result = subprocess.run([sys.executable, "-m", "seqtune", "report", "a.yaml", "b.yaml"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert_fits(result.stdout, words=(*WIDE_KERNELS, *expected_times(base),
                                      *expected_times(other)))
    assert "\x1b[" not in result.stdout  # no colour codes in a pipe


def tune_results(timer: str, speedup: float) -> dict:
    spec = get_spec("delta_rule")
    problems = [{"kernel": spec.name, "problem": p, "winner": dict(spec.default_config),
                 "tried": 40, "failed": {"mismatch": 2, "resources": 7}, "compiled": 12,
                 "compile_s": 3.25, "benchmark_s": 41.5,
                 "time_us": {"median": 812.3 * (i + 1), "p20": 800.0, "p80": 830.0},
                 "speedup_vs_default": speedup}
                for i, p in enumerate(spec.presets["default"])]
    problems[3] = {**problems[3], "winner": None}
    return {"profile": "p/x.yaml", "log": "p/logs/x.jsonl", "timer": timer,
            "problems": problems}


@pytest.mark.parametrize("timer, green", [("interpreter-wall-clock", False),
                                          ("gpu-do_bench", True)])
def test_tune_summary_fits_and_labels_interpreter_speedups(timer, green):
    from seqtune.cli.render import show_tune, speedup_cell

    text = render(show_tune, tune_results(timer, 3.19))
    assert_fits(text, words=("delta_rule", "812µs", "3.19x", "p/x.yaml", "p/logs/x.jsonl"))
    assert "none valid" in text and "\n".join(config_lines(get_spec("delta_rule").default_config)
                                               [1:2]) in text
    interpreter = timer.startswith("interpreter")
    assert ("CPU vs default" in text) == interpreter
    assert ("not a GPU win" in text) == interpreter
    # highlighted as a win only on a GPU, and there only beyond the tuner's noise floor
    assert ("green" in speedup_cell(3.19, interpreter)) == green
    assert "green" not in speedup_cell(1.01, False)


def test_verify_view_fits_with_many_varying_fields():
    from seqtune.cli.render import show_verify

    spec = get_spec("delta_rule")
    rows = [{"kernel": spec.name, "problem": case, "case": "", "ok": index != 2,
             "config_source": "default: x", "config": dict(spec.default_config),
             "max_abs_err": 1e-3, "max_rel_err": 2.5e-3,
             "detail": "max rel err 0.5 > 0.01 at output 0 index (0, 3, 1, 7) " * 5}
            for index, case in enumerate(spec.verify_cases)]
    text = render(show_verify, rows)
    assert_fits(text, words=("delta_rule", "2.5e-03", "FAIL"))
    assert text.count("FAIL") == 2  # in the table and the explained line below it
    assert "…" in text  # the long detail shortened (in full in --json)


def bench_payload() -> dict:
    implementations = []
    for name, kind, median in (("tuned", "tuned", 250.0), ("default", "default", 400.0),
                               ("torch", "baseline", 1500.0),
                               ("torch_sdpa", "baseline", 300.0)):
        implementations.append({
            "name": name, "kind": kind, "status": "ok", "reason": None,
            "config": get_spec("attention").default_config if kind != "baseline" else None,
            "time_us": {"median": median, "p20": median * 0.9, "p80": median * 1.1},
            "tflops": 123.4, "gbps": 456.7, "percent_of_peak": 37.5,
            "vs_baselines": {"torch": 1500.0 / median, "torch_sdpa": 300.0 / median}})
    implementations.append({"name": "fla_chunk", "kind": "baseline", "status": "unavailable",
                            "reason": "RuntimeError: flash-linear-attention (the fla package) "
                                      "is not installed; pip install flash-linear-attention "
                                      "needs a CUDA toolchain and a lot more words than fit",
                            "config": None, "time_us": None, "tflops": None, "gbps": None,
                            "percent_of_peak": None, "vs_baselines": {}})
    results = [{"kernel": "attention", "problem": {**p, "T": n, "S": n}, "length": n,
                "flops": 1.0, "bytes": 1.0, "implementations": implementations}
               for p in get_spec("attention").presets["default"][:2] for n in (1024, 4096)]
    return {"schema": "seqtune-bench/1", "command": "seqtune bench attention",
            "preset": "default", "lengths": [1024, 4096], "timer": "gpu-do_bench",
            "gpu_timings": True, "timing_note": "GPU timings: do_bench median", "device": H100,
            "software": {}, "peak": {"tflops": {}, "gbps": 3350.0}, "profile": None,
            "results": results}


def test_bench_view_fits_with_three_baselines_and_a_long_reason():
    from seqtune.cli.render_bench import show_bench

    text = render(show_bench, bench_payload())
    assert_fits(text, words=("attention", "torch_sdpa", "fla_chunk", "250µs", "1.5ms",
                             "6.00x", "38%"))
    notes = [line for line in text.splitlines() if line.startswith("fla_chunk unavailable")]
    assert len(notes) == 1 and "(4 problems)" in notes[0]  # once, not per row
    assert text.count("n/a") == 4  # one per problem; the reason in the note


def test_list_fits_and_keeps_every_kernel_name_whole():
    from seqtune import api
    from seqtune.cli.render import show_kernels

    rows = api.list_kernels()
    text = render(show_kernels, rows)
    assert_fits(text, words=tuple(r["kernel"] for r in rows))


def test_check_view_fits_and_explains_what_does_not_fit():
    from seqtune.cli.render import show_check
    from seqtune.tuning.compiler import CheckResult, LaunchResources

    spec = get_spec("attention")
    problem = spec.presets["default"][1]
    launches = [LaunchResources(**{f: 0 for f in LaunchResources.__dataclass_fields__})]
    results = [CheckResult("attention", "sm_80", problem, dict(spec.default_config), True,
                           launches=launches, is_default=True),
               CheckResult("attention", "sm_90", problem, {**spec.default_config,
                                                           "BLOCK_M": 256}, True,
                           reasons=["shared memory 300000 B exceeds the 232448 B of sm_90 by "
                                    "a wide margin, and this reason goes on and on"])]
    text = render(show_check, results)
    assert_fits(text, words=("attention", "sm_80", "sm_90", "default"))
    assert "no fit" in text and "shared memory 300000 B" in text


def test_info_says_a_corrupt_profile_was_skipped_and_why(tmp_path, monkeypatch):
    from seqtune import api
    from seqtune.cli.render import show_info

    (tmp_path / "cpu-interpreter.yaml").write_text("schema: seqtune-profile/0\n")
    facts = api.info(tmp_path)
    first = facts["profile_files"][0]
    assert first["state"] == "skipped" and "schema" in first["reason"]
    assert facts["active_profile_files"] == [] and facts["active_entries"] == {}
    text = render(show_info, facts)
    assert "skipped" in text and "why: schema is 'seqtune-profile/0'" in text
    assert "every kernel runs its default config" in text


def test_merge_and_replay_views_fit():
    from seqtune.cli.render import show_merge, show_replay
    from seqtune.store.merge import MergeSummary

    summary = MergeSummary(Path("p/nvidia-h100-80gb-hbm3.yaml"), "nvidia-h100-80gb-hbm3",
                           {"linear_attention": 18, "attention_decode": 16},
                           {"linear_attention": 3, "attention_decode": 0},
                           {"linear_attention": 1, "attention_decode": 0},
                           {"a.yaml": 20, "b.yaml": 14})
    text = render(show_merge, summary)
    assert_fits(text, words=("linear_attention", "attention_decode", "18", "a.yaml"))
    rows = [{"source": "benchmarks/results/logs/attention.jsonl", "runs_as": runs_as,
             "problem": "B=4 T=4096 S=4096 Hq=32 Hkv=8 D=128 causal dtype=bfloat16",
             "strategy": strategy, "space": 11664, "budget": 583, "budget_share": 0.05,
             "reached_share": 0.96, "median_evaluations": 212.5, "mean_final_gap": 0.0042,
             "beats_random": strategy != "random"}
            for strategy, runs_as in (("auto", "stagewise"), ("random", "random"),
                                      ("model", "model"))]
    text = render(show_replay, {"tolerance": 0.03, "budget": "5%", "repeats": 50,
                                "results": rows})
    assert_fits(text, words=("auto", "stagewise", "96%", "212.5", "0.42%", "11664"))


def test_bench_at_80_columns_explains_only_the_columns_it_shows():
    # issue 33, point 2: legends for shown columns only, a spread beside each time, and a
    # warning when a figure's spread exceeds its median
    from seqtune.cli.render_bench import show_bench

    payload = bench_payload()
    noisy = payload["results"][0]["implementations"][2]  # torch: 80 µs .. 36 ms swings
    noisy["time_us"] = {"median": 1500.0, "p20": 80.0, "p80": 36000.0}
    narrow, wide = render(show_bench, payload), render(show_bench, payload, width=250)
    assert_fits(narrow, words=("250µs", "±10%"))  # the chart's ends carry the spread
    for text in (narrow, wide):
        lines = text.splitlines()
        rule = next(i for i, line in enumerate(lines) if line.startswith("──"))
        header = " ".join(lines[rule - 2:rule])  # a two-line header: "vs" above "torch"
        assert ("config" in header.split()) == ("config:" in text)
        assert ("vs" in header.split()) == ("vs X:" in text)
        assert ("±" in header.split()) == ("±: half the p20-p80 spread" in text)
        warnings = [line for line in text.splitlines() if line.startswith("warning: torch's")]
        assert len(warnings) == 1 and "4 problems:" in warnings[0]  # one dict, 4 rows
    assert "config:" not in narrow and "config:" in wide  # the config column needs width
    assert "±10%" in wide.split("time against length")[0]  # a column beside the time


# --------------------------------------------------------------- issue 33: explain themselves

def test_a_kernel_with_one_problem_still_shows_its_fields_and_counts_agree(tmp_path,
                                                                            monkeypatch):
    from seqtune.cli.render_report import show_report

    monkeypatch.chdir(tmp_path)
    path = gpu_profile(Path("one.yaml"))
    data = yaml.safe_load(path.read_text())
    for section in data["kernels"].values():
        del section["entries"][1:]
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    text = render(show_report, report_of(path))
    assert_fits(text)
    problem = data["kernels"]["attention"]["entries"][0]["problem"]
    after = text.split("attention: 1 entry\n")[1]
    assert after.startswith("problem: ") and f"D={problem['D']}" in after.splitlines()[0]
    assert "1 entries" not in text


def test_disjoint_profiles_are_said_to_share_no_problem(tmp_path, monkeypatch):
    from seqtune.cli.render_report import show_report

    monkeypatch.chdir(tmp_path)
    first = gpu_profile(Path("a.yaml"), kernels=("attention",))
    second = gpu_profile(Path("b.yaml"), kernels=("delta_rule",))
    text = render(show_report, report_of(first, second))
    assert "nothing to compare: the profiles share no problem with a.yaml" in text


def test_verify_rows_have_a_legend():
    from seqtune.cli.render import show_verify

    rows = [{"kernel": "attention", "problem": {"T": 37, "D": 16}, "ok": True, "detail": "",
             "config_source": source, "config": {"BLOCK_M": 16, "BLOCK_N": 16},
             "max_abs_err": 1e-6, "max_rel_err": 1e-6}
            for source in ("default: x", "loader: x", "tuned #2: x")]
    text = render(show_verify, rows)
    assert "loader = the one the runtime launches" in text and "tuned #N =" in text


def test_a_missing_profile_dir_is_said(tmp_path, capsys, monkeypatch):
    # report names the missing directory, not "no profiles; run tune"; the runtime's log says
    # it too, where it would otherwise fall back to defaults in silence
    from seqtune.cli import main

    missing = tmp_path / "mistyped"
    monkeypatch.setattr("sys.argv", ["seqtune", "report", "--profile-dir", str(missing)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 1
    assert f"the profile dir {missing} does not exist" in capsys.readouterr().err
    import seqtune.loader

    monkeypatch.setenv("SEQTUNE_PROFILE_DIR", str(missing))
    monkeypatch.setenv("SEQTUNE_LOG", "1")
    seqtune.loader.load_profile()
    assert f"profile dir {missing} does not exist" in capsys.readouterr().err


def test_the_loader_log_names_the_field_that_kept_an_entry_from_matching(tmp_path, capsys,
                                                                          monkeypatch):
    import seqtune.loader

    monkeypatch.setenv("SEQTUNE_LOG", "1")
    spec = get_spec("attention")  # the entry as the loader reads it: defaults filled in
    entry = seqtune.loader.Entry(problem={**spec.problem_defaults, **spec.presets["tiny"][0],
                                          "D": 64}, config={}, stale_reason=None, origin="test")
    profile = seqtune.loader.Profile({"attention": [entry]}, [])
    profile.best_config("attention", {**entry.problem, "D": 128})
    assert "entries differ in D (64; here 128), which must match exactly" in \
        capsys.readouterr().err


def test_a_mistyped_kernel_gets_a_did_you_mean():
    from seqtune import api
    from seqtune.errors import UsageError

    with pytest.raises(UsageError, match="did you mean 'attention'"):
        api.specs_named(["atention"])
