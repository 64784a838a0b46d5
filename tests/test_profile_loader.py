"""Profiles (YAML round trip, merge, atomic writes) and the runtime loader (matching, fallbacks)."""
import warnings

import pytest
import torch
import triton
import yaml

import seqtune
from seqtune.device import interpreter_device
from seqtune.store.profile_file import (SCHEMA, ProfileError, profile_path, read_profile, resolve_profile_dir,
                             save_entries)
from seqtune.registry import source_hash

DEVICE = interpreter_device().as_dict()


def entry(N, dtype="float32", BLOCK=16, **extra):
    return {"problem": {"N": N, "dtype": dtype},
            "config": {"BLOCK": BLOCK, "SKIP_TAIL": False, "num_warps": 1},
            "time_us": {"median": 1.0, "p20": 0.9, "p80": 1.1}, "triton": triton.__version__,
            **extra}


@pytest.fixture
def profile_file(tmp_path, toy_registry):
    path = profile_path(tmp_path, "cpu-interpreter")
    save_entries(path, DEVICE, "toy_scale", source_hash("toy_scale"),
                 [entry(64, BLOCK=16), entry(1024, BLOCK=64), entry(64, "bfloat16", BLOCK=32)])
    return path


def test_round_trip_and_schema(profile_file):
    data = read_profile(profile_file)
    assert data["schema"] == SCHEMA
    assert data["device"]["key"] == "cpu-interpreter"
    assert set(data["software"]) == {"seqtune", "triton", "torch", "cuda", "python"}
    assert [e["config"]["BLOCK"] for e in data["kernels"]["toy_scale"]["entries"]] == [16, 64, 32]


def test_merge_keeps_other_entries_and_replaces_same_problem(profile_file):
    save_entries(profile_file, DEVICE, "toy_scale", source_hash("toy_scale"),
                 [entry(64, BLOCK=32)])
    save_entries(profile_file, DEVICE, "other_kernel", "h", [entry(8)])
    data = read_profile(profile_file)
    blocks = {(e["problem"]["N"], e["problem"]["dtype"]): e["config"]["BLOCK"]
              for e in data["kernels"]["toy_scale"]["entries"]}
    assert blocks == {(64, "float32"): 32, (1024, "float32"): 64, (64, "bfloat16"): 32}
    assert list(data["kernels"]) == ["other_kernel", "toy_scale"]


def test_atomic_write_leaves_no_temp_files_and_refuses_to_clobber_garbage(tmp_path, toy_registry):
    path = profile_path(tmp_path, "dev")
    path.write_text("kernels: [unclosed")
    with pytest.raises(ProfileError, match="not valid YAML"):
        save_entries(path, DEVICE, "toy_scale", "h", [entry(64)])
    assert path.read_text() == "kernels: [unclosed"
    path.unlink()
    save_entries(path, DEVICE, "toy_scale", "h", [entry(64)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dev.yaml", "dev.yaml.lock"]


def test_profile_dir_resolution(tmp_path, monkeypatch):
    assert resolve_profile_dir(tmp_path / "x") == tmp_path / "x"
    monkeypatch.setenv("SEQTUNE_PROFILE_DIR", str(tmp_path / "env"))
    assert resolve_profile_dir() == tmp_path / "env"
    monkeypatch.delenv("SEQTUNE_PROFILE_DIR")
    assert "seqtune" in str(resolve_profile_dir())


def test_loader_returns_each_entry_config_for_its_own_problem(profile_file):
    seqtune.load_profile(profile_file)
    for e in read_profile(profile_file)["kernels"]["toy_scale"]["entries"]:
        assert seqtune.best_config("toy_scale", **e["problem"]) == e["config"]


def test_loader_matches_size_by_nearest_log2_and_dtype_exactly(profile_file):
    seqtune.load_profile(profile_file)
    assert seqtune.best_config("toy_scale", N=100, dtype="float32")["BLOCK"] == 16
    assert seqtune.best_config("toy_scale", N=700, dtype=torch.float32)["BLOCK"] == 64
    assert seqtune.best_config("toy_scale", N=5000, dtype="bf16")["BLOCK"] == 32


def test_loader_never_returns_a_config_invalid_for_the_actual_problem(profile_file):
    seqtune.load_profile(profile_file)
    # nearest entry (N=1024 -> BLOCK=64) is too big for N=20: the next-nearest valid one is used
    assert seqtune.best_config("toy_scale", N=20, dtype="float32")["BLOCK"] == 16


def test_loader_falls_back_to_default_without_a_matching_entry(profile_file, toy_registry):
    seqtune.load_profile(profile_file)
    assert seqtune.best_config("toy_scale", N=64, dtype="float16") == toy_registry.default_config


def test_no_profile_at_all_gives_defaults_silently(toy_registry):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert seqtune.load_profile().sources == []
        assert seqtune.best_config("toy_scale", N=64, dtype="float32") == toy_registry.default_config


def test_explicit_missing_profile_warns_and_gives_defaults(tmp_path, toy_registry):
    with pytest.warns(RuntimeWarning, match="no such profile"):
        seqtune.load_profile(tmp_path / "nope.yaml")
    assert seqtune.best_config("toy_scale", N=64, dtype="float32") == toy_registry.default_config


def test_malformed_profile_warns_once_and_falls_back(tmp_path, toy_registry):
    path = tmp_path / "bad.yaml"
    path.write_text("schema: seqtune-profile/1\nkernels: {toy_scale: {entries: [{problem: 3}]}}")
    with pytest.warns(RuntimeWarning, match="without problem/config") as caught:
        seqtune.load_profile(path)
        seqtune.load_profile(path)
    assert len(caught) == 1
    assert seqtune.best_config("toy_scale", N=64, dtype="float32") == toy_registry.default_config


def test_stale_entries_follow_the_policy(tmp_path, toy_registry, monkeypatch):
    path = profile_path(tmp_path, "dev")
    save_entries(path, DEVICE, "toy_scale", "old-hash", [entry(64, BLOCK=64)])
    monkeypatch.setenv("SEQTUNE_STALE", "ignore")
    seqtune.load_profile(path)
    assert seqtune.best_config("toy_scale", N=64, dtype="float32")["BLOCK"] == 32  # default
    monkeypatch.setenv("SEQTUNE_STALE", "warn")
    seqtune.load_profile(path)
    with pytest.warns(RuntimeWarning, match="stale"):
        assert seqtune.best_config("toy_scale", N=64, dtype="float32")["BLOCK"] == 64


def test_default_location_is_the_device_file_in_the_profile_dir(tmp_path, toy_registry,
                                                                monkeypatch):
    monkeypatch.setenv("SEQTUNE_PROFILE_DIR", str(tmp_path))
    save_entries(profile_path(tmp_path, "cpu-interpreter"), DEVICE, "toy_scale",
                 source_hash("toy_scale"), [entry(64, BLOCK=64)])
    profile = seqtune.load_profile()
    assert profile.sources == [tmp_path / "cpu-interpreter.yaml"]
    assert seqtune.best_config("toy_scale", N=64, dtype="float32")["BLOCK"] == 64


def test_log_says_which_config_and_why(profile_file, monkeypatch, capsys):
    monkeypatch.setenv("SEQTUNE_LOG", "1")
    seqtune.load_profile(profile_file)
    seqtune.best_config("toy_scale", N=64, dtype="float32")
    seqtune.best_config("toy_scale", N=64, dtype="float16")
    logged = capsys.readouterr().err
    assert "tuned config" in logged and "log2 distance 0" in logged
    assert "the default" in logged and "no usable tuned entry" in logged


def test_returned_config_is_a_copy(profile_file):
    seqtune.load_profile(profile_file)
    seqtune.best_config("toy_scale", N=64, dtype="float32")["BLOCK"] = 999
    assert seqtune.best_config("toy_scale", N=64, dtype="float32")["BLOCK"] == 16


def test_log_follows_a_replaced_stderr(profile_file, monkeypatch):
    """The log writes to the current sys.stderr, not the one of its first record."""
    import io

    monkeypatch.setenv("SEQTUNE_LOG", "1")
    seqtune.load_profile(profile_file)
    monkeypatch.setattr("sys.stderr", io.StringIO())
    seqtune.best_config("toy_scale", N=64, dtype="float32")
    later = io.StringIO()
    monkeypatch.setattr("sys.stderr", later)
    seqtune.best_config("toy_scale", N=64, dtype="float16")
    assert "no usable tuned entry" in later.getvalue()
