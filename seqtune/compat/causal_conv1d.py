"""The causal-conv1d package's entry points on seqtune's kernels: ``causal_conv1d_fn`` (on
``seqtune.kernels.causal_conv1d``, differentiable), ``causal_conv1d_update`` (decoding, on
``causal_conv1d_step``) and ``causal_conv1d_varlen_states`` (a packed prefill's states), with
causal-conv1d's argument order, defaults, ``[B, D, T]`` layout, states ``[B, D, W - 1]`` /
``[N, D, state_len]`` and return values. Widths 2..8 (causal-conv1d itself stops at 4).
"""
from __future__ import annotations

import torch

from seqtune.checks import (expect_shape, expect_state_indices, expect_state_pool,
                            expect_step_tensors, expect_tensor)
from seqtune.compat._pool import gather_rows, pad_slots, write_rows
from seqtune.kernels import causal_conv1d, causal_conv1d_step

ACTIVATIONS = (None, "silu", "swish")
INDEX_DTYPES = (torch.int32, torch.int64)


def _check_activation(activation) -> None:
    if activation not in ACTIVATIONS:
        raise NotImplementedError(f"activation must be None, 'silu' or 'swish', got "
                                  f"{activation!r}")


def causal_conv1d_fn(x, weight, bias=None, seq_idx=None, initial_states=None,
                     return_final_states=False, final_states_out=None, activation=None):
    """causal-conv1d's ``causal_conv1d_fn`` on ``seqtune.kernels.causal_conv1d``.

    x ``[B, D, T]`` (channel-first or channel-last memory); weight ``[D, W]`` with W in 2..8
    (causal-conv1d itself stops at 4); bias ``[D]``; activation None, ``"silu"`` or
    ``"swish"``; initial_states ``[B, D, W - 1]``.

    ``seq_idx`` (int ``[B, T]``): a tap only reads tokens of the same sequence id, and tokens
    with a negative id (padding) output zero; as in causal-conv1d it excludes initial and final
    states. Each id must occupy one run of consecutive tokens per row (how packed batches are
    laid out); an id that reappears later in a row is refused (NotImplementedError).

    Returns ``out [B, D, T]`` in x's dtype, in x's memory layout (channel-first x: a contiguous
    copy of the kernel's channel-last output); with ``return_final_states`` also the last
    W - 1 inputs of each row ``[B, D, W - 1]`` in x's dtype, written into ``final_states_out``
    when given. Differentiable in x, weight, bias and initial_states.
    """
    _check_activation(activation)
    expect_tensor("x", x, 3)
    if seq_idx is not None and initial_states is not None:
        raise ValueError("causal_conv1d_fn: initial_states must be None if seq_idx is not None")
    if seq_idx is not None and return_final_states:
        raise ValueError("causal_conv1d_fn: with seq_idx no final states are returned "
                         "(return_final_states must be False)")
    channel_last = x.stride(1) == 1 and x.stride(2) != 1
    sequences = x.transpose(1, 2)  # [B, T, D], a view
    if seq_idx is None:
        y, final_state = causal_conv1d(sequences, weight, bias, activation=activation,
                                       initial_state=initial_states,
                                       output_final_state=return_final_states)
    else:
        y = _packed_rows(sequences, weight, bias, activation, seq_idx)
        final_state = None
    out = y.transpose(1, 2)
    out = out if channel_last else out.contiguous()
    if not return_final_states:
        return out
    if final_states_out is not None:
        expect_shape("final_states_out", final_states_out, tuple(final_state.shape))
        final_states_out.copy_(final_state)
        final_state = final_states_out
    return out, final_state


def _packed_rows(sequences: torch.Tensor, weight, bias, activation,
                 seq_idx: torch.Tensor) -> torch.Tensor:
    """y [B, T, D] of rows split wherever seq_idx changes: all rows packed into one, each run
    of equal ids one sequence of ``cu_seqlens``; padding (negative ids) zeroed."""
    batch, length, channels = sequences.shape
    expect_tensor("seq_idx", seq_idx, 2)
    expect_shape("seq_idx", seq_idx, (batch, length))
    if seq_idx.dtype not in INDEX_DTYPES:
        raise ValueError(f"seq_idx must be int32 or int64, got "
                         f"{str(seq_idx.dtype).removeprefix('torch.')}")
    if batch * length == 0:
        return sequences.new_zeros(batch, length, channels)
    ids = seq_idx.reshape(-1)
    run_starts = torch.ones_like(ids, dtype=torch.bool)
    run_starts[1:] = ids[1:] != ids[:-1]
    run_starts[::length] = True  # a row never continues the previous one
    starts = run_starts.nonzero().flatten()
    _refuse_reappearing_ids(ids[starts], starts // length)
    cu_seqlens = torch.cat([starts, starts.new_tensor([batch * length])]).to(torch.int32)
    y, _ = causal_conv1d(sequences.reshape(1, batch * length, channels), weight, bias,
                         activation=activation, cu_seqlens=cu_seqlens)
    y = y.reshape(batch, length, channels)
    return torch.where((seq_idx >= 0)[:, :, None], y, y.new_zeros(()))


def _refuse_reappearing_ids(run_ids: torch.Tensor, run_rows: torch.Tensor) -> None:
    real = run_ids >= 0
    keys = run_rows[real] * (int(run_ids.max()) + 1) + run_ids[real]
    if keys.unique().numel() != keys.numel():
        raise NotImplementedError("causal_conv1d_fn: seq_idx with a sequence id that reappears "
                                  "after another one in a row is not supported by seqtune")


def causal_conv1d_update(x, conv_state, weight, bias=None, activation=None, cache_seqlens=None,
                         conv_state_indices=None, pad_slot_id=-1):
    """causal-conv1d's ``causal_conv1d_update``: decoding tokens through the convolution.

    x ``[B, D]`` or ``[B, D, L]`` (L new tokens per row); conv_state ``[N, D, state_len]`` with
    state_len >= W - 1, updated in place (N = B without ``conv_state_indices``); weight
    ``[D, W]`` (W in 2..8; causal-conv1d stops at 4); bias ``[D]``.

    - Without ``cache_seqlens`` the state holds the row's last state_len inputs, oldest first:
      the tokens read its last W - 1 columns, then it shifts left by L and ends with x.
    - ``cache_seqlens`` (int ``[B]``): the state is a circular buffer; the taps read the W - 1
      entries before position ``cache_seqlens % state_len``, x is written from there on
      (wrapping); cache_seqlens itself is not advanced.
    - ``conv_state_indices`` (int ``[B]``): row i of x uses state row ``conv_state_indices[i]``
      (distinct rows < N); an entry equal to ``pad_slot_id`` (vLLM's PAD_SLOT_ID, -1 by
      default), or any negative one, marks a padding slot (zero output, no state row read or
      written). No host read (the index checks run on the device on CUDA), so a CUDA graph
      of the call replays for any slot assignment.

    One token with state_len == W - 1 and no cache_seqlens runs the ``causal_conv1d_step``
    kernel alone; otherwise the state window is gathered, ``causal_conv1d`` runs with it as the
    initial state, and the state is updated by PyTorch indexing.

    Returns out of x's shape and dtype.
    """
    _check_activation(activation)
    single = isinstance(x, torch.Tensor) and x.dim() == 2
    tokens = x[:, :, None] if single else x
    expect_tensor("x", tokens, 3)
    expect_tensor("weight", weight, 2)
    expect_tensor("conv_state", conv_state, 3)
    batch, channels, _ = tokens.shape
    width, state_len = weight.shape[1], conv_state.shape[2]
    if state_len < width - 1:
        raise ValueError(f"conv_state has state_len={state_len}, expected >= W - 1 = "
                         f"{width - 1}")
    indices = _check_update_indices(conv_state_indices, cache_seqlens, batch, pad_slot_id)
    expect_step_tensors({"x": x, "conv_state": conv_state, "weight": weight, "bias": bias,
                         "conv_state_indices": indices})
    expect_state_pool(conv_state, {"x": x, "weight": weight, "bias": bias})
    if indices is not None:
        expect_state_indices(indices, conv_state.shape[0], "conv_state_indices")
    if single and state_len == width - 1 and cache_seqlens is None:
        return causal_conv1d_step(x, weight, bias, activation=activation, state=conv_state,
                                  state_indices=indices)
    if conv_state_indices is None:
        expect_shape("conv_state", conv_state, (batch, channels, state_len))
    out = _update_tokens(tokens, conv_state, weight, bias, activation, cache_seqlens, indices)
    return out[:, :, 0] if single else out


def _check_update_indices(conv_state_indices, cache_seqlens, batch: int,
                          pad_slot_id: int) -> torch.Tensor | None:
    """conv_state_indices as int64 with padding slots -1 (their values are checked after the
    devices)."""
    if isinstance(pad_slot_id, bool) or not isinstance(pad_slot_id, int):
        raise TypeError(f"pad_slot_id must be an int, got {type(pad_slot_id).__name__}")
    for name, value in (("conv_state_indices", conv_state_indices),
                        ("cache_seqlens", cache_seqlens)):
        if value is not None:
            expect_tensor(name, value, 1)
            expect_shape(name, value, (batch,))
            if value.dtype not in INDEX_DTYPES:
                raise ValueError(f"{name} must be int32 or int64, got "
                                 f"{str(value.dtype).removeprefix('torch.')}")
    return pad_slots(conv_state_indices, pad_slot_id) if conv_state_indices is not None else None


def _update_tokens(tokens, conv_state, weight, bias, activation, cache_seqlens, indices):
    """The general update: window gathered, causal_conv1d over the L tokens, state written."""
    batch, channels, length = tokens.shape
    width, state_len = weight.shape[1], conv_state.shape[2]
    rows = indices if indices is not None else torch.arange(batch, device=tokens.device)
    live = rows >= 0
    states = gather_rows(conv_state, rows)  # [B, D, state_len], a copy
    if cache_seqlens is None:
        window = states[:, :, state_len - (width - 1):]
    else:
        before = (cache_seqlens.long()[:, None] - (width - 1)
                  + torch.arange(width - 1, device=tokens.device)) % state_len
        window = states.gather(2, before[:, None, :].expand(-1, channels, -1))
    y, _ = causal_conv1d(tokens.transpose(1, 2), weight, bias, activation=activation,
                         initial_state=window)
    out = torch.where(live[:, None, None], y.transpose(1, 2), y.new_zeros(()))
    if cache_seqlens is None:
        updated = torch.cat([states, tokens.to(states.dtype)], dim=2)[:, :, -state_len:]
    else:
        kept = min(length, state_len)  # an older token's slot is overwritten by a later one
        slots = (cache_seqlens.long()[:, None] + torch.arange(length - kept, length,
                                                              device=tokens.device)) % state_len
        updated = states.scatter(2, slots[:, None, :].expand(-1, channels, -1),
                                 tokens[:, :, length - kept:].to(states.dtype))
    write_rows(conv_state, rows, updated, states)
    return out


def causal_conv1d_varlen_states(x, cu_seqlens, state_len):
    """causal-conv1d's ``causal_conv1d_varlen_states``: the conv state each packed sequence
    leaves, for decoding after a packed prefill.

    x ``[total_tokens, D]``; cu_seqlens int ``[N + 1]`` (from 0, non-decreasing, at most
    total_tokens); state_len an int >= 0. Returns states ``[N, D, state_len]`` in x's dtype
    (D contiguous, as causal-conv1d's): each sequence's last state_len tokens, oldest first,
    with zeros where a sequence is shorter than state_len (no token of another sequence is
    read). Forward only, as in causal-conv1d; one gather, no kernel and no host read on a GPU
    (the offsets are checked there by device asserts).
    """
    expect_tensor("x", x, 2)
    expect_tensor("cu_seqlens", cu_seqlens, 1)
    if cu_seqlens.dtype not in INDEX_DTYPES:
        raise ValueError(f"cu_seqlens must be int32 or int64, got "
                         f"{str(cu_seqlens.dtype).removeprefix('torch.')}")
    if isinstance(state_len, bool) or not isinstance(state_len, int) or state_len < 0:
        raise ValueError(f"state_len must be an int >= 0, got {state_len!r}")
    total = x.shape[0]
    if cu_seqlens.numel() == 0:
        raise ValueError("cu_seqlens must have N + 1 >= 1 offsets, got none")
    offsets = cu_seqlens.to(device=x.device, dtype=torch.int64)
    _check_offsets(offsets, total)
    ends = offsets[1:, None]
    positions = ends - state_len + torch.arange(state_len, device=x.device)  # [N, state_len]
    inside = positions >= offsets[:-1, None]
    rows = x[positions.clamp(min=0, max=max(total - 1, 0))] if total else x.new_zeros(
        (*positions.shape, x.shape[1]))
    states = torch.where(inside[:, :, None], rows, rows.new_zeros(()))  # [N, state_len, D]
    return states.transpose(1, 2)


def _check_offsets(offsets: torch.Tensor, total: int) -> None:
    """Offsets from 0, non-decreasing, at most ``total``: a ValueError read on the host for CPU
    tensors; on a GPU device asserts, which neither sync the stream nor break a CUDA-graph
    capture (the gather stays in bounds either way)."""
    message = f"cu_seqlens must be non-decreasing from 0 to at most total_tokens={total}"
    valid = ((offsets[0] == 0) & (offsets[-1] <= total)
             & (offsets[1:] >= offsets[:-1]).all())
    if offsets.device.type != "cpu":
        torch._assert_async(valid, message)
    elif not bool(valid):
        raise ValueError(f"{message}, got {offsets.tolist()[:8]}")
