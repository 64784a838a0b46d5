"""The runtime loader against bad profiles: it warns once, falls back, never raises in the
launch path, never executes anything from the file, and kernels keep computing right."""
import random
import warnings

import pytest
import torch
import triton
import yaml

import seqtune
from seqtune.device import interpreter_device
from seqtune.store.profile_file import SCHEMA, profile_path, save_entries
from seqtune.registry import source_hash
from seqtune.spec import INTERPRETER_LIMITS

VALID = {
    "schema": SCHEMA,
    "software": {"triton": triton.__version__},
    "kernels": {"toy_scale": {"source_hash": None, "entries": [
        {"problem": {"N": 64, "dtype": "float32"},
         "config": {"BLOCK": 64, "SKIP_TAIL": False, "num_warps": 2}},
    ]}},
}
PWNED = "/tmp/seqtune-loader-must-never-run-this"

MALFORMED = {
    "empty": "",
    "not yaml": "kernels: [unclosed\n  - {",
    "binary": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe",
    "a list": "- 1\n- 2\n",
    "other schema": "schema: seqtune-profile/99\nkernels: {}\n",
    "no schema": "kernels: {}\n",
    "kernels not a mapping": f"schema: {SCHEMA}\nkernels: [1, 2]\n",
    "entries not a list": f"schema: {SCHEMA}\nkernels: {{toy_scale: {{entries: 3}}}}\n",
    "entry without config": f"schema: {SCHEMA}\nkernels: {{toy_scale: {{entries: "
                            "[{problem: {N: 64, dtype: float32}}]}}}}\n",
    "wrong type": f"schema: {SCHEMA}\nkernels: {{toy_scale: {{entries: [{{problem: {{N: 64, "
                  "dtype: float32}, config: {BLOCK: big}}]}}}}\n",
    "value too small": f"schema: {SCHEMA}\nkernels: {{toy_scale: {{entries: [{{problem: {{N: 64, "
                       "dtype: float32}, config: {BLOCK: 3}}]}}}}\n",
    "value too large": f"schema: {SCHEMA}\nkernels: {{toy_scale: {{entries: [{{problem: {{N: 64, "
                       "dtype: float32}, config: {BLOCK: 4096}}]}}}}\n",
    "unknown config key": f"schema: {SCHEMA}\nkernels: {{toy_scale: {{entries: [{{problem: "
                          "{N: 64, dtype: float32}, config: {WARP_SPEED: 9}}]}}}}\n",
    "bad dtype": f"schema: {SCHEMA}\nkernels: {{toy_scale: {{entries: [{{problem: {{N: 64, "
                 "dtype: float8}, config: {BLOCK: 16}}]}}}}\n",
    "size not a number": f"schema: {SCHEMA}\nkernels: {{toy_scale: {{entries: [{{problem: "
                         "{N: lots, dtype: float32}, config: {BLOCK: 16}}]}}}}\n",
    "unknown kernel": f"schema: {SCHEMA}\nkernels: {{warp_drive: {{entries: []}}}}\n",
    "python object tag": f"schema: {SCHEMA}\nkernels: !!python/object/apply:os.system "
                         f"['touch {PWNED}']\n",
    "python name tag": f"schema: {SCHEMA}\nsoftware: !!python/name:os.system\n",
}


def write(path, content):
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_profile_warns_and_falls_back(name, tmp_path, toy_registry):
    path = write(tmp_path / "p.yaml", MALFORMED[name])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        seqtune.load_profile(path)
        config = seqtune.best_config("toy_scale", N=64, dtype="float32")
    assert config == toy_registry.default_config
    messages = [str(w.message) for w in caught]
    assert messages, "a bad profile must be reported"
    assert all(len(m.splitlines()) == 1 for m in messages)
    assert any(str(path) in m or "toy_scale" in m or "warp_drive" in m for m in messages)
    import os
    assert not os.path.exists(PWNED)


def test_each_problem_warns_only_once(tmp_path, toy_registry):
    path = write(tmp_path / "p.yaml", MALFORMED["wrong type"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            seqtune.load_profile(path)
            seqtune.best_config("toy_scale", N=64, dtype="float32")
    assert len(caught) == 1


def _mutations(rng):
    """Random damage to a valid profile: wrong types, missing keys, junk values."""
    junk = [None, "big", -1, 0, 3, 4096, 1.5, [], {}, [1, 2], {"a": 1}, True, "float32", 10**30]

    def damage(node, depth=0):
        if isinstance(node, dict) and node:
            key = rng.choice(list(node))
            action = rng.random()
            if action < 0.25:
                del node[key]
            elif action < 0.6 or depth > 4:
                node[key] = rng.choice(junk)
            else:
                damage(node[key], depth + 1)
        elif isinstance(node, list) and node:
            index = rng.randrange(len(node))
            if rng.random() < 0.5:
                node[index] = rng.choice(junk)
            else:
                damage(node[index], depth + 1)
        return node

    import copy
    for _ in range(300):
        profile = copy.deepcopy(VALID)
        for _ in range(rng.randint(1, 3)):
            damage(profile)
        yield profile


def test_fuzzed_profiles_never_raise_and_give_valid_configs(tmp_path, toy_registry):
    rng = random.Random(1234)
    problems = [{"N": n, "dtype": d} for n in (1, 10, 64, 1000) for d in ("float32", "bfloat16")]
    for index, profile in enumerate(_mutations(rng)):
        path = write(tmp_path / f"fuzz{index}.yaml", yaml.safe_dump(profile))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            seqtune.load_profile(path)
            for problem in problems:
                config = seqtune.best_config("toy_scale", **problem)
                assert toy_registry.validate_config(config) == config
                assert toy_registry.check(config, problem, INTERPRETER_LIMITS) is None


def test_default_invalid_for_a_small_problem_is_repaired(toy_registry):
    # the toy default BLOCK=32 is larger than N=10 padded to 16
    config = seqtune.best_config("toy_scale", N=10, dtype="float32")
    assert config["BLOCK"] == 16 and config["SKIP_TAIL"] is False


def test_kernels_compute_correctly_with_a_garbage_profile_in_place(tmp_path, monkeypatch):
    from seqtune.kernels import attention
    from seqtune.kernels.attention.reference import attention_reference

    monkeypatch.setenv("SEQTUNE_PROFILE_DIR", str(tmp_path))
    write(tmp_path / "cpu-interpreter.yaml", f"schema: {SCHEMA}\nkernels: {{attention: "
          "{entries: [{problem: {B: 1}, config: {BLOCK_M: 3}}]}}\n")
    q, k, v = (torch.randn(1, 20, 2, 16) for _ in range(3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = attention(q, k, v, causal=True)
    torch.testing.assert_close(out.double(), attention_reference(q, k, v, causal=True),
                               atol=1e-4, rtol=1e-4)


def test_stale_entries_are_flagged_by_report(tmp_path, toy_registry):
    from typer.testing import CliRunner
    from seqtune.cli import app

    path = profile_path(tmp_path, "cpu-interpreter")
    entry = {"problem": {"N": 64, "dtype": "float32"},
             "config": {"BLOCK": 64, "SKIP_TAIL": False, "num_warps": 1},
             "time_us": {"median": 1.0, "p20": 1.0, "p80": 1.0}, "triton": "0.0.1"}
    save_entries(path, interpreter_device().as_dict(), "toy_scale", source_hash("toy_scale"),
                 [entry])
    import json
    rows = json.loads(CliRunner().invoke(app, ["report", str(path), "--json"]).stdout)
    assert rows["profiles"][0]["rows"][0]["stale"] == \
        f"tuned with triton 0.0.1, running {triton.__version__}"
