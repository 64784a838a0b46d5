"""Patched attention with the layer's sliding window and logit soft-capping (issue 30, point 5):
tiny random Gemma 2 (alternating sliding and full layers, soft-capped logits) and Mistral
(a sliding window on every layer) give their unpatched logits (transformers' eager path) and
identical cached greedy tokens, also with a left-padded batch; the windows are shorter than
the prompts, so they matter. A hybrid with sliding layers, LFM3 (a short convolution, a sliding
and a full attention layer), does too with all three layers patched."""
from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from seqtune.integrations.transformers import patched

# fp32 end to end: another summation order than PyTorch's matmuls, ~1e-5 on logits of ~1.
TOLERANCE = {"rtol": 1e-4, "atol": 1e-4}
WINDOW, LENGTH, PROMPT, NEW_TOKENS = 5, 23, 9, 4
SHARPEN = 40.0
SIZES = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, head_dim=16,
             max_position_embeddings=64, sliding_window=WINDOW, pad_token_id=0,
             bos_token_id=1, eos_token_id=2)
MODELS = {
    # A cap of 2 on scores sharpened to a few units (see build): the cap bends most of them.
    "gemma2": (transformers.Gemma2Config, transformers.Gemma2ForCausalLM,
               dict(attn_logit_softcapping=2.0, final_logit_softcapping=30.0,
                    query_pre_attn_scalar=16)),
    "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM, {}),
}


def build(name: str):
    config_class, model_class, extra = MODELS[name]
    config = config_class(**SIZES, **extra, attn_implementation="eager")
    torch.manual_seed(0)
    model = model_class(config).eval()
    with torch.no_grad():  # scores of a few units (random init gives ~1e-3): the cap bends them
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(SHARPEN)
            layer.self_attn.k_proj.weight.mul_(SHARPEN)
    return model


def build_lfm3():
    """Tiny LFM3: its q/k norms make the scores independent of the projections' scale, so it
    is not sharpened; the window (5 of 23 tokens) still changes the output (see below)."""
    config = transformers.AutoConfig.for_model(
        "lfm3", **{**SIZES, "num_hidden_layers": 3, "tie_word_embeddings": False,
                   "layer_types": ["conv", "sliding_attention", "full_attention"]},
        attn_implementation="eager")
    torch.manual_seed(0)
    return transformers.Lfm3ForCausalLM(config).eval()


def tokens(shape, seed=0):
    return torch.randint(3, SIZES["vocab_size"], shape,
                         generator=torch.Generator().manual_seed(seed))


def generate(model, prompt, mask=None):
    out = model.generate(prompt, attention_mask=mask, max_new_tokens=NEW_TOKENS,
                         do_sample=False, output_logits=True, return_dict_in_generate=True,
                         pad_token_id=0)
    return out.sequences, torch.stack(out.logits)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_windowed_and_capped_attention_matches_the_unpatched_model(name):
    model = build(name)
    batch = tokens((2, LENGTH))
    with torch.no_grad():
        logits = model(batch).logits
        sequences, step_logits = generate(model, batch[:, :PROMPT])
        with patched(model) as counts:
            assert counts == {"attention": 2}
            torch.testing.assert_close(model(batch).logits, logits, **TOLERANCE)
            got_sequences, got_step_logits = generate(model, batch[:, :PROMPT])
        assert torch.equal(got_sequences, sequences)
        torch.testing.assert_close(got_step_logits, step_logits, **TOLERANCE)


def test_left_padded_windowed_generation_matches():
    model = build("mistral")
    prompt = tokens((2, PROMPT), seed=1)
    mask = torch.ones_like(prompt)
    mask[0, :3] = 0
    prompt = prompt.masked_fill(mask == 0, 0)
    with torch.no_grad():
        sequences, step_logits = generate(model, prompt, mask)
        with patched(model):
            got_sequences, got_step_logits = generate(model, prompt, mask)
    assert torch.equal(got_sequences, sequences)
    torch.testing.assert_close(got_step_logits, step_logits, **TOLERANCE)


def test_a_hybrid_with_sliding_layers_matches_the_unpatched_model():
    model = build_lfm3()
    batch = tokens((2, LENGTH))
    with torch.no_grad():
        logits = model(batch).logits
        sequences, step_logits = generate(model, batch[:, :PROMPT])
        with patched(model) as counts:
            assert counts == {"short_conv": 1, "attention": 2}
            torch.testing.assert_close(model(batch).logits, logits, **TOLERANCE)
            got_sequences, got_step_logits = generate(model, batch[:, :PROMPT])
        assert torch.equal(got_sequences, sequences)
        torch.testing.assert_close(got_step_logits, step_logits, **TOLERANCE)
        # Not vacuous: the same weights with a full layer in place of the sliding one differ.
        assert model.model.layers[1].self_attn.sliding_window == WINDOW
        model.config.layer_types[1] = "full_attention"
        assert not torch.allclose(model(batch, use_cache=False).logits, logits, atol=1e-2)


def test_the_window_changes_the_output():
    """Not a vacuous comparison: without the window (the same weights) the logits differ."""
    model = build("mistral")
    batch = tokens((1, LENGTH))
    with torch.no_grad():
        windowed = model(batch).logits
        model.config.sliding_window = None
        for layer in model.model.layers:
            layer.self_attn.sliding_window = None
        assert not torch.allclose(model(batch).logits, windowed, atol=1e-3)
