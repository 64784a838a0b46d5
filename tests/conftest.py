import os
import tempfile

# Kernels must be defined under the interpreter: set it before anything imports triton kernels.
os.environ.setdefault("TRITON_INTERPRET", "1")
# rich reads the width when seqtune.cli creates its consoles: wide, unfolded tables for the tests.
os.environ["COLUMNS"] = "250"
# Not the user's profile dir, even while collecting: kernels recorded into it (`seqtune tune
# --workload`) would join the registry that parametrized tests enumerate.
os.environ["SEQTUNE_PROFILE_DIR"] = os.path.join(tempfile.gettempdir(), "seqtune-tests-no-profile")

import dataclasses  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

import seqtune.loader  # noqa: E402
import seqtune.registry  # noqa: E402


@pytest.fixture
def toy_registry(monkeypatch):
    """The registry holding only the toy kernel (with this folder as its source dir)."""
    from toy_spec import TOY

    spec = dataclasses.replace(TOY, source_dir=Path(__file__).parent)
    monkeypatch.setattr(seqtune.registry, "all_specs", lambda: {spec.name: spec})
    seqtune.registry.source_hash.cache_clear()
    yield spec
    seqtune.registry.source_hash.cache_clear()


@pytest.fixture(autouse=True)
def isolated_profiles(tmp_path, monkeypatch):
    """No test reads the user's profile dir or leaves a loader state behind."""
    monkeypatch.setenv("SEQTUNE_PROFILE_DIR", str(tmp_path / "profiles"))
    monkeypatch.setattr(seqtune.loader, "_active", None)
    seqtune.loader._warned.clear()
    yield
