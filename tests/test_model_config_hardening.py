"""Hostile `--model-config` files (issue 26, point 2): each is exit 2 with one line naming the
file, the field and the value, in under 2 s, before the backend starts (so nothing is allocated)
and with no profile written; through `tune` and `report` alike."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

import seqtune.api
from seqtune.cli import main
from seqtune.integrations import config_file
from seqtune.integrations.model_config import problems_for_model

MODELS = Path(__file__).resolve().parents[1] / "benchmarks" / "models"
MAMBA = json.loads((MODELS / "tiny-mamba.json").read_text())
MAMBA2 = json.loads((MODELS / "tiny-mamba2.json").read_text())
LLAMA = json.loads((MODELS / "tiny-llama.json").read_text())
QWEN = json.loads((MODELS / "tiny-qwen3-next.json").read_text())

# name -> (config, the field and value the one line must name)
BAD_FIELDS = {
    "huge state": ({**MAMBA, "state_size": 1_000_000_000}, "state_size", "1000000000"),
    "zero heads": ({**LLAMA, "num_attention_heads": 0}, "num_attention_heads", "0"),
    "negative layers": ({**LLAMA, "num_hidden_layers": -2}, "num_hidden_layers", "-2"),
    "huge hidden": ({**MAMBA, "intermediate_size": 10**12}, "intermediate_size", str(10**12)),
    "float head dim": ({**LLAMA, "head_dim": 16.5}, "head_dim", "16.5"),
    "string head dim": ({**LLAMA, "head_dim": "abc"}, "head_dim", "'abc'"),
    "list head dim": ({**LLAMA, "head_dim": [16]}, "head_dim", "[16]"),
    "head dim over 512": ({**LLAMA, "head_dim": 520}, "head_dim", "520"),
    "delta head dim under 16": ({**QWEN, "linear_key_head_dim": 8}, "linear_key_head_dim", "8"),
    "conv width 9": ({**MAMBA, "conv_kernel": 9}, "conv_kernel", "9"),
    "conv width 1": ({**MAMBA2, "conv_kernel": 1}, "conv_kernel", "1"),
    "bool layers": ({**LLAMA, "num_hidden_layers": True}, "num_hidden_layers", "True"),
    "layer types not a list": ({**QWEN, "layer_types": 7}, "layer_types", "7"),
    "dtype a list": ({**LLAMA, "torch_dtype": ["float32"]}, "dtype", "['float32']"),
}


def run_main(args, monkeypatch, capsys) -> tuple[int, str, float, float]:
    """`seqtune ARGS` through the entry point: exit code, output, CPU and wall seconds."""
    monkeypatch.setattr("sys.argv", ["seqtune", *args])
    start, start_cpu = time.perf_counter(), time.process_time()
    with pytest.raises(SystemExit) as exit_info:
        main()
    cpu, wall = time.process_time() - start_cpu, time.perf_counter() - start
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out + captured.err, cpu, wall


@pytest.fixture(autouse=True)
def backend_never_starts(monkeypatch):
    """A refused config must stop before the backend (torch, the device, any tensor)."""
    def refuse():
        raise AssertionError("the backend started for a config that should have been refused")
    monkeypatch.setattr(seqtune.api, "prepare_backend", refuse)


def assert_refused(path, args, monkeypatch, capsys, tmp_path, *names, command="tune"):
    profiles = tmp_path / "written"
    code, output, cpu, wall = run_main([command, "--model-config", str(path), *args,
                                        "--profile-dir", str(profiles)], monkeypatch, capsys)
    assert code == 2, output
    assert output.count("\n") == 1 and output.startswith("seqtune: error:"), output
    assert str(path) in output and all(name in output for name in names), output
    # CPU time: the 2 s hold on a machine shared with other work, where wall time does not;
    # a read that blocks (a FIFO) or never ends (/dev/zero) would fail the wall-time bound
    assert cpu < 2 and wall < 30, (cpu, wall)
    assert not profiles.exists() or not any(profiles.iterdir())


COMMANDS = pytest.mark.parametrize("command", ["tune", "report"])


@COMMANDS
@pytest.mark.parametrize("case", list(BAD_FIELDS))
def test_a_bad_field_is_one_line_naming_file_field_and_value(case, command, tmp_path,
                                                             monkeypatch, capsys):
    config, field, value = BAD_FIELDS[case]
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    assert_refused(path, [], monkeypatch, capsys, tmp_path, f"{field}", value, command=command)


@COMMANDS
def test_a_symlink_to_dev_zero_is_not_read(command, tmp_path, monkeypatch, capsys):
    path = tmp_path / "config.json"
    path.symlink_to("/dev/zero")
    assert_refused(path, [], monkeypatch, capsys, tmp_path, "not a regular file",
                   command=command)


@COMMANDS
def test_a_fifo_never_blocks(command, tmp_path, monkeypatch, capsys):
    path = tmp_path / "config.json"
    os.mkfifo(path)
    assert_refused(path, [], monkeypatch, capsys, tmp_path, "FIFO", command=command)


@COMMANDS
def test_a_100_mb_file_is_not_read(command, tmp_path, monkeypatch, capsys):
    path = tmp_path / "config.json"
    with open(path, "wb") as handle:
        handle.truncate(100 * 2**20)  # sparse: the size alone must refuse it
    assert_refused(path, [], monkeypatch, capsys, tmp_path, "100.0 MB", command=command)


@COMMANDS
def test_deep_nesting_is_refused_without_recursion(command, tmp_path, monkeypatch, capsys):
    path = tmp_path / "config.json"
    path.write_text('{"model_type": "llama", "x": ' + "[" * 20000 + "]" * 20000 + "}")
    assert_refused(path, [], monkeypatch, capsys, tmp_path, "nested deeper",
                   command=command)


@COMMANDS
@pytest.mark.parametrize("flag, value, names", [
    ("--batch", "1000000000", ["batch sizes", "1000000000"]),
    ("--batch", "0", ["--batch", "'0'"]),
    ("--batch", "x", ["--batch", "'x'"]),
    ("--lengths", "1048577", ["lengths", "1048577"]),
])
def test_bad_sizes_are_refused(command, flag, value, names, tmp_path, monkeypatch, capsys):
    assert_refused(MODELS / "tiny-mamba.json", [flag, value], monkeypatch, capsys, tmp_path,
                   *names, command=command)


def test_a_tensor_over_what_a_kernel_indexes_is_refused():
    with pytest.raises(ValueError, match="over the 2147483647 a kernel indexes"):
        problems_for_model(MODELS / "mamba-2.8b.json", lengths=[1 << 20], batch_sizes=[1024])


def test_the_limits_are_the_kernels_own():
    from seqtune.kernels.attention import op as attention
    from seqtune.kernels.causal_conv1d import op as conv
    from seqtune.kernels.delta_rule import op as delta_rule
    from seqtune.kernels.linear_attention import op as linear_attention
    from seqtune.kernels.selective_scan import op as selective_scan
    from seqtune.spec import dtype_name

    assert config_file.ATTENTION_HEAD_DIMS == (1, attention.MAX_HEAD_DIM)
    assert config_file.DELTA_RULE_HEAD_DIMS == (delta_rule.MIN_HEAD_DIM, delta_rule.MAX_HEAD_DIM)
    assert config_file.SSD_HEAD_DIMS == (1, linear_attention.MAX_HEAD_DIM)
    assert config_file.SELECTIVE_SCAN_STATES == (1, selective_scan.MAX_BWD_STATE_DIM)
    assert config_file.CONV_WIDTHS == (min(conv.WIDTHS), max(conv.WIDTHS))
    assert list(range(min(conv.WIDTHS), max(conv.WIDTHS) + 1)) == list(conv.WIDTHS)
    for name, canonical in config_file.DTYPE_NAMES.items():
        assert dtype_name(name) == canonical


def test_a_good_config_still_reads_after_the_checks():
    problems = problems_for_model(MODELS / "qwen3-next-80b-a3b.json", lengths=[4096],
                                  batch_sizes=[8], decode=True)
    assert problems["delta_rule"][0]["K"] == 128
