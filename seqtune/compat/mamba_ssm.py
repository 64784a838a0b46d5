"""mamba_ssm 2.3's entry points on seqtune's kernels: ``mamba_chunk_scan_combined`` (Mamba-2's
SSD, on ``seqtune.kernels.ssd``), ``selective_state_update`` (one decode step, Mamba-1 and
Mamba-2 layouts, on ``selective_scan_step`` / ``ssd_step``) and ``selective_scan_fn``
(Mamba-1, on ``seqtune.kernels.selective_scan``), with mamba_ssm's argument order, defaults,
layouts (states ``[b, h, p, n]`` / ``[b, d, n]``), dtypes and return values. Unsupported
arguments raise a one-line NotImplementedError naming them.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from seqtune.checks import (expect_float, expect_shape, expect_state_indices, expect_step_tensors,
                            expect_tensor)
from seqtune.compat._pool import gather_rows, pad_slots, write_rows
from seqtune.kernels import selective_scan, selective_scan_step, ssd, ssd_step

NO_LIMIT = (0.0, float("inf"))
INDEX_DTYPES = (torch.int32, torch.int64)


def _refuse(function: str, argument: str, value: Any, supported: str) -> None:
    shown = f"a tensor of shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else (
        repr(value))
    raise NotImplementedError(f"{function}: {argument}={shown} is not supported by seqtune "
                              f"({supported})")


def mamba_chunk_scan_combined(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None,
                              initial_states=None, seq_idx=None, cu_seqlens=None,
                              dt_softplus=False, dt_limit=(0.0, float("inf")),
                              return_final_states=False, return_varlen_states=False):
    """mamba_ssm's ``mamba_chunk_scan_combined`` (Mamba-2 SSD) on ``seqtune.kernels.ssd``.

    x ``[b, T, h, p]``; dt ``[b, T, h]``; A ``[h]``; B, C ``[b, T, g, n]`` (h % g == 0); D
    ``[h]`` or ``[h, p]``; z ``[b, T, h, p]`` (``out *= silu(z)``); dt_bias ``[h]``;
    initial_states ``[b, h, p, n]``; ``dt <- clamp(softplus(dt + dt_bias), *dt_limit)``.
    ``chunk_size`` is a request only: the tuned config of ``ssd`` decides the chunk.

    Sequence boundaries: the state restarts wherever ``seq_idx`` (int ``[b, T]``, non-decreasing
    per row) changes; a row's initial state seeds the sequence holding its first token, the
    others start from zeros. ``cu_seqlens`` (``[N + 1]``, b = 1) is read, as in mamba_ssm, only
    with ``return_varlen_states``: it must describe the same sequences as ``seq_idx`` (a single
    one without ``seq_idx``), empty sequences allowed (their state is zeros).

    Returns ``out [b, T, h, p]`` in x's dtype; with ``return_final_states`` also the state after
    each row's last token ``[b, h, p, n]`` float32; with ``return_varlen_states`` also the state
    after each sequence ``[N, h, p, n]`` in C's dtype, in mamba_ssm's order ``(out,
    final_states, varlen_states)``. States are returned as transposed views of seqtune's
    ``[*, h, n, p]``. D ``[h, p]`` and z are applied in PyTorch after the kernel.
    """
    function = "mamba_chunk_scan_combined"
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"{function}: chunk_size must be a positive int, got {chunk_size!r}")
    expect_tensor("x", x, 4)
    batch, length, heads, headdim = x.shape
    # the step and its bias are read here before ssd checks them (dt_limit): checked first
    expect_tensor("dt", dt, 3)
    expect_shape("dt", dt, (batch, length, heads))
    if dt_bias is not None:
        expect_tensor("dt_bias", dt_bias, 1)
        expect_shape("dt_bias", dt_bias, (heads,))
    dt, dt_bias, dt_softplus = _limited_steps(dt, dt_bias, dt_softplus, dt_limit)
    per_head_D = D is None or (isinstance(D, torch.Tensor) and D.dim() == 1)
    if not per_head_D:
        expect_tensor("D", D, 2)
        expect_shape("D", D, (heads, headdim))
    bounds = _sequence_bounds(seq_idx, cu_seqlens, return_varlen_states, batch, length)
    h0 = None
    if initial_states is not None:
        expect_tensor("B", B, 4)
        expect_tensor("initial_states", initial_states, 4)
        expect_shape("initial_states", initial_states, (batch, heads, headdim, B.shape[3]))
        h0 = initial_states.transpose(-1, -2)
    kernel_D = D if per_head_D else None
    if bounds is None:
        out, final = ssd(x, dt, A, B, C, D=kernel_D, dt_bias=dt_bias, dt_softplus=dt_softplus,
                         initial_state=h0, output_final_state=return_final_states)
        varlen = None
    else:
        out, final, varlen = _packed_ssd(x, dt, A, B, C, kernel_D, dt_bias, dt_softplus, h0,
                                         bounds)
    out = _skip_and_gate(out, x, None if per_head_D else D, z)
    results = [out]
    if return_final_states:
        results.append(final.transpose(-1, -2))
    if return_varlen_states:
        results.append(varlen.transpose(-1, -2).to(C.dtype))
    return results[0] if len(results) == 1 else tuple(results)


def _limited_steps(dt, dt_bias, dt_softplus, dt_limit):
    """(dt, dt_bias, dt_softplus) for ssd: unchanged without a limit, else the clamped step
    computed here in float32 (ssd's own bias and softplus then off)."""
    limit = tuple(float(x) for x in dt_limit) if isinstance(dt_limit, (tuple, list)) else None
    if limit is None or len(limit) != 2 or limit[0] > limit[1]:
        raise ValueError(f"dt_limit must be a (low, high) pair with low <= high, got {dt_limit!r}")
    if limit == NO_LIMIT:
        return dt, dt_bias, dt_softplus
    step = dt.float() if dt_bias is None else dt.float() + dt_bias.float()
    step = F.softplus(step) if dt_softplus else step
    return step.clamp(min=limit[0], max=limit[1]), None, False


def _sequence_bounds(seq_idx, cu_seqlens, return_varlen_states, batch, length):
    """Sequence offsets over the flattened ``batch * length`` tokens, or None when every row is
    one sequence (and no per-sequence states are asked for)."""
    changes = None
    if seq_idx is not None:
        expect_tensor("seq_idx", seq_idx, 2)
        expect_float("seq_idx", seq_idx, INDEX_DTYPES)
        expect_shape("seq_idx", seq_idx, (batch, length))
        steps = seq_idx[:, 1:] - seq_idx[:, :-1]
        if bool((steps < 0).any()):
            raise ValueError("seq_idx must be non-decreasing along each row")
        rows, cols = torch.nonzero(steps, as_tuple=True)
        changes = sorted((rows * length + cols + 1).tolist())
    if return_varlen_states:
        return _checked_cu_seqlens(cu_seqlens, changes, batch, length)
    if not changes:
        return None
    row_starts = range(0, batch * length + 1, length) if length else [0]
    return sorted(set(row_starts) | set(changes))


def _checked_cu_seqlens(cu_seqlens, changes, batch, length):
    if cu_seqlens is None:
        raise ValueError("return_varlen_states=True needs cu_seqlens")
    if batch != 1:
        raise ValueError(f"return_varlen_states=True needs batch 1, got batch {batch}")
    expect_tensor("cu_seqlens", cu_seqlens, 1)
    expect_float("cu_seqlens", cu_seqlens, INDEX_DTYPES)
    bounds = cu_seqlens.tolist()
    if not bounds or bounds[0] != 0 or bounds[-1] != length or any(
            b < a for a, b in zip(bounds, bounds[1:])):
        raise ValueError(f"cu_seqlens must be non-decreasing from 0 to T={length}, got "
                         f"{len(bounds)} offsets from {bounds[:1]} to {bounds[-1:]}")
    inner = sorted(set(bounds) - {0, length})
    if inner != (changes or []):
        raise ValueError("cu_seqlens and seq_idx must describe the same sequences (mamba_ssm "
                         "restarts the state only where seq_idx changes)")
    return bounds


def _packed_ssd(x, dt, A, B, C, D, dt_bias, dt_softplus, h0, bounds):
    """ssd over the rows laid end to end and cut at ``bounds``: (out [b, T, h, p], the state
    after each row's last token [b, h, n, p], the state after each sequence [N, h, n, p])."""
    batch, length, heads, headdim = x.shape
    flat = batch * length
    first, last = {}, {}  # row -> its first / last non-empty sequence
    for index, (start, end) in enumerate(zip(bounds, bounds[1:])):
        if end > start:
            first.setdefault(start // length, index)
            last[start // length] = index
    seeds = None
    if h0 is not None:
        seeds = h0.new_zeros((len(bounds) - 1, *h0.shape[1:]), dtype=torch.float32)
        seeds[list(first.values())] = h0[list(first)].float()
    offsets = torch.tensor(bounds, dtype=torch.int64, device=x.device)
    out, states = ssd(x.reshape(1, flat, heads, headdim), dt.reshape(1, flat, heads), A,
                      B.reshape(1, flat, *B.shape[2:]), C.reshape(1, flat, *C.shape[2:]), D=D,
                      dt_bias=dt_bias, dt_softplus=dt_softplus, initial_state=seeds,
                      output_final_state=True, cu_seqlens=offsets)
    # a row without tokens keeps its initial state
    finals = (h0.float().clone() if h0 is not None
              else states.new_zeros((batch, *states.shape[1:])))
    finals[list(last)] = states[list(last.values())]
    return out.reshape(x.shape), finals, states


def _skip_and_gate(out, x, D, z):
    """out + D x (D [h, p]) and out * silu(z), in float32, back in x's dtype."""
    if D is None and z is None:
        return out
    result = out.float()
    if D is not None:
        result = result + x.float() * D.float()
    if z is not None:
        expect_tensor("z", z, 4)
        expect_shape("z", z, x.shape)
        result = result * F.silu(z.float())
    return result.to(x.dtype)


def selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None,
                           dt_softplus=False, state_batch_indices=None, pad_slot_id=-1):
    """mamba_ssm's ``selective_state_update``: one decode step of the selective SSM, the state
    updated in place: per-head dt and A (Mamba-2) on ``seqtune.kernels.ssd_step``, else on
    ``seqtune.kernels.selective_scan_step``.

    Mamba-1 layout: state ``[N, d, n]``, x, dt, z ``[b, d]``, A ``[d, n]``, B, C ``[b, n]``,
    D, dt_bias ``[d]``. Per-head (Mamba-2) layout: state ``[N, h, p, n]``, x, dt, z
    ``[b, h, p]``, A ``[h, p, n]``, B, C ``[b, g, n]`` (h % g == 0), D, dt_bias ``[h, p]``
    (Mamba-2 passes dt, A, dt_bias expanded over p: views are fine). When dt, A or dt_bias vary
    over p, the h heads of p channels run as h * p channels of grouped B/C (the state seen as
    ``[N, h * p, n]``: a view when it can be). ``state_batch_indices`` (int
    ``[b]``): the state row of each batch element (a pool, as in continuous batching; distinct
    rows < N); without it N == b. An entry equal to ``pad_slot_id`` (vLLM's PAD_SLOT_ID, -1 by
    default), or any negative one, marks a padding slot: no state row is read or written for
    it and its output row is zero. No host read (the index checks run on the device on CUDA),
    so a CUDA graph of the call replays for any slot assignment. Inputs of mixed float dtypes
    are computed in float32.
    Returns ``out`` shaped like x, in x's dtype.
    """
    heads_layout = isinstance(state, torch.Tensor) and state.dim() == 4
    if not heads_layout:
        expect_tensor("state", state, 3)
    expect_tensor("x", x, state.dim() - 1)
    batch = x.shape[0]
    channel_shape = tuple(state.shape[1:-1])  # (d,) or (h, p)
    shapes = {"x": (batch, *channel_shape), "dt": (batch, *channel_shape),
              "z": (batch, *channel_shape), "A": tuple(state.shape[1:]), "D": channel_shape,
              "dt_bias": channel_shape}
    for name, tensor in (("x", x), ("dt", dt), ("z", z), ("A", A), ("D", D),
                         ("dt_bias", dt_bias)):
        if tensor is not None:
            expect_tensor(name, tensor, len(shapes[name]))
            expect_shape(name, tensor, shapes[name])
    rows = _state_rows(state_batch_indices, batch, state.shape[0], x.device, pad_slot_id)
    if heads_layout and _tied_over_head_dim(dt, A, dt_bias):
        return _mamba2_step(state, rows, x, dt, A, B, C, D, z, dt_bias, bool(dt_softplus))
    pool, state_dim = state.shape[0], state.shape[-1]
    channels = state.shape[1] * state.shape[2] if heads_layout else state.shape[1]
    # [N, h, p, n] -> [N, h * p, n]: a view of a state contiguous over (h, p), else a copy
    flat = state.reshape(pool, channels, state_dim)
    y = _one_step(flat, rows, x.reshape(batch, channels), dt.reshape(batch, channels),
                  A.reshape(channels, state_dim), B, C,
                  None if D is None else D.reshape(channels),
                  None if z is None else z.reshape(batch, channels),
                  None if dt_bias is None else dt_bias.reshape(channels), bool(dt_softplus))
    if flat.untyped_storage().data_ptr() != state.untyped_storage().data_ptr():
        state.copy_(flat.view(state.shape))
    return y.view(x.shape)


def _tied_over_head_dim(dt, A, dt_bias) -> bool:
    """Whether dt, A and dt_bias hold one value per head, expanded over the head dim p (and A
    over n) as Mamba-2 passes them (mamba_ssm's ``tie_hdim``)."""
    return (dt.stride(-1) == 0 and A.dim() == 3 and A.stride(-1) == 0 and A.stride(-2) == 0
            and (dt_bias is None or (dt_bias.dim() == 2 and dt_bias.stride(-1) == 0)))


def _mamba2_step(state, rows, x, dt, A, B, C, D, z, dt_bias, dt_softplus):
    """One token on ``ssd_step`` (per-head dt and A) on the state [N, h, p, n] seen as ssd's
    [N, h, n, p] (a transposed view, updated in place when float32); a D that varies over p and
    the z gate are applied in float32 afterwards."""
    out_dtype = x.dtype
    x_in, B, C = (x, B, C) if x.dtype == B.dtype == C.dtype else (t.float() for t in (x, B, C))
    head_D = D is not None and D.dim() == 2 and D.stride(-1) == 0
    arguments = dict(D=D[:, 0] if head_D else None,
                     dt_bias=None if dt_bias is None else dt_bias[:, 0], dt_softplus=dt_softplus)
    if state.dtype == torch.float32:
        y = ssd_step(x_in, dt[:, :, 0], A[:, 0, 0], B, C, state=state.transpose(-1, -2),
                     state_indices=rows, **arguments)
    else:  # the kernel keeps float32 states: step a float32 copy of the rows, write them back
        rows_before, local = _stepped_rows(state, rows)
        stepped = rows_before.float().transpose(-1, -2)
        y = ssd_step(x_in, dt[:, :, 0], A[:, 0, 0], B, C, state=stepped, state_indices=local,
                     **arguments)
        _write_rows(state, rows, stepped.transpose(-1, -2), rows_before)
    if D is not None and not head_D:
        y = y.float() + x.float() * D.float()
    if z is not None:
        y = y.float() * F.silu(z.float())
    if rows is not None and (z is not None or (D is not None and not head_D)):
        y = torch.where((rows >= 0)[:, None, None], y, 0.0)  # padding slots stay zero
    return y.to(out_dtype)


def _state_rows(indices, batch, pool, device, pad_slot_id):
    """int64 rows on ``device``, padding slots as -1 (checked on the device on CUDA)."""
    if isinstance(pad_slot_id, bool) or not isinstance(pad_slot_id, int):
        raise TypeError(f"pad_slot_id must be an int, got {type(pad_slot_id).__name__}")
    if indices is None:
        if pool != batch:
            raise ValueError(f"state has {pool} rows for a batch of {batch}: pass "
                             f"state_batch_indices")
        return None
    expect_tensor("state_batch_indices", indices, 1)
    expect_float("state_batch_indices", indices, INDEX_DTYPES)
    expect_shape("state_batch_indices", indices, (batch,))
    expect_step_tensors({"state_batch_indices": indices})
    rows = pad_slots(indices.to(device=device), pad_slot_id)
    expect_state_indices(rows, pool, "state_batch_indices")
    return rows


def _one_step(state, rows, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    """One token of channels [b, d] on ``selective_scan_step`` from state[rows] ([N, d, n]):
    in place when float32, else a stepped float32 copy of the rows written back. y [b, d] in
    u's dtype."""
    out_dtype = u.dtype
    streams, parameters = (u, delta, B, C, z), (A, D, delta_bias)
    if (len({t.dtype for t in streams if t is not None}) > 1
            or any(t is not None and t.dtype not in (torch.float32, u.dtype)
                   for t in parameters)):  # mamba_ssm reads each in float32
        u, delta, B, C, z, A, D, delta_bias = (None if t is None else t.float()
                                               for t in streams + parameters)
    arguments = dict(D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus)
    if state.dtype == torch.float32:
        y = selective_scan_step(u, delta, A, B, C, state=state, state_indices=rows, **arguments)
    else:
        rows_before, local = _stepped_rows(state, rows)
        stepped = rows_before.float()
        y = selective_scan_step(u, delta, A, B, C, state=stepped, state_indices=local,
                                **arguments)
        _write_rows(state, rows, stepped, rows_before)
    return y.to(out_dtype)


def _stepped_rows(state, rows):
    """(The rows a batch steps, gathered: state itself without indices; the indices that step
    them: None, or each slot its own copy and padding slots -1, so they stay untouched.)"""
    if rows is None:
        return state, None
    slots = torch.arange(rows.shape[0], device=rows.device)
    return gather_rows(state, rows), torch.where(rows >= 0, slots, -1)


def _write_rows(state, rows, stepped, rows_before):
    """Writes the stepped float32 copy back into the rows of a half-precision state."""
    if rows is None:
        state.copy_(stepped)
    else:
        write_rows(state, rows, stepped, rows_before)


def selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                      return_last_state=False):
    """mamba_ssm's ``selective_scan_fn`` (Mamba-1) on ``seqtune.kernels.selective_scan``.

    u, delta, z ``[b, d, L]``; A ``[d, n]`` real; B, C ``[b, n, L]`` or grouped
    ``[b, g, n, L]``; D, delta_bias ``[d]``. Returns ``out [b, d, L]`` in u's dtype, or
    ``(out, last_state [b, d, n] float32)`` with ``return_last_state``; differentiable where the
    seqtune op is. Not supported: complex A, input-independent B or C ``[d, n]``.
    """
    function = "selective_scan_fn"
    if isinstance(A, torch.Tensor) and A.is_complex():
        _refuse(function, "A", A, "real A only")
    for name, tensor in (("B", B), ("C", C)):
        if isinstance(tensor, torch.Tensor) and tensor.dim() == 2:
            _refuse(function, name, tensor, "input-dependent [b, n, L] or [b, g, n, L] only")
    return selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                          return_last_state)
