"""`seqtune check --model-config`: compile exactly the problems a model runs (issue 29), in a
subprocess without TRITON_INTERPRET (compiling needs the real kernels)."""
import json
import os
import subprocess
import sys
from pathlib import Path

from seqtune.integrations.model_config import problems_for_model

ENV = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
MODELS = Path(__file__).resolve().parents[1] / "benchmarks" / "models"


def seqtune(*args):
    return subprocess.run([sys.executable, "-m", "seqtune", *args], capture_output=True,
                          text=True, env=ENV, timeout=600)


def test_check_compiles_the_short_convolutions_a_model_runs():
    config = MODELS / "qwen3_5-default.json"
    done = seqtune("check", "causal_conv1d", "causal_conv1d_step", "--model-config",
                   str(config), "--target", "sm_90", "--decode", "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(done.stdout)
    derived = problems_for_model(config, decode=True)
    assert {r["kernel"] for r in results} == {"causal_conv1d", "causal_conv1d_step"}
    for r in results:
        assert r["compiled"] and r["fits"] and not r["spills"] and r["target"] == "sm_90"
        # the model's own width, bias and activation; channels capped for compiling
        expected = derived[r["kernel"]][0]
        assert {k: r["problem"][k] for k in ("W", "has_bias", "silu")} == {
            k: expected[k] for k in ("W", "has_bias", "silu")}
        assert r["problem"]["D"] <= expected["D"]


def test_a_bad_model_config_is_one_line_exit_2(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model_type": "lfm2", "num_hidden_layers": 2,
                                  "hidden_size": 64, "conv_L_cache": 9,
                                  "layer_types": ["conv", "conv"]}))
    done = seqtune("check", "--model-config", str(config), "--target", "sm_90")
    assert done.returncode == 2, done.stderr[-2000:]
    assert "conv_L_cache" in done.stderr and "9" in done.stderr and str(config) in done.stderr
    assert "Traceback" not in done.stderr
