"""The functions a patched transformers layer calls instead of its PyTorch fallbacks, by the name
transformers' hub-kernel mapping gives them (``use_kernel_func_from_hub_with_fallback(name,
package)``): the same contract transformers relies on when flash-linear-attention, mamba_ssm or
causal-conv1d is installed, here on seqtune's compat layers.

As transformers does with the original packages, each call passes on only the keywords the
seqtune function names (a layer forwards its whole ``**kwargs`` to these functions).
"""
from __future__ import annotations

import functools
import inspect
from collections.abc import Callable

import torch

from seqtune.compat import causal_conv1d as conv_compat
from seqtune.compat import fla, mamba_ssm
from seqtune.kernels import causal_conv1d_step
from seqtune.kernels.causal_conv1d.op import WIDTHS
from seqtune.loader import warn_once


def _named_keywords_only(function: Callable) -> Callable:
    """``function`` called with only the keywords its signature names (transformers filters a
    hub implementation's keywords the same way)."""
    parameters = inspect.signature(function).parameters
    named = {name for name, parameter in parameters.items()
             if parameter.kind not in (inspect.Parameter.VAR_POSITIONAL,
                                       inspect.Parameter.VAR_KEYWORD)}

    @functools.wraps(function)
    def call(*args, **kwargs):
        return function(*args, **{key: value for key, value in kwargs.items() if key in named})

    return call


def causal_conv1d_update(x, conv_state, weight, bias=None, activation=None, cache_seqlens=None,
                         conv_state_indices=None):
    """causal-conv1d's ``causal_conv1d_update`` (``seqtune.compat.causal_conv1d``), except that
    one token per row against a state longer than W - 1 (transformers keeps W columns) runs the
    ``causal_conv1d_step`` kernel on the state's last W - 1 columns, a view updated in place,
    after the older columns have been shifted left by one in PyTorch: the state ends as
    causal-conv1d leaves it, at one kernel launch."""
    _check_width(weight)
    width = weight.shape[-1] if isinstance(weight, torch.Tensor) and weight.dim() == 2 else None
    one_token = isinstance(x, torch.Tensor) and x.dim() == 3 and x.shape[2] == 1
    if (width is None or not one_token or cache_seqlens is not None
            or conv_state_indices is not None or not isinstance(conv_state, torch.Tensor)
            or conv_state.dim() != 3 or conv_state.shape[2] <= width - 1):
        return conv_compat.causal_conv1d_update(x, conv_state, weight, bias, activation,
                                                cache_seqlens, conv_state_indices)
    if activation not in conv_compat.ACTIVATIONS:
        raise NotImplementedError(f"activation must be None, 'silu' or 'swish', got "
                                  f"{activation!r}")
    older = conv_state.shape[2] - (width - 1)
    shifted = conv_state[:, :, 1:older + 1].clone()
    y = causal_conv1d_step(x[:, :, 0], weight, bias, activation=activation,
                           state=conv_state[:, :, older:])
    conv_state[:, :, :older] = shifted
    return y[:, :, None]


def with_fallback(function: Callable, own: Callable, hub: str, layer: str) -> Callable:
    """``function`` in place of a layer's hub function ``hub``; a call with an argument seqtune
    refuses (its NotImplementedError) runs the layer's ``own`` function instead, with one
    warning naming the function and the argument, so a patched model runs wherever it ran."""

    @functools.wraps(function)
    def call(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except NotImplementedError as exc:
            warn_once(f"seqtune: {layer} calls {hub} with what seqtune refuses ({exc}); such "
                      f"calls run the layer's own implementation")
            return own(*args, **kwargs)

    return call


def _check_width(weight) -> None:
    """NotImplementedError (the layer then runs its own convolution) for a width seqtune's
    causal_conv1d does not run."""
    if isinstance(weight, torch.Tensor) and weight.dim() == 2 and weight.shape[1] not in WIDTHS:
        raise NotImplementedError(f"weight of width {weight.shape[1]} (seqtune's causal_conv1d "
                                  f"runs {min(WIDTHS)}..{max(WIDTHS)})")


@functools.wraps(conv_compat.causal_conv1d_fn)
def causal_conv1d_fn(x, weight, *args, **kwargs):
    """causal-conv1d's ``causal_conv1d_fn`` (``seqtune.compat.causal_conv1d``) for the widths
    seqtune runs."""
    _check_width(weight)
    return conv_compat.causal_conv1d_fn(x, weight, *args, **kwargs)


def _no_fused_kernel(*args, **kwargs):
    """mamba_ssm's fused training paths (``mamba_inner_fn``, ``mamba_split_conv1d_scan_combined``)
    have no seqtune counterpart: returning None is how transformers' fallbacks say so, and the
    layer then runs its unfused path, whose convolution and scan are seqtune's."""


HUB_FUNCTIONS: dict[str, Callable] = {
    "chunk_gated_delta_rule": _named_keywords_only(fla.chunk_gated_delta_rule),
    "fused_recurrent_gated_delta_rule": _named_keywords_only(fla.fused_recurrent_gated_delta_rule),
    "chunk_kda": _named_keywords_only(fla.chunk_kda),
    "fused_recurrent_kda": _named_keywords_only(fla.fused_recurrent_kda),
    "causal_conv1d_fn": _named_keywords_only(causal_conv1d_fn),
    "causal_conv1d_update": _named_keywords_only(causal_conv1d_update),
    "mamba_chunk_scan_combined": _named_keywords_only(mamba_ssm.mamba_chunk_scan_combined),
    "selective_state_update": _named_keywords_only(mamba_ssm.selective_state_update),
    "selective_scan_fn": _named_keywords_only(mamba_ssm.selective_scan_fn),
    "mamba_inner_fn": _no_fused_kernel,
    "mamba_split_conv1d_scan_combined": _no_fused_kernel,
}
