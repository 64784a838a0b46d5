"""The CLI ends of issue 15's library rules: `merge --skip-invalid` names what it leaves out,
an empty `--profile-dir` is bad usage for every command, and `bench --lengths` beyond what the
interpreter runs is refused before anything runs; `--model-config` tunes and reports exactly
what a model runs."""
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from seqtune.cli import app, main
from test_hardening_store import GOOD, INVALID, changed, profile

runner = CliRunner()


def run_main(args, monkeypatch, capsys) -> tuple[int, str]:
    """`seqtune ARGS` through the entry point that turns errors into one line and a code."""
    monkeypatch.setattr("sys.argv", ["seqtune", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out + captured.err


def test_merge_refuses_an_invalid_file_then_skips_with_the_flag(tmp_path, monkeypatch,
                                                                  capsys):
    good = profile(tmp_path / "good.yaml", GOOD)
    bad = profile(tmp_path / "bad.yaml", changed(problem={"N": 128}), INVALID["median 0"])
    out = tmp_path / "out.yaml"
    code, output = run_main(["merge", str(good), str(bad), "--output", str(out)], monkeypatch,
                            capsys)
    assert code == 1 and "toy_scale.entries[1]" in output
    assert not out.exists()
    merged = runner.invoke(app, ["merge", str(good), str(bad), "--output", str(out),
                                 "--skip-invalid"])
    assert merged.exit_code == 0, merged.output
    assert f"seqtune: skipped {bad}" in merged.output and out.exists()


@pytest.mark.parametrize("command", [["tune", "toy_scale"], ["verify"], ["report"], ["bench"],
                                     ["info"], ["merge", "x.yaml"]])
def test_an_empty_profile_dir_is_bad_usage(command, toy_registry):
    done = runner.invoke(app, [*command, "--profile-dir", ""])
    assert done.exit_code == 2
    assert "must name a folder, not an empty string" in done.output


def test_bench_refuses_long_lengths_on_the_interpreter_before_running(toy_registry, monkeypatch,
                                                                      capsys):
    code, output = run_main(["bench", "toy_scale", "--lengths", "32k"], monkeypatch, capsys)
    assert code == 2 and "lengths up to 256" in output and "32768" in output


MODELS = Path(__file__).parent.parent / "benchmarks" / "models"


def test_tune_exactly_what_a_model_runs_then_report_its_coverage(tmp_path, monkeypatch, capsys):
    config = str(MODELS / "tiny-llama.json")
    before = runner.invoke(app, ["report", "--model-config", config, "--profile-dir",
                                 str(tmp_path), "--json"])
    assert before.exit_code == 0, before.output
    assert {r["status"] for r in json.loads(before.stdout)} == {"default"}
    tuned = runner.invoke(app, ["tune", "--model-config", config, "--max-configs", "1",
                                "--no-isolate", "--profile-dir", str(tmp_path), "--json"])
    assert tuned.exit_code == 0, tuned.output
    kernels = {p["kernel"] for p in json.loads(tuned.stdout)["problems"]}
    assert kernels == {"attention"}  # a Llama runs attention only
    after = runner.invoke(app, ["report", "--model-config", config, "--profile-dir",
                                str(tmp_path), "--json"])
    rows = json.loads(after.stdout)
    assert {r["status"] for r in rows} == {"tuned"}
    # issue 33: the view names the profile it read and the config each problem launches with
    view = runner.invoke(app, ["report", "--model-config", config, "--profile-dir",
                               str(tmp_path)], env={"COLUMNS": "120"})
    profile = next(tmp_path.glob("*.yaml"))
    assert f"tuned configs from: {profile}" in view.stdout
    assert {r["origin"] for r in rows} == {str(profile)}
    from seqtune.cli.cells import config_lines

    assert config_lines(rows[0]["config"])[0] in view.stdout


@pytest.mark.parametrize("args, message", [
    (["--model-config", "missing.json"], "missing.json"),
    (["--model-config", "{tiny}", "delta_rule"], "produces no problem of delta_rule"),
    (["--model-config", "{tiny}", "--lengths", "32k"], "lengths up to 256"),
    (["--model-config", "{tiny}", "--interpreter-devices", "2"], "does not combine with --gpus"),
])
def test_bad_model_tunes_are_one_line_usage_errors(args, message, monkeypatch, capsys):
    args = [a.replace("{tiny}", str(MODELS / "tiny-llama.json")) for a in args]
    code, output = run_main(["tune", *args], monkeypatch, capsys)
    assert code == 2 and message in output and "Traceback" not in output
