"""The seqtune problems a model's ``config.json`` produces, so a user tunes exactly what their
model runs without knowing seqtune's problem fields (``seqtune tune --model-config``).

A config (a local ``config.json``: transformers' format, or mamba_ssm's ``d_model``/``ssm_cfg``
one) is read as its sequence-mixing layers (``model_families.model_layers``: softmax attention,
Gated DeltaNet, KDA, Mamba, Mamba-2 and short-convolution layers of every family
``seqtune.integrations.transformers.patch`` patches, each with the short convolution in front of
it). ``problems_for_model`` turns them into the problems of the kernels that the patch makes
those layers launch, field for field as the ops key them (so the tuned entries are the ones
the patched model reads; a sliding layer's problems carry its ``window``, as its calls'):

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
    MAX_BATCH,
    MAX_ELEMENTS,
    MAX_LENGTH,
    config_dtype_name,
    read_config,  # noqa: F401  (re-exported: callers read configs from here)
    shown,
)
from seqtune.integrations.model_families import model_layers
from seqtune.integrations.model_layers import Layer, as_config

Problem = dict[str, Any]  # seqtune.spec's (which imports torch)

# Prefill lengths per tuning preset, for a caller given no lengths (the interpreter's tiny
# preset keeps problems small enough for the CPU).
PRESET_LENGTHS = {"tiny": (64,), "quick": (1024,), "default": (1024, 4096),
                  "full": (1024, 4096, 32768)}
DEFAULT_LENGTHS = PRESET_LENGTHS["default"]
DEFAULT_BATCH_SIZES = (1,)
DEFAULT_DTYPE = "bfloat16"
DECODE_HEAD_DIMS = (16, 32, 64, 128, 256)  # attention_decode's; other head dims decode on attention


def model_dtype(config: str | Path | Mapping[str, Any]) -> str:
    """The dtype the config names (``dtype`` or ``torch_dtype``), else bfloat16."""
    config = as_config(config)
    return config_dtype_name(config.get("dtype") or config.get("torch_dtype") or DEFAULT_DTYPE)


# ---- the problems of each layer kind ----

# A convolution's dims may name its own "dtype" (Inkling convolves in float32 whatever the
# model's dtype); the others run in the model's.
def _conv(dims, batch: int, length: int, dtype: str) -> tuple[str, Problem]:
    # causal_conv1d counts every row as a sequence (N == B) where the other ops say N = 1
    return "causal_conv1d", {"B": batch, "T": length, "D": dims["conv_dim"], "W": dims["width"],
                             "N": batch, "varlen": False, "has_bias": dims["conv_bias"],
                             "silu": dims["silu"], "has_initial_state": False,
                             "dtype": dims.get("dtype", dtype)}


def _conv_step(dims, batch: int, dtype: str) -> tuple[str, Problem]:
    return "causal_conv1d_step", {"B": batch, "D": dims["conv_dim"], "W": dims["width"],
                                  "has_bias": dims["conv_bias"], "silu": dims["silu"],
                                  "dtype": dims.get("dtype", dtype)}


def _flash_window(dims) -> tuple[int, int]:
    """The window the patched layer passes (``hf_attention``: transformers' flash-attention
    window ``(sliding_window - 1, sliding_window - 1)``), ``(-1, -1)`` for a full layer."""
    window = dims.get("window")
    return (-1, -1) if window is None else (window - 1, window - 1)


def _attention_problem(dims, batch: int, queries: int, keys: int, dtype: str) -> Problem:
    # seqtune.kernels imports torch; problems_for_model, the only caller, does already.
    from seqtune.kernels.attention.window import NO_WINDOW_FIELD, window_field

    problem = {"B": batch, "T": queries, "S": keys, "Hq": dims["Hq"], "Hkv": dims["Hkv"],
               "D": dims["D"]}
    if dims["Dv"] != dims["D"]:
        problem["Dv"] = dims["Dv"]
    problem.update({"causal": True, "dtype": dtype, "score": "softmax", "N": 1,
                    "varlen": False})
    band = window_field(_flash_window(dims), True, queries, keys)
    if band != NO_WINDOW_FIELD:  # as op.problem_of: only a window that hides a key
        problem["window"] = band
    return problem


def _decode_keys(dims, length: int) -> int:
    """``attention_decode``'s S for a cache of ``length``: the keys its query sees, at most the
    window's (``features.longest_visible``: the window's left extent plus the query itself)."""
    left = _flash_window(dims)[0]
    return length if left < 0 else min(length, left + 1)


def _prefill(layer: Layer, batch: int, length: int, dtype: str) -> list[tuple[str, Problem]]:
    dims = layer.dims
    if layer.kind == "attention":
        return [("attention", _attention_problem(dims, batch, length, length, dtype))]
    if layer.kind == "short_conv":
        return [_conv(dims, batch, length, dtype)]
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
                                          "D": dims["D"], "S": _decode_keys(dims, length),
                                          "dtype": dtype})
                    for length in lengths]
        return [("attention", _attention_problem(dims, batch, 1, length, dtype))
                for length in lengths]
    if layer.kind == "short_conv":
        return [_conv_step(dims, batch, dtype)]
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
    if layer.kind == "short_conv":
        return dims["conv_dim"], 0
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
    config = as_config(config)  # a file is read once
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
    that entry's problem, the ``config`` it launches with (the kernel's default where there is
    no entry) and the profile file the entry came from (``origin``)."""
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
            # Entries the loader read have their defaults; one built by hand may not.
            scored = [(distance, entry) for entry in entries
                      if (distance := problem_distance(
                          spec, {**spec.problem_defaults, **entry.problem}, normal)) is not None]
            best = min(scored, key=lambda pair: pair[0], default=None)
            own = [entry for _, entry in scored
                   if spec.bucket(entry.problem) == spec.bucket(problem)]
            chosen = own[0] if own else None if best is None else best[1]
            rows.append({"kernel": kernel, "problem": dict(problem),
                         "status": "tuned" if own else "nearest" if best else "default",
                         "distance": None if best is None else best[0],
                         "entry": None if chosen is None else dict(chosen.problem),
                         "config": dict(spec.default_config if chosen is None
                                        else chosen.config),
                         "origin": None if chosen is None else chosen.origin})
    return rows
