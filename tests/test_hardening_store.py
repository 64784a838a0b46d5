"""Profile files under hostile conditions (issue 15): merge validates its inputs as the loader
does, the tuning log and lock files never follow a planted symlink, writes leave the process
umask alone, and an empty profile dir is a usage error."""
import os

import pytest
import yaml

import seqtune
from seqtune.errors import Failure, UsageError
from seqtune.store.journal import TuningLog
from seqtune.store.merge import merge_into
from seqtune.store.profile_file import (
    SCHEMA,
    read_profile,
    resolve_profile_dir,
    save_entries,
    write_profile_atomic,
)

GOOD = {"problem": {"N": 64, "dtype": "float32"},
        "config": {"BLOCK": 32, "SKIP_TAIL": False, "num_warps": 1},
        "time_us": {"median": 5.0, "p20": 5.0, "p80": 5.0},
        "tuned_at": "2025-01-01T00:00:00+00:00"}


def profile(path, *entries):
    write_profile_atomic(path, {
        "schema": SCHEMA, "device": {"key": "cpu-interpreter", "name": "interp"},
        "software": {"triton": "3.9"},
        "kernels": {"toy_scale": {"source_hash": "h", "entries": list(entries)}}})
    return path


def changed(**parts):
    entry = {key: dict(value) if isinstance(value, dict) else value for key, value in GOOD.items()}
    for key, value in parts.items():
        entry[key] = {**entry[key], **value} if isinstance(value, dict) and key != "time_us" \
            else value
    return entry


INVALID = {
    "inf size": changed(problem={"N": float("inf")}),
    "dtype a number": changed(problem={"dtype": 7}),
    "median 0": changed(time_us={"median": 0.0}),
    "negative median": changed(time_us={"median": -3.0}),
    "infinite median": changed(time_us={"median": float("inf")}),
    "nan median": changed(time_us={"median": float("nan")}),
    "median a word": changed(time_us={"median": "fast"}),
    "time_us a number": changed(time_us=5),
    "config a list": changed(config=["BLOCK", 32]),
    "scalar entry": 5,
}


@pytest.mark.parametrize("case", list(INVALID))
def test_merge_refuses_an_invalid_input_naming_file_and_entry(tmp_path, case):
    good = profile(tmp_path / "good.yaml", GOOD)
    bad = profile(tmp_path / "bad.yaml", changed(problem={"N": 128}), INVALID[case])
    out = tmp_path / "out.yaml"
    with pytest.raises(Failure) as caught:
        seqtune.merge([good, bad], output=out)
    message = str(caught.value)
    assert str(bad) in message and "toy_scale.entries[1]" in message and "\n" not in message
    assert not out.exists()


def test_skip_invalid_leaves_invalid_entries_out_and_names_them(tmp_path):
    good = profile(tmp_path / "good.yaml", GOOD)
    bad = profile(tmp_path / "bad.yaml", changed(problem={"N": 128}, time_us={"median": 0.0}),
                  INVALID["median 0"], INVALID["inf size"])
    out = tmp_path / "out.yaml"
    summary = merge_into([good, bad], output=out, skip_invalid=True)
    entries = read_profile(out)["kernels"]["toy_scale"]["entries"]
    assert [e["time_us"]["median"] for e in entries] == [5.0]  # median 0 did not win N=64
    assert len(summary.skipped) == 3 and all(str(bad) in s for s in summary.skipped)
    assert "entries[0]" in summary.skipped[0] and "entries[2]" in summary.skipped[2]


def test_merge_judges_configs_of_a_known_kernel_exactly(tmp_path, toy_registry):
    bad = profile(tmp_path / "bad.yaml", changed(config={"BLOCK": 32.0}))
    with pytest.raises(Failure, match=r"BLOCK=32\.0"):
        merge_into([bad], output=tmp_path / "out.yaml")


def test_merge_refuses_an_invalid_existing_output(tmp_path):
    good = profile(tmp_path / "good.yaml", GOOD)
    out = profile(tmp_path / "out.yaml", INVALID["inf size"])
    with pytest.raises(Failure, match="out.yaml: kernels.toy_scale.entries.0."):
        merge_into([good], output=out)


class Candidate:
    config, status, timing, agreement, error, reused, fidelity = {}, "ok", None, None, "", False, 1


@pytest.mark.parametrize("planted", ["before the tune", "during the tune"])
def test_the_tuning_log_does_not_follow_a_planted_symlink(tmp_path, planted):
    outside = tmp_path / "outside.txt"
    outside.write_text("")
    logs = tmp_path / "profiles" / "logs"
    logs.mkdir(parents=True)
    path = logs / "cpu-interpreter.jsonl"
    if planted == "before the tune":
        path.symlink_to(outside)
    with pytest.raises(Failure) as caught:
        log = TuningLog(path, "run")
        if planted == "during the tune":
            path.symlink_to(outside)
        log.record("k", "h", {}, Candidate())
    assert "symbolic link" in str(caught.value) and "\n" not in str(caught.value)
    assert outside.read_text() == ""


def test_a_planted_lock_symlink_is_refused_and_its_target_untouched(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    path = tmp_path / "cpu-interpreter.yaml"
    (tmp_path / "cpu-interpreter.yaml.lock").symlink_to(victim)
    with pytest.raises(Failure, match="symbolic link"):
        save_entries(path, {"key": "cpu-interpreter"}, "toy_scale", "h", [GOOD])
    assert victim.read_text() == "precious" and not path.exists()


def test_writing_a_profile_leaves_the_umask_alone(tmp_path, monkeypatch):
    changes = []
    real_umask = os.umask
    monkeypatch.setattr(os, "umask", lambda mask: changes.append(mask) or real_umask(mask))
    old = real_umask(0o027)
    try:
        path = profile(tmp_path / "p.yaml", GOOD)
        assert oct(path.stat().st_mode & 0o777) == oct(0o640)
    finally:
        real_umask(old)
    assert changes == []


def test_a_profile_written_twice_from_one_object_has_no_aliases(tmp_path):
    shared = {"median": 5.0, "p20": 5.0, "p80": 5.0}
    path = profile(tmp_path / "p.yaml", {**GOOD, "time_us": shared},
                   {**GOOD, "problem": {"N": 128, "dtype": "float32"}, "time_us": shared})
    assert "&" not in path.read_text()
    assert len(read_profile(path)["kernels"]["toy_scale"]["entries"]) == 2


@pytest.mark.parametrize("empty", ["", "  "])
def test_an_empty_profile_dir_is_a_usage_error(empty):
    with pytest.raises(UsageError, match="must not be empty"):
        resolve_profile_dir(empty)


def test_the_written_profile_round_trips(tmp_path):
    path = profile(tmp_path / "p.yaml", GOOD)
    assert yaml.safe_load(path.read_text())["kernels"]["toy_scale"]["entries"] == [GOOD]


SAME_AS_SAFE_LOAD = [
    "a: yes\nb: no\nc: on\nd: ~\ne: 0x1F\nf: 1_000\ng: .inf\nh: 2025-01-01\ni: '2025-01-01'\n"
    "j: \"x\"\nk: |\n  multi\n  line\nl: 1e3\nm: 1.0e3\nn: -0\no: 0o17\nq:\nr: [1, {s: t}]\n",
    "", "- 1\n- 2\n", "just a string", "x: !!str 5\ny: !!int '7'\nz: !!float 1\n",
    "2025-01-01T00:00:00+00:00: 3\n",
]


@pytest.mark.parametrize("text", SAME_AS_SAFE_LOAD)
def test_the_profile_parser_builds_what_safe_load_builds(text):
    from seqtune.store.safe_read import load_yaml

    assert load_yaml(text) == yaml.safe_load(text)


def test_a_written_profile_parses_as_safe_load_parses_it(tmp_path):
    from seqtune.store.safe_read import load_yaml

    entries = [{**GOOD, "problem": {"N": 2**n, "dtype": "float32"}, "tuned_at": None,
                "time_us": {"median": 1.0 / (n + 1), "p20": 0.5, "p80": 2.0}}
               for n in range(20)]
    text = profile(tmp_path / "p.yaml", *entries).read_text()
    assert load_yaml(text) == yaml.safe_load(text)


@pytest.mark.parametrize("text", ["[1, 2]: x\n", "a: 1\n---\nb: 2\n", "a: [1, 2\n",
                                  "a: !!python/name:os.system\n", "a: !!set {x}\n"])
def test_the_profile_parser_refuses_what_is_not_plain_yaml(text):
    from seqtune.store.safe_read import load_yaml

    with pytest.raises(yaml.YAMLError):
        load_yaml(text)
