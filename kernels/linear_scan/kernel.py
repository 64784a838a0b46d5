"""Triton kernel of the diagonal linear recurrence h_t = a_t * h_{t-1} + b_t.

Each program owns BLOCK_D channels of one batch row and walks the sequence in blocks of BLOCK_T
steps: inside a block the recurrence is an associative scan of the affine maps h -> a h + b held
in registers; the state after the block is carried to the next one in fp32.
"""
import triton
import triton.language as tl


@triton.jit
def compose_affine(a_first, b_first, a_then, b_then):
    """The map h -> a_then * (a_first * h + b_first) + b_then as an (a, b) pair."""
    return a_first * a_then, a_then * b_first + b_then


@triton.jit
def linear_scan_kernel(a_ptr, b_ptr, h0_ptr, h_ptr, T, D,
                       stride_a_batch, stride_a_time, stride_b_batch, stride_b_time,
                       stride_h_batch, stride_h_time, stride_h0_batch,
                       HAS_INITIAL_STATE: tl.constexpr, BLOCK_T: tl.constexpr,
                       BLOCK_D: tl.constexpr):
    """Grid (cdiv(D, BLOCK_D), B); channels are the unit-stride last axis of a, b, h, h0."""
    batch = tl.program_id(1).to(tl.int64)
    channels = tl.program_id(0) * BLOCK_D + tl.arange(0, BLOCK_D)
    channel_mask = channels < D
    steps = tl.arange(0, BLOCK_T)
    is_last_step = (steps == BLOCK_T - 1)[:, None]

    a_ptr += batch * stride_a_batch + channels[None, :]
    b_ptr += batch * stride_b_batch + channels[None, :]
    h_ptr += batch * stride_h_batch + channels[None, :]
    if HAS_INITIAL_STATE:
        state = tl.load(h0_ptr + batch * stride_h0_batch + channels, mask=channel_mask,
                        other=0.0).to(tl.float32)
    else:
        state = tl.zeros([BLOCK_D], dtype=tl.float32)

    for block_start in range(0, T, BLOCK_T):
        times = (block_start + steps)[:, None]
        mask = (times < T) & channel_mask[None, :]
        # Steps past T load the identity map (a=1, b=0), so the block's last row is the state
        # after the last real step.
        a = tl.load(a_ptr + times * stride_a_time, mask=mask, other=1.0).to(tl.float32)
        b = tl.load(b_ptr + times * stride_b_time, mask=mask, other=0.0).to(tl.float32)
        a_prefix, b_prefix = tl.associative_scan((a, b), axis=0, combine_fn=compose_affine)
        h = a_prefix * state[None, :] + b_prefix
        tl.store(h_ptr + times * stride_h_time, h.to(h_ptr.dtype.element_ty), mask=mask)
        state = tl.sum(tl.where(is_last_step, h, 0.0), axis=0)
