"""The seqtune problems a model's ``config.json`` produces, so a user tunes exactly what their
model runs without knowing seqtune's problem fields (``seqtune tune --model-config``).

A config (a local ``config.json``: transformers' format, or mamba_ssm's ``d_model``/``ssm_cfg``
one) is read as its sequence-mixing layers (``model_layers``): softmax attention (any model with
``num_attention_heads``; Kimi-Linear's MLA with its key and value head dims), Qwen3-Next's Gated
DeltaNet, Kimi-Linear's KDA, Mamba and Mamba2 layers, each with the short convolution in front
of it. ``problems_for_model`` turns them into the problems of the kernels that
``seqtune.integrations.transformers.patch`` makes those layers launch, field for field as the
ops key them (so the tuned entries are the ones the patched model reads):

- prefill: every batch size x length (no initial state, one sequence per row);
- ``decode``: one token per row at every batch size (attention against a cache of every
  length; the recurrent steps have no length);
- ``training``: the backward kernel (``<kernel>_bwd``) of every prefill problem, for the kernels
  that have one.

Nothing here needs transformers or a GPU: only the JSON file.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from seqtune.integrations.config_file import (
    ATTENTION_HEAD_DIMS,
    CONV_WIDTHS,
    DELTA_RULE_HEAD_DIMS,
    MAX_BATCH,
    MAX_COUNT,
    MAX_ELEMENTS,
    MAX_LENGTH,
    MAX_WIDTH,
    SELECTIVE_SCAN_STATES,
    SSD_HEAD_DIMS,
    config_dtype_name,
    count_of,
    in_range,
    positive,
    read_config,
    shown,
)

Problem = dict[str, Any]  # seqtune.spec's (which imports torch)

# Prefill lengths per tuning preset, for a caller given no lengths (the interpreter's tiny
# preset keeps problems small enough for the CPU).
PRESET_LENGTHS = {"tiny": (64,), "quick": (1024,), "default": (1024, 4096),
                  "full": (1024, 4096, 32768)}
DEFAULT_LENGTHS = PRESET_LENGTHS["default"]
DEFAULT_BATCH_SIZES = (1,)
DEFAULT_DTYPE = "bfloat16"
DECODE_HEAD_DIMS = (16, 32, 64, 128, 256)  # attention_decode's; other head dims decode on attention
SILU = ("silu", "swish")


@dataclasses.dataclass(frozen=True)
class Layer:
    """One kind of sequence-mixing layer of a model: ``kind`` (``"attention"``,
    ``"gated_delta_net"``, ``"kda"``, ``"mamba"``, ``"mamba2"``), how many layers of the model
    are of it, and the dimensions its kernels see."""

    kind: str
    count: int
    dims: Mapping[str, Any]


def _as_config(config: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    config = read_config(config) if isinstance(config, (str, Path)) else dict(config)
    if not isinstance(config.get("model_type", ""), str):
        raise ValueError(f"model_type must be a name, got {shown(config['model_type'])}")
    text = config.get("text_config")
    if isinstance(text, Mapping) and "hidden_size" not in config:  # multimodal wrappers
        config = {**config, **text}
    return config


def _section(config: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    """A nested object of the config ({} when absent)."""
    value = config.get(name) or {}
    if not isinstance(value, Mapping):
        raise ValueError(f"{name} must be a JSON object, got {shown(value)}")
    return value


def _silu(config: Mapping[str, Any]) -> bool:
    return config.get("hidden_act", "silu") in SILU


def model_dtype(config: str | Path | Mapping[str, Any]) -> str:
    """The dtype the config names (``dtype`` or ``torch_dtype``), else bfloat16."""
    config = _as_config(config)
    return config_dtype_name(config.get("dtype") or config.get("torch_dtype") or DEFAULT_DTYPE)


# ---- a config's layers ----

def model_layers(config: str | Path | Mapping[str, Any]) -> list[Layer]:
    """The sequence-mixing layer kinds of a model config, in the order they first appear."""
    config = _as_config(config)
    model_type = config.get("model_type")
    if "ssm_cfg" in config and "d_model" in config:
        return _mamba_ssm_layers(config)
    readers = {"qwen3_next": _qwen3_next_layers, "kimi_linear": _kimi_linear_layers,
               "mamba": _mamba_layers, "falcon_mamba": _mamba_layers,
               "mamba2": _mamba2_layers}
    if model_type in readers:
        return readers[model_type](config)
    if "num_attention_heads" in config:
        return [_attention(config, count_of(config, "num_hidden_layers"))]
    raise ValueError(f"model config of type {model_type!r}: no attention or recurrent layers "
                     f"seqtune knows (supported: qwen3_next, kimi_linear, mamba, mamba2, and "
                     f"attention models with num_attention_heads)")


def _attention(config: Mapping[str, Any], count: int, head_dim: int | None = None,
               value_dim: int | None = None, kv_heads: int | None = None) -> Layer:
    if "sliding_attention" in _layer_types(config, ()):
        raise ValueError("model config: sliding-window attention layers are not supported")
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


def _layer_types(config: Mapping[str, Any], default: Any) -> Sequence[str]:
    """``layer_types``: a list of names, one per layer (``default`` when absent)."""
    layer_types = config.get("layer_types") or default
    if not isinstance(layer_types, (list, tuple)) or len(layer_types) > MAX_COUNT or not all(
            isinstance(kind, str) for kind in layer_types):
        raise ValueError(f"layer_types must be a list of at most {MAX_COUNT} layer type names, "
                         f"got {shown(layer_types)}")
    return layer_types


def _split(layer_types: Sequence[str], linear: Layer, attention: Layer) -> list[Layer]:
    """The linear and full attention layers of ``layer_types`` with their counts, in the order
    each first appears."""
    by_type = {"linear_attention": linear, "full_attention": attention}
    unknown = [kind for kind in layer_types if kind not in by_type]
    if unknown:
        raise ValueError(f"model config: unknown layer type {shown(unknown[0])} in layer_types")
    return [dataclasses.replace(by_type[kind], count=list(layer_types).count(kind))
            for kind in dict.fromkeys(layer_types)]


def _qwen3_next_layers(config: Mapping[str, Any]) -> list[Layer]:
    total = count_of(config, "num_hidden_layers")
    interval = count_of(config, "full_attention_interval", 4)
    layer_types = _layer_types(config, [
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
        "silu": _silu(config)})
    return _split(layer_types, delta, _attention(config, 0))


def _kimi_linear_layers(config: Mapping[str, Any]) -> list[Layer]:
    total = count_of(config, "num_hidden_layers")
    linear = _section(config, "linear_attn_config")
    nested = "linear_attn_config."
    heads = count_of(linear, "num_heads", config.get("linear_num_heads", 32), nested)
    head_dim = positive(linear, "head_dim", config.get("linear_head_dim", 128),
                        DELTA_RULE_HEAD_DIMS, nested)
    layer_types = _layer_types(config, None) if config.get("layer_types") else None
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
        "conv_bias": False, "silu": _silu(config)})
    heads_mla = count_of(config, "num_attention_heads")
    mla = _attention(config, 0, kv_heads=heads_mla,  # MLA expands its latent to every head
                     head_dim=positive(config, "qk_nope_head_dim")
                     + positive(config, "qk_rope_head_dim"),
                     value_dim=positive(config, "v_head_dim"))
    return _split(layer_types, kda, mla)


def _numbers(config: Mapping[str, Any], key: str, total: int, prefix: str) -> list[int]:
    """A list of 1-based layer numbers, each within the model's ``total`` layers."""
    numbers = config[key]
    if not isinstance(numbers, list) or len(numbers) > total:
        raise ValueError(f"{prefix}{key} must be a list of layer numbers, got {shown(numbers)}")
    return [in_range(f"{prefix}{key}[{i}]", number, (1, total))
            for i, number in enumerate(numbers)]


def _mamba_layer(layers: int, channels: int, state: int, width: int, conv_bias: bool,
                 silu: bool) -> Layer:
    in_range("mamba channels (intermediate_size, or expand x hidden_size)", channels,
             (1, MAX_WIDTH))
    return Layer("mamba", layers, {"d": channels, "n": state, "conv_dim": channels,
                                  "width": width, "conv_bias": conv_bias, "silu": silu})


def _mamba2_layer(layers: int, channels: int, heads: int, groups: int, state: int, width: int,
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


def _mamba_layers(config: Mapping[str, Any]) -> list[Layer]:
    hidden = positive(config, "hidden_size")
    channels = (positive(config, "intermediate_size") if config.get("intermediate_size")
                is not None else count_of(config, "expand", 2) * hidden)
    return [_mamba_layer(count_of(config, "num_hidden_layers"), channels,
                         positive(config, "state_size", 16, SELECTIVE_SCAN_STATES),
                         positive(config, "conv_kernel", 4, CONV_WIDTHS),
                         bool(config.get("use_conv_bias", True)), _silu(config))]


def _mamba2_layers(config: Mapping[str, Any]) -> list[Layer]:
    channels = count_of(config, "expand", 2) * positive(config, "hidden_size")
    return [_mamba2_layer(count_of(config, "num_hidden_layers"), channels,
                          count_of(config, "num_heads", 128), count_of(config, "n_groups", 1),
                          positive(config, "state_size", 128, SSD_HEAD_DIMS),
                          positive(config, "conv_kernel", 4, CONV_WIDTHS),
                          bool(config.get("use_conv_bias", True)), _silu(config))]


def _mamba_ssm_layers(config: Mapping[str, Any]) -> list[Layer]:
    """mamba_ssm's own config format (``d_model``, ``n_layer``, ``ssm_cfg``), with its
    defaults: Mamba-1 d_state 16, Mamba2 d_state 128, headdim 64; d_conv 4, expand 2, conv bias
    on, SiLU."""
    ssm, nested = _section(config, "ssm_cfg"), "ssm_cfg."
    if config.get("attn_layer_idx"):
        raise ValueError("model config: mamba_ssm configs with attention layers "
                         "(attn_layer_idx) are not supported")
    layers = count_of(config, "n_layer")
    channels = count_of(ssm, "expand", 2, nested) * positive(config, "d_model")
    width = positive(ssm, "d_conv", 4, CONV_WIDTHS, nested)
    bias = bool(ssm.get("conv_bias", True))
    if ssm.get("layer", "Mamba1") == "Mamba2":
        heads = channels // positive(ssm, "headdim", 64, SSD_HEAD_DIMS, nested)
        return [_mamba2_layer(layers, channels, max(heads, 1),
                              count_of(ssm, "ngroups", 1, nested),
                              positive(ssm, "d_state", 128, SSD_HEAD_DIMS, nested), width, bias,
                              True)]
    return [_mamba_layer(layers, channels,
                         positive(ssm, "d_state", 16, SELECTIVE_SCAN_STATES, nested), width, bias,
                         True)]


# ---- the problems of each layer kind ----

def _conv(dims, batch: int, length: int, dtype: str) -> tuple[str, Problem]:
    # causal_conv1d counts every row as a sequence (N == B) where the other ops say N = 1
    return "causal_conv1d", {"B": batch, "T": length, "D": dims["conv_dim"], "W": dims["width"],
                             "N": batch, "varlen": False, "has_bias": dims["conv_bias"],
                             "silu": dims["silu"], "has_initial_state": False, "dtype": dtype}


def _conv_step(dims, batch: int, dtype: str) -> tuple[str, Problem]:
    return "causal_conv1d_step", {"B": batch, "D": dims["conv_dim"], "W": dims["width"],
                                  "has_bias": dims["conv_bias"], "silu": dims["silu"],
                                  "dtype": dtype}


def _attention_problem(dims, batch: int, queries: int, keys: int, dtype: str) -> Problem:
    problem = {"B": batch, "T": queries, "S": keys, "Hq": dims["Hq"], "Hkv": dims["Hkv"],
               "D": dims["D"]}
    if dims["Dv"] != dims["D"]:
        problem["Dv"] = dims["Dv"]
    problem.update({"causal": True, "dtype": dtype, "score": "softmax", "N": 1,
                    "varlen": False})
    return problem


def _prefill(layer: Layer, batch: int, length: int, dtype: str) -> list[tuple[str, Problem]]:
    dims = layer.dims
    if layer.kind == "attention":
        return [("attention", _attention_problem(dims, batch, length, length, dtype))]
    if layer.kind in ("gated_delta_net", "kda"):
        return [_conv(dims, batch, length, dtype), ("delta_rule", {
            "B": batch, "T": length, "H": dims["H"], "GV": dims["HV"] // dims["H"], "N": 1,
            "K": dims["K"], "V": dims["V"], "gate": dims["gate"], "initial_state": False,
            "varlen": False, "dtype": dtype})]
    if layer.kind == "mamba":
        return [_conv(dims, batch, length, dtype), ("selective_scan", {
            "b": batch, "d": dims["d"], "L": length, "n": dims["n"], "dtype": dtype,
            "groups": 1, "has_z": True, "has_D": True, "has_delta_bias": True,
            "delta_softplus": True, "has_initial_state": False})]
    return [_conv(dims, batch, length, dtype), ("ssd", {
        "b": batch, "T": length, "h": dims["h"], "g": dims["g"], "n": dims["n"],
        "p": dims["p"], "has_D": True, "initial_state": False, "dtype": dtype, "N": 1,
        "varlen": False})]


def _decode(layer: Layer, batch: int, lengths: Sequence[int], dtype: str
            ) -> list[tuple[str, Problem]]:
    dims = layer.dims
    if layer.kind == "attention":
        if dims["D"] == dims["Dv"] and dims["D"] in DECODE_HEAD_DIMS:
            return [("attention_decode", {"B": batch, "Hq": dims["Hq"], "Hkv": dims["Hkv"],
                                          "D": dims["D"], "S": length, "dtype": dtype})
                    for length in lengths]
        return [("attention", _attention_problem(dims, batch, 1, length, dtype))
                for length in lengths]
    if layer.kind in ("gated_delta_net", "kda"):
        return [_conv_step(dims, batch, dtype), ("delta_rule_step", {
            "B": batch, "H": dims["H"], "GV": dims["HV"] // dims["H"], "K": dims["K"],
            "V": dims["V"], "gate": dims["gate"], "indexed": False, "dtype": dtype})]
    if layer.kind == "mamba":
        return [_conv_step(dims, batch, dtype), ("selective_scan_step", {
            "B": batch, "d": dims["d"], "n": dims["n"], "groups": 1, "has_z": True,
            "has_D": True, "has_delta_bias": True, "delta_softplus": True, "indexed": False,
            "dtype": dtype})]
    return [_conv_step(dims, batch, dtype), ("ssd_step", {
        "b": batch, "h": dims["h"], "g": dims["g"], "n": dims["n"], "p": dims["p"],
        "has_D": True, "dtype": dtype, "indexed": False})]


def _sizes(name: str, values: Iterable[int], limit: int) -> tuple[int, ...]:
    values = tuple(values)
    if not values or any(isinstance(v, bool) or not isinstance(v, int) or v <= 0
                         for v in values):
        raise ValueError(f"{name} must be positive integers, got {shown(list(values))}")
    if max(values) > limit:
        raise ValueError(f"{name} must be at most {limit}, got {max(values)}")
    return values


def _widest(layer: Layer) -> tuple[int, int]:
    """The elements per token of the layer's widest activation, and of its recurrent state
    per sequence (what a problem allocates beside batch x length)."""
    dims = layer.dims
    if layer.kind == "attention":
        return dims["Hq"] * max(dims["D"], dims["Dv"]), 0
    if layer.kind in ("gated_delta_net", "kda"):
        return max(dims["conv_dim"], dims["HV"] * dims["V"]), dims["HV"] * dims["K"] * dims["V"]
    if layer.kind == "mamba":
        return dims["conv_dim"], dims["d"] * dims["n"]
    return dims["conv_dim"], dims["h"] * dims["n"] * dims["p"]


def check_sizes(layers: Sequence[Layer], lengths: Iterable[int], batch_sizes: Iterable[int]
                ) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The lengths and batch sizes, checked: positive, within the caps, and no tensor of any
    layer over the elements a kernel indexes; a one-line ValueError naming the value."""
    lengths = _sizes("lengths", lengths, MAX_LENGTH)
    batch_sizes = _sizes("batch sizes", batch_sizes, MAX_BATCH)
    batch, length = max(batch_sizes), max(lengths)
    for layer in layers:
        per_token, state = _widest(layer)
        elements = max(batch * length * per_token, batch * state)
        if elements > MAX_ELEMENTS:
            raise ValueError(f"batch {batch} x length {length} gives a {layer.kind} tensor of "
                             f"{elements} elements, over the {MAX_ELEMENTS} a kernel indexes")
    return lengths, batch_sizes


def validate_model(config: str | Path | Mapping[str, Any], lengths: Iterable[int],
                   batch_sizes: Iterable[int]
                   ) -> tuple[list[Layer], str, tuple[int, ...], tuple[int, ...]]:
    """The config's layers and dtype, and the lengths and batch sizes, all checked (a one-line
    ValueError naming the field and value otherwise), without torch and without allocating:
    what a command checks before it starts."""
    config = _as_config(config)  # a file is read once
    layers = model_layers(config)
    dtype = model_dtype(config)
    return (layers, dtype, *check_sizes(layers, lengths, batch_sizes))


def problems_for_model(config: str | Path | Mapping[str, Any],
                       lengths: Iterable[int] = DEFAULT_LENGTHS,
                       batch_sizes: Iterable[int] = DEFAULT_BATCH_SIZES, decode: bool = False,
                       training: bool = False, dtype: str | None = None
                       ) -> dict[str, list[Problem]]:
    """Kernel name -> the problems a model with this config produces (see the module
    docstring), each once, in a fixed order; ``dtype`` (None: the config's) names the model's
    dtype. Only kernels this seqtune has are listed (a ``_bwd`` kernel not yet written is
    left out)."""
    from seqtune.registry import all_specs
    from seqtune.spec import dtype_name

    layers, config_dtype, lengths, batch_sizes = validate_model(config, lengths, batch_sizes)
    dtype = dtype_name(dtype) if dtype is not None else config_dtype
    found: list[tuple[str, Problem]] = []
    for layer in layers:
        for batch in batch_sizes:
            prefill = [item for length in lengths for item in _prefill(layer, batch, length,
                                                                        dtype)]
            found += prefill
            if training:
                found += [(f"{kernel}_bwd", problem) for kernel, problem in prefill]
            if decode:
                found += _decode(layer, batch, lengths, dtype)
    known = all_specs()
    problems: dict[str, list[Problem]] = {}
    for kernel, problem in found:
        if kernel in known and problem not in problems.setdefault(kernel, []):
            problems[kernel].append(problem)
    return {kernel: listed for kernel, listed in problems.items() if listed}


def specs_for_model(problems: Mapping[str, Sequence[Problem]], preset: str = "model") -> list:
    """The registry's specs of these kernels, each with one more preset, ``preset``, holding
    its problems: what a tune of exactly these problems runs with ``--preset model``."""
    from seqtune.registry import get_spec

    return [dataclasses.replace(spec, presets={**spec.presets, preset: list(listed)})
            for spec in (get_spec(kernel) for kernel in problems)
            for listed in [problems[spec.name]]]


def model_coverage(problems: Mapping[str, Sequence[Problem]], profile=None
                   ) -> list[dict[str, Any]]:
    """Per problem, what the runtime would launch it with from ``profile`` (None: the active
    one, as the kernels read it): ``status`` ``"tuned"`` (an entry in the problem's own size
    buckets), ``"nearest"`` (the loader's nearest entry of the same categorical fields, in
    other buckets; ``distance`` in log2 steps) or ``"default"`` (no entry it can use), with
    that entry's problem."""
    from seqtune.loader import active_profile, problem_distance
    from seqtune.registry import get_spec

    profile = active_profile() if profile is None else profile
    rows = []
    for kernel, listed in problems.items():
        spec = get_spec(kernel)
        entries = profile.entries.get(kernel, [])
        for problem in listed:
            normal = spec.bucket(problem)  # defaults filled, dtype by name
            normal.update({field: problem[field] for field in spec.size_fields
                           if field in problem})
            scored = [(distance, entry) for entry in entries
                      if (distance := problem_distance(spec, entry.problem, normal)) is not None]
            best = min(scored, key=lambda pair: pair[0], default=None)
            own = [entry for _, entry in scored
                   if spec.bucket(entry.problem) == spec.bucket(problem)]
            chosen = own[0] if own else None if best is None else best[1]
            rows.append({"kernel": kernel, "problem": dict(problem),
                         "status": "tuned" if own else "nearest" if best else "default",
                         "distance": None if best is None else best[0],
                         "entry": None if chosen is None else dict(chosen.problem)})
    return rows
