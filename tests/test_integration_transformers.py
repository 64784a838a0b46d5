"""seqtune.integrations.transformers on tiny randomly initialised models of each supported family
(built from the shipped tiny configs in benchmarks/models/): the patched model's logits and
cached greedy generation equal the unpatched model's (its PyTorch path), the kernels launched are
seqtune's and their problems are exactly those model_config derives, unpatch restores the
original forwards and config, and a second model in the process is never touched."""
from __future__ import annotations

import functools
import warnings
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

import seqtune.loader
from seqtune.integrations.model_config import problems_for_model, read_config
from seqtune.integrations.transformers import is_patched, patch, patched, unpatch
from seqtune.registry import get_spec

MODELS = Path(__file__).resolve().parents[1] / "benchmarks" / "models"
BATCH, LENGTH, PROMPT, NEW_TOKENS = 2, 37, 9, 3
# fp32 end to end; the kernels accumulate in fp32 in another order than PyTorch's matmuls, and
# two layers of random weights amplify that by a few: logits (~1 in size) agree to ~1e-5.
TOLERANCE = {"rtol": 1e-4, "atol": 1e-4}

FAMILIES = {
    "qwen3-next": {"gated_delta_net": 1, "attention": 1},
    "kimi-linear": {"kda": 1, "attention": 1},
    "mamba": {"mamba": 2},
    "mamba2": {"mamba2": 2},
    "llama": {"attention": 2},
}


def build(family: str, seed: int = 0, config=None):
    """The tiny model of ``family`` (random weights from ``seed``), in eval mode."""
    raw = read_config(MODELS / f"tiny-{family}.json")
    architecture = raw.pop("architectures")[0]
    if config is None:
        config = transformers.AutoConfig.for_model(raw.pop("model_type"), **raw)
    torch.manual_seed(seed)
    return getattr(transformers, architecture)(config).eval()


class Launches:
    """(kernel, problem) of every seqtune launch that asked the loader for its config."""

    def __init__(self, monkeypatch):
        self.calls: list[tuple[str, dict]] = []
        original = seqtune.loader.Profile.best_config

        @functools.wraps(original)
        def recording(profile, kernel, problem):
            self.calls.append((kernel, dict(problem)))
            return original(profile, kernel, problem)

        monkeypatch.setattr(seqtune.loader.Profile, "best_config", recording)

    def take(self) -> set[tuple[str, tuple]]:
        """The launches since the last take, as (kernel, bucketed problem) keys."""
        taken = {_key(kernel, problem) for kernel, problem in self.calls}
        self.calls.clear()
        return taken


def _key(kernel: str, problem: dict) -> tuple[str, tuple]:
    return kernel, tuple(sorted(get_spec(kernel).bucket(problem).items()))


def _derived(family: str, **options) -> set[tuple[str, tuple]]:
    problems = problems_for_model(MODELS / f"tiny-{family}.json", batch_sizes=[BATCH],
                                  **options)
    return {_key(kernel, problem) for kernel, listed in problems.items() for problem in listed}


def _tokens(model, shape, seed=0):
    """Random tokens other than the special ones (0 is the pad token generate is given: a
    prompt holding it would be read as padded)."""
    return torch.randint(3, model.config.vocab_size, shape,
                         generator=torch.Generator().manual_seed(seed))


def _generate(model, prompt):
    out = model.generate(prompt, max_new_tokens=NEW_TOKENS, do_sample=False,
                         output_logits=True, return_dict_in_generate=True,
                         pad_token_id=0)
    return out.sequences, torch.stack(out.logits)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_patched_model_matches_pytorch(family, monkeypatch):
    model = build(family)
    twin = build(family, seed=1, config=model.config)  # shares the config object
    original_config = model.config
    twin_attention = twin.config._attn_implementation
    tokens = _tokens(model, (BATCH, LENGTH))
    launches = Launches(monkeypatch)
    with torch.no_grad():
        logits = model(tokens).logits
        twin_logits = twin(tokens).logits
        sequences, step_logits = _generate(model, tokens[:, :PROMPT])
        assert not launches.take()  # the unpatched model runs PyTorch only

        assert patch(model) == FAMILIES[family]
        torch.testing.assert_close(model(tokens).logits, logits, **TOLERANCE)
        assert launches.take() == _derived(family, lengths=[LENGTH])

        patched_sequences, patched_step_logits = _generate(model, tokens[:, :PROMPT])
        assert torch.equal(patched_sequences, sequences)
        torch.testing.assert_close(patched_step_logits, step_logits, **TOLERANCE)
        # the prompt's prefill and the decoding steps (caches of 10..12 tokens: one bucket)
        assert launches.take() == _derived(family, lengths=[PROMPT], decode=True)

        assert torch.equal(twin(tokens).logits, twin_logits)  # untouched by the patch
        assert not launches.take()
        assert twin.config._attn_implementation == twin_attention

        unpatch(model)
        assert model.config is original_config
        assert all("forward" not in vars(module) for module in model.modules())
        assert torch.equal(model(tokens).logits, logits)
        assert not launches.take()


def test_padded_batch_generation_matches_pytorch(monkeypatch):
    """Left padding: attention runs on the rows' real tokens packed (cu_seqlens)."""
    model = build("llama")
    tokens = _tokens(model, (BATCH, PROMPT), seed=1)
    mask = torch.ones_like(tokens)
    mask[0, :4] = 0
    tokens = tokens.masked_fill(mask == 0, 0)
    launches = Launches(monkeypatch)
    with torch.no_grad():
        expected = model.generate(tokens, attention_mask=mask, max_new_tokens=NEW_TOKENS,
                                  do_sample=False, pad_token_id=0)
        with patched(model) as counts:
            assert counts == {"attention": 2}
            got = model.generate(tokens, attention_mask=mask, max_new_tokens=NEW_TOKENS,
                                 do_sample=False, pad_token_id=0)
    assert torch.equal(got, expected)
    kinds = {(kernel, dict(problem)["varlen"]) for kernel, problem in launches.take()}
    assert kinds == {("attention", True)}


def test_patch_twice_and_context_manager():
    model = build("mamba2")
    with patched(model) as counts:
        assert is_patched(model)
        assert patch(model) == counts  # a patched model is left as it is
        forwards = [vars(module)["forward"] for module in model.modules()
                    if "forward" in vars(module)]
        assert len(forwards) == counts["mamba2"]
    assert not is_patched(model)
    assert all("forward" not in vars(module) for module in model.modules())
    unpatch(model)  # unpatching an unpatched model changes nothing


def test_nothing_to_patch_warns_once():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert patch(model) == {}
        assert patch(model) == {}
    messages = [str(w.message) for w in caught if "nothing to patch" in str(w.message)]
    assert len(messages) == 1 and "Sequential" in messages[0]
    assert not is_patched(model)


def test_accelerate_style_wrapped_forward_is_patched_inside(monkeypatch):
    """A layer whose forward another library wrapped per instance keeping ``_old_forward``
    (accelerate's hooks) keeps the wrapper; the wrapped forward becomes seqtune's."""
    model = build("mamba")
    mixer = model.backbone.layers[0].mixer
    mixer._old_forward = mixer.forward
    wrapper = functools.partial(lambda module, *args, **kwargs: module._old_forward(*args,
                                                                                    **kwargs),
                                mixer)
    mixer.forward = wrapper
    launches = Launches(monkeypatch)
    with torch.no_grad():
        tokens = _tokens(model, (1, 7), seed=2)
        expected = model(tokens).logits
        launches.take()
        with patched(model):
            assert mixer.forward is wrapper
            torch.testing.assert_close(model(tokens).logits, expected, **TOLERANCE)
        assert "selective_scan" in {kernel for kernel, _ in launches.take()}
    assert mixer.forward is wrapper and mixer._old_forward.__func__ is type(mixer).forward


def test_bfloat16_problems_match_model_config(monkeypatch):
    """Mamba in bfloat16 (float32 A and delta bias, as the model passes them): the problems
    its prefill and decoding launch are still the bfloat16 ones model_config derives."""
    model = build("mamba").to(torch.bfloat16)
    launches = Launches(monkeypatch)
    with torch.no_grad(), patched(model):
        _generate(model, _tokens(model, (BATCH, PROMPT)))
    assert launches.take() == _derived("mamba", lengths=[PROMPT], decode=True,
                                       dtype="bfloat16")


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_training_gradients_match_pytorch(family, monkeypatch):
    """A training step (no cache) on the patched model: the same loss and parameter gradients
    as PyTorch's, through seqtune's forward and backward kernels (the ``_bwd`` problems
    model_config derives with ``training``)."""
    model = build(family).train()
    tokens = _tokens(model, (BATCH, 11))

    def step():
        model.zero_grad()
        loss = model(tokens, labels=tokens, use_cache=False).loss
        loss.backward()
        return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()
                               if p.grad is not None}

    loss, grads = step()
    launches = Launches(monkeypatch)
    with patched(model):
        patched_loss, patched_grads = step()
    assert launches.take() == _derived(family, lengths=[11], training=True)
    torch.testing.assert_close(patched_loss, loss, **TOLERANCE)
    assert patched_grads.keys() == grads.keys()
    for name, grad in grads.items():
        # fp32 kernels, another summation order: within 1e-3 of the tensor's largest gradient
        torch.testing.assert_close(patched_grads[name], grad, rtol=1e-3,
                                   atol=1e-3 * float(grad.abs().max()) + 1e-7, msg=name)
