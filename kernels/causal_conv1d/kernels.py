"""Triton kernels of the causal convolution's forward pass, and the helpers the backward shares.

y[t, d] = act(bias[d] + sum_j weight[d, j] * ext[t - (W - 1) + j, d]), where ``ext`` is the
sequence preceded by its W - 1 state columns (the initial state, or zeros). A program owns a
[BT, BD] tile of (tokens, channels) and reads the W shifted tiles through the cache; with packed
sequences a tile may span several of them, so each row finds its own sequence by a binary search
in cu_seqlens (no host-side preparation, no re-launch per length mix) and a tap that would cross
a sequence's start reads that sequence's state instead.

Every tensor is read through its strides (int64 offsets), so strided views need no copy.
"""
import triton
import triton.language as tl


def state_columns(width: int) -> int:
    """The W - 1 state columns padded to a power of two for the per-sequence kernels: at
    least 4: widths 2..5 share the [4, BD] tile widths 2..4 always compiled to."""
    return max(4, triton.next_power_of_2(width - 1))


@triton.jit
def sequence_of_rows(cu_seqlens, rows, batch, T, num_seqs, search_steps,
                     VARLEN: tl.constexpr):
    """(sequence index, start, end) of each row: with cu_seqlens, the largest s such that
    cu_seqlens[s] <= row (empty sequences share their start with the next one, so the largest
    is the non-empty one); else the batch row, 0 and T."""
    if VARLEN:
        low = tl.zeros_like(rows)
        high = tl.zeros_like(rows) + num_seqs
        for _ in range(search_steps):
            middle = (low + high) // 2
            at_or_before = tl.load(cu_seqlens + middle).to(tl.int32) <= rows
            low = tl.where(at_or_before, middle, low)
            high = tl.where(at_or_before, high, middle)
        seq = low
        start = tl.load(cu_seqlens + seq).to(tl.int32)
        end = tl.load(cu_seqlens + seq + 1).to(tl.int32)
    else:
        seq = tl.zeros_like(rows) + batch
        start = tl.zeros_like(rows)
        end = tl.zeros_like(rows) + T
    return seq, start, end


@triton.jit
def load_ext(x_base, state, positions, start, seq, cols, live, col_mask,
             stride_xt, stride_xd, stride_sn, stride_sd, stride_sw,
             W: tl.constexpr, HAS_STATE: tl.constexpr):
    """The [rows, BD] fp32 tile of ext at ``positions`` (absolute token indices, one per row):
    x where the position lies in the row's sequence, the sequence's state column
    W - 1 + (position - start) before it (zero without a state), zero where ``live`` is False."""
    inside = positions >= start
    mask = (live & inside)[:, None] & col_mask[None, :]
    offsets = ((positions.to(tl.int64) * stride_xt)[:, None]
               + (cols.to(tl.int64) * stride_xd)[None, :])
    values = tl.load(x_base + offsets, mask=mask, other=0.0).to(tl.float32)
    if HAS_STATE:
        before = (live & (positions < start))[:, None] & col_mask[None, :]
        column = W - 1 + positions - start
        offsets = ((seq.to(tl.int64) * stride_sn + column.to(tl.int64) * stride_sw)[:, None]
                   + (cols.to(tl.int64) * stride_sd)[None, :])
        values += tl.load(state + offsets, mask=before, other=0.0).to(tl.float32)
    return values


@triton.jit
def preactivation(x_base, state, weight, bias, positions, start, seq, cols, live, col_mask,
                  stride_xt, stride_xd, stride_sn, stride_sd, stride_sw, stride_wd, stride_ww,
                  stride_bias, W: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_STATE: tl.constexpr):
    """bias + sum_j weight[:, j] * ext[position - (W - 1) + j] in fp32, [rows, BD]."""
    acc = tl.zeros([positions.shape[0], cols.shape[0]], dtype=tl.float32)
    if HAS_BIAS:
        acc += tl.load(bias + cols.to(tl.int64) * stride_bias, mask=col_mask,
                       other=0.0).to(tl.float32)[None, :]
    for j in range(W):
        tap = tl.load(weight + cols.to(tl.int64) * stride_wd + j * stride_ww, mask=col_mask,
                      other=0.0).to(tl.float32)
        acc += tap[None, :] * load_ext(x_base, state, positions - (W - 1) + j, start, seq, cols,
                                       live, col_mask, stride_xt, stride_xd, stride_sn,
                                       stride_sd, stride_sw, W, HAS_STATE)
    return acc


@triton.jit
def causal_conv1d_fwd_kernel(x, weight, bias, initial_state, cu_seqlens, y,
                             T, D, num_seqs, search_steps,
                             stride_xb, stride_xt, stride_xd, stride_wd, stride_ww, stride_bias,
                             stride_sn, stride_sd, stride_sw, stride_yb, stride_yt, stride_yd,
                             W: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_STATE: tl.constexpr,
                             SILU: tl.constexpr, VARLEN: tl.constexpr, BT: tl.constexpr,
                             BD: tl.constexpr):
    """Grid (cdiv(T, BT), cdiv(D, BD), B): y for one tile of tokens and channels."""
    batch = tl.program_id(2)
    rows = tl.program_id(0) * BT + tl.arange(0, BT)
    cols = tl.program_id(1) * BD + tl.arange(0, BD)
    row_mask = rows < T
    col_mask = cols < D
    seq, start, end = sequence_of_rows(cu_seqlens, rows, batch, T, num_seqs, search_steps, VARLEN)
    x_base = x + batch.to(tl.int64) * stride_xb
    z = preactivation(x_base, initial_state, weight, bias, rows, start, seq, cols, row_mask,
                      col_mask, stride_xt, stride_xd, stride_sn, stride_sd, stride_sw, stride_wd,
                      stride_ww, stride_bias, W, HAS_BIAS, HAS_STATE)
    if SILU:
        z = z * tl.sigmoid(z)
    offsets = ((rows.to(tl.int64) * stride_yt)[:, None] + (cols.to(tl.int64) * stride_yd)[None, :])
    tl.store(y + batch.to(tl.int64) * stride_yb + offsets, z.to(y.dtype.element_ty),
             mask=row_mask[:, None] & col_mask[None, :])


@triton.jit
def final_state_kernel(x, initial_state, cu_seqlens, final_state, T, D,
                       stride_xb, stride_xt, stride_xd, stride_sn, stride_sd, stride_sw,
                       stride_fn, stride_fd, stride_fw,
                       W: tl.constexpr, HAS_STATE: tl.constexpr, VARLEN: tl.constexpr,
                       WS: tl.constexpr, BD: tl.constexpr):
    """Grid (N, cdiv(D, BD)): final_state[s, :, i] = ext[end - (W - 1) + i] of sequence s, the
    last W - 1 inputs (reaching into the initial state for sequences shorter than that)."""
    seq_index = tl.program_id(0)
    cols = tl.program_id(1) * BD + tl.arange(0, BD)
    col_mask = cols < D
    columns = tl.arange(0, WS)  # the W - 1 state columns, padded (state_columns)
    live = columns < W - 1
    if VARLEN:
        start = tl.load(cu_seqlens + seq_index).to(tl.int32)
        end = tl.load(cu_seqlens + seq_index + 1).to(tl.int32)
        x_base = x
    else:
        start = 0
        end = T
        x_base = x + seq_index.to(tl.int64) * stride_xb
    seq = tl.zeros_like(columns) + seq_index
    starts = tl.zeros_like(columns) + start
    values = load_ext(x_base, initial_state, end - (W - 1) + columns, starts, seq, cols, live,
                      col_mask, stride_xt, stride_xd, stride_sn, stride_sd, stride_sw, W,
                      HAS_STATE)
    offsets = ((seq_index.to(tl.int64) * stride_fn + columns.to(tl.int64) * stride_fw)[:, None]
               + (cols.to(tl.int64) * stride_fd)[None, :])
    tl.store(final_state + offsets, values.to(final_state.dtype.element_ty),
             mask=live[:, None] & col_mask[None, :])
