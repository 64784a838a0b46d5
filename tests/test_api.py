"""The library API: what each command does, callable from code, returning data and printing
nothing (the CLI is a rendering of these results)."""
import subprocess
import sys

import pytest

import seqtune
import seqtune.api
from seqtune.errors import UsageError


def test_tune_verify_report_return_data_and_print_nothing(toy_registry, tmp_path, capsys):
    tuned = seqtune.tune([toy_registry.name], preset="tiny", profile_dir=tmp_path,
                         isolate=False, max_configs=3)
    assert tuned["problems"] and all(p["winner"] is not None for p in tuned["problems"])
    assert (tmp_path / "cpu-interpreter.yaml").exists()

    rows = seqtune.verify([toy_registry.name], profile_dir=tmp_path)
    assert rows and all(r["ok"] for r in rows)
    assert any(r["config_source"].startswith("default") for r in rows)

    report = seqtune.report(profile_dir=tmp_path)
    assert [len(rows) for rows in report.rows_by_file] == [len(tuned["problems"])]
    assert report.as_dict()["profiles"][0]["file"].endswith("cpu-interpreter.yaml")

    assert [k["kernel"] for k in seqtune.list_kernels()] == [toy_registry.name]
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_bad_arguments_raise_usage_errors(toy_registry):
    with pytest.raises(UsageError, match="unknown kernel 'nope'"):
        seqtune.verify(["nope"])
    with pytest.raises(UsageError, match="unknown strategy 'best'"):
        seqtune.tune([toy_registry.name], preset="tiny", strategy="best")


def test_import_seqtune_loads_no_tool_module():
    """Model code imports seqtune for the loader: the tuner, search and CLI stay unloaded."""
    code = ("import sys, seqtune; seqtune.best_config; "
            "print(sorted(m for m in sys.modules if m.startswith(('seqtune.tuning', "
            "'seqtune.cli', 'seqtune.api', 'seqtune.fleet', 'seqtune.analysis'))))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True).stdout.strip()
    assert loaded == "[]"


def test_a_named_kernel_brings_its_backward_along():
    assert seqtune.api.with_backwards(["attention", "attention_decode", "attention_bwd"]) == [
        "attention", "attention_bwd", "attention_decode"]
    assert seqtune.api.with_backwards(None) is None
