"""Triton kernel of the gradients of h_t = a_t * h_{t-1} + b_t.

With g_t = dL/dh_t counting every later step, g_t = dh_t + a_{t+1} g_{t+1} (g past the end is
0): the same affine recurrence run backwards in time, with the decay of the step after. Then
db_t = g_t, da_t = g_t h_{t-1} (h_{-1} the initial state, or 0) and d initial_state = a_0 g_0.

Each program owns BLOCK_D channels of one batch row and walks the blocks of BLOCK_T steps from
the last to the first. A block is loaded latest step first, so that an ordinary (forward)
associative scan of the maps g -> dh_t + a_{t+1} g composes them from the end backwards; g at
the block's earliest step is carried into the previous block in fp32.
"""
import triton
import triton.language as tl

from seqtune.kernels.linear_scan.kernel import compose_affine


@triton.jit
def linear_scan_bwd_kernel(a_ptr, h_ptr, h0_ptr, dh_ptr, da_ptr, db_ptr, dh0_ptr, T, D,
                           stride_a_batch, stride_a_time, stride_h_batch, stride_h_time,
                           stride_h0_batch, stride_dh_batch, stride_dh_time,
                           stride_da_batch, stride_da_time, stride_db_batch, stride_db_time,
                           stride_dh0_batch,
                           HAS_INITIAL_STATE: tl.constexpr, NEED_DA: tl.constexpr,
                           NEED_DB: tl.constexpr, NEED_DH0: tl.constexpr,
                           BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    """Grid (cdiv(D, BLOCK_D), B); channels are the unit-stride last axis of every tensor.
    h is the forward's output; gradients are written in their tensors' dtypes."""
    batch = tl.program_id(1).to(tl.int64)
    channels = tl.program_id(0) * BLOCK_D + tl.arange(0, BLOCK_D)
    channel_mask = channels < D
    latest_first = BLOCK_T - 1 - tl.arange(0, BLOCK_T)
    is_earliest = (latest_first == 0)[:, None]

    a_first_ptrs = a_ptr + batch * stride_a_batch + channels
    a_ptr += batch * stride_a_batch + channels[None, :]
    h_ptr += batch * stride_h_batch + channels[None, :]
    dh_ptr += batch * stride_dh_batch + channels[None, :]
    da_ptr += batch * stride_da_batch + channels[None, :]
    db_ptr += batch * stride_db_batch + channels[None, :]
    if HAS_INITIAL_STATE:
        h0 = tl.load(h0_ptr + batch * stride_h0_batch + channels, mask=channel_mask,
                     other=0.0).to(tl.float32)
    else:
        h0 = tl.zeros([BLOCK_D], dtype=tl.float32)

    carried = tl.zeros([BLOCK_D], dtype=tl.float32)  # g at the step after the block
    blocks = tl.cdiv(T, BLOCK_T)
    for block in range(0, blocks):
        times = ((blocks - 1 - block) * BLOCK_T + latest_first)[:, None]
        mask = (times < T) & channel_mask[None, :]
        # Steps past T (and the decay after the last step) are identity maps (1, 0).
        a_next = tl.load(a_ptr + (times + 1) * stride_a_time,
                         mask=(times + 1 < T) & channel_mask[None, :], other=1.0).to(tl.float32)
        dh = tl.load(dh_ptr + times * stride_dh_time, mask=mask, other=0.0).to(tl.float32)
        a_prefix, dh_prefix = tl.associative_scan((a_next, dh), axis=0, combine_fn=compose_affine)
        g = a_prefix * carried[None, :] + dh_prefix
        if NEED_DB:
            tl.store(db_ptr + times * stride_db_time, g.to(db_ptr.dtype.element_ty), mask=mask)
        if NEED_DA:
            h_prev = tl.load(h_ptr + (times - 1) * stride_h_time, mask=mask & (times >= 1),
                             other=0.0).to(tl.float32)
            h_prev = tl.where(times == 0, h0[None, :], h_prev)
            tl.store(da_ptr + times * stride_da_time, (g * h_prev).to(da_ptr.dtype.element_ty),
                     mask=mask)
        carried = tl.sum(tl.where(is_earliest, g, 0.0), axis=0)

    if NEED_DH0:  # h_0 = a_0 h_{-1} + b_0
        a_first = tl.load(a_first_ptrs, mask=channel_mask, other=0.0).to(tl.float32)
        tl.store(dh0_ptr + batch * stride_dh0_batch + channels,
                 (a_first * carried).to(dh0_ptr.dtype.element_ty), mask=channel_mask)
