"""report and replay on malformed inputs (issue 15): one line naming the file (and the entry),
never an AttributeError, a hang or a bare "Aborted."."""
import gzip
import json
import os
import threading

import pytest
import yaml

import seqtune
from seqtune.analysis.replay import ReplayError, budget_for, load
from seqtune.errors import Failure, UsageError
from seqtune.store.profile_file import SCHEMA, ProfileError

GOOD = {"problem": {"N": 64, "dtype": "float32"},
        "config": {"BLOCK": 32, "SKIP_TAIL": False, "num_warps": 1},
        "time_us": {"median": 5.0, "p20": 4.0, "p80": 6.0}}


def profile_file(path, entries):
    entries = json.loads(json.dumps(entries))  # copies: safe_dump would alias shared dicts
    path.write_text(yaml.safe_dump({
        "schema": SCHEMA, "device": {"key": "cpu-interpreter", "name": "interp"},
        "kernels": {"toy_scale": {"entries": entries}}}))
    return path


MALFORMED_ENTRIES = {
    "a list as config": {**GOOD, "config": ["BLOCK", 32]},
    "a scalar entry": 5,
    "a string entry": "fast",
    "time_us a number": {**GOOD, "time_us": 5},
    "median a word": {**GOOD, "time_us": {"median": "fast"}},
    "problem a list": {**GOOD, "problem": [64]},
    "tflops a word": {**GOOD, "tflops": "many"},
    "failed not counts": {**GOOD, "failed": ["compile"]},
}


@pytest.mark.parametrize("case", list(MALFORMED_ENTRIES))
def test_report_names_file_and_entry_in_one_line(tmp_path, case):
    path = profile_file(tmp_path / "p.yaml", [GOOD, MALFORMED_ENTRIES[case]])
    with pytest.raises(Failure) as caught:
        seqtune.report([path])
    message = str(caught.value)
    assert str(path) in message and "toy_scale.entries[1]" in message and "\n" not in message


def test_report_compares_only_timed_entries(tmp_path):
    untimed = {key: value for key, value in GOOD.items() if key != "time_us"}
    first = profile_file(tmp_path / "a.yaml", [GOOD])
    second = profile_file(tmp_path / "b.yaml", [untimed])
    report = seqtune.report([first, second])
    assert report.comparison == [] and len(report.rows_by_file[1]) == 1


def test_report_refuses_an_alias_bomb_quickly(tmp_path):
    path = tmp_path / "bomb.yaml"
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"] + [
        f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 10)]
    path.write_text(f"schema: {SCHEMA}\nnotes:\n" + "".join(f"  {line}\n" for line in levels))
    with pytest.raises(ProfileError, match="aliases"):
        seqtune.report([path])


# ---------------------------------------------------------------- replay

def cache_document():
    return {"tune_params_keys": ["block"], "tune_params": {"block": [16, 32]},
            "cache": {"16": {"block": 16, "time": 2.0}, "32": {"block": 32, "time": 1.0}}}


def test_a_truncated_gzip_cache_is_one_line_naming_the_file(tmp_path):
    whole = gzip.compress(json.dumps(cache_document()).encode())
    path = tmp_path / "cache.json.gz"
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ReplayError) as caught:
        load(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(Failure, match="cache.json.gz"):  # what the CLI prints, exit 1
        seqtune.replay([path], strategy="random", budget="1", repeats=1)


@pytest.mark.parametrize("document", [
    [1, 2, 3],
    {"tune_params_keys": ["block"], "cache": [1, 2]},
    {"tune_params_keys": "block", "cache": {}},
    {"tune_params_keys": ["block"], "cache": {"16": {"time": 1.0}}},
    {"tune_params_keys": ["block"], "cache": {"16": [16, 1.0]}},
    {"tune_params_keys": ["block"], "cache": {"16": {"block": [16], "time": 1.0}}},
    {"tune_params_keys": ["block"], "cache": {"16": {"block": 16, "time": 0}}},
])
def test_a_cache_of_another_shape_is_one_line_naming_the_file(tmp_path, document):
    path = tmp_path / "cache.json"
    path.write_text(json.dumps(document))
    with pytest.raises(ReplayError) as caught:
        load(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("text", ["not json", "[" * 100000 + "]" * 100000, "\udcff"],
                         ids=["not JSON", "nested 100,000 deep", "not UTF-8"])
def test_a_cache_that_is_not_json_is_one_line(tmp_path, text):
    path = tmp_path / "cache.json"
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.raises(ReplayError, match="cache.json"):
        load(path)


def test_a_fifo_is_refused_without_blocking(tmp_path):
    for name in ("log.jsonl", "cache.json"):
        path = tmp_path / name
        os.mkfifo(path)
        outcome = {}

        def attempt():
            try:
                load(path)
            except ReplayError as exc:
                outcome["error"] = str(exc)

        worker = threading.Thread(target=attempt, daemon=True)
        worker.start()
        worker.join(20)
        assert not worker.is_alive() and "not a regular file" in outcome["error"]


def test_a_zero_time_in_a_log_counts_as_failed(tmp_path):
    path = tmp_path / "log.jsonl"
    lines = [{"kernel": "k", "problem": {}, "config": {"B": b}, "status": "ok",
              "time_us": {"median": median}} for b, median in ((1, 0.0), (2, 3.0), (3, -1.0))]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    space = load(path)[0]
    assert space.best_us == 3.0 and space.valid == 1


@pytest.mark.parametrize("budget", ["-5%", "0%", "-5", "0", "inf%", "nan%", "lots"])
def test_a_budget_that_is_not_positive_is_a_value_error(budget):
    with pytest.raises(ValueError, match="budget"):
        budget_for(budget, 100)


def test_a_negative_budget_is_a_usage_error(tmp_path):
    path = tmp_path / "cache.json"
    path.write_text(json.dumps(cache_document()))
    with pytest.raises(UsageError, match="-5%"):
        seqtune.replay([path], strategy="random", budget="-5%", repeats=1)


def test_budgets_that_were_fine_still_are():
    assert budget_for("5%", 100) == 5 and budget_for("0.1%", 100) == 1
    assert budget_for("200%", 100) == 100 and budget_for("7", 100) == 7


# ---------------------------------------------------------------- bench on the interpreter

def test_bench_refuses_long_lengths_on_the_interpreter_before_running_anything(monkeypatch):
    import seqtune.analysis.bench as bench

    monkeypatch.setattr(bench, "bench_problem", lambda *args: pytest.fail("a problem ran"))
    with pytest.raises(UsageError) as caught:
        seqtune.bench(["linear_scan"], lengths="64,32k")
    message = str(caught.value)
    assert "32768" in message and "up to 256" in message and "\n" not in message


def test_long_lengths_are_allowed_on_a_gpu():
    from seqtune.analysis.bench import check_lengths

    check_lengths("cuda", (32768,))
    check_lengths("interpreter", (1, 256))
    with pytest.raises(UsageError):
        check_lengths("interpreter", (257,))
