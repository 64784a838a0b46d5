"""`seqtune check`: real compilation for GPU targets without a GPU.

The kernels must be compiled, not interpreted, so these tests run seqtune in a subprocess
without TRITON_INTERPRET (this test process has it set for the other tests).
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest

ENV = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
OVERSIZED = ["--config", "BLOCK_M=128", "--config", "BLOCK_N=128", "--config", "num_stages=4"]


def seqtune(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "seqtune", *args], capture_output=True,
                          text=True, env=ENV, timeout=timeout)


def test_default_configs_compile_for_sm80_and_sm90_without_spills():
    done = seqtune("check", "attention_decode", "--target", "sm_80", "--target", "sm_90",
                   "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(done.stdout)
    assert {r["target"] for r in results} == {"sm_80", "sm_90"}
    for r in results:
        assert r["compiled"] and r["fits"] and not r["spills"]
        assert r["registers"] > 0 and r["spill_bytes"] == 0 and r["shared_bytes"] >= 0
        assert r["launches"]  # split and combine kernels


def test_oversized_config_is_reported_as_not_fitting():
    done = seqtune("check", "attention", "--target", "sm_80", *OVERSIZED, "--json")
    assert done.returncode == 0, done.stderr[-2000:]  # only a default failing makes it exit 1
    head_dim_128 = [r for r in json.loads(done.stdout) if r["problem"]["D"] == 128]
    assert head_dim_128 and not any(r["fits"] for r in head_dim_128)
    for r in head_dim_128:
        assert "shared memory" in " ".join(r["reasons"])


def test_compile_ahead_prunes_the_oversized_config_before_launch():
    script = textwrap.dedent("""
        import json
        from seqtune.tuning.compiler import TARGETS, CompileAhead
        from seqtune.registry import get_spec
        spec = get_spec("attention")
        problem = {"B": 1, "T": 512, "S": 512, "Hq": 4, "Hkv": 2, "D": 128, "causal": True,
                   "dtype": "bfloat16", "score": "softmax"}
        big = spec.validate_config({"BLOCK_M": 128, "BLOCK_N": 128, "num_stages": 4})
        default = dict(spec.default_config)
        ahead = CompileAhead(TARGETS["sm_80"], jobs=2)
        ahead.expect(spec, problem, [big, default])
        print(json.dumps([ahead.verdict(spec, problem, big),
                          ahead.verdict(spec, problem, default), ahead.compiled]))
        ahead.close()
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={**ENV, "TRITON_INTERPRET": "1"}, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    oversized, default, compiled = json.loads(done.stdout.strip().splitlines()[-1])
    assert oversized[0] == "resources" and "shared memory" in oversized[1]
    assert default is None and compiled == 2


@pytest.mark.parametrize("args, message", [
    (["check", "--target", "sm_99"], "unknown target 'sm_99'"),
    (["check", "attention", "--config", "BLOCK_M"], "expected KEY=VALUE"),
    (["check", "attention", "--config", "BLOCK_M=3"], "BLOCK_M=3 (int) is not one of"),
])
def test_bad_check_arguments_are_one_line_exit_2(args, message):
    done = seqtune(*args)
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr
