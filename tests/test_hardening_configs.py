"""Configs are exact (issue 15): a value must equal one of the space's values in type as well as
value, so ``BLOCK: 64.0`` or ``num_warps: true`` never reaches Triton; the loader, verify and
``check --config`` judge alike, each with one line naming the key and value."""
import warnings

import pytest
import triton
import yaml

import seqtune
from seqtune.errors import UsageError
from seqtune.loader import config_for
from seqtune.store.profile_file import SCHEMA, profile_path

N64 = {"N": 64, "dtype": "float32"}


@pytest.mark.parametrize("config, named", [
    ({"BLOCK": 64.0}, "BLOCK=64.0"),
    ({"num_warps": True}, "num_warps=True"),   # True == 1, and 1 is in the space
    ({"SKIP_TAIL": 0}, "SKIP_TAIL=0"),         # 0 == False
    ({"BLOCK": "64"}, "BLOCK='64'"),
])
def test_a_value_of_another_type_is_refused_in_one_line(toy_registry, config, named):
    with pytest.raises(ValueError) as caught:
        toy_registry.validate_config(config)
    message = str(caught.value)
    assert named in message and "\n" not in message


@pytest.mark.parametrize("config", [5, "BLOCK=64", [("BLOCK", 64)], {None: 64}, {64: 1}])
def test_a_config_that_is_no_mapping_of_names_is_refused_in_one_line(toy_registry, config):
    with pytest.raises(ValueError) as caught:
        config_for("toy_scale", N64, config)
    assert "\n" not in str(caught.value) and "toy_scale" in str(caught.value)


def test_exact_values_still_pass(toy_registry):
    assert toy_registry.validate_config({"BLOCK": 64, "SKIP_TAIL": False}) == \
        {"BLOCK": 64, "SKIP_TAIL": False, "num_warps": 1}


def test_explicit_float_config_fails_before_any_launch(toy_registry):
    with pytest.raises(ValueError, match=r"BLOCK=64\.0"):
        config_for("toy_scale", N64, {"BLOCK": 64.0})


def _profile_with(tmp_path, config):
    path = profile_path(tmp_path, "cpu-interpreter")
    entry = {"problem": N64, "config": config, "time_us": {"median": 1.0}}
    path.write_text(yaml.safe_dump({
        "schema": SCHEMA, "device": {"key": "cpu-interpreter"},
        "software": {"triton": triton.__version__},
        "kernels": {"toy_scale": {"source_hash": seqtune.registry.source_hash("toy_scale"),
                                  "entries": [entry]}}}))
    return path


@pytest.mark.parametrize("config", [{"BLOCK": 64.0, "SKIP_TAIL": False, "num_warps": 1},
                                    {"BLOCK": 64, "SKIP_TAIL": False, "num_warps": True}])
def test_loader_skips_an_inexact_entry_and_verify_agrees(tmp_path, toy_registry, config):
    path = _profile_with(tmp_path, config)
    with pytest.warns(RuntimeWarning, match="toy_scale"):
        seqtune.load_profile(path)
        chosen = seqtune.best_config("toy_scale", **N64)
    assert chosen == toy_registry.default_config
    assert seqtune.loader.active_profile().entries.get("toy_scale", []) == []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rows = seqtune.verify(["toy_scale"], profile_dir=tmp_path)
    # verify checks what the loader would use (here only the default), and passes
    assert rows and all(row["ok"] for row in rows)
    assert {tuple(sorted(row["config"].items())) for row in rows} == \
        {tuple(sorted(toy_registry.default_config.items()))}


def test_check_config_refuses_a_float_value(toy_registry, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # check() drops it; restored after the test
    with pytest.raises(UsageError, match=r"BLOCK=64\.0"):
        seqtune.check(["toy_scale"], config={"BLOCK": 64.0})
