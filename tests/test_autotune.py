"""Offline tuning of any Triton kernel (issue 31), end to end in the interpreter: a user's kernel
under ``seqtune.autotune`` and a library's kernels under plain ``triton.autotune`` (one with
``restore_value``, one with ``reset_to_zero``) are recorded by ``seqtune record``, tuned by
``seqtune tune --workload`` and run frozen in a new process. Each kernel has a config that is the
fastest and wrong (it skips a partial last block): it must never reach the profile.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

HERE = Path(__file__).parent
WRONG = {"BLOCK": 64, "TAIL": False, "num_warps": 4, "num_stages": 1}

PROGRAM = f"""
import sys
import torch
sys.path.insert(0, {str(HERE)!r})
import autotune_library
import autotune_user

for dtype in (torch.float32, torch.float16):
    x, y = torch.randn(200, dtype=dtype), torch.randn(200, dtype=dtype)
    assert torch.allclose(autotune_user.run(x, y).float(), (2 * x + y).float(), atol=1e-2)
x, y = torch.randn(200), torch.randn(200)
expected = x + y
assert torch.allclose(autotune_library.accumulate(x, y), expected)
assert torch.allclose(autotune_library.total(x), x.sum(), atol=1e-4)
"""

FROZEN = f"""
import json
import sys
import torch
sys.path.insert(0, {str(HERE)!r})
import seqtune
from triton.runtime.autotuner import Autotuner

seqtune.freeze_triton_autotune()
benchmarks = []
bench = Autotuner._bench
Autotuner._bench = lambda self, *a, **k: benchmarks.append(1) or bench(self, *a, **k)
import autotune_library
import autotune_user

chosen = {{}}
for n in (200, 700):
    x, y = torch.randn(n), torch.randn(n)
    assert torch.allclose(autotune_user.run(x, y), 2 * x + y)
    expected = x + y
    assert torch.allclose(autotune_library.accumulate(x, y), expected)
    assert torch.allclose(autotune_library.total(x), x.sum(), atol=1e-4)
    for kernel in (autotune_user.axpy, autotune_library.accumulate_kernel,
                   autotune_library.total_kernel):
        config = kernel.best_config
        chosen[f"{{kernel.base_fn.__name__}} {{n}}"] = {{**config.kwargs,
            "num_warps": config.num_warps, "num_stages": config.num_stages}}
print(json.dumps({{"benchmarks": len(benchmarks), "chosen": chosen}}))
"""


def seqtune_env(profiles: Path) -> dict[str, str]:
    return {**os.environ, "TRITON_INTERPRET": "1", "SEQTUNE_PROFILE_DIR": str(profiles),
            "SEQTUNE_LOG": "1"}


def run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    done = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def entries(profiles: Path) -> dict[str, list[dict]]:
    (path,) = profiles.glob("*.yaml")
    kernels = yaml.safe_load(path.read_text())["kernels"]
    return {name: section["entries"] for name, section in kernels.items()}


def test_record_tune_freeze(tmp_path, kernels_registered_here):
    profiles, env = tmp_path / "profiles", seqtune_env(tmp_path / "profiles")
    (tmp_path / "program.py").write_text(PROGRAM)
    (tmp_path / "frozen.py").write_text(FROZEN)
    seqtune = [sys.executable, "-m", "seqtune"]

    recorded = run([*seqtune, "record", "--output", "W.jsonl", "--json", "--",
                    sys.executable, "program.py"], env, tmp_path)
    summary = json.loads(recorded.stdout)
    assert summary["kernels"] == {"autotune_user.axpy": 2,
                                  "autotune_library.accumulate_kernel": 1,
                                  "autotune_library.total_kernel": 1}
    assert "no usable tuned entry" in recorded.stderr  # the default ran, with one log line
    records = {r["kernel"]: r for r in map(json.loads, (tmp_path / "W.jsonl").open())}
    assert records["autotune_library.accumulate_kernel"]["restore_value"] == ["y"]
    assert records["autotune_library.total_kernel"]["reset_to_zero"] == ["total"]
    assert records["autotune_user.axpy"]["args"]["n"] == {"value": 200}

    run([*seqtune, "tune", "--workload", "W.jsonl", "--no-isolate"], env, tmp_path)
    tuned = entries(profiles)
    assert sorted(tuned) == ["autotune_library.accumulate_kernel",
                             "autotune_library.total_kernel", "autotune_user.axpy"]
    assert sorted(e["problem"]["dtype"] for e in tuned["autotune_user.axpy"]) == [
        "float16", "float32"]  # one entry per dtype
    for items in tuned.values():
        for entry in items:
            assert entry["config"] != WRONG and entry["problem"]["n"] == 256
            assert entry["failed"]["mismatch"] == 1  # the wrong config was run and rejected

    frozen = json.loads(run([sys.executable, "frozen.py"], env, tmp_path).stdout)
    assert frozen["benchmarks"] == 0
    fp32 = {name: next(e for e in items if e["problem"]["dtype"] == "float32")["config"]
            for name, items in tuned.items()}
    for name, config in fp32.items():
        function = name.rpartition(".")[2]
        assert frozen["chosen"][f"{function} 200"] == config  # the recorded size's entry
        assert frozen["chosen"][f"{function} 700"] == config  # the nearest entry (n=256)

    tools_see_them_like_built_in_kernels(profiles, tuned)


def tools_see_them_like_built_in_kernels(profiles: Path, tuned: dict[str, list]) -> None:
    from seqtune import api

    rows = api.verify(["autotune_user.axpy"], profile_dir=profiles)
    assert rows and all(r["ok"] for r in rows)
    assert {r["problem"]["n"] for r in rows} == {200}  # the recorded shapes
    rows = api.report(profile_dir=profiles).rows_by_file[0]
    assert {r["kernel"] for r in rows} == set(tuned) and not any(r["stale"] for r in rows)
    counts = {name: len(items) for name, items in tuned.items()}
    assert api.info(profiles)["active_entries"] == counts
    (profile,) = profiles.glob("*.yaml")
    assert api.merge([profile], output=profiles.parent / "merged.yaml").entries == counts
    (log,) = (profiles / "logs").glob("*.jsonl")
    replayed = api.replay([log], repeats=2)["results"]
    assert {r["problem"].split()[0] for r in replayed} == set(tuned)


@pytest.fixture
def kernels_registered_here(monkeypatch):
    """Kernels and workload dirs registered by a test's calls are forgotten after it."""
    import seqtune.registry

    monkeypatch.setenv("SEQTUNE_WORKLOAD_DIRS", os.environ.get("SEQTUNE_WORKLOAD_DIRS", ""))

    specs = seqtune.registry.all_specs()
    saved = dict(specs)
    yield
    specs.clear()
    specs.update(saved)
    seqtune.registry.source_hash.cache_clear()


def test_seqtune_autotune_runs_the_default_without_a_profile(capfd, monkeypatch,
                                                             kernels_registered_here):
    """No entry: the default config (here the first), no benchmark, one log line."""
    import torch

    monkeypatch.syspath_prepend(str(HERE))
    import autotune_user

    monkeypatch.setenv("SEQTUNE_LOG", "1")
    monkeypatch.setattr(autotune_user.axpy, "_bench", lambda *a, **k: pytest.fail("benchmark"))
    x, y = torch.randn(37), torch.randn(37)
    assert torch.allclose(autotune_user.run(x, y, 3.0), 3 * x + y)
    assert autotune_user.axpy.best_config is autotune_user.CONFIGS[0]
    log = capfd.readouterr().err
    assert log.count("autotune_user.axpy") == 1 and "the default config" in log


def test_bad_arguments_are_named():
    import triton

    from seqtune.offline import autotune

    configs = [triton.Config({"BLOCK": 16}), triton.Config({"BLOCK": 32})]
    with pytest.raises(TypeError, match="configs must be a non-empty list"):
        autotune([], key=["n"])
    with pytest.raises(ValueError, match="buckets names 'T'"):
        autotune(configs, key=["n"], buckets={"T": [64]})
    with pytest.raises(ValueError, match=r"buckets\['n'\]=\[64, 32\]"):
        autotune(configs, key=["n"], buckets={"n": [64, 32]})
    with pytest.raises(ValueError, match="default=2 is not an index"):
        autotune(configs, key=["n"], default=2)
    with pytest.raises(TypeError, match="decorates a @triton.jit function"):
        autotune(configs, key=["n"])(lambda x: x)


def record_call(kernel, args: tuple, n: int, path: Path) -> None:
    """One call's record, as `seqtune record` writes it, without running a program."""
    import triton

    from seqtune.workload.calls import describe_call

    grid = lambda meta: (triton.cdiv(n, meta["BLOCK"]),)  # noqa: E731
    record = describe_call(kernel, args, {"grid": grid, "warmup": False})
    path.write_text(json.dumps(record) + "\n")


def test_reference_judges_configs_when_given(tmp_path, monkeypatch, kernels_registered_here):
    """The default config is the wrong one here: checked against the kernel's reference, it is
    rejected and a correct config wins."""
    import torch

    import seqtune

    monkeypatch.syspath_prepend(str(HERE))
    import autotune_user

    x, y, out = torch.randn(37), torch.randn(37), torch.empty(37)
    record_call(autotune_user.axpy_checked, (x, y, out, 37, 2.0), 37, tmp_path / "W.jsonl")
    result = seqtune.tune(workload=tmp_path / "W.jsonl", profile_dir=tmp_path / "profiles",
                          isolate=False)
    (problem,) = result["problems"]
    assert problem["kernel"] == "axpy_checked"
    assert problem["winner"] not in (None, WRONG) and problem["failed"]["mismatch"] == 1


def test_buckets_round_sizes_up_or_match_exactly(monkeypatch):
    import torch

    from seqtune.offline import autotune
    from seqtune.workload.calls import describe_call
    from seqtune.workload.spec import spec_from_records

    monkeypatch.syspath_prepend(str(HERE))
    import autotune_user

    def spec_of(buckets):
        kernel = autotune(autotune_user.CONFIGS, key=["n"], buckets=buckets)(autotune_user.axpy.fn)
        x = torch.randn(100)
        return spec_from_records([describe_call(kernel, (x, x, x, 100, 1.0), {"grid": (1,)})])

    sized = spec_of({"n": [64, 512]})
    assert [sized.bucket({"n": n})["n"] for n in (3, 64, 100, 5000)] == [64, 64, 512, 512]
    assert spec_of({}).bucket({"n": 100})["n"] == 128  # powers of two without buckets
    exact = spec_of({"n": None})
    assert exact.size_fields == () and exact.bucket({"n": 100})["n"] == 100


FREEZE_FROM_ENV = f"""
import json
import sys
import torch
sys.path.insert(0, {str(HERE)!r})
import seqtune
from triton.runtime.autotuner import Autotuner

benchmarks = []
# Triton cannot benchmark in the interpreter: a stand-in that counts and ties every config
Autotuner._bench = lambda self, *a, **k: benchmarks.append(1) or [1.0, 1.0, 1.0]
import autotune_library

x = torch.randn(100)
assert torch.allclose(autotune_library.total(x), x.sum(), atol=1e-4)
first = autotune_library.total_kernel.best_config is autotune_library.CONFIGS[0]
strict = len(benchmarks)
seqtune.freeze_triton_autotune(strict=False)  # no entry: Triton's own behaviour again
x = torch.randn(300)
assert torch.allclose(autotune_library.total(x), x.sum(), atol=1e-4)
print(json.dumps({{"first": first, "strict": strict, "kept": len(benchmarks)}}))
"""


def test_freeze_from_the_environment(tmp_path):
    """SEQTUNE_FREEZE_AUTOTUNE=strict freezes at `import seqtune`: no entry, the first config
    and no benchmark; strict=False leaves a kernel without an entry to Triton. Without the
    variable, `import seqtune` imports neither Triton nor torch."""
    env = {**seqtune_env(tmp_path / "profiles"), "SEQTUNE_FREEZE_AUTOTUNE": "strict"}
    (tmp_path / "script.py").write_text(FREEZE_FROM_ENV)
    result = json.loads(run([sys.executable, "script.py"], env, tmp_path).stdout)
    assert result == {"first": True, "strict": 0, "kept": 3}  # Triton timed its 3 configs
    env.pop("SEQTUNE_FREEZE_AUTOTUNE")
    cheap = run([sys.executable, "-c", "import sys, seqtune; "
                 "print('triton' in sys.modules, 'torch' in sys.modules)"], env, tmp_path)
    assert cheap.stdout.split() == ["False", "False"]


def test_bad_workloads_and_commands_are_usage_errors(tmp_path, kernels_registered_here):
    from seqtune import api
    from seqtune.errors import UsageError

    bad = tmp_path / "bad.jsonl"
    for text, message in [('{"kernel": "k"}\n', r"bad.jsonl:1: not a seqtune record \(module"),
                          ("[1, 2]\n", "a list, not a mapping"), ("{\n", "not a JSON record")]:
        bad.write_text(text)
        with pytest.raises(UsageError, match=message):
            api.tune(workload=bad, isolate=False)
    with pytest.raises(UsageError, match="no such file"):
        api.tune(workload=tmp_path / "missing.jsonl", isolate=False)
    with pytest.raises(UsageError, match="record needs a command"):
        api.record([], tmp_path / "W.jsonl")
    with pytest.raises(UsageError, match="cannot run 'no-such-program-here'"):
        api.record(["no-such-program-here"], tmp_path / "W.jsonl")


def test_arguments_are_rebuilt_with_their_strides_and_integers():
    import torch

    from seqtune.workload.calls import encode_arg, rebuild_args

    base = torch.randn(5, 12)
    strided = base[1:, ::3]  # an offset view with gaps
    offsets = torch.tensor([0, 7, 19, 37], dtype=torch.int32)
    record = {"kernel": "k", "args": {"x": encode_arg(strided), "cu": encode_arg(offsets),
                                      "n": encode_arg(37), "eps": encode_arg(1e-6),
                                      "g": encode_arg(None)}}
    rebuilt = rebuild_args(record, "cpu", seed=0)
    x = rebuilt["x"]
    assert (x.shape, x.stride(), x.storage_offset()) == (strided.shape, strided.stride(), 12)
    assert not torch.equal(x, strided)  # random floats, not the recorded ones
    assert torch.equal(rebuilt["cu"], offsets) and rebuilt["cu"].dtype == torch.int32
    assert (rebuilt["n"], rebuilt["eps"], rebuilt["g"]) == (37, 1e-6, None)
    with pytest.raises(ValueError, match="argument 'fn' .* cannot be rebuilt"):
        rebuild_args({"kernel": "k", "args": {"fn": encode_arg(print)}}, "cpu", seed=0)


def test_prune_configs_by_limits_tuning_and_the_runtime(tmp_path, monkeypatch,
                                                        kernels_registered_here):
    """Configs the kernel's prune drops for a call are never tuned for it, nor run at it even
    when the profile's nearest entry names one."""
    import torch

    import seqtune
    from seqtune.loader import Profile

    monkeypatch.syspath_prepend(str(HERE))
    import autotune_user

    x, y, out = torch.randn(37), torch.randn(37), torch.empty(37)
    record_call(autotune_user.axpy_pruned, (x, y, out, 37, 2.0), 37, tmp_path / "W.jsonl")
    result = seqtune.tune(workload=tmp_path / "W.jsonl", profile_dir=tmp_path / "profiles",
                          isolate=False)
    (problem,) = result["problems"]
    assert problem["winner"]["BLOCK"] == 16 and problem["tried"] == 1

    block_32 = {"BLOCK": 32, "TAIL": True, "num_warps": 4, "num_stages": 1}
    monkeypatch.setattr(Profile, "tuned_config", lambda self, kernel, problem: dict(block_32))
    autotune_user.axpy_pruned[(3,)](x, y, out, 37, 2.0)
    assert torch.allclose(out, 2 * x + y)
    assert autotune_user.axpy_pruned.best_config.kwargs["BLOCK"] == 16  # 32: pruned here
    z = torch.randn(100)
    autotune_user.axpy_pruned[(4,)](z, z, torch.empty(100), 100, 2.0)
    assert autotune_user.axpy_pruned.best_config.kwargs["BLOCK"] == 32  # 32: kept at n=100
