"""The CLI end to end on the interpreter, with the toy kernel (fast) — the real kernels are
exercised end to end in test_cli_kernels.py."""
import json

import pytest
import yaml
from typer.testing import CliRunner

import seqtune
from seqtune.cli import app, main

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, list(args), catch_exceptions=False)


@pytest.fixture
def tuned(tmp_path, toy_registry):
    # in-process: the toy kernel exists only in this test process's registry
    result = invoke("tune", "toy_scale", "--preset", "tiny", "--profile-dir", str(tmp_path),
                    "--no-isolate")
    assert result.exit_code == 0, result.output
    return tmp_path


def test_tune_writes_one_profile_whose_entries_the_loader_returns(tuned):
    files = list(tuned.glob("*.yaml"))
    assert [f.name for f in files] == ["cpu-interpreter.yaml"]
    data = yaml.safe_load(files[0].read_text())
    entries = data["kernels"]["toy_scale"]["entries"]
    assert len(entries) == 2
    assert all(e["timer"] == "interpreter-wall-clock" for e in entries)
    assert all(e["failed"]["mismatch"] >= 1 for e in entries)  # SKIP_TAIL configs caught
    seqtune.load_profile(files[0])
    for e in entries:
        assert seqtune.best_config("toy_scale", **e["problem"]) == e["config"]


def test_tune_json_and_interpreter_notice(tmp_path, toy_registry):
    result = runner.invoke(app, ["tune", "toy_scale", "--profile-dir", str(tmp_path), "--json",
                                 "--max-configs", "2", "--no-isolate"])
    assert result.exit_code == 0
    payload = json.loads(result.stdout)
    assert payload["timer"] == "interpreter-wall-clock" and payload["preset"] == "tiny"
    assert all(p["tried"] == 2 for p in payload["problems"])
    assert "Triton interpreter" in result.stderr


def test_report_shows_entries_labelled_as_interpreter_timings(tuned):
    result = invoke("report", "--profile-dir", str(tuned))
    assert result.exit_code == 0
    assert "toy_scale" in result.output and "not GPU timings" in result.output


def test_report_json_and_comparison(tuned, tmp_path):
    path = tuned / "cpu-interpreter.yaml"
    other = tmp_path / "other.yaml"
    data = yaml.safe_load(path.read_text())
    for e in data["kernels"]["toy_scale"]["entries"]:
        e["time_us"]["median"] *= 2
    other.write_text(yaml.safe_dump(data))
    result = invoke("report", str(path), str(other), "--json")
    payload = json.loads(result.stdout)
    assert len(payload["profiles"]) == 2
    assert [round(c["ratio"], 6) for c in payload["comparison"]] == [2.0, 2.0]


def test_verify_checks_default_and_tuned_configs(tuned):
    result = invoke("verify", "toy_scale", "--profile-dir", str(tuned), "--json")
    assert result.exit_code == 0
    rows = json.loads(result.stdout)
    assert {r["case"] for r in rows} == {"N=37 dtype=float32", "N=100 dtype=bfloat16"}
    assert all(r["ok"] for r in rows)
    assert any(r["config_source"].startswith("loader") or r["config_source"].startswith("tuned")
               for r in rows) or all(r["config_source"].startswith("default") for r in rows)


def test_verify_fails_with_exit_1_on_a_wrong_tuned_config(tuned):
    path = tuned / "cpu-interpreter.yaml"
    data = yaml.safe_load(path.read_text())
    data["kernels"]["toy_scale"]["entries"][0]["config"]["SKIP_TAIL"] = True
    path.write_text(yaml.safe_dump(data))
    result = invoke("verify", "toy_scale", "--profile-dir", str(tuned))
    assert result.exit_code == 1
    assert "FAIL" in result.output


def test_list_and_info(toy_registry):
    listed = json.loads(invoke("list", "--json").stdout)
    assert listed[0]["kernel"] == "toy_scale" and listed[0]["space_size"] == 12
    info = json.loads(invoke("info", "--json").stdout)
    assert info["device"]["key"] == "cpu-interpreter"


@pytest.mark.parametrize("args, code, message", [
    (["tune", "nope"], 2, "unknown kernel 'nope'"),
    (["tune", "toy_scale", "--preset", "default"], 2, "needs a CUDA GPU"),
    (["tune", "toy_scale", "--preset", "huge"], 2, "unknown preset 'huge'"),
    (["tune", "--max-configs", "0"], 2, ""),
])
def test_bad_usage_is_one_line_and_exit_2(args, code, message, toy_registry, monkeypatch,
                                           capsys):
    monkeypatch.setattr("sys.argv", ["seqtune", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == code
    stderr = capsys.readouterr().err
    assert message in stderr and "Traceback" not in stderr


def test_unreadable_profile_in_report_is_one_line_exit_1(tmp_path, monkeypatch, capsys,
                                                          toy_registry):
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"\x00\xff\x00binary")
    monkeypatch.setattr("sys.argv", ["seqtune", "report", str(bad)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 1
    stderr = capsys.readouterr().err.strip()
    assert stderr.startswith("seqtune: error:") and str(bad) in stderr and "\n" not in stderr


def test_tune_logs_every_evaluated_config(tuned):
    from seqtune.store.journal import read_log

    records = list(read_log(tuned / "logs" / "cpu-interpreter.jsonl"))
    assert len(records) == 12  # 2 problems x 6 configs (warps pinned in the interpreter)
    assert {r["status"] for r in records} == {"ok", "mismatch"}
    assert all(r["time_us"] is None for r in records if r["status"] == "mismatch")
    assert len({r["run"] for r in records}) == 1
