"""Per model family, how its ``config.json`` names the fields of its layers (``FAMILIES``: the
``model_type``, without a ``_text`` suffix, -> a reader), read onto the shared layer builders of
``model_layers``. The generic rule: a family's recurrent layers take their sizes from its own
field names (the table in each reader), its layer pattern from ``layer_types`` /
``layers_block_type`` (or the period, index or pattern fields it uses instead), and its attention
layers from ``num_attention_heads``, ``num_key_value_heads`` and ``head_dim`` (else hidden size
/ heads). A model of an unknown type with ``num_attention_heads`` reads as attention only.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from seqtune.integrations.config_file import (
    ATTENTION_HEAD_DIMS,
    CONV_WIDTHS,
    MAX_COUNT,
    SELECTIVE_SCAN_STATES,
    SSD_HEAD_DIMS,
    count_of,
    in_range,
    positive,
    shown,
)
from seqtune.integrations.model_layers import (
    ATTENTION_TYPES,
    SLIDING_TYPE,
    Layer,
    as_config,
    attention_layer,
    attention_layers,
    by_type,
    sliding_window,
    gated_delta_net_layers,
    kda_layers,
    layer_types_of,
    mamba2_layer,
    mamba_layer,
    section,
    silu,
    split,
)

Reader = Callable[[Mapping[str, Any]], list[Layer]]


def model_layers(config: str | os.PathLike | Mapping[str, Any]) -> list[Layer]:
    """The sequence-mixing layer kinds of a model config, in the order they first appear."""
    config = as_config(config)
    model_type = config.get("model_type")
    if "ssm_cfg" in config and "d_model" in config:
        return mamba_ssm_layers(config)
    reader = FAMILIES.get(str(model_type).removesuffix("_text"))
    if reader is not None:
        return reader(config)
    if "num_attention_heads" in config:
        return attention_layers(config, count_of(config, "num_hidden_layers"))
    raise ValueError(f"model config of type {shown(model_type)}: no attention or recurrent "
                     f"layers seqtune knows (supported: {', '.join(sorted(FAMILIES))}, and "
                     f"attention models with num_attention_heads)")


def _mamba(config: Mapping[str, Any]) -> list[Layer]:
    hidden = positive(config, "hidden_size")
    channels = (positive(config, "intermediate_size") if config.get("intermediate_size")
                is not None else count_of(config, "expand", 2) * hidden)
    return [mamba_layer(count_of(config, "num_hidden_layers"), channels,
                         positive(config, "state_size", 16, SELECTIVE_SCAN_STATES),
                         positive(config, "conv_kernel", 4, CONV_WIDTHS),
                         bool(config.get("use_conv_bias", True)), silu(config))]


def _mamba2(config: Mapping[str, Any]) -> list[Layer]:
    channels = count_of(config, "expand", 2) * positive(config, "hidden_size")
    return [mamba2_layer(count_of(config, "num_hidden_layers"), channels,
                          count_of(config, "num_heads", 128), count_of(config, "n_groups", 1),
                          positive(config, "state_size", 128, SSD_HEAD_DIMS),
                          positive(config, "conv_kernel", 4, CONV_WIDTHS),
                          bool(config.get("use_conv_bias", True)), silu(config))]


def mamba_ssm_layers(config: Mapping[str, Any]) -> list[Layer]:
    """mamba_ssm's own config format (``d_model``, ``n_layer``, ``ssm_cfg``), with its
    defaults: Mamba-1 d_state 16, Mamba2 d_state 128, headdim 64; d_conv 4, expand 2, conv bias
    on, SiLU."""
    ssm, nested = section(config, "ssm_cfg"), "ssm_cfg."
    if config.get("attn_layer_idx"):
        raise ValueError("model config: mamba_ssm configs with attention layers "
                         "(attn_layer_idx) are not supported")
    layers = count_of(config, "n_layer")
    channels = count_of(ssm, "expand", 2, nested) * positive(config, "d_model")
    width = positive(ssm, "d_conv", 4, CONV_WIDTHS, nested)
    bias = bool(ssm.get("conv_bias", True))
    if ssm.get("layer", "Mamba1") == "Mamba2":
        heads = channels // positive(ssm, "headdim", 64, SSD_HEAD_DIMS, nested)
        return [mamba2_layer(layers, channels, max(heads, 1),
                              count_of(ssm, "ngroups", 1, nested),
                              positive(ssm, "d_state", 128, SSD_HEAD_DIMS, nested), width, bias,
                              True)]
    return [mamba_layer(layers, channels,
                         positive(ssm, "d_state", 16, SELECTIVE_SCAN_STATES, nested), width, bias,
                         True)]


def _pattern(config: Mapping[str, Any]) -> list[str]:
    """A layer pattern, one name per layer: ``layer_types`` or ``layers_block_type``, else
    Nemotron-H's ``hybrid_override_pattern`` (M mamba, * attention, - MLP, E MoE)."""
    for key in ("layer_types", "layers_block_type"):
        if config.get(key):
            return list(layer_types_of({"layer_types": config[key]}, None))
    pattern = config.get("hybrid_override_pattern")
    if isinstance(pattern, str) and 0 < len(pattern) <= MAX_COUNT and set(pattern) <= set("M*-E"):
        return [{"M": "mamba", "*": "attention", "-": "mlp", "E": "moe"}[c] for c in pattern]
    raise ValueError(f"model config: no layer pattern (layer_types, layers_block_type or "
                     f"hybrid_override_pattern), got {shown(config.get('layer_types'))}")


def _attention_if(config: Mapping[str, Any], layer_types: Sequence[str]) -> Layer | None:
    """The attention layer of a hybrid whose ``layer_types`` have one, else None."""
    if not any(kind in ATTENTION_TYPES + ("hybrid",) for kind in layer_types):
        return None
    return attention_layer(config, 0)


def _mamba2_hybrid(config: Mapping[str, Any], fields: Mapping[str, str | None],
                   layer_types: Sequence[str], channels: int | None = None) -> list[Layer]:
    """A Mamba-2 hybrid whose mixer fields are named ``fields`` (heads, groups, state, conv,
    bias, expand)."""
    if channels is None:
        channels = count_of(config, fields["expand"], 2) * positive(config, "hidden_size")
    heads = count_of(config, fields["heads"])
    if fields.get("head_dim") and config.get(fields["head_dim"]):
        channels = heads * positive(config, fields["head_dim"], limits=SSD_HEAD_DIMS)
    mixer = mamba2_layer(0, channels, heads, count_of(config, fields["groups"], 1),
                         positive(config, fields["state"], 128, SSD_HEAD_DIMS),
                         positive(config, fields["conv"], 4, CONV_WIDTHS),
                         bool(config.get(fields["bias"], True)), True)
    return split(layer_types, by_type(mixer, _attention_if(config, layer_types),
                                      "mamba", "linear_attention"))


MAMBA_FIELDS = {"heads": "mamba_n_heads", "head_dim": "mamba_d_head",
                "groups": "mamba_n_groups", "state": "mamba_d_state", "conv": "mamba_d_conv",
                "bias": "mamba_conv_bias", "expand": "mamba_expand"}


def _bamba(config: Mapping[str, Any]) -> list[Layer]:
    total = count_of(config, "num_hidden_layers")
    indices = config.get("attn_layer_indices") or []
    if not isinstance(indices, list):
        raise ValueError(f"attn_layer_indices must be a list, got {shown(indices)}")
    attention = {in_range(f"attn_layer_indices[{i}]", index, (0, total - 1))
                 for i, index in enumerate(indices)}
    types = ["attention" if i in attention else "mamba" for i in range(total)]
    return _mamba2_hybrid(config, MAMBA_FIELDS, types)


def _granite(config: Mapping[str, Any]) -> list[Layer]:
    return _mamba2_hybrid(config, MAMBA_FIELDS,
                          _pattern(config))


def _falcon_h1(config: Mapping[str, Any]) -> list[Layer]:
    """Every Falcon-H1 layer runs a Mamba-2 mixer and attention side by side."""
    channels = (positive(config, "mamba_d_ssm") if config.get("mamba_d_ssm") else None)
    fields = {**MAMBA_FIELDS, "head_dim": None}
    return _mamba2_hybrid(config, fields, ["hybrid"] * count_of(config, "num_hidden_layers"),
                          channels)


def _nemotron_h(config: Mapping[str, Any]) -> list[Layer]:
    fields = {"heads": "mamba_num_heads", "head_dim": "mamba_head_dim", "groups": "n_groups",
              "state": "ssm_state_size", "conv": "conv_kernel", "bias": "use_conv_bias",
              "expand": "expand"}
    return _mamba2_hybrid(config, fields,
                          _pattern(config))


def _zamba_attention(config: Mapping[str, Any], count: int) -> list[Layer]:
    """Zamba's shared attention (in ``count`` layers) reads the concatenated embeddings
    (2 x hidden). Heads wider than seqtune's attention runs (over 512) list none: patch leaves
    such attention on transformers' path."""
    if not count:
        return []
    heads = count_of(config, "num_attention_heads")
    dim = (positive(config, "attention_head_dim") if config.get("attention_head_dim")
           else 2 * positive(config, "hidden_size") // heads)
    if dim > ATTENTION_HEAD_DIMS[1]:
        return []
    return [_with_count(attention_layer(config, 0, head_dim=dim), count)]


def _zamba2(config: Mapping[str, Any]) -> list[Layer]:
    fields = {"heads": "n_mamba_heads", "head_dim": None, "groups": "mamba_ngroups",
              "state": "mamba_d_state", "conv": "mamba_d_conv", "bias": "use_conv_bias",
              "expand": "mamba_expand"}
    types = _pattern(config)
    layers = _mamba2_hybrid(config, fields,
                            ["mamba" if kind == "hybrid" else kind for kind in types])
    # a hybrid layer: a mamba layer after the shared attention block
    return layers + _zamba_attention(config, types.count("hybrid"))


def _with_count(layer: Layer, count: int) -> Layer:
    return Layer(layer.kind, count, layer.dims)


def _jamba(config: Mapping[str, Any]) -> list[Layer]:
    total = count_of(config, "num_hidden_layers")
    period = count_of(config, "attn_layer_period", 8)
    offset = in_range("attn_layer_offset", config.get("attn_layer_offset", 4), (0, period - 1))
    types = ["attention" if i % period == offset else "mamba" for i in range(total)]
    channels = count_of(config, "mamba_expand", 2) * positive(config, "hidden_size")
    mixer = mamba_layer(0, channels, positive(config, "mamba_d_state", 16, SELECTIVE_SCAN_STATES),
                        positive(config, "mamba_d_conv", 4, CONV_WIDTHS),
                        bool(config.get("mamba_conv_bias", True)), True)
    return split(types, by_type(mixer, _attention_if(config, types), "mamba"))


def _zamba(config: Mapping[str, Any]) -> list[Layer]:
    """Zamba: a Mamba-1 mixer in every layer (``n_mamba_heads`` scans each), a shared
    attention block in the ``hybrid`` ones."""
    types = _pattern(config)
    channels = count_of(config, "mamba_expand", 2) * positive(config, "hidden_size")
    mixer = mamba_layer(len(types), channels,
                        positive(config, "mamba_d_state", 16, SELECTIVE_SCAN_STATES),
                        positive(config, "mamba_d_conv", 4, CONV_WIDTHS),
                        bool(config.get("mamba_conv_bias", True)),
                        config.get("hidden_mamba_act", "silu") in ("silu", "swish"),
                        count_of(config, "n_mamba_heads", 1))
    return [mixer] + _zamba_attention(config, types.count("hybrid"))


def _lfm2(config: Mapping[str, Any], default_width: int = 3) -> list[Layer]:
    """LFM2 and LFM3: gated short convolutions (no activation) of width ``conv_L_cache`` over
    the hidden size, and attention: full layers, and sliding ones (LFM3's) with the config's
    ``sliding_window`` as their ``window``."""
    total = count_of(config, "num_hidden_layers")
    if config.get("layer_types"):
        types = list(layer_types_of(config, None))
    else:
        full = config.get("full_attn_idxs") or []
        if not isinstance(full, list):
            raise ValueError(f"full_attn_idxs must be a list, got {shown(full)}")
        full = {in_range(f"full_attn_idxs[{i}]", index, (0, total - 1))
                for i, index in enumerate(full)}
        types = ["full_attention" if i in full else "conv" for i in range(total)]
    conv = Layer("short_conv", 0, {
        "conv_dim": positive(config, "hidden_size"),
        "width": positive(config, "conv_L_cache", default_width, CONV_WIDTHS),
        "conv_bias": bool(config.get("conv_bias", False)), "silu": False})
    attention = _attention_if(config, [kind for kind in types if kind != SLIDING_TYPE])
    if SLIDING_TYPE in types:
        attention = attention or attention_layer(config, 0)
    window = sliding_window(config)  # None: the "sliding" layers attend to every key
    sliding = [] if attention is None else [
        attention if window is None else Layer("attention", 0, {**attention.dims,
                                                                "window": window})]
    return split(types, by_type(conv, attention, "conv") | {SLIDING_TYPE: sliding})


def _lfm3(config: Mapping[str, Any]) -> list[Layer]:
    return _lfm2(config, default_width=7)


def _inkling(config: Mapping[str, Any]) -> list[Layer]:
    """Inkling and Inkling2: short convolutions (no bias, no activation, in float32 whatever the
    model's dtype) after the attention and after the MLP of every layer (over the hidden size),
    and over the keys and values where the taps are static: every Inkling layer, Inkling2's
    sliding ones (its full layers' taps are per token: PyTorch runs them). The attention adds a
    relative-position bias, which seqtune's attention does not: none is listed (patch leaves
    it)."""
    types = _pattern(config)
    unknown = [kind for kind in types if kind not in ("hybrid", "hybrid_sliding")]
    if unknown:
        raise ValueError(f"model config: unknown layer type {shown(unknown[0])} in layer types")
    width_field = "sconv_kernel_size" if "sconv_kernel_size" in config else "conv_kernel_size"
    width = positive(config, width_field, 4, CONV_WIDTHS)
    heads = count_of(config, "num_key_value_heads")
    head_dim = positive(config, "head_dim")
    key_values = {
        "hybrid": heads * head_dim,
        "hybrid_sliding": (count_of(config, "swa_num_key_value_heads", heads)
                           * positive(config, "swa_head_dim", head_dim))}
    static = ("hybrid_sliding",) if config.get("model_type", "").startswith("inkling2") else (
        "hybrid", "hybrid_sliding")
    counts = {positive(config, "hidden_size"): 2 * len(types)}
    for kind in static:
        counts[key_values[kind]] = counts.get(key_values[kind], 0) + 2 * types.count(kind)
    return [Layer("short_conv", count, {"conv_dim": channels, "width": width,
                                        "conv_bias": False, "silu": False, "dtype": "float32"})
            for channels, count in counts.items() if count]


FAMILIES: dict[str, Reader] = {
    # Gated DeltaNet
    "qwen3_next": gated_delta_net_layers, "qwen3_5": gated_delta_net_layers,
    "qwen3_5_moe": gated_delta_net_layers, "qwen4_exp": gated_delta_net_layers,
    "olmo_hybrid": gated_delta_net_layers,
    # KDA
    "kimi_linear": kda_layers, "bailing_hybrid": kda_layers, "glm5_next": kda_layers,
    # Mamba-1
    "mamba": _mamba, "falcon_mamba": _mamba, "jamba": _jamba, "zamba": _zamba,
    # Mamba-2
    "mamba2": _mamba2, "bamba": _bamba, "granitemoehybrid": _granite,
    "falcon_h1": _falcon_h1, "nemotron_h": _nemotron_h, "zamba2": _zamba2,
    # short convolutions
    "lfm2": _lfm2, "lfm2_moe": _lfm2, "lfm3": _lfm3, "inkling": _inkling, "inkling2": _inkling,
}
