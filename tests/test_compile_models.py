"""Patched transformers models under ``torch.compile(fullgraph=True)``: a tiny Llama (attention
through the ``"seqtune"`` AttentionInterface) traces as one graph with no break, for a plain and
a packed (``position_ids``) batch, and its compiled logits and training gradients equal the eager
patched model's. Shapes are tiny: compiling a model under the interpreter takes a minute."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from seqtune.integrations.model_config import read_config  # noqa: E402
from seqtune.integrations.transformers import patch  # noqa: E402

MODELS = Path(__file__).resolve().parents[1] / "benchmarks" / "models"
BACKEND = "aot_eager"


def _patched(family: str):
    raw = read_config(MODELS / f"tiny-{family}.json")
    architecture = raw.pop("architectures")[0]
    config = transformers.AutoConfig.for_model(raw.pop("model_type"), **raw)
    torch.manual_seed(0)
    model = getattr(transformers, architecture)(config).eval()
    patch(model)
    return model


def _tokens(model, shape):
    return torch.randint(3, model.config.vocab_size, shape,
                         generator=torch.Generator().manual_seed(0))


def test_patched_llama_forward_is_one_graph():
    """One graph (the packed-or-not choice is a torch.cond on the device) serves a plain and a
    packed batch of one shape."""
    model = _patched("llama")
    tokens = _tokens(model, (1, 9))
    plain = torch.arange(9)[None]
    packed = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 0, 1]])  # three sequences in one row

    def logits(tokens, positions):
        return model(tokens, position_ids=positions, use_cache=False).logits

    with torch.no_grad():
        explained = torch._dynamo.explain(logits)(tokens, plain)
        assert (explained.graph_count, explained.graph_break_count) == (1, 0), \
            [reason.reason for reason in explained.break_reasons]
        torch._dynamo.reset()
        compiled = torch.compile(logits, fullgraph=True, backend=BACKEND)
        for positions in (plain, packed):
            torch.testing.assert_close(compiled(tokens, positions), logits(tokens, positions))
        assert not torch.allclose(logits(tokens, plain), logits(tokens, packed))


def test_patched_llama_training_step_compiles_to_the_eager_gradients():
    model = _patched("llama").train()
    tokens = _tokens(model, (2, 9))

    def loss(tokens):
        return model(tokens, labels=tokens, use_cache=False).loss

    results = []
    for step in (loss, torch.compile(loss, fullgraph=True, backend=BACKEND)):
        model.zero_grad()
        value = step(tokens)
        value.backward()
        results.append((value.detach(), {name: parameter.grad.clone()
                                         for name, parameter in model.named_parameters()
                                         if parameter.grad is not None}))
    (eager_loss, eager_grads), (compiled_loss, compiled_grads) = results
    torch.testing.assert_close(compiled_loss, eager_loss)
    assert compiled_grads.keys() == eager_grads.keys() and eager_grads
    for name, grad in eager_grads.items():
        torch.testing.assert_close(compiled_grads[name], grad, msg=name)


def test_patched_qwen3_next_forward_compiles():
    model = _patched("qwen3-next")
    tokens = _tokens(model, (1, 9))

    def logits(tokens):
        return model(tokens, use_cache=False).logits

    with torch.no_grad():
        compiled = torch.compile(logits, fullgraph=True, backend=BACKEND)
        torch.testing.assert_close(compiled(tokens), logits(tokens))
