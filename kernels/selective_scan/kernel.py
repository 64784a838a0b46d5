"""Triton kernels of Mamba's selective scan.

``selective_scan_kernel``: a program owns BLOCK_D channels and BLOCK_N states of one batch row
and walks the sequence in blocks of BLOCK_T steps. Inside a block the recurrence
x_t = exp(delta_t A) x_{t-1} + delta_t B_t u_t is an associative scan of affine maps over a
[BLOCK_D, BLOCK_N, BLOCK_T] register tile; the state is carried across blocks in fp32. When one
program holds all n states it finishes y (C . x, the D skip, the silu(z) gate); when the states
are split over programs it writes its partial C . x and ``sum_state_tiles_kernel`` finishes y.

The time axis is the unit-stride last axis of u, delta, z, B and C (and of y).
"""
import triton
import triton.language as tl


@triton.jit
def compose_affine(a_first, b_first, a_then, b_then):
    """The map x -> a_then * (a_first * x + b_first) + b_then as an (a, b) pair."""
    return a_first * a_then, a_then * b_first + b_then


@triton.jit
def softplus(x):
    """log(1 + e^x), written so that exp never overflows."""
    return tl.maximum(x, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(x)))


@triton.jit
def skip_and_gate(y, u, skip, z_ptrs, mask, HAS_D: tl.constexpr, HAS_Z: tl.constexpr):
    """y + D u, then times silu(z), in fp32."""
    if HAS_D:
        y += skip[:, None] * u
    if HAS_Z:
        z = tl.load(z_ptrs, mask=mask, other=0.0).to(tl.float32)
        y *= z * tl.sigmoid(z)
    return y


@triton.jit
def selective_scan_kernel(
        u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, delta_bias_ptr, initial_state_ptr,
        out_ptr, last_state_ptr, d, L, n, channels_per_group,
        stride_u_batch, stride_u_channel, stride_delta_batch, stride_delta_channel,
        stride_A_channel, stride_bc_batch, stride_bc_group, stride_bc_state,
        stride_z_batch, stride_z_channel, stride_out_tile, stride_out_batch, stride_out_channel,
        stride_h0_batch, stride_h0_channel, stride_h0_state,
        HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DELTA_BIAS: tl.constexpr,
        HAS_INITIAL_STATE: tl.constexpr,
        DELTA_SOFTPLUS: tl.constexpr, TILE_IN_ONE_GROUP: tl.constexpr, ALL_STATES: tl.constexpr,
        BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr):
    """Grid (cdiv(d, BLOCK_D), b, cdiv(n, BLOCK_N)). ``out`` is y [b, d, L] when ALL_STATES,
    else the fp32 partial sums [n tiles, b, d, L]; last_state is fp32 [b, d, n], contiguous; the
    scan starts from initial_state [b, d, n] (any strides) when HAS_INITIAL_STATE, else zeros."""
    batch = tl.program_id(1).to(tl.int64)
    state_tile = tl.program_id(2)
    channels = tl.program_id(0) * BLOCK_D + tl.arange(0, BLOCK_D)
    states = state_tile * BLOCK_N + tl.arange(0, BLOCK_N)
    channel_mask = channels < d
    state_mask = states < n
    steps = tl.arange(0, BLOCK_T)
    is_last_step = (steps == BLOCK_T - 1)[None, None, :]

    A = tl.load(A_ptr + channels[:, None] * stride_A_channel + states[None, :],
                mask=channel_mask[:, None] & state_mask[None, :], other=0.0).to(tl.float32)
    skip = tl.load(D_ptr + channels, mask=channel_mask, other=0.0).to(tl.float32) if HAS_D else 0
    if HAS_DELTA_BIAS:
        delta_bias = tl.load(delta_bias_ptr + channels, mask=channel_mask, other=0.0)
    if TILE_IN_ONE_GROUP:
        group = tl.program_id(0) * BLOCK_D // channels_per_group
        bc_rows = (group * stride_bc_group + states * stride_bc_state)[None, :, None]
        bc_mask = state_mask[None, :, None]
    else:  # channels of one tile read the B and C rows of their own groups
        groups = channels // channels_per_group
        bc_rows = (groups[:, None] * stride_bc_group + states[None, :] * stride_bc_state)[:, :, None]
        bc_mask = (channel_mask[:, None] & state_mask[None, :])[:, :, None]

    u_ptr += batch * stride_u_batch + channels[:, None] * stride_u_channel
    delta_ptr += batch * stride_delta_batch + channels[:, None] * stride_delta_channel
    z_ptr += batch * stride_z_batch + channels[:, None] * stride_z_channel
    B_ptr += batch * stride_bc_batch + bc_rows
    C_ptr += batch * stride_bc_batch + bc_rows
    out_ptr += (state_tile.to(tl.int64) * stride_out_tile + batch * stride_out_batch
                + channels[:, None] * stride_out_channel)
    if HAS_INITIAL_STATE:  # any float dtype, carried in fp32
        state = tl.load(initial_state_ptr + batch * stride_h0_batch
                        + channels[:, None] * stride_h0_channel + states[None, :] * stride_h0_state,
                        mask=channel_mask[:, None] & state_mask[None, :], other=0.0).to(tl.float32)
    else:
        state = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    for block_start in range(0, L, BLOCK_T):
        times = block_start + steps
        time_mask = times < L
        mask = channel_mask[:, None] & time_mask[None, :]
        u = tl.load(u_ptr + times[None, :], mask=mask, other=0.0).to(tl.float32)
        delta = tl.load(delta_ptr + times[None, :], mask=mask, other=0.0).to(tl.float32)
        if HAS_DELTA_BIAS:
            delta += delta_bias.to(tl.float32)[:, None]
        if DELTA_SOFTPLUS:
            delta = softplus(delta)
        bc_time_mask = bc_mask & time_mask[None, None, :]
        B = tl.load(B_ptr + times[None, None, :], mask=bc_time_mask, other=0.0).to(tl.float32)
        C = tl.load(C_ptr + times[None, None, :], mask=bc_time_mask, other=0.0).to(tl.float32)
        # Steps past L scan the identity map (1, 0): the block's last column is the state after
        # step L - 1.
        in_range = time_mask[None, None, :]
        decay = tl.where(in_range, tl.exp(delta[:, None, :] * A[:, :, None]), 1.0)
        drive = tl.where(in_range, (delta * u)[:, None, :] * B, 0.0)
        decay_prefix, drive_prefix = tl.associative_scan((decay, drive), axis=2,
                                                         combine_fn=compose_affine)
        x = decay_prefix * state[:, :, None] + drive_prefix
        y = tl.sum(x * C, axis=1)
        if ALL_STATES:
            y = skip_and_gate(y, u, skip, z_ptr + times[None, :], mask, HAS_D, HAS_Z)
        tl.store(out_ptr + times[None, :], y.to(out_ptr.dtype.element_ty), mask=mask)
        state = tl.sum(tl.where(is_last_step, x, 0.0), axis=2)

    last_state_ptrs = (last_state_ptr + batch * d * n + channels[:, None] * n + states[None, :])
    tl.store(last_state_ptrs, state, mask=channel_mask[:, None] & state_mask[None, :])


@triton.jit
def sum_state_tiles_kernel(
        partial_ptr, u_ptr, D_ptr, z_ptr, y_ptr, d, L, state_tiles,
        stride_partial_tile, stride_partial_batch, stride_u_batch, stride_u_channel,
        stride_z_batch, stride_z_channel, stride_y_batch,
        HAS_D: tl.constexpr, HAS_Z: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr):
    """y = sum of the partial C . x over state tiles, plus D u, times silu(z).

    Grid (cdiv(d, BLOCK_D), b, cdiv(L, BLOCK_T)); partial [tiles, b, d, L] and y [b, d, L] are
    contiguous.
    """
    batch = tl.program_id(1).to(tl.int64)
    channels = tl.program_id(0) * BLOCK_D + tl.arange(0, BLOCK_D)
    times = tl.program_id(2) * BLOCK_T + tl.arange(0, BLOCK_T)
    mask = (channels < d)[:, None] & (times < L)[None, :]
    cells = channels[:, None] * L + times[None, :]
    partial_ptrs = partial_ptr + batch * stride_partial_batch + cells
    y = tl.zeros([BLOCK_D, BLOCK_T], dtype=tl.float32)
    for _ in range(state_tiles):
        y += tl.load(partial_ptrs, mask=mask, other=0.0)
        partial_ptrs += stride_partial_tile
    u = tl.load(u_ptr + batch * stride_u_batch + channels[:, None] * stride_u_channel
                + times[None, :], mask=mask, other=0.0).to(tl.float32)
    skip = tl.load(D_ptr + channels, mask=channels < d, other=0.0).to(tl.float32) if HAS_D else 0
    z_ptrs = z_ptr + batch * stride_z_batch + channels[:, None] * stride_z_channel + times[None, :]
    y = skip_and_gate(y, u, skip, z_ptrs, mask, HAS_D, HAS_Z)
    tl.store(y_ptr + batch * stride_y_batch + cells, y.to(y_ptr.dtype.element_ty), mask=mask)
