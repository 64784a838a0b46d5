"""README's code runs as written (issue 33, point 5): every ```python block that follows a
``<!-- runnable -->`` line is run in a fresh interpreter process from the repository root, on
the CPU (Triton's interpreter), with a profile dir of its own."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
MARKED = re.compile(r"<!-- runnable -->\s*\n```python\n(.*?)\n```", re.S)


def runnable_blocks() -> list[str]:
    return MARKED.findall((ROOT / "README.md").read_text(encoding="utf-8"))


def test_the_readme_marks_its_runnable_examples():
    # the runtime and the transformers examples at least: a README whose examples drifted into
    # prose would otherwise pass by running nothing
    assert len(runnable_blocks()) >= 2


@pytest.mark.parametrize("index", range(len(runnable_blocks())))
def test_readme_block_runs_as_written(index, tmp_path):
    code = runnable_blocks()[index]
    env = {**os.environ, "TRITON_INTERPRET": "1", "SEQTUNE_PROFILE_DIR": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"README block {index}:\n{code}\n{result.stderr[-3000:]}"
