"""Tuning fleets: how work is split into shards, `seqtune merge`, a torch.distributed tune with
the gloo backend and two ranks, one worker process per device (on interpreter "devices"), and
the usage errors of --gpus, --shard and a bad launcher environment."""
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import triton
import yaml
from typer.testing import CliRunner

import seqtune
import seqtune.registry
from seqtune.cli import app, main
from seqtune.fleet.distributed import LaunchEnv, launch_env, pin_local_gpu
from seqtune.fleet.local import _gpu_indices, fleet_options
from seqtune.store.journal import read_log
from seqtune.store.profile_file import save_entries, write_profile_atomic
from seqtune.registry import get_spec
from seqtune.tuning.tune import TuneOptions, resumable_candidates
from seqtune.fleet.shard import (item_identity, load_balance, parse_shard, shard_plan, shard_work,
                           split_into_shards, work_items)

TESTS = Path(__file__).parent
CHEAP_KERNELS = ("linear_scan", "attention_decode")  # the fastest tiny presets on the interpreter


# ---------------------------------------------------------------- sharding

@pytest.mark.parametrize("count", [1, 2, 3, 5, 8, 40])
def test_shards_hold_every_item_once_and_stay_within_one_item_of_balance(count):
    rng = random.Random(count)
    items = [f"item-{i}" for i in range(31)]
    costs = {item: rng.choice([1.0, 2.5, 10.0, 400.0]) * rng.random() for item in items}
    shards = split_into_shards(items, count, costs.__getitem__, str)
    assert len(shards) == count
    assert sorted(item for shard in shards for item in shard) == sorted(items)
    loads = load_balance(shards, costs.__getitem__)
    assert max(loads) - min(loads) <= max(costs.values()) + 1e-9


def test_equal_costs_give_shard_sizes_within_one_and_keep_the_tuning_order():
    items = list(range(23))
    shards = split_into_shards(items, 4, lambda item: 1.0, lambda item: item)
    assert sorted(len(shard) for shard in shards) == [5, 6, 6, 6]
    assert all(shard == sorted(shard) for shard in shards)


def test_which_shard_an_item_lands_in_does_not_depend_on_input_order():
    items = [f"k{i}" for i in range(17)]
    costs = {item: float(len(item) * 7 % 5) for item in items}  # many ties
    reference = [set(s) for s in split_into_shards(items, 3, costs.__getitem__, str)]
    for seed in range(5):
        shuffled = random.Random(seed).sample(items, len(items))
        assert [set(s) for s in split_into_shards(shuffled, 3, costs.__getitem__,
                                                  str)] == reference


def test_real_tune_work_splits_into_disjoint_shards_that_cover_it_and_repeat_exactly():
    specs = [get_spec(name) for name in seqtune.registry.all_specs()]
    everything = [item_identity(item) for item in work_items(specs, "tiny")]
    shards = [[item_identity(item) for item in shard_work(specs, "tiny", 2, (index, 3))]
              for index in range(3)]
    assert sorted(x for shard in shards for x in shard) == sorted(everything)
    assert all(shard for shard in shards)
    again = [item_identity(item) for item in shard_work(specs, "tiny", 2, (1, 3))]
    assert again == shards[1]
    assert shard_work(specs, "tiny", 2, None) == work_items(specs, "tiny")


def test_shard_plan_splits_the_work_per_device_type():
    names = ["H100", "A100", "H100", "H100", "A100"]
    assert shard_plan(names) == [(0, 3), (0, 2), (1, 3), (2, 3), (1, 2)]


@pytest.mark.parametrize("text, parsed", [("0/1", (0, 1)), ("3/8", (3, 8))])
def test_parse_shard(text, parsed):
    assert parse_shard(text) == parsed


@pytest.mark.parametrize("text", ["4/4", "-1/2", "1", "a/b", "1/0", "/"])
def test_parse_shard_rejects_nonsense(text):
    with pytest.raises(ValueError, match="expected I/N"):
        parse_shard(text)


def test_fleet_workers_share_the_compile_jobs_of_the_machine():
    options = TuneOptions("tiny", jobs=16)
    assert fleet_options(options, (1, 4), "run", 4).jobs == 4
    worker = fleet_options(TuneOptions("tiny", jobs=2), (3, 4), "run", 4)
    assert (worker.jobs, worker.shard, worker.run_id) == (1, (3, 4), "run")


def test_gpu_selection_parsing():
    assert _gpu_indices("0,2", 4) == [0, 2]
    for bad, message in (("5", "no GPU 5"), ("0,0", "twice"), ("x", "expected 'all'")):
        with pytest.raises(ValueError, match=message):
            _gpu_indices(bad, 2)


# ---------------------------------------------------------------- launcher environment

def test_launch_env_is_read_only_when_the_launcher_set_it():
    assert launch_env({"RANK": "0", "WORLD_SIZE": "2"}) is None
    full = {"RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "h", "MASTER_PORT": "1",
            "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    assert launch_env(full) == LaunchEnv(1, 2, 1, 2)
    with pytest.raises(ValueError, match="RANK=2"):
        launch_env({**full, "RANK": "2"})


@pytest.mark.parametrize("visible, local_rank, pinned", [
    (None, 1, "1"),            # nothing visible set: GPU LOCAL_RANK
    ("4,5,6", 1, "5"),         # the launcher's list: its LOCAL_RANK-th entry
    ("3", 2, "3"),             # the launcher already gave this rank one GPU
    ("4,5", None, "4,5"),      # no LOCAL_RANK: left alone
])
def test_pin_local_gpu(visible, local_rank, pinned):
    environ = {} if visible is None else {"CUDA_VISIBLE_DEVICES": visible}
    pin_local_gpu(LaunchEnv(0, 4, local_rank, 4), environ)
    assert environ["CUDA_VISIBLE_DEVICES"] == pinned


def test_pin_local_gpu_refuses_more_ranks_than_gpus():
    with pytest.raises(ValueError, match="at most one rank per GPU"):
        pin_local_gpu(LaunchEnv(0, 4, 2, 4), {"CUDA_VISIBLE_DEVICES": "0,1"})


# ---------------------------------------------------------------- usage errors

@pytest.mark.parametrize("args, env, message", [
    (["tune", "--gpus", "all"], {}, "--gpus needs CUDA GPUs"),
    (["tune", "--gpus", "0,1"], {}, "--gpus needs CUDA GPUs"),
    (["tune", "--shard", "2/2"], {}, "expected I/N"),
    (["tune", "--interpreter-devices", "2", "--shard", "0/2"], {}, "exclusive"),
    (["tune", "--gpus", "all"], {"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                                 "MASTER_PORT": "1"}, "do not combine"),
    (["tune"], {"RANK": "x", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": "1"}, "must be integers"),
])
def test_fleet_usage_errors_are_one_line_and_exit_2(args, env, message, monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a machine without GPUs
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr("sys.argv", ["seqtune", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err.strip()
    assert message in stderr and stderr.startswith("seqtune: error:")
    assert "Traceback" not in stderr and "\n" not in stderr


# ---------------------------------------------------------------- merge

def entry(n, median, tuned_at, block=32, **extra):
    return {"problem": {"N": n, "dtype": "float32"},
            "config": {"BLOCK": block, "SKIP_TAIL": False, "num_warps": 1},
            "time_us": {"median": median, "p20": median, "p80": median},
            "tuned_at": tuned_at, **extra}


def write(path, entries, key="cpu-interpreter", name="interp A", source_hash="new",
          triton_version="3.9"):
    write_profile_atomic(path, {
        "schema": "seqtune-profile/1", "device": {"key": key, "name": name},
        "software": {"triton": triton_version},
        "kernels": {"toy_scale": {"source_hash": source_hash, "entries": entries}}})
    return path


def merged_entries(path):
    section = yaml.safe_load(Path(path).read_text())["kernels"]["toy_scale"]
    return {e["problem"]["N"]: e for e in section["entries"]}, section


def merge(*args):
    return CliRunner().invoke(app, ["merge", *map(str, args)], catch_exceptions=False)


def test_merge_keeps_the_fastest_entry_per_problem_with_its_origin(tmp_path):
    a = write(tmp_path / "a.yaml", [entry(64, 10.0, "2025-01-01T00:00:00+00:00", block=16)])
    b = write(tmp_path / "b.yaml", [entry(64, 5.0, "2025-01-01T00:00:00+00:00", block=64),
                                    entry(128, 7.0, "2025-01-02T00:00:00+00:00")],
              name="interp B")
    out = tmp_path / "out.yaml"
    result = merge(a, b, "--output", out, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["entries"] == {"toy_scale": 2} and summary["contested"] == {"toy_scale": 1}
    entries, _ = merged_entries(out)
    assert entries[64]["config"]["BLOCK"] == 64
    assert entries[64]["origin"] == {"file": str(b), "device": "interp B",
                                     "tuned_at": "2025-01-01T00:00:00+00:00"}
    assert entries[128]["origin"]["file"] == str(b)


def test_merge_equal_times_prefer_the_earlier_file(tmp_path):
    a = write(tmp_path / "a.yaml", [entry(64, 5.0, "2025-01-01T00:00:00+00:00", block=16)])
    b = write(tmp_path / "b.yaml", [entry(64, 5.0, "2025-01-01T00:00:00+00:00", block=64)])
    merge(b, a, "--output", tmp_path / "out.yaml")
    assert merged_entries(tmp_path / "out.yaml")[0][64]["config"]["BLOCK"] == 64


def test_merge_prefers_fresh_entries_and_keeps_stale_ones_only_without_a_fresh_one(tmp_path):
    old = write(tmp_path / "old.yaml", [entry(64, 1.0, "2024-06-01T00:00:00+00:00", block=16),
                                        entry(32, 1.0, "2024-06-01T00:00:00+00:00")],
                source_hash="old")
    other_triton = write(tmp_path / "t.yaml",
                         [entry(64, 2.0, "2024-07-01T00:00:00+00:00", block=32)],
                         triton_version="3.1")
    new = write(tmp_path / "new.yaml", [entry(64, 9.0, "2025-01-01T00:00:00+00:00", block=64)])
    out = tmp_path / "out.yaml"
    result = merge(old, other_triton, new, "--output", out, "--json")
    summary = json.loads(result.stdout)
    entries, section = merged_entries(out)
    assert entries[64]["config"]["BLOCK"] == 64  # slower, but the only fresh one
    assert entries[32]["source_hash"] == "old"   # no fresh entry: the stale one stays, marked
    assert section["source_hash"] == "new"
    assert summary["stale_kept"] == {"toy_scale": 1}


def test_merged_profile_is_used_by_the_runtime_with_staleness_intact(tmp_path, toy_registry):
    fresh_hash = seqtune.registry.source_hash("toy_scale")
    a = write(tmp_path / "a.yaml", [entry(64, 3.0, "2025-01-01T00:00:00+00:00", block=16)],
              source_hash=fresh_hash, triton_version=triton.__version__)
    b = write(tmp_path / "b.yaml", [entry(128, 3.0, "2024-01-01T00:00:00+00:00", block=64)],
              source_hash="older-code", triton_version=triton.__version__)
    out = tmp_path / "out.yaml"
    assert merge(a, b, "--output", out).exit_code == 0
    profile = seqtune.load_profile(out)
    stale = {e.problem["N"]: e.stale_reason for e in profile.entries["toy_scale"]}
    assert stale[64] is None and "source changed" in stale[128]
    with pytest.warns(RuntimeWarning, match="stale entries of toy_scale"):
        assert seqtune.best_config("toy_scale", N=64, dtype="float32")["BLOCK"] == 16


def test_merge_into_an_existing_output_keeps_its_entries_and_first_origins(tmp_path):
    a = write(tmp_path / "a.yaml", [entry(64, 5.0, "2025-01-01T00:00:00+00:00")])
    b = write(tmp_path / "b.yaml", [entry(128, 5.0, "2025-01-01T00:00:00+00:00")])
    folder = tmp_path / "profiles"
    assert merge(a, "--profile-dir", folder).exit_code == 0  # default output: the device's file
    out = folder / "cpu-interpreter.yaml"
    assert merge(b, "--profile-dir", folder).exit_code == 0
    entries, _ = merged_entries(out)
    assert entries[64]["origin"]["file"] == str(a) and entries[128]["origin"]["file"] == str(b)
    before = out.read_text()
    assert merge(a, b, "--profile-dir", folder).exit_code == 0
    assert out.read_text() == before  # merging the same again changes nothing


def test_merge_refuses_different_devices_unless_forced(tmp_path, monkeypatch, capsys):
    a = write(tmp_path / "a.yaml", [entry(64, 5.0, "2025-01-01T00:00:00+00:00")])
    b = write(tmp_path / "b.yaml", [entry(128, 5.0, "2025-01-01T00:00:00+00:00")],
              key="nvidia-h100-80gb-hbm3")
    out = tmp_path / "out.yaml"
    monkeypatch.setattr("sys.argv", ["seqtune", "merge", str(a), str(b), "--output", str(out)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    stderr = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and "\n" not in stderr
    assert "cpu-interpreter" in stderr and "nvidia-h100-80gb-hbm3" in stderr and "--force" in stderr
    assert not out.exists()
    assert merge(a, b, "--output", out, "--force").exit_code == 0
    merged = yaml.safe_load(out.read_text())
    assert merged["device"]["key"] == "cpu-interpreter"
    assert len(merged["kernels"]["toy_scale"]["entries"]) == 2


def test_shards_of_a_tune_merge_into_the_whole_tune(tmp_path, toy_registry):
    files = []
    for index in range(2):
        folder = tmp_path / f"shard{index}"
        result = CliRunner().invoke(app, ["tune", "toy_scale", "--shard", f"{index}/2",
                                          "--profile-dir", str(folder), "--no-isolate",
                                          "--json"], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        assert len(json.loads(result.stdout)["problems"]) == 1
        files.append(folder / "cpu-interpreter.yaml")
    assert merge(*files, "--output", tmp_path / "all.yaml").exit_code == 0
    entries, _ = merged_entries(tmp_path / "all.yaml")
    assert sorted(entries) == [64, 128]
    assert {e["origin"]["file"] for e in entries.values()} == set(map(str, files))


# ---------------------------------------------------------------- resume across a fleet

def test_resume_skips_the_records_of_the_fleet_that_is_running(tmp_path, toy_registry):
    log = tmp_path / "log.jsonl"
    hash_ = seqtune.registry.source_hash("toy_scale")

    def record(run, block):
        return json.dumps({"run": run, "kernel": "toy_scale", "source_hash": hash_,
                           "problem": {"N": 64, "dtype": "float32"},
                           "config": {"BLOCK": block, "SKIP_TAIL": False, "num_warps": 1},
                           "status": "ok", "time_us": {"median": 1, "p20": 1, "p80": 1},
                           "max_rel_err": 0.0, "error": None})

    log.write_text("\n".join([record("interrupted", 16), record("interrupted", 32),
                              record("running-fleet", 64)]) + "\n")
    resumed = resumable_candidates(log, skip_run="running-fleet")
    assert [len(configs) for configs in resumed.values()] == [2]
    assert [len(configs) for configs in resumable_candidates(log).values()] == [1]


# ---------------------------------------------------------------- real processes

def seqtune_process(args, extra_env):
    launcher = {"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                "MASTER_PORT"}
    env = {name: value for name, value in os.environ.items() if name not in launcher}
    env.update({"TRITON_INTERPRET": "1", "COLUMNS": "200", **extra_env})
    return subprocess.Popen([sys.executable, "-m", "seqtune", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def preset_problems(kernels):
    return sorted(json.dumps([s.name, s.bucket(p)], sort_keys=True)
                  for s, p in work_items([get_spec(k) for k in kernels], "tiny"))


def tuned_problems(problems):
    return sorted(json.dumps([p["kernel"], p["problem"]], sort_keys=True) for p in problems)


def test_gloo_ranks_tune_their_shards_and_rank_0_writes_one_merged_profile(tmp_path,
                                                                            monkeypatch):
    folder, scratch = tmp_path / "profiles", tmp_path / "scratch"
    scratch.mkdir()
    earlier = {"problem": {"B": 1, "T": 4096, "D": 64, "initial_state": False,
                           "dtype": "float32"},
               "config": dict(get_spec("linear_scan").default_config),
               "time_us": {"median": 1.0, "p20": 1.0, "p80": 1.0}}
    profile = folder / "cpu-interpreter.yaml"
    save_entries(profile, {"key": "cpu-interpreter"}, "linear_scan", "h", [earlier])
    launch = {"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
              "MASTER_PORT": str(free_port()), "TMPDIR": str(scratch)}
    args = ["tune", *CHEAP_KERNELS, "--forward-only", "--max-configs", "1", "--no-isolate",
            "--profile-dir", str(folder), "--json"]
    # Rank 1 is a process of its own; rank 0 is this one (one interpreter start-up less).
    rank1 = seqtune_process(args, {**launch, "RANK": "1", "LOCAL_RANK": "1"})
    for name, value in {**launch, "RANK": "0", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # what pinning rank 0's GPU may change
    monkeypatch.setattr(tempfile, "tempdir", None)  # so that TMPDIR is read again
    rank0 = CliRunner().invoke(app, args, catch_exceptions=False)
    stdout1, stderr1 = rank1.communicate(timeout=300)
    assert (rank0.exit_code, rank1.returncode) == (0, 0), (rank0.output[-3000:], stderr1[-3000:])
    assert stdout1 == ""  # only rank 0 reports
    payload = json.loads(rank0.stdout)
    assert (payload["backend"], payload["world_size"], payload["errors"]) == ("gloo", 2, [])
    assert tuned_problems(payload["problems"]) == preset_problems(CHEAP_KERNELS)
    assert {p["worker"] for p in payload["problems"]} == {"rank 0", "rank 1"}  # both did a share

    assert sorted(p.name for p in folder.glob("*.yaml")) == ["cpu-interpreter.yaml"]
    data = yaml.safe_load(profile.read_text())
    entries = [(name, e["problem"]) for name, section in data["kernels"].items()
               for e in section["entries"]]
    assert len(entries) == len(payload["problems"]) + 1  # every rank's entries + the earlier one
    assert ("linear_scan", earlier["problem"]) in entries
    records = list(read_log(folder / "logs" / "cpu-interpreter.jsonl"))
    assert tuned_problems(records) == preset_problems(CHEAP_KERNELS)
    assert {r["run"] for r in records} == {payload["run_id"]}
    assert list(scratch.iterdir()) == []  # the rank-local scratch profiles are gone


def test_one_worker_process_per_device_all_merging_into_one_profile(tmp_path):
    folder = tmp_path / "profiles"
    result = CliRunner().invoke(app, ["tune", "linear_scan", "--forward-only",
                                      "--interpreter-devices", "2",
                                      "--max-configs", "1", "--no-isolate", "--profile-dir",
                                      str(folder), "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output[-3000:]
    payload = json.loads(result.stdout)
    workers = payload["workers"]
    assert [w["shard"] for w in workers] == [[0, 2], [1, 2]]
    assert len({w["pid"] for w in workers} - {os.getpid()}) == 2  # a process per device
    assert [w["problems"] for w in workers] == [1, 1]
    assert tuned_problems(payload["problems"]) == preset_problems(["linear_scan"])
    assert payload["profiles"] == [str(folder / "cpu-interpreter.yaml")]
    data = yaml.safe_load((folder / "cpu-interpreter.yaml").read_text())
    assert len(data["kernels"]["linear_scan"]["entries"]) == 2
    records = list(read_log(folder / "logs" / "cpu-interpreter.jsonl"))
    assert tuned_problems(records) == preset_problems(["linear_scan"])
    assert {r["run"] for r in records} == {payload["run_id"]}
