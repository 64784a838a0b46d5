"""The sequence-mixing layers of a model's ``config.json`` (``model_layers``): which kinds of
layer it has, how many of each, and the dimensions their kernels see.

A family is read by the fields its config names (``FAMILIES``: one short reader per family,
each mapping its field names onto one of the shared layer builders below); a config of an
unknown family with ``num_attention_heads`` reads as an attention model. Every size is checked
(``config_file``): a bad one is a one-line ValueError naming the field and the value.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

from seqtune.integrations.config_file import (
    ATTENTION_HEAD_DIMS,
    CONV_WIDTHS,
    DELTA_RULE_HEAD_DIMS,
    MAX_COUNT,
    MAX_LENGTH,
    MAX_WIDTH,
    SSD_HEAD_DIMS,
    count_of,
    in_range,
    positive,
    read_config,
    shown,
)

SILU = ("silu", "swish")


@dataclasses.dataclass(frozen=True)
class Layer:
    """One kind of sequence-mixing layer of a model: ``kind`` (``"attention"``,
    ``"gated_delta_net"``, ``"kda"``, ``"mamba"``, ``"mamba2"``), how many layers of the model
    are of it, and the dimensions its kernels see."""

    kind: str
    count: int
    dims: Mapping[str, Any]


def as_config(config: str | os.PathLike | Mapping[str, Any]) -> dict[str, Any]:
    config = read_config(config) if isinstance(config, (str, os.PathLike)) else dict(config)
    if not isinstance(config.get("model_type", ""), str):
        raise ValueError(f"model_type must be a name, got {shown(config['model_type'])}")
    text = config.get("text_config")
    if isinstance(text, Mapping) and "hidden_size" not in config:  # multimodal wrappers
        config = {**config, **text}
    return config


def section(config: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    """A nested object of the config ({} when absent)."""
    value = config.get(name) or {}
    if not isinstance(value, Mapping):
        raise ValueError(f"{name} must be a JSON object, got {shown(value)}")
    return value


def silu(config: Mapping[str, Any]) -> bool:
    return config.get("hidden_act", "silu") in SILU


# ---- a config's layers ----

def attention_layer(config: Mapping[str, Any], count: int, head_dim: int | None = None,
               value_dim: int | None = None, kv_heads: int | None = None) -> Layer:
    """Attention layers without a window (``attention_layers`` gives an attention model's
    sliding layers theirs)."""
    heads = count_of(config, "num_attention_heads")
    if kv_heads is None:
        kv_heads = count_of(config, "num_key_value_heads", heads)
    if head_dim is None:
        head_dim = (positive(config, "head_dim") if config.get("head_dim") is not None
                    else positive(config, "hidden_size") // heads)
    in_range("attention head dim (head_dim, or hidden_size / num_attention_heads)", head_dim,
             ATTENTION_HEAD_DIMS)
    in_range("attention value head dim", value_dim or head_dim, ATTENTION_HEAD_DIMS)
    if heads % kv_heads:
        raise ValueError(f"model config: num_attention_heads={heads} is not a multiple of "
                         f"num_key_value_heads={kv_heads}")
    return Layer("attention", count, {"Hq": heads, "Hkv": kv_heads, "D": head_dim,
                                      "Dv": value_dim or head_dim})


# transformers' name of a layer whose attention has the config's ``sliding_window``
SLIDING_TYPE = "sliding_attention"
# Families whose configs may leave ``layer_types`` out and slide only some layers: Gemma 2
# alternates (sliding first), Gemma 3 slides all but every ``sliding_window_pattern``-th layer.
SLIDING_PERIODS = {"gemma2": 2, "gemma3": 6}


def sliding_window(config: Mapping[str, Any]) -> int | None:
    """The keys a sliding layer's query sees (itself included): ``sliding_window``, None when
    absent, null or switched off (Qwen 2's ``use_sliding_window: false``)."""
    if config.get("sliding_window") is None or config.get("use_sliding_window", True) is False:
        return None
    return positive(config, "sliding_window", None, (1, MAX_LENGTH))


def sliding_layers(config: Mapping[str, Any], total: int) -> list[bool]:
    """Per layer, whether it slides (when the config has a window), as transformers decides:
    ``layer_types`` where given, else the family's period, else Qwen 2's ``max_window_layers``
    (the layers from it on slide) with ``use_sliding_window``, else every layer (Mistral)."""
    if config.get("layer_types"):
        return [kind == SLIDING_TYPE for kind in layer_types_of(config, None)]
    family = str(config.get("model_type", "")).removesuffix("_text")
    if family in SLIDING_PERIODS:
        period = count_of(config, "sliding_window_pattern", SLIDING_PERIODS[family])
        return [(index + 1) % period != 0 for index in range(total)]
    if config.get("use_sliding_window") is True:
        first = positive(config, "max_window_layers", total, (0, MAX_COUNT))
        return [index >= first for index in range(total)]
    return [True] * total


def attention_layers(config: Mapping[str, Any], total: int) -> list[Layer]:
    """The ``total`` attention layers of an attention model: the full ones, then the sliding
    ones with ``dims["window"]``, the config's ``sliding_window`` (what the patched layer's
    call gets as flash-attn's window ``(window - 1, window - 1)``). The logit soft cap
    (``attn_logit_softcapping``) is no dimension: it changes no tuning problem."""
    layer = attention_layer(config, total)
    window = sliding_window(config)
    pattern = [False] * total if window is None else sliding_layers(config, total)
    sliding = sum(pattern)
    full = len(pattern) - sliding
    return ([dataclasses.replace(layer, count=full)] if full else []) + (
        [Layer("attention", sliding, {**layer.dims, "window": window})] if sliding else [])


def layer_types_of(config: Mapping[str, Any], default: Any) -> Sequence[str]:
    """``layer_types``: a list of names, one per layer (``default`` when absent)."""
    layer_types = config.get("layer_types") or default
    if not isinstance(layer_types, (list, tuple)) or len(layer_types) > MAX_COUNT or not all(
            isinstance(kind, str) for kind in layer_types):
        raise ValueError(f"layer_types must be a list of at most {MAX_COUNT} layer type names, "
                         f"got {shown(layer_types)}")
    return layer_types


def split(layer_types: Sequence[str], by_type: Mapping[str, Sequence[Layer]]) -> list[Layer]:
    """The layers of ``layer_types`` (one name per layer; ``by_type`` maps a name to the layers
    seqtune runs in it: none for an MLP, two for a hybrid block), each distinct layer (kind and
    dims: a sliding attention layer is not a full one) with its count, in the order each first
    appears."""
    unknown = [kind for kind in layer_types if kind not in by_type]
    if unknown:
        raise ValueError(f"model config: unknown layer type {shown(unknown[0])} in layer types")
    counts: dict[str, int] = {}
    layers: dict[str, Layer] = {}
    for name in layer_types:
        for layer in by_type[name]:
            key = f"{layer.kind} {sorted(layer.dims.items())}"
            counts[key] = counts.get(key, 0) + 1
            layers.setdefault(key, layer)
    return [dataclasses.replace(layer, count=counts[key]) for key, layer in layers.items()]


# transformers' layer type names: attention a seqtune attention runs, and layers it leaves (MLPs,
# and attention with a token indexer: it keeps its own, which needs transformers' 4-D mask)
ATTENTION_TYPES = ("full_attention", "attention")
OTHER_TYPES = ("mlp", "moe", "indexed_attention")


def by_type(recurrent: Layer, attention: Layer | None, *recurrent_names: str
            ) -> dict[str, list[Layer]]:
    """``split``'s mapping for a hybrid of ``recurrent`` layers (named ``recurrent_names``) and
    attention layers."""
    mapping: dict[str, list[Layer]] = {name: [recurrent] for name in recurrent_names}
    mapping.update({name: [] if attention is None else [attention] for name in ATTENTION_TYPES})
    mapping.update({name: [] for name in OTHER_TYPES})
    mapping["hybrid"] = [recurrent] + ([] if attention is None else [attention])
    return mapping


def gated_delta_net_layers(config: Mapping[str, Any]) -> list[Layer]:
    total = count_of(config, "num_hidden_layers")
    interval = count_of(config, "full_attention_interval", 4)
    layer_types = layer_types_of(config, [
        "full_attention" if (i + 1) % interval == 0 else "linear_attention"
        for i in range(total)])
    key_heads = count_of(config, "linear_num_key_heads")
    value_heads = count_of(config, "linear_num_value_heads")
    key_dim = positive(config, "linear_key_head_dim", limits=DELTA_RULE_HEAD_DIMS)
    value_dim = positive(config, "linear_value_head_dim", limits=DELTA_RULE_HEAD_DIMS)
    if value_heads % key_heads:
        raise ValueError(f"model config: linear_num_value_heads={value_heads} is not a multiple "
                         f"of linear_num_key_heads={key_heads}")
    delta = Layer("gated_delta_net", 0, {
        "H": key_heads, "HV": value_heads, "K": key_dim, "V": value_dim, "gate": "scalar",
        "conv_dim": 2 * key_heads * key_dim + value_heads * value_dim,
        "width": positive(config, "linear_conv_kernel_dim", 4, CONV_WIDTHS), "conv_bias": False,
        "silu": silu(config)})
    attention = (attention_layer(config, 0) if any(kind in ATTENTION_TYPES for kind in layer_types)
                 else None)
    return split(layer_types, by_type(delta, attention, "linear_attention"))


def kda_layers(config: Mapping[str, Any]) -> list[Layer]:
    total = count_of(config, "num_hidden_layers")
    linear = section(config, "linear_attn_config")
    nested = "linear_attn_config."
    heads = count_of(linear, "num_heads", config.get("linear_num_heads", 32), nested)
    head_dim = positive(linear, "head_dim", config.get("linear_head_dim", 128),
                        DELTA_RULE_HEAD_DIMS, nested)
    layer_types = layer_types_of(config, None) if config.get("layer_types") else None
    if not layer_types and "full_attn_layers" in linear and "kda_layers" in linear:
        layer_types = [None] * total
        for kind, key in (("full_attention", "full_attn_layers"),
                          ("linear_attention", "kda_layers")):
            for number in _numbers(linear, key, total, nested):  # 1-based in the checkpoint
                layer_types[number - 1] = kind
        if None in layer_types:
            raise ValueError(f"linear_attn_config: layer {layer_types.index(None) + 1} is in "
                             f"neither full_attn_layers nor kda_layers")
    if not layer_types:
        layer_types = ["full_attention" if i and i % 4 == 0 else "linear_attention"
                       for i in range(total)]
    kda = Layer("kda", 0, {
        "H": heads, "HV": heads, "K": head_dim, "V": head_dim, "gate": "channel",
        "conv_dim": 3 * heads * head_dim,
        "width": positive(linear, "short_conv_kernel_size",
                          config.get("linear_conv_kernel_dim", 4), CONV_WIDTHS, nested),
        "conv_bias": False, "silu": silu(config)})
    mla = None
    if any(kind in ATTENTION_TYPES for kind in layer_types):
        heads_mla = count_of(config, "num_attention_heads")  # MLA expands its latent per head
        mla = attention_layer(config, 0, kv_heads=heads_mla,
                              head_dim=positive(config, "qk_nope_head_dim")
                              + positive(config, "qk_rope_head_dim", limits=(0, MAX_WIDTH)),
                              value_dim=positive(config, "v_head_dim"))
    return split(layer_types, by_type(kda, mla, "linear_attention"))


def _numbers(config: Mapping[str, Any], key: str, total: int, prefix: str) -> list[int]:
    """A list of 1-based layer numbers, each within the model's ``total`` layers."""
    numbers = config[key]
    if not isinstance(numbers, list) or len(numbers) > total:
        raise ValueError(f"{prefix}{key} must be a list of layer numbers, got {shown(numbers)}")
    return [in_range(f"{prefix}{key}[{i}]", number, (1, total))
            for i, number in enumerate(numbers)]


def mamba_layer(layers: int, channels: int, state: int, width: int, conv_bias: bool,
                 silu: bool, heads: int = 1) -> Layer:
    """A Mamba-1 layer; ``heads`` > 1 (Zamba) scans each of that many slices of the channels
    on its own."""
    in_range("mamba channels (intermediate_size, or expand x hidden_size)", channels,
             (1, MAX_WIDTH))
    if channels % heads:
        raise ValueError(f"model config: {channels} mamba channels do not split into {heads} "
                         f"heads")
    return Layer("mamba", layers, {"d": channels // heads, "n": state, "conv_dim": channels,
                                  "width": width, "conv_bias": conv_bias, "silu": silu})


def mamba2_layer(layers: int, channels: int, heads: int, groups: int, state: int, width: int,
                  conv_bias: bool, silu: bool) -> Layer:
    in_range("mamba2 channels (expand x hidden_size)", channels, (1, MAX_WIDTH))
    if channels % heads or heads % groups:
        raise ValueError(f"model config: {channels} channels in {heads} heads of {groups} "
                         f"groups do not divide evenly")
    in_range(f"mamba2 head dim ({channels} channels / {heads} heads)", channels // heads,
             SSD_HEAD_DIMS)
    return Layer("mamba2", layers, {"h": heads, "p": channels // heads, "g": groups, "n": state,
                                   "conv_dim": channels + 2 * groups * state, "width": width,
                                   "conv_bias": conv_bias, "silu": silu})
