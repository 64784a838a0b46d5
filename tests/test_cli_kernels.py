"""Every real kernel end to end on the CPU: `seqtune tune K --preset tiny` writes entries the
loader returns unchanged, and `seqtune verify K` passes with those tuned configs.

Each kernel's own test file covers all its verify cases and tiny problems; here the tune runs
the first tiny problem and `verify` one float32 and one bfloat16 case per kernel, to keep the
interpreter's time in bounds.
"""
import dataclasses
import json

import pytest
import yaml
from typer.testing import CliRunner

import seqtune
from seqtune.cli import app
from seqtune.registry import all_specs

runner = CliRunner()


def lean(spec):
    cases = {}
    for case in spec.verify_cases:
        cases.setdefault(case["dtype"], case)
    return dataclasses.replace(spec, verify_cases=[cases["float32"], cases["bfloat16"]],
                               presets={**spec.presets, "tiny": spec.presets["tiny"][:1]})


@pytest.fixture
def lean_registry(monkeypatch):
    import seqtune.registry

    specs = {name: lean(spec) for name, spec in all_specs().items()}
    monkeypatch.setattr(seqtune.registry, "all_specs", lambda: specs)


@pytest.mark.parametrize("kernel", sorted(all_specs()))
def test_tune_loader_round_trip_and_verify(kernel, tmp_path, lean_registry):
    # A backward run costs seconds in the interpreter: its round trip measures one config.
    budget = "1" if kernel.endswith("_bwd") else "2"
    tuned = runner.invoke(app, ["tune", kernel, "--forward-only", "--preset", "tiny",
                                "--max-configs", budget,
                                "--no-isolate", "--profile-dir", str(tmp_path), "--json"])
    assert tuned.exit_code == 0, tuned.output[-3000:]
    payload = json.loads(tuned.stdout)
    assert all(p["winner"] is not None for p in payload["problems"])

    path = tmp_path / "cpu-interpreter.yaml"
    entries = yaml.safe_load(path.read_text())["kernels"][kernel]["entries"]
    assert len(entries) == 1
    seqtune.load_profile(path)
    for entry in entries:
        assert seqtune.best_config(kernel, **entry["problem"]) == entry["config"]
        assert entry["max_rel_err"] is not None and entry["tried"] >= 1

    verified = runner.invoke(app, ["verify", kernel, "--profile-dir", str(tmp_path), "--json"])
    assert verified.exit_code == 0, verified.output[-3000:]
    rows = json.loads(verified.stdout)
    assert rows and all(r["ok"] for r in rows)
    assert any(not r["config_source"].startswith("default") for r in rows) or all(
        e["config"] == all_specs()[kernel].default_config for e in entries)
