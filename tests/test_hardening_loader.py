"""The launch path never raises or hangs because of a profile (issue 15): each hostile profile the
review found gives the default config with one warning naming the file (and the entry), fast."""
import os
import threading
import time
import warnings

import pytest
import triton

import seqtune
import seqtune.registry
from seqtune.loader import config_for
from seqtune.store.profile_file import SCHEMA

N64 = {"N": 64, "dtype": "float32"}
GOOD_CONFIG = "{BLOCK: 64, SKIP_TAIL: false, num_warps: 2}"


def profile_text(entries: str) -> str:
    return (f"schema: {SCHEMA}\nsoftware: {{triton: '{triton.__version__}'}}\n"
            f"kernels:\n  toy_scale:\n    entries: {entries}\n")


def one_entry(problem: str = "{N: 64, dtype: float32}", config: str = GOOD_CONFIG) -> str:
    return profile_text(f"[{{problem: {problem}, config: {config}}}]")


def alias_bomb() -> str:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, "
              f"*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]" for i in range(1, 10)]
    notes = "".join(f"\n        {line}" for line in lines)
    return (f"schema: {SCHEMA}\nkernels:\n  toy_scale:\n    entries:\n    - problem: "
            f"{{N: 64, dtype: float32}}\n      config: {GOOD_CONFIG}\n      notes:{notes}\n")


BAD_ENTRIES = {
    "inf size": one_entry(problem="{N: .inf, dtype: float32}"),
    "nan size": one_entry(problem="{N: .nan, dtype: float32}"),
    "negative size": one_entry(problem="{N: -64, dtype: float32}"),
    "float size": one_entry(problem="{N: 64.0, dtype: float32}"),
    "bool size": one_entry(problem="{N: true, dtype: float32}"),
    "null config key": one_entry(config="{null: 3, BLOCK: 64}"),
    "int config key": one_entry(config="{1: 2, BLOCK: 64}"),
    "int problem key": one_entry(problem="{N: 64, dtype: float32, 7: x}"),
    "list problem value": one_entry(problem="{N: 64, dtype: [float32]}"),
    "dtype a number": one_entry(problem="{N: 64, dtype: 7}"),
    "unknown problem field": one_entry(problem="{N: 64, dtype: float32, warp: 9}"),
    "float config value": one_entry(config="{BLOCK: 64.0}"),
    "bool config value": one_entry(config="{num_warps: true}"),
    "config a list": one_entry(config="[BLOCK, 64]"),
    "scalar entry": profile_text("[5]"),
}


def assert_one_line_warnings_naming(caught, *names):
    messages = [str(w.message) for w in caught]
    assert messages and all("\n" not in m for m in messages), messages
    assert any(all(name in m for name in names) for m in messages), messages


@pytest.mark.parametrize("case", list(BAD_ENTRIES))
def test_an_invalid_entry_is_skipped_with_one_warning_naming_file_and_entry(
        case, tmp_path, toy_registry):
    path = tmp_path / "p.yaml"
    path.write_text(BAD_ENTRIES[case])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        seqtune.load_profile(path)
        assert config_for("toy_scale", N64, None) == toy_registry.default_config
    assert_one_line_warnings_naming(caught, str(path), "toy_scale.entries[0]")
    assert len(caught) == 1


def test_valid_entries_beside_invalid_ones_are_used_and_one_warning_counts_the_rest(
        tmp_path, toy_registry, monkeypatch):
    monkeypatch.setenv("SEQTUNE_STALE", "use")  # the entries carry no source hash
    path = tmp_path / "p.yaml"
    path.write_text(profile_text(
        "[{problem: {N: .inf, dtype: float32}, config: {BLOCK: 16}}, 3, "
        f"{{problem: {{N: 64, dtype: float32}}, config: {GOOD_CONFIG}}}, "
        "{problem: {N: 64, dtype: bfloat16}, config: {BLOCK: 16.0}}]"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        seqtune.load_profile(path)
        assert seqtune.best_config("toy_scale", **N64)["BLOCK"] == 64
    assert len(caught) == 1
    assert "entries[0]" in str(caught[0].message) and "2 more" in str(caught[0].message)


def within(seconds, call):
    """``call()``'s result, failing the test if it takes longer (it runs in a daemon thread, so
    a call that blocks forever cannot hang the suite)."""
    result = {}
    thread = threading.Thread(target=lambda: result.update(value=call()), daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s"
    return result["value"]


def load_and_look_up(path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        seqtune.load_profile(path)
        config = config_for("toy_scale", N64, None)
    return config, caught


def test_deep_nesting_is_refused_without_recursion(tmp_path, toy_registry):
    path = tmp_path / "p.yaml"
    path.write_text(one_entry(config="[" * 20000 + "]" * 20000))
    config, caught = within(30, lambda: load_and_look_up(path))
    assert config == toy_registry.default_config
    # Which layer refuses first depends on the PyYAML build: libyaml 6.0.4 stops at its own flow
    # limit ("not valid YAML"), older builds reach seqtune's depth check ("nested deeper").
    assert_one_line_warnings_naming(caught, str(path))
    assert len(caught) == 1


def test_an_alias_bomb_is_refused(tmp_path, toy_registry):
    path = tmp_path / "p.yaml"
    path.write_text(alias_bomb())
    config, caught = within(30, lambda: load_and_look_up(path))
    assert config == toy_registry.default_config
    assert_one_line_warnings_naming(caught, str(path), "aliases")


def test_a_symlink_to_dev_zero_is_not_read(tmp_path, toy_registry):
    path = tmp_path / "p.yaml"
    path.symlink_to("/dev/zero")
    config, caught = within(30, lambda: load_and_look_up(path))
    assert config == toy_registry.default_config
    assert_one_line_warnings_naming(caught, str(path), "not a regular file")


def test_a_fifo_in_place_of_the_profile_never_blocks(tmp_path, toy_registry, monkeypatch):
    monkeypatch.setenv("SEQTUNE_PROFILE_DIR", str(tmp_path))
    os.mkfifo(tmp_path / "cpu-interpreter.yaml")  # the default location: found, not opened
    config, caught = within(30, lambda: load_and_look_up(None))
    assert config == toy_registry.default_config
    assert_one_line_warnings_naming(caught, "cpu-interpreter.yaml", "FIFO")


def test_a_profile_over_the_size_cap_is_refused_unread(tmp_path, toy_registry):
    path = tmp_path / "p.yaml"
    with open(path, "w") as handle:
        handle.write(one_entry())
        handle.truncate(50 * 2**20)  # sparse: 50 MB on paper, nothing on disk
    started = time.perf_counter()
    config, caught = within(30, lambda: load_and_look_up(path))
    assert time.perf_counter() - started < 5
    assert config == toy_registry.default_config
    assert_one_line_warnings_naming(caught, str(path), "16 MB limit")


def test_a_huge_integer_literal_is_a_warning(tmp_path, toy_registry):
    path = tmp_path / "p.yaml"
    path.write_text(one_entry(problem="{N: " + "9" * 10000 + ", dtype: float32}"))
    config, caught = within(30, lambda: load_and_look_up(path))
    assert config == toy_registry.default_config
    assert_one_line_warnings_naming(caught, str(path))


@pytest.fixture
def fresh_registry():
    """The real registry, rebuilt from the environment before and after the test."""
    seqtune.registry.all_specs.cache_clear()
    seqtune.registry.source_hash.cache_clear()
    yield
    seqtune.registry.all_specs.cache_clear()
    seqtune.registry.source_hash.cache_clear()


def test_a_missing_kernel_module_warns_once_and_kernels_still_run(monkeypatch, fresh_registry):
    monkeypatch.setenv("SEQTUNE_KERNEL_MODULES", "no_such_seqtune_plugin_xyz")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            config = config_for("linear_scan", {"B": 1, "T": 7, "D": 3, "dtype": "float32"},
                                None)
    assert config
    plugin_warnings = [w for w in caught if "no_such_seqtune_plugin_xyz" in str(w.message)]
    assert len(plugin_warnings) == 1 and "\n" not in str(plugin_warnings[0].message)


def test_a_module_without_usable_specs_is_skipped(tmp_path, monkeypatch, fresh_registry):
    (tmp_path / "broken_plugin_xyz.py").write_text("SPECS = 5\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("SEQTUNE_KERNEL_MODULES", "broken_plugin_xyz")
    with pytest.warns(RuntimeWarning, match="broken_plugin_xyz"):
        specs = seqtune.registry.all_specs()
    assert "linear_scan" in specs


def test_a_module_replacing_a_built_in_kernel_warns(tmp_path, monkeypatch, fresh_registry):
    (tmp_path / "shadow_plugin_xyz.py").write_text(
        "import dataclasses\nfrom seqtune.kernels.linear_scan.spec import SPECS as BUILT_IN\n"
        "SPECS = (dataclasses.replace(BUILT_IN[0], description='shadowed'),)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("SEQTUNE_KERNEL_MODULES", "shadow_plugin_xyz")
    with pytest.warns(RuntimeWarning, match="replaces the built-in kernel 'linear_scan'"):
        specs = seqtune.registry.all_specs()
    assert specs["linear_scan"].description == "shadowed"
