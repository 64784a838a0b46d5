"""seqtune.integrations.model_config: the layers and problems of the shipped model configs, bad
configs as one-line errors, the problems' fields as the specs key them, coverage of a profile,
and the round trip: tune the problems of the tiny Qwen3-Next config, then the patched model
launches with the tuned entries."""
from __future__ import annotations

import ast
import json
import logging
from pathlib import Path

import pytest
import torch

import seqtune.loader
from seqtune.integrations.model_config import (
    Layer,
    model_coverage,
    model_dtype,
    model_layers,
    problems_for_model,
    specs_for_model,
)
from seqtune.registry import all_specs, get_spec

MODELS = Path(__file__).resolve().parents[1] / "benchmarks" / "models"

PUBLIC = {
    "qwen3-next-80b-a3b": [
        Layer("gated_delta_net", 36, {"H": 16, "HV": 32, "K": 128, "V": 128, "gate": "scalar",
                                      "conv_dim": 8192, "width": 4, "conv_bias": False,
                                      "silu": True}),
        Layer("attention", 12, {"Hq": 16, "Hkv": 2, "D": 256, "Dv": 256})],
    "kimi-linear-48b-a3b": [
        Layer("kda", 20, {"H": 32, "HV": 32, "K": 128, "V": 128, "gate": "channel",
                          "conv_dim": 12288, "width": 4, "conv_bias": False, "silu": True}),
        Layer("attention", 7, {"Hq": 32, "Hkv": 32, "D": 192, "Dv": 128})],
    "mamba2-2.7b": [Layer("mamba2", 64, {"h": 80, "p": 64, "g": 1, "n": 128, "conv_dim": 5376,
                                         "width": 4, "conv_bias": True, "silu": True})],
    "mamba-2.8b": [Layer("mamba", 64, {"d": 5120, "n": 16, "conv_dim": 5120, "width": 4,
                                       "conv_bias": True, "silu": True})],
    "llama-3-8b": [Layer("attention", 32, {"Hq": 32, "Hkv": 8, "D": 128, "Dv": 128})],
}


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_public_configs_give_their_layers(name):
    assert model_layers(MODELS / f"{name}.json") == PUBLIC[name]


def test_every_shipped_config_reads():
    for path in sorted(MODELS.glob("*.json")):
        assert model_layers(path), path.name
        assert problems_for_model(path, lengths=[64]), path.name


def _fields(kernel: str, problem: dict) -> set[str]:
    return set(get_spec(kernel).bucket(problem))


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_problems_carry_the_fields_their_specs_key(name):
    """Every derived problem has exactly the fields of its spec's own problems (attention's
    optional Dv aside), so tuning and the loader key it as the ops do."""
    problems = problems_for_model(MODELS / f"{name}.json", lengths=[1000, 4096],
                                  batch_sizes=[1, 3], decode=True, training=True)
    for kernel, listed in problems.items():
        spec = get_spec(kernel)
        expected = set().union(*(_fields(kernel, p) for p in spec.presets["tiny"]))
        for problem in listed:
            assert _fields(kernel, problem) - {"Dv"} == expected - {"Dv"}, (kernel, problem)


def test_qwen3_next_problems():
    problems = problems_for_model(MODELS / "qwen3-next-80b-a3b.json", lengths=[4096],
                                  batch_sizes=[2], decode=True)
    assert problems["delta_rule"] == [{
        "B": 2, "T": 4096, "H": 16, "GV": 2, "N": 1, "K": 128, "V": 128, "gate": "scalar",
        "initial_state": False, "varlen": False, "dtype": "bfloat16"}]
    assert problems["causal_conv1d"] == [{
        "B": 2, "T": 4096, "D": 8192, "W": 4, "N": 2, "varlen": False, "has_bias": False,
        "silu": True, "has_initial_state": False, "dtype": "bfloat16"}]
    assert problems["attention"] == [{
        "B": 2, "T": 4096, "S": 4096, "Hq": 16, "Hkv": 2, "D": 256, "causal": True,
        "dtype": "bfloat16", "score": "softmax", "N": 1, "varlen": False}]
    assert problems["attention_decode"] == [{"B": 2, "Hq": 16, "Hkv": 2, "D": 256, "S": 4096,
                                             "dtype": "bfloat16"}]
    assert problems["delta_rule_step"] == [{"B": 2, "H": 16, "GV": 2, "K": 128, "V": 128,
                                            "gate": "scalar", "indexed": False,
                                            "dtype": "bfloat16"}]
    assert set(problems) == {"delta_rule", "causal_conv1d", "attention", "attention_decode",
                             "delta_rule_step", "causal_conv1d_step"}


def test_kimi_decodes_mla_on_attention():
    """MLA's key head dim (192) differs from its value head dim (128): decoding runs
    ``attention`` with one query, which model_config says."""
    problems = problems_for_model(MODELS / "kimi-linear-48b-a3b.json", lengths=[2048],
                                  decode=True)
    assert "attention_decode" not in problems
    assert [(p["T"], p["S"], p["D"], p["Dv"]) for p in problems["attention"]] == [
        (2048, 2048, 192, 128), (1, 2048, 192, 128)]
    assert {p["gate"] for p in problems["delta_rule"]} == {"channel"}


def test_sizes_dtype_and_training():
    path = MODELS / "mamba2-2.7b.json"
    problems = problems_for_model(path, lengths=[512, 2048], batch_sizes=[1, 4],
                                  dtype=torch.float16)
    assert [(p["b"], p["T"]) for p in problems["ssd"]] == [(1, 512), (1, 2048), (4, 512),
                                                          (4, 2048)]
    assert {p["dtype"] for listed in problems.values() for p in listed} == {"float16"}
    assert model_dtype(path) == "bfloat16"  # mamba_ssm's configs name none
    training = problems_for_model(path, lengths=[512], training=True)
    for kernel in ("ssd", "causal_conv1d"):
        if f"{kernel}_bwd" in all_specs():
            assert training[f"{kernel}_bwd"] == training[kernel]
    assert not any(k.endswith("_step") for k in training)


@pytest.mark.parametrize("content, message", [
    (None, "cannot read model config"),
    ("{not json", "is not valid JSON"),
    ("[1, 2]", "must hold a JSON object"),
    ('{"model_type": "bert_like"}', "no attention or recurrent layers"),
    ('{"model_type": "llama", "num_attention_heads": 0, "num_hidden_layers": 2}',
     "num_attention_heads must be a positive integer"),
    ('{"model_type": "mamba2", "hidden_size": 64, "num_heads": 3, "num_hidden_layers": 1}',
     "do not divide evenly"),
    (('{"model_type": "llama", "num_attention_heads": 4, "num_hidden_layers": 2, '
      '"hidden_size": 64, "torch_dtype": "int8"}'), "dtype 'int8'"),
])
def test_bad_configs_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / "config.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ValueError, match=message) as caught:
        problems_for_model(path)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("lengths", [[], [0], [1.5], [True]])
def test_bad_lengths(lengths):
    with pytest.raises(ValueError, match="lengths must be positive integers"):
        problems_for_model(MODELS / "llama-3-8b.json", lengths=lengths)


def test_specs_for_model_hold_the_problems():
    problems = problems_for_model(MODELS / "tiny-llama.json", lengths=[40])
    specs = specs_for_model(problems)
    assert [spec.name for spec in specs] == list(problems)
    for spec in specs:
        assert spec.presets["model"] == problems[spec.name]
        assert spec.presets["tiny"] == get_spec(spec.name).presets["tiny"]


def test_coverage_of_a_profile():
    problems = problems_for_model(MODELS / "tiny-llama.json", lengths=[40, 3000],
                                  batch_sizes=[2])
    entry = seqtune.loader.Entry(problem=dict(problems["attention"][0], T=50, S=60),
                                 config={}, stale_reason=None, origin="test")
    profile = seqtune.loader.Profile({"attention": [entry]}, [])
    rows = model_coverage(problems, profile)
    assert [(row["problem"]["T"], row["status"]) for row in rows] == [(40, "tuned"),
                                                                     (3000, "nearest")]
    assert rows[1]["entry"] == entry.problem and rows[1]["distance"] > 0
    empty = model_coverage(problems, seqtune.loader.Profile({}, []))
    assert {row["status"] for row in empty} == {"default"}


def test_tuned_problems_are_what_the_patched_model_reads(monkeypatch, caplog):
    """Tune the tiny Qwen3-Next config's prefill problems (default config only), then the
    patched model launches every one of its kernels with a tuned entry of its own bucket."""
    transformers = pytest.importorskip("transformers")
    from seqtune.device import detect_device
    from seqtune.integrations.transformers import patched
    from seqtune.tuning.tune import TuneOptions, run_tune

    config_path = MODELS / "tiny-qwen3-next.json"
    problems = problems_for_model(config_path, lengths=[37], batch_sizes=[2])
    assert {row["status"] for row in model_coverage(problems)} == {"default"}
    work = [(spec, problem) for spec in specs_for_model(problems)
            for problem in spec.presets["model"]]
    folder = Path(seqtune.loader.os.environ["SEQTUNE_PROFILE_DIR"])
    run_tune(work, detect_device(), TuneOptions("model", folder, max_configs=1, isolate=False))
    monkeypatch.setattr(seqtune.loader, "_active", None)
    assert {row["status"] for row in model_coverage(problems)} == {"tuned"}

    raw = json.loads(config_path.read_text())
    architecture = raw.pop("architectures")[0]
    config = transformers.AutoConfig.for_model(raw.pop("model_type"), **raw)
    torch.manual_seed(0)
    model = getattr(transformers, architecture)(config).eval()
    monkeypatch.setenv("SEQTUNE_LOG", "1")
    caplog.set_level(logging.INFO, logger="seqtune")
    with torch.no_grad(), patched(model):
        model(torch.randint(3, 128, (2, 37)), use_cache=False)
    chosen = [r.getMessage() for r in caplog.records if r.name == "seqtune"]
    assert {message.split()[0] for message in chosen} == set(problems)
    for message in chosen:  # "<kernel> <problem>: tuned config ... (entry <problem>, ...)"
        assert ": tuned config " in message, message
        kernel = message.split()[0]
        entry = ast.literal_eval(message.split("(entry ")[1].split(", log2 distance")[0])
        assert entry == get_spec(kernel).bucket(problems[kernel][0])


def test_short_convolution_families_give_their_layers_and_problems():
    """LFM3: width-7 gated convolutions, full attention layers and sliding ones with their
    window; Inkling: a convolution per channel count, each in float32 in a bfloat16 model."""
    conv = {"width": 7, "conv_bias": False, "silu": False}
    heads = {"Hq": 16, "Hkv": 4, "D": 128, "Dv": 128}
    assert model_layers(MODELS / "lfm3-default.json") == [
        Layer("short_conv", 13, {"conv_dim": 2048, **conv}), Layer("attention", 6, heads),
        Layer("attention", 5, {**heads, "window": 256})]
    fp32 = {"width": 4, "conv_bias": False, "silu": False, "dtype": "float32"}
    assert model_layers(MODELS / "inkling2-default.json") == [
        Layer("short_conv", 96, {"conv_dim": 4608, **fp32}),
        Layer("short_conv", 80, {"conv_dim": 1024, **fp32})]
    problems = problems_for_model(MODELS / "inkling-default.json", lengths=[64], decode=True)
    assert sorted(problems) == ["causal_conv1d", "causal_conv1d_step"]
    assert sorted(p["D"] for p in problems["causal_conv1d"]) == [1024, 2048, 6144]
    assert {p["dtype"] for listed in problems.values() for p in listed} == {"float32"}
    assert {p["W"] for p in problems_for_model(MODELS / "lfm3-default.json",
                                               lengths=[64])["causal_conv1d"]} == {7}


def test_zamba_heads_wider_than_seqtune_attention_list_no_attention():
    """Zamba-7B's shared attention has 464-wide heads, which seqtune's attention runs (up to
    512); wider ones are left to transformers' path, so none is listed."""
    config = json.loads((MODELS / "zamba-default.json").read_text())
    layers = model_layers(config)
    assert [(layer.kind, layer.count) for layer in layers] == [("mamba", 76), ("attention", 13)]
    assert layers[1].dims["D"] == 464
    wider = model_layers({**config, "attention_head_dim": 640})
    assert [layer.kind for layer in wider] == ["mamba"]


def test_an_unknown_inkling_layer_type_is_one_line():
    config = json.loads((MODELS / "inkling2-default.json").read_text())
    config["text_config"]["layer_types"][3] = "mamba"
    with pytest.raises(ValueError, match="unknown layer type 'mamba'") as raised:
        model_layers(config)
    assert "\n" not in str(raised.value)
