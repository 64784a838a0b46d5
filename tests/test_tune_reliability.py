"""Tuning that survives real failures: candidates that crash or hang, a tune killed with
SIGKILL and resumed, two tunes writing one profile dir at once, and Ctrl-C."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from seqtune.store.journal import read_log

TESTS = Path(__file__).parent
ENV = {**os.environ, "TRITON_INTERPRET": "1", "COLUMNS": "200",
       "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
       "SEQTUNE_KERNEL_MODULES": "faulty_spec"}


def seqtune(*args, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "seqtune", *args], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def log_of(folder):
    return folder / "logs" / "cpu-interpreter.jsonl"


def wait_for_records(folder, count, process, limit_s=240):
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        path = log_of(folder)
        if path.exists() and len(list(read_log(path))) >= count:
            return
        assert process.poll() is None, process.communicate()
        time.sleep(0.2)
    raise AssertionError(f"fewer than {count} candidates logged in {limit_s} s")


def assert_valid_profile_or_none(folder):
    path = folder / "cpu-interpreter.yaml"
    if path.exists():
        assert yaml.safe_load(path.read_text())["schema"] == "seqtune-profile/1"
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_crashing_and_hanging_candidates_do_not_end_the_tune(tmp_path):
    process = seqtune("tune", "faulty", "--profile-dir", str(tmp_path), "--timeout-s", "15",
                      "--json")
    stdout, stderr = process.communicate(timeout=400)
    assert process.returncode == 0, stderr[-3000:]
    (problem,) = json.loads(stdout)["problems"]
    assert problem["winner"]["BEHAVIOUR"] == "fine"
    assert problem["failed"]["runtime"] == 2 and problem["failed"]["timeout"] == 1
    errors = {r["config"]["BEHAVIOUR"]: r["error"] for r in read_log(log_of(tmp_path))}
    assert "SIGSEGV" in errors["crash"]
    assert "device-side assert" in errors["raise"]
    assert "abandoned" in errors["hang"]


def test_sigkilled_tune_loses_nothing_measured_and_resumes(tmp_path):
    process = seqtune("tune", "linear_scan", "--forward-only", "--profile-dir", str(tmp_path), "--no-isolate")
    wait_for_records(tmp_path, 5, process)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    assert_valid_profile_or_none(tmp_path)
    measured = list(read_log(log_of(tmp_path)))
    assert len(measured) >= 5

    resumed = seqtune("tune", "linear_scan", "--forward-only", "--profile-dir", str(tmp_path), "--no-isolate",
                      "--resume")
    _, stderr = resumed.communicate(timeout=400)
    assert resumed.returncode == 0, stderr[-3000:]
    records = list(read_log(log_of(tmp_path)))
    second_run = [r for r in records if r["run"] == records[-1]["run"]]
    assert sum(r["reused"] for r in second_run) == len(measured)
    assert {json.dumps(r["config"], sort_keys=True) + json.dumps(r["problem"], sort_keys=True)
            for r in measured} <= {json.dumps(r["config"], sort_keys=True)
                                   + json.dumps(r["problem"], sort_keys=True) for r in second_run}
    profile = yaml.safe_load((tmp_path / "cpu-interpreter.yaml").read_text())
    assert len(profile["kernels"]["linear_scan"]["entries"]) == 2


def test_two_concurrent_tunes_end_with_one_profile_holding_both(tmp_path):
    first = seqtune("tune", "linear_scan", "--forward-only", "--profile-dir", str(tmp_path), "--no-isolate",
                    "--max-configs", "2")
    second = seqtune("tune", "faulty", "--profile-dir", str(tmp_path), "--no-isolate",
                     "--max-configs", "1")
    for process in (first, second):
        _, stderr = process.communicate(timeout=400)
        assert process.returncode == 0, stderr[-3000:]
    profile = yaml.safe_load((tmp_path / "cpu-interpreter.yaml").read_text())
    assert set(profile["kernels"]) == {"linear_scan", "faulty"}
    assert len(profile["kernels"]["linear_scan"]["entries"]) == 2
    runs = {r["run"] for r in read_log(log_of(tmp_path))}
    assert len(runs) == 2  # both journals in one file, no line torn by the other


def _interruptible():
    """Ctrl-C at its default in the child, as in a terminal: a test runner that ignores SIGINT
    (xdist workers of newer pytest do) would hand the child an ignored SIGINT, which Python keeps
    ignoring, and the tune would run to its end."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_stops_cleanly_and_says_how_to_resume(tmp_path):
    process = seqtune("tune", "linear_scan", "--forward-only", "--profile-dir", str(tmp_path), "--no-isolate",
                      preexec_fn=_interruptible)
    wait_for_records(tmp_path, 2, process)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130
    assert "--resume" in stderr and "Traceback" not in stderr
    assert_valid_profile_or_none(tmp_path)
