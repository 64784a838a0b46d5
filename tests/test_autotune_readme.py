"""The README's `seqtune.autotune` example runs as written: its two files, then its commands
(record, tune, run), in the interpreter. The fla commands after it need fla and a model and
are not run here."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

README = Path(__file__).parent.parent / "README.md"
SECTION = "## Any Triton kernel"


def example() -> tuple[dict[str, str], list[str]]:
    """The section's files (python blocks that start with `# <name>.py`) and the commands of
    its first bash block."""
    text = README.read_text()
    section = text[text.index(SECTION):]
    section = section[:section.index("\n## ", 1)]
    blocks = re.findall(r"```(\w+)\n(.*?)```", section, flags=re.S)
    files = {code.splitlines()[0][2:]: code for kind, code in blocks
             if kind == "python" and code.startswith("# ")}
    commands = next(code for kind, code in blocks if kind == "bash").splitlines()
    return files, [c.split("#")[0].strip() for c in commands if c.strip()]


def test_readme_example_runs_as_written(tmp_path):
    files, commands = example()
    assert sorted(files) == ["mykernels.py", "train.py"] and len(commands) == 3
    for name, code in files.items():
        (tmp_path / name).write_text(code)
    # `python` and `seqtune` run this interpreter (wherever pip put its scripts)
    bin_folder = tmp_path / "bin"
    bin_folder.mkdir()
    for name, command in (("python", sys.executable), ("seqtune", f"{sys.executable} -m seqtune")):
        (bin_folder / name).write_text(f'#!/bin/sh\nexec {command} "$@"\n')
        (bin_folder / name).chmod(0o755)
    env = {**os.environ, "TRITON_INTERPRET": "1", "SEQTUNE_LOG": "1",
           "SEQTUNE_PROFILE_DIR": str(tmp_path / "profiles"),
           "PATH": os.pathsep.join([str(bin_folder), os.environ.get("PATH", "")])}
    outputs = []
    for command in commands:
        done = subprocess.run(shlex.split(command), cwd=tmp_path, env=env, text=True,
                              capture_output=True, timeout=600)
        assert done.returncode == 0, f"{command}: {done.stdout}{done.stderr}"
        outputs.append(done.stdout + done.stderr)
    assert "mykernels.scale_kernel: 2 distinct calls" in outputs[0]
    assert "no usable tuned entry" in outputs[0]  # recording ran the default, said so
    assert "mykernels.scale_kernel: 2 problems tuned" in outputs[1]
    # the last run takes the tuned configs of both recorded sizes
    assert outputs[2].count("mykernels.scale_kernel {'n': ") == 2
    assert outputs[2].count("tuned config") == 2 and "no usable tuned entry" not in outputs[2]
