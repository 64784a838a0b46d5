"""Offline replay of search strategies: tuning logs, Kernel Tuner caches, budgets, the
reached-the-optimum bookkeeping, and the CLI end to end."""
import gzip
import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from seqtune.cli import app, main
from seqtune.analysis.replay import (ReplayEvaluate, ReplayError, RunOutcome, beats, budget_for,
                            kernel_tuner_space, load, replay_runs, run_replay, strategy_names)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "tuning-spaces"
CONVOLUTION_A100 = SHARED / "convolution" / "A100.json.gz"


def record(kernel, problem, config, median, status="ok"):
    return {"run": "r1", "kernel": kernel, "source_hash": "abc", "problem": problem,
            "config": config, "status": status,
            "time_us": {"median": median, "p20": median, "p80": median} if median else None,
            "max_rel_err": 0.0, "error": None, "at": "2026-01-01T00:00:00+00:00"}


def write_log(path):
    """Two problems of one kernel; BLOCK=64 of the first is re-measured (the later line wins),
    BLOCK=16 failed, and the last line is torn as by a killed tune."""
    first, second = {"N": 64, "dtype": "float32"}, {"N": 128, "dtype": "float32"}
    lines = [record("toy", first, {"BLOCK": b, "W": w}, 10.0 * b / 32 + w)
             for b in (32, 64, 128) for w in (1, 2)]
    lines.append(record("toy", first, {"BLOCK": 16, "W": 1}, None, status="compile"))
    lines.append(record("toy", first, {"BLOCK": 64, "W": 1}, 3.0))
    lines += [record("toy", second, {"BLOCK": b, "W": 1}, 100.0 / b) for b in (32, 64, 128)]
    text = "\n".join(json.dumps(line) for line in lines) + "\n" + '{"run": "r1", "kern'
    path.write_text(text)
    return path


def test_a_log_replays_as_one_space_per_kernel_and_problem(tmp_path):
    spaces = load(write_log(tmp_path / "log.jsonl"))
    assert [s.label for s in spaces] == ["toy N=64 dtype=float32", "toy N=128 dtype=float32"]
    first = spaces[0]
    assert len(first.configs) == 7 and first.valid == 6
    assert first.best_us == 3.0  # the re-measured BLOCK=64 line
    assert first.starts == [{"BLOCK": 32, "W": 1}]
    assert first.params == {"BLOCK": (32, 64, 128, 16), "W": (1, 2)}


def test_exhaustive_replay_reaches_the_optimum_where_the_order_puts_it(tmp_path):
    first = load(write_log(tmp_path / "log.jsonl"))[0]
    outcomes = replay_runs(first, "exhaustive", budget=7, repeats=3)
    order = [c for c in first.configs]
    assert outcomes == [RunOutcome(order.index({"BLOCK": 64, "W": 1}) + 1, 0.0)] * 3
    missed = replay_runs(first, "exhaustive", budget=2, repeats=2)
    assert [o.reached_at for o in missed] == [None, None]
    # the first two configs in order: BLOCK=32 with W=1 (11 µs) and W=2 (12 µs), against 3 µs
    assert [o.final_gap for o in missed] == [pytest.approx(11.0 / 3.0 - 1.0)] * 2


def test_evaluate_counts_distinct_configs_and_follows_the_pick():
    document = {"tune_params_keys": ["x"], "tune_params": {"x": [1, 2, 3]}, "cache": {
        "1": {"x": 1, "time": 2.0, "times": [2.0, 2.0]},
        "2": {"x": 2, "time": 1.0, "times": [1.5, 0.5]},
        "3": {"x": 3, "time": "RuntimeFailedConfig"}}}
    space = kernel_tuner_space(document, "cache.json")
    assert space.valid == 2 and space.best_us == 1000.0
    evaluate = ReplayEvaluate(space, budget=2)
    assert evaluate({"x": 1}) == 2000.0 and evaluate.reached_at is None
    assert evaluate({"x": 2}, fidelity=0.5) == 1500.0  # the first of its two repetitions
    assert evaluate.reached_at == 2  # the pick is x=2, truly the best
    assert evaluate({"x": 2}) == 1000.0  # a fuller timing of a measured config: no new config
    assert evaluate({"x": 3}) is None  # a third config: over the budget
    with pytest.raises(KeyError):
        evaluate({"x": 4})


def test_a_lucky_cheap_timing_is_a_pick_that_has_not_reached_the_optimum():
    document = {"tune_params_keys": ["x"], "cache": {
        "1": {"x": 1, "time": 1.0, "times": [1.0, 1.0]},
        "2": {"x": 2, "time": 3.0, "times": [0.5, 5.5]}}}
    evaluate = ReplayEvaluate(kernel_tuner_space(document, "cache.json"), budget=2)
    evaluate({"x": 1})
    assert evaluate.reached_at == 1
    evaluate({"x": 2}, fidelity=0.5)  # looks faster than x=1 after one repetition
    assert evaluate.reached_at is None
    evaluate({"x": 2})
    assert evaluate.reached_at == 2


def test_auto_replays_exactly_as_the_strategy_it_picks(tmp_path):
    problem = {"N": 64, "dtype": "float32"}
    lines = [record("toy", problem, {"BLOCK": b, "W": w}, abs(b - 5) + abs(w - 2) + 1.0)
             for b in range(10) for w in range(4)]
    path = tmp_path / "log.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    space = load(path)[0]
    direct = replay_runs(space, "auto", budget=10, repeats=3)
    assert direct == replay_runs(space, "model", budget=10, repeats=3)
    rows = run_replay([path], ["auto", "model"], "10", repeats=3)["results"]
    assert rows[0]["runs_as"] == "model"
    assert {k: v for k, v in rows[0].items() if k not in ("strategy", "runs_as")} == \
        {k: v for k, v in rows[1].items() if k not in ("strategy", "runs_as")}


@pytest.mark.parametrize("text, size, count", [("5%", 4362, 218), ("10", 100, 10),
                                               ("500", 100, 100), ("0.1%", 100, 1)])
def test_budget_is_a_count_or_a_share_of_the_space(text, size, count):
    assert budget_for(text, size) == count


@pytest.mark.parametrize("text", ["0", "many", "%"])
def test_bad_budgets_are_refused(text):
    with pytest.raises(ValueError):
        budget_for(text, 100)


def test_strategy_names_expand_all_and_refuse_unknown_ones():
    assert "auto" in strategy_names("all") and "random" in strategy_names("all")
    assert strategy_names("local, model") == ["local", "model"]
    with pytest.raises(ValueError):
        strategy_names("annealing")


def test_beats_compares_reach_then_final_gap_then_median():
    row = {"reached_share": 1.0, "median_evaluations": 10, "mean_final_gap": 0.001}
    assert beats(row, {"reached_share": 0.5, "median_evaluations": 5, "mean_final_gap": 0.0})
    assert beats(row, {"reached_share": 1.0, "median_evaluations": 4, "mean_final_gap": 0.002})
    assert not beats(row, {"reached_share": 1.0, "median_evaluations": 12,
                           "mean_final_gap": 0.0005})
    assert beats(row, {"reached_share": 1.0, "median_evaluations": 12,
                       "mean_final_gap": 0.00105})  # a tie in gap: the median decides
    assert not beats(row, {"reached_share": 1.0, "median_evaluations": 10,
                           "mean_final_gap": 0.001})


def test_a_file_that_is_no_record_is_an_error(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"not": "a cache"}')
    with pytest.raises(ReplayError):
        load(bad)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ReplayError):
        load(empty)


@pytest.mark.skipif(not CONVOLUTION_A100.exists(), reason="shared tuning spaces not present")
def test_a_shared_kernel_tuner_cache_replays():
    space = load(CONVOLUTION_A100)[0]
    assert len(space.configs) == 4362 and space.valid == 4201
    assert space.best_us == pytest.approx(553.6, abs=0.1)
    assert all(len(s) == 32 for s, t in zip(space.samples_us, space.times_us) if math.isfinite(t))
    payload = run_replay([CONVOLUTION_A100], ["random", "local"], "5%", repeats=2)
    rows = payload["results"]
    assert [r["budget"] for r in rows] == [218, 218]
    assert rows[0]["beats_random"] is None and rows[1]["beats_random"] in (True, False)


def test_gzip_kernel_tuner_cache_loads(tmp_path):
    document = {"tune_params_keys": ["x", "y"], "tune_params": {"x": [1, 2], "y": ["a"]},
                "kernel_name": "k", "device_name": "gpu", "cache": {
                    "1,a": {"x": 1, "y": "a", "time": 2.0, "times": [2.0]},
                    "2,a": {"x": 2, "y": "a", "time": "CompilationFailedConfig"}}}
    path = tmp_path / "cache.json.gz"
    with gzip.open(path, "wt") as handle:
        json.dump(document, handle)
    space = load(path)[0]
    assert space.label == "k gpu" and space.times_us == [2000.0, math.inf]


def test_cli_replays_a_log_as_json(tmp_path):
    log = write_log(tmp_path / "log.jsonl")
    result = CliRunner().invoke(app, ["replay", str(log), "--strategy", "all", "--budget",
                                      "100%", "--repeats", "3", "--json"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["tolerance"] == 0.03 and payload["repeats"] == 3
    rows = payload["results"]
    assert {r["strategy"] for r in rows} == set(strategy_names("all"))
    assert len(rows) == 2 * len(strategy_names("all"))
    assert all(r["reached_share"] == 1.0 for r in rows)  # the whole space: always found
    assert {r["runs_as"] for r in rows if r["strategy"] == "auto"} == {"exhaustive"}


def test_cli_replay_table_and_errors(tmp_path, monkeypatch, capsys):
    log = write_log(tmp_path / "log.jsonl")
    result = CliRunner().invoke(app, ["replay", str(log), "--strategy", "random,local",
                                      "--budget", "2", "--repeats", "2"],
                                catch_exceptions=False)
    assert result.exit_code == 0 and "seqtune replay" in result.output
    for args, code in ((["--strategy", "annealing"], 2), (["--budget", "lots"], 2)):
        monkeypatch.setattr("sys.argv", ["seqtune", "replay", str(log), *args])
        with pytest.raises(SystemExit) as exit_info:
            main()
        assert exit_info.value.code == code
    monkeypatch.setattr("sys.argv", ["seqtune", "replay", str(tmp_path / "missing.jsonl")])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 1
    assert "missing.jsonl" in capsys.readouterr().err
