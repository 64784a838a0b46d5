"""seqtune's attention as a transformers attention function (what ``AttentionInterface`` maps an
implementation name to): ``(module, query, key, value, attention_mask, **kwargs) -> (output,
None)`` with query ``[B, Hq, T, D]``, key ``[B, Hkv, S, D]``, value ``[B, Hkv, S, Dv]`` and the
output ``[B, T, Hq, Dv]``.

Its mask is flash-attention's (``flash_attention_mask``): None when no token is padding, else the
2-D ``[B, S]`` padding mask. So:

- no mask, one query per row and a head dim ``attention_decode`` takes: ``attention_decode``
  over the whole cache (a decoding step);
- no mask otherwise: ``attention`` (causal bottom-right aligned when the module is causal, as
  transformers' masks are when the cache holds earlier tokens), packed by ``cu_seq_lens_q`` /
  ``cu_seq_lens_k`` when the caller gives them, or by ``position_ids`` that restart inside a
  row of a cache-less forward (packed training batches, as transformers' own masks detect);
- a padding mask: the real tokens of each row packed into sequences (``cu_seqlens``,
  ``cu_seqlens_k``), padded query rows output zeros (as flash-attention's).

A layer's ``sliding_window`` is flash-attention's window ``(sliding_window - 1, sliding_window -
1)``, as transformers' flash-attention path passes it, and ``softcap`` its logit soft-capping.
Unsupported arguments (dropout, attention sinks, 4-D masks) raise a one-line
NotImplementedError naming them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from seqtune.kernels import attention, attention_decode
from seqtune.kernels.attention_decode.op import HEAD_DIMS as DECODE_HEAD_DIMS

REFUSED_WHEN_SET = ("s_aux", "sinks")


def seqtune_attention(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, dropout: float = 0.0,
                      scaling: float | None = None, is_causal: bool | None = None,
                      **kwargs) -> tuple[torch.Tensor, None]:
    """transformers' attention-function contract on ``seqtune.kernels.attention`` (see the
    module docstring)."""
    _refuse_unsupported(dropout, attention_mask, kwargs)
    causal = bool(getattr(module, "is_causal", True) if is_causal is None else is_causal)
    q, k, v = (t.transpose(1, 2) for t in (query, key, value))  # [B, T|S, H, D] views
    options = _options(causal, scaling, kwargs)
    if attention_mask is not None:
        return _padded(q, k, v, attention_mask, options), None
    packed = _packing(kwargs, q.shape[0], q.shape[1], k.shape[1])
    if isinstance(packed, torch.Tensor):
        return _packed_on_device(q, k, v, packed, options), None
    if packed is not None:
        return _packed(q, k, v, packed, options), None
    if q.shape[1] == 1 and q.shape[3] == v.shape[3] and q.shape[3] in DECODE_HEAD_DIMS:
        lengths = torch.full((q.shape[0],), k.shape[1], dtype=torch.int32, device=q.device)
        decode_options = {name: value for name, value in options.items() if name != "causal"}
        return attention_decode(q[:, 0], k, v, lengths, **decode_options)[:, None], None
    return attention(q, k, v, **options), None


def _options(causal: bool, scaling: float | None, kwargs) -> dict:
    """``attention``'s keyword arguments for this call: the layer's window and soft cap."""
    window = kwargs.get("sliding_window")
    return {"causal": causal, "scale": scaling, "softcap": float(kwargs.get("softcap") or 0.0),
            "window": (-1, -1) if window is None else (window - 1, window - 1)}


def _refuse_unsupported(dropout, attention_mask, kwargs) -> None:
    if dropout:
        raise NotImplementedError(f"seqtune attention: dropout={dropout!r} is not supported "
                                  f"(attention dropout in training)")
    for name in REFUSED_WHEN_SET:
        if kwargs.get(name) is not None:
            raise NotImplementedError(f"seqtune attention: {name}={kwargs[name]!r} is not "
                                      f"supported")
    if attention_mask is not None and attention_mask.dim() != 2:
        raise NotImplementedError(f"seqtune attention: a {attention_mask.dim()}-D "
                                  f"attention_mask is not supported (only 2-D padding masks)")


def _offsets(lengths: torch.Tensor) -> torch.Tensor:
    return F.pad(lengths.cumsum(0), (1, 0)).to(torch.int32)


def _padded(q, k, v, mask: torch.Tensor, options: dict) -> torch.Tensor:
    """Each row's real tokens as one packed sequence; zeros at padded query positions."""
    batch, length = q.shape[:2]
    if mask.shape != (batch, k.shape[1]):
        raise ValueError(f"seqtune attention: attention_mask has shape {tuple(mask.shape)}, "
                         f"expected (batch, keys) = {(batch, k.shape[1])}")
    keys = mask.to(torch.bool)
    queries = keys[:, k.shape[1] - length:]
    out = attention(q[queries][None], k[keys][None], v[keys][None], **options,
                    cu_seqlens=_offsets(queries.sum(1)), cu_seqlens_k=_offsets(keys.sum(1)))
    full = q.new_zeros(batch, length, q.shape[2], v.shape[3])
    full[queries] = out[0]
    return full


def _packing(kwargs, batch: int, length: int, keys: int):
    """``(cu_seqlens, cu_seqlens_k)`` of a packed call, or None: the caller's ``cu_seq_lens_q``
    and ``cu_seq_lens_k``, else sequence starts where ``position_ids`` do not rise by one in a
    cache-less call (T == S), every row starting one."""
    given = kwargs.get("cu_seq_lens_q")
    if given is not None:
        return given, kwargs.get("cu_seq_lens_k", given)
    positions = kwargs.get("position_ids")
    if positions is None or length != keys or length < 2 or positions.dim() != 2:
        return None
    positions = positions.expand(batch, -1)
    starts = torch.ones_like(positions, dtype=torch.bool)
    starts[:, 1:] = positions[:, 1:] - positions[:, :-1] != 1
    if torch.compiler.is_compiling():
        return starts  # decided on the device (see _packed_on_device): no host read
    if not bool(starts[:, 1:].any()):
        return None
    begins = starts.flatten().nonzero().flatten()
    offsets = torch.cat([begins, begins.new_tensor([batch * length])]).to(torch.int32)
    return offsets, offsets


def _packed_on_device(q, k, v, starts: torch.Tensor, options: dict) -> torch.Tensor:
    """Under torch.compile: whether ``position_ids`` pack several sequences is a value, so the
    choice is a ``torch.cond`` and the packed branch's offsets have a size known from shapes
    (``B * T + 1``: the sequence starts, then empty sequences up to the end)."""
    total = starts.numel()
    index = torch.arange(total, device=starts.device)
    begins = torch.where(starts.flatten(), index, total).sort().values
    offsets = torch.cat([begins, begins.new_full((1,), total)]).to(torch.int32)

    def packed(q, k, v, offsets):
        return _packed(q, k, v, (offsets, offsets), options)

    def whole(q, k, v, offsets):
        return attention(q, k, v, **options)

    return torch.cond(starts[:, 1:].any(), packed, whole, (q, k, v, offsets))


def _packed(q, k, v, offsets, options: dict) -> torch.Tensor:
    """Rows laid end to end and split at ``offsets``; the output back in [B, T, Hq, Dv]."""
    batch, length = q.shape[:2]
    cu_q, cu_k = offsets
    flat = [t.reshape(1, -1, *t.shape[2:]) for t in (q, k, v)]
    out = attention(*flat, **options, cu_seqlens=cu_q, cu_seqlens_k=cu_k)
    return out.reshape(batch, length, *out.shape[2:])
