"""patch/unpatch edge cases (issue 26, point 5): anything but a module is a one-line TypeError,
unpatch undoes only what patch set (a forward other code set later stays), and a deep copy of a
patched model is a patched model of its own."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from seqtune.integrations.model_config import read_config
from seqtune.integrations.transformers import is_patched, patch, unpatch

MODELS = Path(__file__).resolve().parents[1] / "benchmarks" / "models"


def build(family: str):
    raw = read_config(MODELS / f"tiny-{family}.json")
    architecture = raw.pop("architectures")[0]
    config = transformers.AutoConfig.for_model(raw.pop("model_type"), **raw)
    torch.manual_seed(0)
    return getattr(transformers, architecture)(config).eval()


def mixers(model):
    return [module for module in model.modules() if type(module).__name__ == "MambaMixer"]


@pytest.mark.parametrize("call", [patch, unpatch, is_patched])
@pytest.mark.parametrize("value", [None, "model", object(), [torch.nn.Linear(2, 2)]])
def test_anything_but_a_module_is_a_one_line_type_error(call, value):
    with pytest.raises(TypeError, match=r"takes a torch.nn.Module \(a transformers model\), "
                                        r"got ") as caught:
        call(value)
    assert "\n" not in str(caught.value) and call.__name__ in str(caught.value)


def test_unpatch_leaves_a_forward_set_later_by_other_code():
    model = build("mamba")
    assert patch(model) == {"mamba": 2}
    first, second = mixers(model)

    def theirs(*args, **kwargs):
        return None
    first.forward = theirs
    unpatch(model)
    assert first.forward is theirs  # set after patch: not patch's to undo
    assert "forward" not in second.__dict__  # patch's: removed
    assert not is_patched(model)


def test_unpatch_restores_a_config_only_where_patch_set_it():
    model = build("llama")
    original = model.config
    assert patch(model) == {"attention": 2}
    assert model.config is not original and model.config._attn_implementation == "seqtune"
    layer = model.model.layers[0].self_attn
    later = copy.deepcopy(original)
    layer.config = later  # other code replaced one layer's config after patch
    unpatch(model)
    assert model.config is original and layer.config is later


def test_a_deep_copy_of_a_patched_model_is_patched_and_unpatches():
    model = build("mamba")
    patch(model)
    tokens = torch.randint(1, 100, (1, 11))
    twin = copy.deepcopy(model)
    assert is_patched(twin) and patch(twin) == {"mamba": 2}
    assert all(layer.forward.__self__ is layer for layer in mixers(twin))  # bound to the copy
    with torch.no_grad():
        torch.testing.assert_close(twin(tokens).logits, model(tokens).logits)
    unpatch(twin)
    assert not is_patched(twin) and all("forward" not in vars(m) for m in mixers(twin))
    assert is_patched(model) and all("forward" in vars(m) for m in mixers(model))
    unpatch(model)
    with torch.no_grad():  # both back on transformers' own PyTorch path, same weights
        torch.testing.assert_close(twin(tokens).logits, model(tokens).logits)


def test_a_deep_copy_of_a_patched_attention_model_gets_its_own_config():
    model = build("llama")
    before = model.config._attn_implementation
    patch(model)
    twin = copy.deepcopy(model)
    assert is_patched(twin) and twin.config._attn_implementation == "seqtune"
    unpatch(twin)
    assert twin.config._attn_implementation == before
    assert model.config._attn_implementation == "seqtune"
    unpatch(model)
    assert model.config._attn_implementation == before
