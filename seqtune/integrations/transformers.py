"""Swap a loaded Hugging Face transformers model's sequence-mixing kernels for seqtune's.

``patch(model)`` returns how many layers of each kind it patched, e.g. ``{"gated_delta_net": 36,
"attention": 12}``; ``unpatch(model)`` restores the model; ``patched(model)`` does both around a
``with`` block. Prefill, cached decoding and (where seqtune's ops have a backward) training run on
the tuned kernels. transformers is an optional dependency (``pip install seqtune[transformers]``).

Where it patches, and why there:

- Recurrent layers (any class whose code calls a hub-kernel function seqtune implements, found
  by ``hf_discovery``) call module-level functions of their modeling file (the ones transformers'
  hub-kernel mapping replaces with flash-linear-attention, mamba_ssm or causal-conv1d when
  installed), looked up in the module's globals at call time. Each patched layer *instance* gets
  the methods that reach those functions rebuilt from its class's own code with a globals
  mapping in which those names are seqtune's functions (``hf_kernels.HUB_FUNCTIONS``), every
  other name as the modeling module held it at patch time; decorators around them are rebuilt
  too.
  Nothing process-wide changes: another model of the same class, patched or not, runs as before.
- Attention layers that dispatch through transformers' ``AttentionInterface`` get seqtune's
  attention under the name ``"seqtune"`` (``hf_attention.seqtune_attention``, with
  flash-attention's padding mask). The patched model gets its own copy of its config objects
  (models built from one config object share it, and the attention implementation is a config
  field), set to ``"seqtune"``; unpatch puts the original objects back.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import types
from collections.abc import Callable, Iterator
from typing import Any

from seqtune.integrations.config_file import ATTENTION_HEAD_DIMS
from seqtune.integrations.hf_attention import seqtune_attention
from seqtune.integrations.hf_discovery import (
    dispatches_attention,
    layer_plan,
    passes_position_bias,
    reads_its_mask,
)
from seqtune.integrations.hf_kernels import HUB_FUNCTIONS, with_fallback
from seqtune.loader import warn_once

ATTENTION_NAME = "seqtune"
ATTENTION_KIND = "attention"

@dataclasses.dataclass
class _Patch:
    """What patch changed, to undo it: (object, attribute, previous value or _ABSENT, the value
    patch set). It lives on the patched model (``RECORD``), so ``copy.deepcopy`` of the model
    copies it along, its objects mapped to the copy's: the copy is patched and unpatches."""

    counts: dict[str, int]
    changes: list[tuple[Any, str, Any, Any]] = dataclasses.field(default_factory=list)


class _Absent:
    """No previous value (the attribute was not in the object's own dict); one object, also
    through ``copy.deepcopy``."""

    def __deepcopy__(self, memo) -> _Absent:
        return self


_ABSENT = _Absent()
RECORD = "_seqtune_patch"
# layer class -> its kind and its methods rebuilt on seqtune's functions (None: not patchable)
_METHODS: dict[type, tuple[str, dict[str, Callable]] | None] = {}


def patch(model) -> dict[str, int]:
    """Route ``model``'s sequence-mixing layers through seqtune's kernels.

    Returns the number of layers patched per kind, by the mechanism of the hub-kernel functions
    a layer calls (see ``hf_discovery``): ``"gated_delta_net"``, ``"kda"``, ``"mamba"``,
    ``"mamba2"``, ``"short_conv"``, and ``"attention"`` (any layer that dispatches through
    transformers' ``AttentionInterface``). A model with nothing seqtune supports is left as it
    is: ``{}``, with one warning per model class. Patching a patched
    model changes nothing and returns the same counts. TypeError for anything but a
    ``torch.nn.Module``.
    """
    existing = _record(model, "patch")
    if existing is not None:
        return dict(existing.counts)
    record = _Patch(counts={})
    for module in model.modules():
        kind = _patch_recurrent(module, record)
        if kind is not None:
            record.counts[kind] = record.counts.get(kind, 0) + 1
    attention_layers = _patch_attention(model, record)
    if attention_layers:
        record.counts[ATTENTION_KIND] = attention_layers
    if not record.counts:
        warn_once(f"seqtune: nothing to patch in {type(model).__name__}: no layer calls a "
                  f"hub-kernel function seqtune implements ({', '.join(sorted(HUB_FUNCTIONS))})"
                  f" and no attention layer dispatches through transformers' "
                  f"AttentionInterface")
        return {}
    model.__dict__[RECORD] = record  # beside the modules: not a submodule, not in state_dict
    return dict(record.counts)


def unpatch(model) -> None:
    """Restore what ``patch`` changed in ``model`` (nothing happens to an unpatched model). An
    attribute that other code changed after ``patch`` (e.g. its own ``forward``) is left as
    that code set it."""
    record = _record(model, "unpatch")
    if record is None:
        return
    del model.__dict__[RECORD]
    for owner, attribute, previous, value in reversed(record.changes):
        if owner.__dict__.get(attribute, _ABSENT) is not value:
            continue  # changed since: not ours to undo
        if previous is _ABSENT:
            delattr(owner, attribute)
        else:
            setattr(owner, attribute, previous)


def is_patched(model) -> bool:
    return _record(model, "is_patched") is not None


def _record(model, caller: str) -> _Patch | None:
    import torch

    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"{caller}() takes a torch.nn.Module (a transformers model), got "
                        f"{type(model).__name__}")
    return model.__dict__.get(RECORD)


@contextlib.contextmanager
def patched(model) -> Iterator[dict[str, int]]:
    """``with patched(model) as counts:`` runs the block on seqtune's kernels, then unpatches."""
    counts = patch(model)
    try:
        yield counts
    finally:
        unpatch(model)


def _set(record: _Patch, owner: Any, attribute: str, value: Any) -> None:
    previous = owner.__dict__.get(attribute, _ABSENT)
    setattr(owner, attribute, value)
    # what setattr stored (a module keeps sub-configs and forwards in its own __dict__)
    record.changes.append((owner, attribute, previous, owner.__dict__.get(attribute, _ABSENT)))


# ---- recurrent layers: per-instance methods with seqtune's functions in their globals ----

def _patch_recurrent(module, record: _Patch) -> str | None:
    cls = type(module)
    if not cls.__module__.startswith("transformers."):
        return None
    if cls not in _METHODS:
        _METHODS[cls] = _rebuilt_methods(cls)
    if _METHODS[cls] is None:
        return None
    kind, methods = _METHODS[cls]
    targets = {name: "_old_forward" if name == "forward" and "_old_forward" in vars(module)
               else name for name in methods}  # accelerate's hooks wrap the original forward
    taken = [name for name, target in targets.items()
             if target in vars(module) and target != "_old_forward"]
    if taken:
        warn_once(f"seqtune: a {cls.__name__} layer has its own {taken[0]} set by other code; "
                  f"left unpatched")
        return None
    for name, function in methods.items():
        _set(record, module, targets[name], types.MethodType(function, module))
    return kind


def _rebuilt_methods(cls: type) -> tuple[str, dict[str, Callable]] | None:
    """The methods of ``cls`` that call hub functions, rebuilt with seqtune's in their globals
    (each falling back to the layer's own function, with a warning, for arguments seqtune
    refuses); None if ``cls`` calls none, or one seqtune does not implement (warned)."""
    plan = layer_plan(cls, HUB_FUNCTIONS.__contains__)
    if plan is None:
        return None
    if plan.unsupported:
        warn_once(f"seqtune: {cls.__name__} calls {', '.join(plan.unsupported)}, which seqtune "
                  f"does not implement; its layers keep their own implementation")
        return None
    module_globals = _plain_method(cls, plan.methods[0]).__globals__
    if any(_plain_method(cls, name).__globals__ is not module_globals for name in plan.methods):
        warn_once(f"seqtune: {cls.__name__}'s methods come from several modeling modules; its "
                  f"layers keep their own implementation")
        return None
    overrides = {name: with_fallback(HUB_FUNCTIONS[hub], module_globals[name], hub, cls.__name__)
                 for name, hub in plan.calls.items()}
    # A plain dict, taken at patch time, without ``__name__``: dynamo resolves globals by plain
    # dict lookups (names a dict subclass supplied lazily were missing to it), and guards a
    # global of a scope that has a ``__name__`` through that module, where the name is the hub
    # wrapper and not seqtune's function; without it, dynamo guards this dict itself.
    patched_globals = {name: value for name, value in module_globals.items()
                       if name != "__name__"}
    patched_globals.update(overrides)
    for name, helper in plan.helpers.items():  # module functions reaching a hub function
        patched_globals[name] = _copy_function(helper, patched_globals, helper.__closure__)
    rebuilt = {}
    for name in plan.methods:
        method = _rebuild(cls, name, patched_globals)
        if method is None:
            return None
        rebuilt[name] = method
    return plan.kind, rebuilt


def _plain_method(cls: type, name: str) -> types.FunctionType:
    method = getattr(cls, name)
    while hasattr(method, "__wrapped__"):
        method = method.__wrapped__
    return method


def _rebuild(cls: type, name: str, patched_globals: dict) -> Callable | None:
    """``cls.<name>`` rebuilt on ``patched_globals``, its decorators (functools.wraps wrappers
    holding the function in their closure) rebuilt around it; None, with a warning, if they
    cannot be."""
    chain = [getattr(cls, name)]
    while hasattr(chain[-1], "__wrapped__"):
        chain.append(chain[-1].__wrapped__)
    original = chain[-1]
    rebuilt = _copy_function(original, patched_globals, original.__closure__)
    for wrapper, inner in zip(reversed(chain[:-1]), reversed(chain[1:])):
        rebuilt = _rewrap(wrapper, inner, rebuilt)
        if rebuilt is None:
            warn_once(f"seqtune: cannot rebuild the decorators of {cls.__name__}.{name}; its "
                      f"layers are left unpatched")
            return None
    return rebuilt


def _copy_function(function: types.FunctionType, globals_: dict, closure) -> types.FunctionType:
    copied = types.FunctionType(function.__code__, globals_, function.__name__,
                                function.__defaults__, closure)
    copied.__kwdefaults__ = function.__kwdefaults__
    copied.__dict__.update(function.__dict__)
    copied.__qualname__ = function.__qualname__
    copied.__module__ = function.__module__
    return copied


def _rewrap(wrapper, inner, replacement) -> types.FunctionType | None:
    """A copy of ``wrapper`` whose closure holds ``replacement`` where it held ``inner``."""
    cells = wrapper.__closure__ or ()
    if not isinstance(wrapper, types.FunctionType) or not any(
            cell.cell_contents is inner for cell in cells):
        return None
    closure = tuple(types.CellType(replacement) if cell.cell_contents is inner else cell
                    for cell in cells)
    rebuilt = _copy_function(wrapper, wrapper.__globals__, closure)
    rebuilt.__wrapped__ = replacement
    return rebuilt


# ---- attention: transformers' AttentionInterface ----

def _patch_attention(model, record: _Patch) -> int:
    layers = [module for module in model.modules() if dispatches_attention(type(module))]
    if not layers:
        return 0
    reason = next(filter(None, map(_layer_refusal, layers)), None)
    if reason is not None:
        warn_once(f"seqtune: {type(model).__name__}'s attention is left unpatched: {reason}")
        return 0
    can_set = getattr(model, "_can_set_attn_implementation", None)
    if can_set is None or not can_set():
        warn_once(f"seqtune: {type(model).__name__} cannot switch its attention "
                  f"implementation; its attention layers are left unpatched")
        return 0
    reason = _unsupported_attention(model.config)
    if reason is not None:
        warn_once(f"seqtune: {type(model).__name__}'s attention is left unpatched: {reason}")
        return 0
    _register_attention()
    _own_configs(model, record)
    model.set_attn_implementation(ATTENTION_NAME)
    return len(layers)


def _layer_refusal(layer) -> str | None:
    """Why seqtune's attention cannot serve this attention layer, or None."""
    cls = type(layer)
    if reads_its_mask(cls):
        return (f"{cls.__name__}.forward reads the attention mask itself (it needs "
                f"transformers' 4-D mask, which seqtune's attention does not build)")
    if passes_position_bias(cls):
        return (f"{cls.__name__}.forward passes a position_bias (seqtune's attention adds no "
                f"bias)")
    head_dim = getattr(layer, "head_dim", None)
    if isinstance(head_dim, int) and head_dim > ATTENTION_HEAD_DIMS[1]:
        return f"head dim {head_dim} is over the {ATTENTION_HEAD_DIMS[1]} seqtune's attention runs"
    return None


def _unsupported_attention(config) -> str | None:
    """Why seqtune's attention cannot serve this config's attention layers, or None."""
    # Sliding windows and logit soft-capping reach seqtune's attention as its arguments;
    # chunked attention (Llama 4) does not.
    if getattr(config, "attention_chunk_size", None):
        return f"attention_chunk_size={config.attention_chunk_size!r} is not supported"
    if getattr(config, "attention_dropout", 0.0):
        return f"attention_dropout={config.attention_dropout!r} is not supported"
    return None


def _register_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

    AttentionInterface.register(ATTENTION_NAME, seqtune_attention)
    AttentionMaskInterface.register(ATTENTION_NAME, flash_attention_mask)


def _own_configs(model, record: _Patch) -> None:
    """Give ``model`` copies of its config and sub-configs, so that setting its attention
    implementation leaves any other model sharing those objects untouched."""
    copies: dict[int, Any] = {}

    def pair(original, replacement):
        copies[id(original)] = replacement
        for name in getattr(original, "sub_configs", {}) or {}:
            child = getattr(original, name, None)
            if child is not None:
                pair(child, getattr(replacement, name))

    pair(model.config, copy.deepcopy(model.config))
    for module in model.modules():
        for attribute, value in list(vars(module).items()):
            if id(value) in copies and not attribute.startswith("_"):
                _set(record, module, attribute, copies[id(value)])
