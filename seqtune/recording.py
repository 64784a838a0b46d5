"""``seqtune record``: run a program with every autotuned Triton kernel of its Python processes
recorded into a workload file.

The program runs as a subprocess with a ``sitecustomize`` module put first on its
``PYTHONPATH`` and ``SEQTUNE_RECORD`` naming the file: every Python process it starts (the
program, its workers, ``torchrun``'s ranks) patches ``triton.autotune``'s Autotuner at start-up,
before any library defines a kernel, and then chains to the ``sitecustomize`` it shadows.
"""
from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Sequence

ENV_RECORD = "SEQTUNE_RECORD"

SITECUSTOMIZE = '''\
"""seqtune record's start-up hook (written by seqtune.recording)."""
import os
import sys


def _chain():
    """Import the sitecustomize this module shadows, if any."""
    here = os.path.dirname(os.path.abspath(__file__))
    this = sys.modules.pop("sitecustomize", None)
    saved = list(sys.path)
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    try:
        import sitecustomize  # noqa: F401
    except ImportError:
        pass
    finally:
        sys.path[:] = saved
        sys.modules["sitecustomize"] = this


_chain()
if os.environ.get("SEQTUNE_RECORD"):
    try:
        from seqtune.offline import start_recording

        start_recording(os.environ["SEQTUNE_RECORD"])
    except Exception as exc:  # the program runs anyway, unrecorded
        sys.stderr.write(f"seqtune record: not recording in this process ({exc})\\n")
'''


def run_recorded(command: Sequence[str], output: Path) -> dict[str, Any]:
    """Run ``command`` with recording into ``output`` (replaced); its exit code and what was
    recorded: calls per kernel."""
    from seqtune.workload.spec import by_kernel, read_workload

    output = Path(output).resolve()
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text("")
    with tempfile.TemporaryDirectory(prefix="seqtune-record-") as hook:
        Path(hook, "sitecustomize.py").write_text(SITECUSTOMIZE)
        env = dict(os.environ)
        env[ENV_RECORD] = str(output)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [hook, env.get("PYTHONPATH")]))
        returncode = subprocess.call(list(command), env=env)
    records = read_workload(output)
    return {"output": str(output), "command": list(command), "returncode": returncode,
            "calls": len(records),
            "kernels": {name: len(items) for name, items in by_kernel(records).items()}}
