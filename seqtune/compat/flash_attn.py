"""flash-attn 2.x's entry points (``flash_attn.flash_attn_interface``) on seqtune's kernels:
``flash_attn_func``, ``flash_attn_varlen_func``, their packed forms (``flash_attn_qkvpacked_func``,
``flash_attn_kvpacked_func``, ``flash_attn_varlen_qkvpacked_func``,
``flash_attn_varlen_kvpacked_func``) and ``flash_attn_with_kvcache``, with the same argument
order, defaults, layouts and return values.

Supported: softmax attention, causal (bottom-right aligned when the query and key lengths differ,
as flash-attn does), MQA/GQA, head dims 1..512 (also a value head dim that differs), float32,
float16 and bfloat16, sliding windows (``window_size``), softcapping (``softcap``), ALiBi
(``alibi_slopes``) and the log-sum-exp (``return_attn_probs=True`` returns ``(out,
softmax_lse, None)``: the probabilities themselves are not returned;
``return_softmax_lse`` in ``flash_attn_with_kvcache``), and in ``flash_attn_with_kvcache`` paged
(``block_table``) and left-padded (``cache_leftpad``) caches, and in ``flash_attn_varlen_func``
a paged key/value prefix (``block_table``, chunked prefill). What seqtune does not implement
(dropout, rotary embedding) raises a one-line NotImplementedError naming the argument.
"""
from __future__ import annotations

from typing import Any

import torch

from seqtune import checks
from seqtune.checks import (expect_float, expect_same_dtype, expect_shape, expect_tensor,
                            softcap_value, window_pair)
from seqtune.kernels import attention, attention_decode
from seqtune.kernels.attention.varlen import check_offsets

# attention_decode's head dims; other dims decode through the packed attention kernel.
DECODE_HEAD_DIMS = (16, 32, 64, 128, 256)
NO_WINDOW = (-1, -1)


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    return repr(value)


def _refuse(function: str, argument: str, value: Any, supported: str) -> None:
    raise NotImplementedError(f"{function}: {argument}={_describe(value)} is not supported by "
                              f"seqtune ({supported})")


def _check_common(function: str, *, dropout_p: float = 0.0, window_size: Any = NO_WINDOW,
                  softcap: float = 0.0) -> None:
    """Refuses dropout; checks window and softcap by flash-attn's argument names (``attention``
    takes them as ``window`` and ``softcap``)."""
    if dropout_p != 0.0:
        _refuse(function, "dropout_p", dropout_p, "only 0.0")
    window_pair(window_size, "window_size")
    softcap_value(softcap)


def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False,
                    window_size=(-1, -1), softcap=0.0, alibi_slopes=None, deterministic=False,
                    return_attn_probs=False):
    """flash-attn's ``flash_attn_func`` on ``seqtune.kernels.attention``.

    q ``[B, T, Hq, D]``, k ``[B, S, Hkv, D]``, v ``[B, S, Hkv, Dv]`` (``Hq % Hkv == 0``);
    ``causal`` masks bottom-right aligned. ``window_size=(left, right)`` (-1 unbounded):
    query ``i`` sees keys ``i + S - T - left .. i + S - T + right``; ``softcap > 0``: scores
    ``softcap * tanh(scale q.k / softcap)``; ``alibi_slopes`` float32 ``[Hq]`` or ``[B, Hq]``:
    ``-slope * |i + S - T - j|`` added to the scores (see ``seqtune.kernels.attention`` for
    the lse of causal ALiBi). Returns ``out [B, T, Hq, Dv]`` in q's dtype, differentiable in
    q, k and v; with ``return_attn_probs`` flash-attn's tuple ``(out, softmax_lse, None)``:
    ``softmax_lse [B, Hq, T]`` float32 (natural log, ``+inf`` for a row that sees no key, not
    differentiable) and None where flash-attn returns the probabilities (seqtune never forms
    them). ``deterministic`` is accepted: seqtune's forward and backward are always
    deterministic. Not supported (NotImplementedError): ``dropout_p != 0``.
    """
    _check_common("flash_attn_func", dropout_p=dropout_p, window_size=window_size,
                  softcap=softcap)
    out = attention(q, k, v, causal=bool(causal), scale=softmax_scale,
                    window=tuple(window_size), softcap=softcap, alibi_slopes=alibi_slopes,
                    return_lse=bool(return_attn_probs))
    return (*out, None) if return_attn_probs else out


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                           dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
                           softcap=0.0, alibi_slopes=None, deterministic=False,
                           return_attn_probs=False, block_table=None):
    """flash-attn's ``flash_attn_varlen_func`` on ``seqtune.kernels.attention`` with packed
    sequences.

    q ``[total_q, Hq, D]``, k ``[total_k, Hkv, D]``, v ``[total_k, Hkv, Dv]``;
    ``cu_seqlens_q``/``cu_seqlens_k`` int32 (or int64) ``[N + 1]`` offsets of the N sequences
    (empty sequences allowed); each sequence attends within itself, causal bottom-right aligned
    per sequence. ``max_seqlen_q``/``max_seqlen_k`` are flash-attn's launch sizes: seqtune reads
    the lengths from the offsets and does not need them. ``window_size``, ``softcap`` and
    ``alibi_slopes`` (``[Hq]`` or ``[N, Hq]``) as in ``flash_attn_func``, per sequence.
    Returns ``out [total_q, Hq, Dv]``, differentiable in q, k and v, or with
    ``return_attn_probs`` ``(out, softmax_lse [Hq, total_q], None)`` (flash-attn's varlen
    layout; lse and None as in ``flash_attn_func``); ``deterministic`` as in
    ``flash_attn_func``. Not supported (NotImplementedError): ``dropout_p != 0``.

    With ``block_table`` (int32 ``[N, max_blocks]``, flash-attn 2.6+) k and v are a paged cache
    ``[num_blocks, block_size, Hkv, D]`` / ``[.., Dv]``: sequence b's keys are its positions
    ``0 .. cu_seqlens_k[b + 1] - cu_seqlens_k[b] - 1``, position p at row ``p % block_size`` of
    block ``block_table[b, p // block_size]`` (unused entries and blocks are never read). q
    stays packed by ``cu_seqlens_q``, so a chunk of T_q < T_k queries attends to its whole
    prefix, causal bottom-right aligned (chunked prefill). seqtune takes any block size
    (flash-attn's kernel wants multiples of 256) and gathers the visible keys into a packed
    copy (sized by one host read of ``cu_seqlens_k[-1]``); gradients flow to the paged k, v.
    """
    function = "flash_attn_varlen_func"
    _check_common(function, dropout_p=dropout_p, window_size=window_size, softcap=softcap)
    expect_tensor("q", q, 3)
    if block_table is None:
        expect_tensor("k", k, 3)
        expect_tensor("v", v, 3)
    else:
        k, v = _paged_keys(q, k, v, cu_seqlens_k, block_table)
    out = attention(q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0), causal=bool(causal),
                    scale=softmax_scale, cu_seqlens=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k,
                    window=tuple(window_size), softcap=softcap, alibi_slopes=alibi_slopes,
                    return_lse=bool(return_attn_probs))
    if return_attn_probs:
        return out[0].squeeze(0), out[1], None
    return out.squeeze(0)


def _paged_keys(q, k, v, cu_seqlens_k, block_table):
    """The paged cache's visible keys and values packed by ``cu_seqlens_k`` as
    ``[total_k, Hkv, *]``: the kvcache path's gather (``_gather_keys``)."""
    expect_tensor("k", k, 4)
    expect_tensor("v", v, 4)
    num_blocks, block_size, kv_heads = k.shape[:3]
    expect_shape("v", v, (num_blocks, block_size, kv_heads, v.shape[3]))
    expect_tensor("cu_seqlens_k", cu_seqlens_k, 1)
    # The total sizes the gather, so it is read even on a GPU; [-1:].sum() is 0 when empty,
    # leaving check_offsets to name an empty cu_seqlens_k.
    total = int(cu_seqlens_k[-1:].sum())
    check_offsets("cu_seqlens_k", cu_seqlens_k, total, "its last entry", q.device)
    sequences = cu_seqlens_k.numel() - 1
    capacity = _paged_capacity(block_table, None, sequences, block_size)
    lengths = cu_seqlens_k.diff().long()
    if checks.host_reads_allowed(cu_seqlens_k):  # a GPU's gather asserts on out-of-range indices
        _check_pages(lengths, block_table, block_size, capacity, num_blocks)
    rows = torch.arange(sequences, device=q.device)
    return _gather_keys(k, v, rows, torch.zeros_like(rows), lengths, total, block_table)


def _check_pages(lengths, block_table, block_size, capacity, num_blocks):
    """One-line ValueErrors for a sequence longer than its table row, or a block id out of
    range among the entries that hold keys (the others may be padding)."""
    longest = int(lengths.max())
    if longest > capacity:
        raise ValueError(f"cu_seqlens_k has a sequence of {longest} keys but block_table holds "
                         f"{block_table.shape[1]} blocks of {block_size} = {capacity} positions")
    holds_keys = (torch.arange(block_table.shape[1]) * block_size)[None, :] < lengths[:, None]
    used = block_table.cpu()[holds_keys]
    if used.numel() and (int(used.min()) < 0 or int(used.max()) >= num_blocks):
        raise ValueError(f"block_table must name blocks in [0, {num_blocks}) where a sequence has "
                         f"keys, got values in [{int(used.min())}, {int(used.max())}]")


def _unpack(function: str, name: str, packed: Any, ndim: int, parts: int) -> tuple:
    """The ``parts`` views of a packed tensor along its third-last axis (q, k, v or k, v)."""
    expect_tensor(name, packed, ndim)
    if packed.shape[-3] != parts:
        raise ValueError(f"{function}: {name} must have {parts} at dim {ndim - 3} "
                         f"({'q, k, v' if parts == 3 else 'k, v'}), got shape "
                         f"{tuple(packed.shape)}")
    return packed.unbind(-3)


def flash_attn_qkvpacked_func(qkv, dropout_p=0.0, softmax_scale=None, causal=False,
                              window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
                              deterministic=False, return_attn_probs=False):
    """flash-attn's ``flash_attn_qkvpacked_func``: ``flash_attn_func`` on qkv
    ``[B, T, 3, H, D]`` (views of it, no copy); returns ``out [B, T, H, D]``, differentiable in
    qkv; ``return_attn_probs`` and the other arguments as ``flash_attn_func``."""
    q, k, v = _unpack("flash_attn_qkvpacked_func", "qkv", qkv, 5, 3)
    return flash_attn_func(q, k, v, dropout_p, softmax_scale, causal, window_size, softcap,
                           alibi_slopes, deterministic, return_attn_probs)


def flash_attn_kvpacked_func(q, kv, dropout_p=0.0, softmax_scale=None, causal=False,
                             window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
                             deterministic=False, return_attn_probs=False):
    """flash-attn's ``flash_attn_kvpacked_func``: ``flash_attn_func`` on q ``[B, T, Hq, D]`` and
    kv ``[B, S, 2, Hkv, D]`` (``Hq % Hkv == 0``); returns ``out [B, T, Hq, D]``, differentiable
    in q and kv; ``return_attn_probs`` and the other arguments as ``flash_attn_func``."""
    k, v = _unpack("flash_attn_kvpacked_func", "kv", kv, 5, 2)
    return flash_attn_func(q, k, v, dropout_p, softmax_scale, causal, window_size, softcap,
                           alibi_slopes, deterministic, return_attn_probs)


def flash_attn_varlen_qkvpacked_func(qkv, cu_seqlens, max_seqlen, dropout_p=0.0,
                                     softmax_scale=None, causal=False, window_size=(-1, -1),
                                     softcap=0.0, alibi_slopes=None, deterministic=False,
                                     return_attn_probs=False):
    """flash-attn's ``flash_attn_varlen_qkvpacked_func``: ``flash_attn_varlen_func`` on qkv
    ``[total, 3, H, D]`` with one ``cu_seqlens`` ``[N + 1]`` for queries and keys; returns
    ``out [total, H, D]``, differentiable in qkv; ``return_attn_probs`` and the other arguments
    as ``flash_attn_varlen_func``."""
    q, k, v = _unpack("flash_attn_varlen_qkvpacked_func", "qkv", qkv, 4, 3)
    return flash_attn_varlen_func(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen,
                                  dropout_p, softmax_scale, causal, window_size, softcap,
                                  alibi_slopes, deterministic, return_attn_probs)


def flash_attn_varlen_kvpacked_func(q, kv, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                                    max_seqlen_k, dropout_p=0.0, softmax_scale=None,
                                    causal=False, window_size=(-1, -1), softcap=0.0,
                                    alibi_slopes=None, deterministic=False,
                                    return_attn_probs=False):
    """flash-attn's ``flash_attn_varlen_kvpacked_func``: ``flash_attn_varlen_func`` on q
    ``[total_q, Hq, D]`` and kv ``[total_k, 2, Hkv, D]``; returns ``out [total_q, Hq, D]``,
    differentiable in q and kv; ``return_attn_probs`` and the other arguments as
    ``flash_attn_varlen_func``."""
    k, v = _unpack("flash_attn_varlen_kvpacked_func", "kv", kv, 4, 2)
    return flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                                  max_seqlen_k, dropout_p, softmax_scale, causal, window_size,
                                  softcap, alibi_slopes, deterministic, return_attn_probs)


def flash_attn_with_kvcache(q, k_cache, v_cache, k=None, v=None, rotary_cos=None,
                            rotary_sin=None, cache_seqlens=None, cache_batch_idx=None,
                            cache_leftpad=None, block_table=None, softmax_scale=None,
                            causal=False, window_size=(-1, -1), softcap=0.0,
                            rotary_interleaved=True, alibi_slopes=None, num_splits=0,
                            return_softmax_lse=False):
    """flash-attn's ``flash_attn_with_kvcache``: attention of new queries over a KV cache, on
    ``seqtune.kernels.attention_decode`` (one query per sequence, head dims 16..256 in powers of
    two) or else on the packed ``attention`` kernel.

    q ``[B, Tq, Hq, D]``; k_cache, v_cache ``[B_cache, S_max, Hkv, D]``, or with ``block_table``
    (int32 ``[B, max_blocks]``) a paged cache ``[num_blocks, block_size, Hkv, D]`` whose
    position p of sequence b is row ``p % block_size`` of block ``block_table[b, p //
    block_size]`` (block sizes 16..256 for one query; any for several); ``cache_seqlens`` an int
    or int32/int64 ``[B]`` (None: every cache row is full); ``cache_batch_idx`` int ``[B]``: the
    cache row of each batch element (else row b; not with ``block_table``, as in flash-attn);
    ``cache_leftpad`` int32 ``[B]``: sequence b's keys start at that cache position. When
    ``k``/``v`` ``[B, T_new, Hkv, D]`` are given they are written into the cache in place at
    positions ``cache_seqlens[b]`` onwards, into the blocks ``block_table`` names
    (``cache_seqlens`` itself is not advanced, as in flash-attn) and attended to. Causal masks
    bottom-right aligned. ``num_splits`` is a request: the tuned config of ``attention_decode``
    picks the split count. ``window_size``, ``softcap``, ``alibi_slopes`` and
    ``return_softmax_lse`` as flash-attn (see ``attention_decode`` and ``attention``); the
    log-sum-exp is ``[B, Hq, Tq]`` float32, ``+inf`` where no key is visible. Returns
    ``out [B, Tq, Hq, D]`` in q's dtype, or ``(out, softmax_lse)`` (no backward, as in
    flash-attn). Not supported (NotImplementedError): ``rotary_cos``/``rotary_sin``.
    """
    function = "flash_attn_with_kvcache"
    for name, value in (("rotary_cos", rotary_cos), ("rotary_sin", rotary_sin)):
        if value is not None:
            _refuse(function, name, value, "only None")
    if isinstance(num_splits, bool) or not isinstance(num_splits, int) or num_splits < 0:
        raise ValueError(f"num_splits must be an int >= 0, got {num_splits!r}")
    rows, lengths = _cache_rows(q, k_cache, v_cache, cache_seqlens, cache_batch_idx, block_table)
    if (k is None) != (v is None):
        raise ValueError("k and v must be given together (new keys and values to append)")
    if k is not None:
        lengths = _append(k_cache, v_cache, k, v, rows, lengths, block_table)
    features = dict(window=tuple(window_size), softcap=softcap, alibi_slopes=alibi_slopes)
    if not _decodes(q, v_cache):
        starts = _left_pads(cache_leftpad, lengths)
        out, lse = _attend_packed(q, k_cache, v_cache, rows, lengths, starts, softmax_scale,
                                  bool(causal), block_table, features, return_softmax_lse)
    else:
        features.update(block_table=block_table, cache_leftpad=cache_leftpad)
        out, lse = _attend_decode(q, k_cache, v_cache, rows, lengths, softmax_scale,
                                  cache_batch_idx is None, features)
    return (out, lse) if return_softmax_lse else out


def _decodes(q, v_cache) -> bool:
    """Whether the call runs on attention_decode: one query per sequence, a head dim it takes."""
    head_dim = q.shape[3]
    return q.shape[1] == 1 and head_dim in DECODE_HEAD_DIMS and v_cache.shape[3] == head_dim


def _cache_rows(q, k_cache, v_cache, cache_seqlens, cache_batch_idx, block_table):
    """(cache row of each batch element, cached length of each) as int64 [B] on q's device."""
    expect_tensor("q", q, 4)
    expect_tensor("k_cache", k_cache, 4)
    expect_tensor("v_cache", v_cache, 4)
    batch, device = q.shape[0], q.device
    cache_rows, capacity, kv_heads = k_cache.shape[:3]
    expect_shape("v_cache", v_cache, (cache_rows, capacity, kv_heads, v_cache.shape[3]))
    if block_table is not None:
        capacity = _paged_capacity(block_table, cache_batch_idx, batch, capacity)
        rows = torch.arange(batch, device=device)
    elif cache_batch_idx is None:
        if cache_rows < batch:
            raise ValueError(f"k_cache has {cache_rows} rows for a batch of {batch}: pass "
                             f"cache_batch_idx or a cache with one row per batch element")
        rows = torch.arange(batch, device=device)
    else:
        expect_tensor("cache_batch_idx", cache_batch_idx, 1)
        expect_float("cache_batch_idx", cache_batch_idx, (torch.int32, torch.int64))
        expect_shape("cache_batch_idx", cache_batch_idx, (batch,))
        rows = cache_batch_idx.to(device=device, dtype=torch.int64)
        if batch and (int(rows.min()) < 0 or int(rows.max()) >= cache_rows):
            raise ValueError(f"cache_batch_idx must lie in [0, {cache_rows}), got values in "
                             f"[{int(rows.min())}, {int(rows.max())}]")
    if cache_seqlens is None:
        lengths = torch.full((batch,), capacity, dtype=torch.int64, device=device)
    elif isinstance(cache_seqlens, int) and not isinstance(cache_seqlens, bool):
        lengths = torch.full((batch,), cache_seqlens, dtype=torch.int64, device=device)
    else:
        expect_tensor("cache_seqlens", cache_seqlens, 1)
        expect_float("cache_seqlens", cache_seqlens, (torch.int32, torch.int64))
        expect_shape("cache_seqlens", cache_seqlens, (batch,))
        lengths = cache_seqlens.to(device=device, dtype=torch.int64)
    if batch and (int(lengths.min()) < 0 or int(lengths.max()) > capacity):
        raise ValueError(f"cache_seqlens must lie in [0, {capacity}], got values in "
                         f"[{int(lengths.min())}, {int(lengths.max())}]")
    return rows, lengths


def _paged_capacity(block_table, cache_batch_idx, batch, block_size) -> int:
    """The positions a paged cache holds per sequence, ``max_blocks * block_size``."""
    if cache_batch_idx is not None:
        raise ValueError("cache_batch_idx cannot be combined with block_table (a paged cache "
                         "has no rows to pick), as in flash-attn")
    expect_tensor("block_table", block_table, 2)
    expect_float("block_table", block_table, (torch.int32,))
    expect_shape("block_table", block_table, (batch, block_table.shape[1]))
    return block_table.shape[1] * block_size


def _left_pads(cache_leftpad, lengths):
    """The first visible position of each sequence as int64 [B] (0 without left pads)."""
    if cache_leftpad is None:
        return torch.zeros_like(lengths)
    expect_tensor("cache_leftpad", cache_leftpad, 1)
    expect_float("cache_leftpad", cache_leftpad, (torch.int32,))
    expect_shape("cache_leftpad", cache_leftpad, tuple(lengths.shape))
    starts = cache_leftpad.to(device=lengths.device, dtype=torch.int64)
    if bool(((starts < 0) | (starts > lengths)).any()):
        raise ValueError(f"cache_leftpad must lie in [0, cache_seqlens], got "
                         f"{starts.tolist()} for lengths {lengths.tolist()}")
    return starts


def _slots(k_cache, rows, positions, block_table):
    """The (cache row or block, position in it) index pair of each position of the sequences
    ``rows`` (broadcast against ``positions``); a paged cache's rows are the batch elements."""
    if block_table is None:
        return rows, positions
    block_size = k_cache.shape[1]
    blocks = block_table.to(device=positions.device, dtype=torch.int64)[rows,
                                                                         positions // block_size]
    return blocks, positions % block_size


def _gather_keys(k_cache, v_cache, rows, starts, counts, total, block_table):
    """Cache positions ``[starts[b], starts[b] + counts[b])`` of each sequence b (cache row, or
    block-table row, ``rows[b]``) laid end to end: ``(keys, values) [total, Hkv, *]``, a
    differentiable gather (``total`` is ``counts.sum()``, known to the caller)."""
    row_of_key = torch.repeat_interleave(rows, counts, output_size=total)
    first_key = torch.cumsum(counts, 0) - counts
    position_of_key = (torch.arange(total, device=rows.device)
                       + torch.repeat_interleave(starts - first_key, counts, output_size=total))
    slots = _slots(k_cache, row_of_key, position_of_key, block_table)
    return k_cache[slots], v_cache[slots]


def _append(k_cache, v_cache, k, v, rows, lengths, block_table):
    """Writes k, v [B, T_new, Hkv, *] into the cache after their cached lengths (in place, into
    the blocks ``block_table`` names for a paged cache); returns the new lengths."""
    expect_tensor("k", k, 4)
    expect_tensor("v", v, 4)
    batch, new = k.shape[:2]
    expect_shape("k", k, (rows.numel(), new, *k_cache.shape[2:]))
    expect_shape("v", v, (rows.numel(), new, *v_cache.shape[2:]))
    capacity = k_cache.shape[1] * (1 if block_table is None else block_table.shape[1])
    if batch and int(lengths.max()) + new > capacity:
        raise ValueError(f"appending {new} tokens overflows the cache: cache_seqlens + "
                         f"{new} > S_max={capacity}")
    expect_same_dtype({"k": k, "v": v, "k_cache": k_cache, "v_cache": v_cache})
    positions = lengths[:, None] + torch.arange(new, device=lengths.device)
    slots = _slots(k_cache, rows[:, None], positions, block_table)
    k_cache[slots] = k
    v_cache[slots] = v
    return lengths + new


def _attend_decode(q, k_cache, v_cache, rows, lengths, scale, identity_rows, features):
    """One query per sequence on attention_decode: ``(out [B, 1, Hq, D], lse [B, Hq, 1])``."""
    batch = q.shape[0]
    if features["block_table"] is not None:
        keys, values = k_cache, v_cache
    elif identity_rows:
        keys, values = k_cache[:batch], v_cache[:batch]
    else:  # only the longest prefix of the selected rows is copied
        longest = int(lengths.max()) if batch else 0
        keys = k_cache[:, :longest].index_select(0, rows)
        values = v_cache[:, :longest].index_select(0, rows)
    out, lse = attention_decode(q[:, 0], keys, values, lengths.to(torch.int32), scale=scale,
                                return_lse=True, **features)
    return out.unsqueeze(1), lse.unsqueeze(-1)


def _attend_packed(q, k_cache, v_cache, rows, lengths, starts, scale, causal, block_table,
                   features, return_lse):
    """Each batch element's queries over its visible cache positions ``[starts, lengths)``, as
    one packed attention call: they are gathered into [1, sum(lengths - starts), Hkv, *] (a copy
    of the visible keys). ``(out [B, Tq, Hq, Dv], lse [B, Hq, Tq] or None)``."""
    batch, queries = q.shape[:2]
    counts = lengths - starts
    total = int(counts.sum())
    keys, values = (t.unsqueeze(0) for t in _gather_keys(k_cache, v_cache, rows, starts, counts,
                                                         total, block_table))
    offsets = torch.zeros(batch + 1, dtype=torch.int64, device=q.device)
    offsets[1:] = torch.cumsum(counts, 0)
    query_offsets = torch.arange(batch + 1, device=q.device) * queries
    result = attention(q.reshape(1, batch * queries, *q.shape[2:]), keys, values, causal=causal,
                       scale=scale, cu_seqlens=query_offsets, cu_seqlens_k=offsets,
                       return_lse=return_lse, **features)
    out, lse = result if return_lse else (result, None)
    if lse is not None:  # packed [Hq, B * Tq] -> flash-attn's [B, Hq, Tq]
        lse = lse.reshape(lse.shape[0], batch, queries).transpose(0, 1)
    return out.reshape(batch, queries, *out.shape[2:]), lse
