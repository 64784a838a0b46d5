"""Every recurrent and hybrid family of transformers 5.23 on a tiny random model (hidden 64, two
layers: a recurrent one and, for hybrids, an attention one): `patch` finds its layers by the
hub-kernel functions they call and counts them by mechanism, the patched logits equal
transformers' own PyTorch path, cached greedy generation gives the same tokens, and unpatch
restores it; every kernel launch is a problem `--model-config` derives from its config.
qwen4_exp's and glm5_next's attention reads its own 4-D mask, Inkling's adds a position bias:
it stays unpatched with one warning and the model still runs (issue 29). lfm3's width-7
convolution is plain PyTorch in its modeling file, found by its function names."""
from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

import seqtune.loader
from seqtune.integrations.model_config import problems_for_model
from seqtune.integrations.transformers import is_patched, patch, unpatch
from seqtune.registry import get_spec

BASE = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_attention_heads=4,
            num_key_value_heads=2, num_hidden_layers=2, tie_word_embeddings=False,
            pad_token_id=0, bos_token_id=1, eos_token_id=2)
GDN = dict(BASE, head_dim=16, linear_key_head_dim=16, linear_value_head_dim=16,
           linear_num_key_heads=2, linear_num_value_heads=4, linear_conv_kernel_dim=4,
           layer_types=["linear_attention", "full_attention"])
MAMBA2 = dict(BASE, mamba_n_heads=4, mamba_d_head=32, mamba_n_groups=1, mamba_d_state=16,
              mamba_d_conv=4, mamba_expand=2, mamba_chunk_size=16)
MOE = dict(num_experts=2, num_experts_per_tok=1, moe_intermediate_size=32)
KDA = dict(BASE, **MOE, num_key_value_heads=4, mlp_layer_types=["dense", "dense"],
           qk_nope_head_dim=16, v_head_dim=16, linear_head_dim=16, linear_num_heads=2)
HYBRID = {"attention": 1}
INKLING = dict(BASE, **MOE, head_dim=16, swa_num_attention_heads=4, swa_num_key_value_heads=1,
               swa_head_dim=16, sliding_window_size=4, rel_extent=8, d_rel=4, n_routed_experts=2,
               n_layers_per_attn_res_block=1, layer_types=["hybrid_sliding", "hybrid"])

# model_type -> (class, config fields, patch's counts, a warning it must give)
FAMILIES = {
    "qwen3_5_text": ("Qwen3_5ForCausalLM", GDN, {"gated_delta_net": 1, **HYBRID}, None),
    "qwen3_5_moe_text": ("Qwen3_5MoeForCausalLM", dict(GDN, **MOE,
                         shared_expert_intermediate_size=32), {"gated_delta_net": 1, **HYBRID},
                         None),
    "olmo_hybrid": ("OlmoHybridForCausalLM", GDN, {"gated_delta_net": 1, **HYBRID}, None),
    "qwen4_exp_text": ("Qwen4ExpForCausalLM", dict(
        GDN, **MOE, shared_expert_intermediate_size=32, indexer_n_heads=2, indexer_kv_heads=1,
        indexer_head_dim=16, indexer_budget=8, indexer_compress_ratio=4,
        layer_types=["linear_attention", "indexed_attention"]), {"gated_delta_net": 1},
        "reads the attention mask itself"),
    "bailing_hybrid": ("BailingHybridForCausalLM", dict(
        KDA, qk_rope_head_dim=16, head_dim=16, layer_group_size=2,
        layer_types=["linear_attention", "full_attention"]), {"kda": 1, **HYBRID}, None),
    "glm5_next_text": ("Glm5NextTextModel", dict(
        KDA, qk_rope_head_dim=0, head_dim=0, index_head_dim=16, index_n_heads=2,
        n_routed_experts=2, indexer_types=["full", "full"],
        layer_types=["linear_attention", "indexed_attention"]), {"kda": 1},
        "reads the attention mask itself"),
    "falcon_mamba": ("FalconMambaForCausalLM", dict(
        BASE, state_size=8, time_step_rank=4), {"mamba": 2}, None),
    "jamba": ("JambaForCausalLM", dict(
        BASE, attn_layer_period=2, attn_layer_offset=1, expert_layer_period=2,
        expert_layer_offset=1, num_experts=2, mamba_d_state=8, mamba_dt_rank=4),
        {"mamba": 1, **HYBRID}, None),
    "zamba": ("ZambaForCausalLM", dict(
        BASE, layers_block_type=["mamba", "hybrid"], mamba_d_state=8, mamba_dt_rank=4,
        n_mamba_heads=1, attention_head_dim=32, attention_hidden_size=128),
        {"mamba": 2, **HYBRID}, None),
    "bamba": ("BambaForCausalLM", dict(MAMBA2, attn_layer_indices=[1]),
              {"mamba2": 1, **HYBRID}, None),
    "falcon_h1": ("FalconH1ForCausalLM", dict(MAMBA2, mamba_d_ssm=128),
                  {"mamba2": 2, "attention": 2}, None),
    "granitemoehybrid": ("GraniteMoeHybridForCausalLM", dict(
        MAMBA2, layer_types=["mamba", "attention"], num_local_experts=2, num_experts_per_tok=1,
        shared_intermediate_size=64), {"mamba2": 1, **HYBRID}, None),
    "nemotron_h": ("NemotronHForCausalLM", dict(
        BASE, layers_block_type=["mamba", "attention"], head_dim=16, ssm_state_size=16,
        mamba_num_heads=4, mamba_head_dim=32, n_groups=1, conv_kernel=4, expand=2,
        chunk_size=16), {"mamba2": 1, **HYBRID}, None),
    "zamba2": ("Zamba2ForCausalLM", dict(
        BASE, layers_block_type=["mamba", "hybrid"], mamba_d_state=16, mamba_headdim=32,
        n_mamba_heads=4, mamba_ngroups=1, chunk_size=16, hybrid_layer_ids=[1],
        attention_head_dim=32), {"mamba2": 2, **HYBRID}, None),
    "lfm2": ("Lfm2ForCausalLM", dict(BASE, layer_types=["conv", "full_attention"]),
             {"short_conv": 1, **HYBRID}, None),
    "lfm2_moe": ("Lfm2MoeForCausalLM", dict(
        BASE, layer_types=["conv", "full_attention"], num_dense_layers=1, num_experts=2,
        num_experts_per_tok=1, moe_intermediate_size=32), {"short_conv": 1, **HYBRID}, None),
    # lfm3's width-7 convolution is plain PyTorch in its modeling file (no hub function)
    "lfm3": ("Lfm3ForCausalLM", dict(BASE, head_dim=16, layer_types=["conv", "full_attention"]),
             {"short_conv": 1, **HYBRID}, None),
    # Inkling's four convolutions per layer (keys, values, after attention, after the MLP) are
    # patched; its attention adds a relative-position bias: unpatched, one warning.
    "inkling_text": ("InklingForCausalLM", dict(INKLING, mlp_layer_types=["dense", "sparse"],
                     n_shared_experts=1), {"short_conv": 8}, "passes a position_bias"),
    # Inkling2's full layers compute per-token key/value taps in PyTorch: two convolutions there
    "inkling2_text": ("Inkling2ForCausalLM", INKLING, {"short_conv": 6}, "passes a position_bias"),
}
TOLERANCE = {"rtol": 1e-4, "atol": 1e-4}


def build(model_type: str):
    name, fields, _, _ = FAMILIES[model_type]
    config = transformers.AutoConfig.for_model(model_type, **fields)
    torch.manual_seed(0)
    return getattr(transformers, name)(config).eval()


def run(model, tokens) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Greedy generation of two tokens with the cache (a prefill, then one cached decoding
    step): the tokens and the logits of both steps; a model without a language-model head
    gives its last hidden states."""
    with torch.no_grad():
        if not hasattr(model, "generate") or "ForCausalLM" not in type(model).__name__:
            return model(tokens).last_hidden_state, None
        out = model.generate(tokens, max_new_tokens=2, do_sample=False, use_cache=True,
                             pad_token_id=0, output_logits=True, return_dict_in_generate=True)
    return torch.stack(out.logits), out.sequences


class Launches:
    """The (kernel, bucketed problem) of every launch that asks the loader for a config."""

    def __init__(self, monkeypatch):
        self.seen: set[tuple[str, tuple]] = set()
        original = seqtune.loader.Profile.best_config

        def recording(profile, kernel, problem):
            self.seen.add(key(kernel, problem))
            return original(profile, kernel, problem)

        monkeypatch.setattr(seqtune.loader.Profile, "best_config", recording)


def key(kernel: str, problem: dict) -> tuple[str, tuple]:
    return kernel, tuple(sorted(get_spec(kernel).bucket(problem).items()))


@pytest.mark.parametrize("model_type", list(FAMILIES))
def test_a_family_runs_on_seqtune_and_matches_its_own_path(model_type, monkeypatch):
    _, _, counts, warning = FAMILIES[model_type]
    model = build(model_type)
    tokens = torch.randint(3, 128, (1, 9), generator=torch.Generator().manual_seed(1))
    expected, expected_tokens = run(model, tokens)
    launches = Launches(monkeypatch)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert patch(model) == counts
        logits, generated = run(model, tokens)
    torch.testing.assert_close(logits, expected, **TOLERANCE)
    assert generated is None or torch.equal(generated, expected_tokens)
    seqtune_warnings = [str(w.message) for w in caught if "seqtune" in str(w.message)]
    if warning is None:
        assert not seqtune_warnings, seqtune_warnings
    else:
        assert len(seqtune_warnings) == 1 and warning in seqtune_warnings[0], seqtune_warnings
    # every launch is a problem --model-config derives from this model's config
    derived = problems_for_model(model.config.to_dict(), lengths=[9, 10], batch_sizes=[1],
                                 decode=True, dtype="float32")
    assert launches.seen <= {key(kernel, problem) for kernel, listed in derived.items()
                             for problem in listed}
    assert {kernel for kernel, _ in launches.seen} >= {
        kernel for kernel in derived if not kernel.endswith("_step") and kernel != "attention"
        and kernel != "attention_decode"}
    unpatch(model)
    assert not is_patched(model) and not any("forward" in vars(m) for m in model.modules())


def test_a_new_family_is_found_by_the_function_it_calls(monkeypatch):
    """A layer class seqtune has never seen, calling a hub function through a helper of its
    module: patched (kind by mechanism) and its output equal to its own PyTorch path."""
    import types

    from transformers.integrations import use_kernel_func_from_hub_with_fallback

    module = types.ModuleType("transformers.models.newfamily.modeling_newfamily")
    source = '''
import torch
from torch import nn

def short_conv(x, weight, bias=None, activation=None):
    width = weight.shape[1]
    padded = torch.nn.functional.pad(x, (width - 1, 0))
    return torch.nn.functional.conv1d(padded, weight[:, None], bias, groups=x.shape[1])

def mix(x, weight):
    return short_conv(x, weight)

class NewShortConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(24, 4))

    def forward(self, x):
        return mix(x.transpose(1, 2), self.weight).transpose(1, 2)
'''
    exec(compile(source, module.__name__, "exec"), module.__dict__)
    module.short_conv = use_kernel_func_from_hub_with_fallback(
        "causal_conv1d_fn", "causal_conv1d")(module.short_conv)
    layer = module.NewShortConv()
    x = torch.randn(2, 37, 24)
    launches = Launches(monkeypatch)
    with torch.no_grad():
        expected = layer(x)
        assert patch(layer) == {"short_conv": 1}
        torch.testing.assert_close(layer(x), expected, **TOLERANCE)
    assert {kernel for kernel, _ in launches.seen} == {"causal_conv1d"}
    assert "forward" in vars(layer)
    unpatch(layer)
    assert "forward" not in vars(layer)


def test_a_call_seqtune_refuses_runs_the_layers_own_function_with_one_warning():
    """LFM2 with width-9 convolutions (seqtune's causal_conv1d runs 2..8): the patched model
    still runs, each refused call on the layer's own function, with one warning naming it."""
    name, fields, _, _ = FAMILIES["lfm2"]
    config = transformers.AutoConfig.for_model("lfm2", **dict(fields, conv_L_cache=9))
    torch.manual_seed(0)
    model = getattr(transformers, name)(config).eval()
    tokens = torch.randint(3, 128, (1, 9), generator=torch.Generator().manual_seed(1))
    expected, expected_tokens = run(model, tokens)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert patch(model) == {"short_conv": 1, "attention": 1}
        logits, generated = run(model, tokens)
    torch.testing.assert_close(logits, expected, **TOLERANCE)
    assert torch.equal(generated, expected_tokens)
    refused = [str(w.message) for w in caught if "refuses" in str(w.message)]
    assert refused and all("width 9" in m for m in refused)
    assert len([m for m in refused if "causal_conv1d_fn" in m]) == 1


SHIPPED = {  # benchmarks/models/<family>-default.json: transformers 5.23's default configs
    "qwen3_5": {"gated_delta_net": 24, "attention": 8},
    "qwen3_5_moe": {"gated_delta_net": 30, "attention": 10},
    "olmo_hybrid": {"gated_delta_net": 24, "attention": 8},
    "bailing_hybrid": {"kda": 35, "attention": 7},
    "falcon_mamba": {"mamba": 32},
    "jamba": {"mamba": 28, "attention": 4},
    "bamba": {"mamba2": 32},
    "falcon_h1": {"mamba2": 32, "attention": 32},
    "granitemoehybrid": {"mamba2": 32},
    "nemotron_h": {"mamba2": 1, "attention": 1},
    "glm5_next": {"kda": 34},
    "zamba": {"mamba": 76, "attention": 13},  # 464-wide attention heads
    "lfm3": {"short_conv": 13, "attention": 11},  # 5 of the 11 attention layers slide
    "inkling": {"short_conv": 264},  # 4 per layer; the biased attention stays unpatched
    "inkling2": {"short_conv": 176},  # 4 per sliding layer, 2 per full one
}


@pytest.mark.parametrize("family", list(SHIPPED))
def test_a_shipped_family_config_reads_as_transformers_builds_it(family):
    """The shipped config's layer counts are those of the model transformers builds from it
    (counted by its modules, without weights: on the meta device)."""
    from seqtune.integrations.model_config import model_layers, read_config

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "models" / f"{family}-default.json"
    counted: dict[str, int] = {}
    for layer in model_layers(path):  # Inkling's convolutions: one entry per channel count
        counted[layer.kind] = counted.get(layer.kind, 0) + layer.count
    assert counted == SHIPPED[family]
    raw = read_config(path)
    config = transformers.AutoConfig.for_model(raw.pop("model_type"), **raw)
    with torch.device("meta"):
        model = transformers.AutoModel.from_config(config)
    counts = patch(model)
    unpatch(model)
    assert {k: v for k, v in counts.items() if k != "attention"} == {
        k: v for k, v in SHIPPED[family].items() if k != "attention"}


def test_zamba_attention_464_wide_is_patched(monkeypatch):
    """Zamba-7B's shared attention has 464-wide heads (seqtune's attention runs up to 512):
    patched, its logits and greedy tokens are the model's own."""
    name, fields, _, _ = FAMILIES["zamba"]
    wide = dict(fields, hidden_size=232, num_attention_heads=1, num_key_value_heads=1,
                attention_head_dim=464, attention_hidden_size=464)
    monkeypatch.setitem(FAMILIES, "zamba", (name, wide, None, None))
    model = build("zamba")
    tokens = torch.randint(3, 128, (1, 9), generator=torch.Generator().manual_seed(1))
    expected, expected_tokens = run(model, tokens)
    assert patch(model) == {"mamba": 2, "attention": 1}
    logits, generated = run(model, tokens)
    torch.testing.assert_close(logits, expected, **TOLERANCE)
    assert torch.equal(generated, expected_tokens)
