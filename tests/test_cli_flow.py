"""The flow a new user follows (issue 16): one profile location that `tune` writes and every
reader reads by default, each command saying where it read or wrote; an instant `--help`; a
file named as the profile dir is bad usage; `check` without Triton's FP-fusion warning; the
local profile dir git-ignored; README's set-up uses the default location."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import seqtune
import seqtune.loader
from seqtune.cli import app, main
from test_cli_views import assert_fits

ROOT = Path(__file__).parent.parent
runner = CliRunner()
COMMANDS = ("tune", "verify", "report", "merge", "list", "info", "check", "bench", "replay")


def invoke(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def run_main(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    monkeypatch.setattr("sys.argv", ["seqtune", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    return exit_info.value.code, capsys.readouterr().err


@pytest.fixture
def default_location(tmp_path, monkeypatch):
    """No --profile-dir and no $SEQTUNE_PROFILE_DIR: the user cache dir (under a temporary
    XDG_CACHE_HOME), as on a fresh machine."""
    monkeypatch.delenv("SEQTUNE_PROFILE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "seqtune"


def test_tune_without_flags_writes_where_every_reader_reads(default_location, toy_registry):
    tuned = invoke("tune", "toy_scale", "--no-isolate", "--max-configs", "3")
    assert tuned.exit_code == 0, tuned.output
    profile = default_location / "cpu-interpreter.yaml"
    assert profile.is_file()
    assert f"profile written: {profile}" in tuned.stdout  # where it wrote

    report = invoke("report")
    assert report.exit_code == 0 and f"profile: {profile}" in report.stdout
    assert "toy_scale: 2 entries" in report.stdout

    info = invoke("info")
    assert f"used: {profile}" in info.stdout and "toy_scale 2" in info.stdout
    assert json.loads(invoke("info", "--json").stdout)["active_profile_files"] == [str(profile)]

    verify = invoke("verify", "toy_scale")
    assert verify.exit_code == 0 and f"tuned configs from: {profile}" in verify.stdout

    bench = invoke("bench", "toy_scale")
    assert bench.exit_code == 0 and f"tuned configs from: {profile}" in bench.stdout

    # the runtime: no load_profile call, no environment variable
    entry = yaml_entries(profile)[0]
    assert seqtune.best_config("toy_scale", **entry["problem"]) == entry["config"]


def yaml_entries(path: Path) -> list[dict]:
    import yaml

    return yaml.safe_load(path.read_text())["kernels"]["toy_scale"]["entries"]


def test_info_reads_the_profile_dir_it_is_given(tmp_path, toy_registry):
    invoke("tune", "toy_scale", "--no-isolate", "--max-configs", "2", "--profile-dir",
           str(tmp_path / "mine"))
    facts = json.loads(invoke("info", "--profile-dir", str(tmp_path / "mine"), "--json").stdout)
    assert facts["profile_dir"] == str(tmp_path / "mine")
    assert facts["profile_files"][0]["state"] == "used"
    assert facts["active_entries"] == {"toy_scale": 2}


@pytest.mark.parametrize("command", ["tune", "verify", "report", "bench", "info", "merge"])
def test_a_file_named_as_the_profile_dir_is_bad_usage(command, tmp_path, toy_registry,
                                                      monkeypatch, capsys):
    a_file = tmp_path / "profile.yaml"
    a_file.write_text("schema: seqtune-profile/1\n")
    extra = [str(a_file)] if command == "merge" else []
    code, stderr = run_main(monkeypatch, capsys, command, *extra, "--profile-dir", str(a_file))
    assert code == 2
    assert stderr.strip() == (f"seqtune: error: --profile-dir {a_file} is a file, not a "
                              "directory")


def test_an_environment_profile_dir_that_is_a_file_is_named(tmp_path, monkeypatch, capsys,
                                                           toy_registry):
    a_file = tmp_path / "f"
    a_file.write_text("")
    monkeypatch.setenv("SEQTUNE_PROFILE_DIR", str(a_file))
    code, stderr = run_main(monkeypatch, capsys, "report")
    assert code == 2 and "$SEQTUNE_PROFILE_DIR" in stderr and len(stderr.splitlines()) == 1


@pytest.mark.parametrize("make, message", [
    (lambda p: p.mkdir(), "is a directory, not a profile file; report the profiles in it "
                          "with --profile-dir"),
    (lambda p: None, "no such profile file"),
])
def test_report_of_a_directory_or_a_missing_file_says_so(make, message, tmp_path, monkeypatch,
                                                         capsys, toy_registry):
    path = tmp_path / "profile.yaml"
    make(path)
    code, stderr = run_main(monkeypatch, capsys, "report", str(path))
    assert code == 2 and message in stderr and len(stderr.strip().splitlines()) == 1


def test_help_imports_neither_torch_nor_triton():
    """`seqtune --help` and every `seqtune CMD --help` run without loading torch or Triton
    (they took 6-10 s to start when they did)."""
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from seqtune.cli import app\n"
        f"for args in [['--help'], *[[c, '--help'] for c in {COMMANDS!r}]]:\n"
        "    result = CliRunner().invoke(app, args)\n"
        "    assert result.exit_code == 0 and 'Usage' in result.output, (args, result.output)\n"
        "print(sorted(m for m in ('torch', 'triton', 'numpy') if m in sys.modules))\n")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.strip() == "[]"


def test_the_console_script_help_is_lazy_too():
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "seqtune", "--help"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "tune" in result.stdout
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines()
                if line.startswith("import time:")}
    assert "seqtune.cli" in imported
    assert not {"torch", "triton"} & imported


def test_check_does_not_show_tritons_fp_fusion_warning():
    result = subprocess.run([sys.executable, "-m", "seqtune", "check", "linear_scan",
                             "--target", "sm_80", "--preset", "tiny"],
                            capture_output=True, text=True, timeout=300,
                            env={**__import__("os").environ, "COLUMNS": "80"})
    assert result.returncode == 0, result.stderr
    assert "TRITON_DEFAULT_FP_FUSION" not in result.stderr + result.stdout
    assert "linear_scan: compiled for sm_80" in result.stdout
    assert_fits(result.stdout, words=("linear_scan", "sm_80", "default"))  # COLUMNS=80, a pipe


def test_the_local_profile_dir_is_git_ignored():
    ignored = subprocess.run(["git", "check-ignore", "-q", "profiles-local/x.yaml"], cwd=ROOT)
    assert ignored.returncode == 0


def test_readme_sets_up_with_two_commands_tuning_into_the_default_location():
    readme = (ROOT / "README.md").read_text()
    setup = readme.split("## Set-up")[1].split("\n## ")[0]
    commands = re.findall(r"```bash\n(.*?)```", setup, re.S)
    assert len(commands) == 2
    assert "seqtune tune" in commands[0] and "--profile-dir" not in commands[0]
    runtime = readme.split("## Runtime")[1].split("\n## ")[0]
    example = runtime.split("```python")[1].split("```")[0]
    assert "load_profile" not in example and "profile" not in example.split("import")[0]
    assert "TRITON_INTERPRET=1" in runtime


def test_readme_runtime_gives_every_ops_tensor_layouts():
    import seqtune.kernels as ops

    runtime = (ROOT / "README.md").read_text().split("## Runtime")[1].split("\n## ")[0]
    missing = [name for name in ops.__all__ if f"`{name}(" not in runtime]
    assert not missing, f"README's Runtime section lacks {missing}"
