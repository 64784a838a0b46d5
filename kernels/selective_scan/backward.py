"""Triton kernels of the gradients of Mamba's selective scan.

Forward: x_t = a_t x_{t-1} + b_t with a_t = exp(delta_t A), b_t = delta_t B_t u_t;
y_t = C_t . x_t + D u_t; out = y silu(z). With g_t = dL/dx_t counting every later step,

    g_t = dy_t C_t + a_{t+1} g_{t+1}      (g past the end: the last state's upstream gradient)

a reverse scan; then, using a_t x_{t-1} = x_t - b_t (no shifted state needed):
    du_t = D dy_t + delta_t sum_n g_t B_t,   d delta_t = sum_n g_t (A (x_t - b_t) + B_t u_t),
    dA = sum_t g_t delta_t (x_t - b_t),      dB_t = sum_channels g_t delta_t u_t,
    dC_t = sum_channels dy_t x_t,            d initial_state = a_0 g_0.

Storing every step's state would cost b d n L floats. Instead ``state_checkpoints_kernel``
stores the state before each block of BLOCK_T steps, and ``selective_scan_bwd_kernel`` walks
the blocks from the last, recomputes the block's states from its checkpoint (a forward
associative scan), then scans g backwards through it (``reverse=True``). A program of either
kernel owns BLOCK_D channels of one batch row and all n states (N_PAD, n padded). Sums over
channels (dB, dC) and over the batch (dA, dD, d delta_bias) are fp32 atomic adds: their order,
hence their last bits, may differ between runs on a GPU.
"""
import triton
import triton.language as tl

from seqtune.kernels.selective_scan.kernel import compose_affine, softplus


@triton.jit
def step_sizes(delta_ptrs, mask, delta_bias, HAS_DELTA_BIAS: tl.constexpr,
               DELTA_SOFTPLUS: tl.constexpr):
    """(delta + bias before softplus, delta as the recurrence uses it), fp32 [BLOCK_D, T]."""
    raw = tl.load(delta_ptrs, mask=mask, other=0.0).to(tl.float32)
    if HAS_DELTA_BIAS:
        raw += delta_bias[:, None]
    if DELTA_SOFTPLUS:
        return raw, softplus(raw)
    return raw, raw


@triton.jit
def bc_offsets(channels, states, channels_per_group, stride_bc_group, stride_bc_state):
    """[BLOCK_D, N_PAD, 1] offsets of each channel's group's B (or C) rows."""
    groups = channels // channels_per_group
    return (groups[:, None] * stride_bc_group + states[None, :] * stride_bc_state)[:, :, None]


@triton.jit
def state_checkpoints_kernel(
        u_ptr, delta_ptr, A_ptr, B_ptr, delta_bias_ptr, h0_ptr, checkpoint_ptr,
        d, L, n, channels_per_group,
        stride_u_batch, stride_u_channel, stride_delta_batch, stride_delta_channel,
        stride_A_channel, stride_bc_batch, stride_bc_group, stride_bc_state,
        stride_h0_batch, stride_h0_channel, stride_h0_state,
        HAS_DELTA_BIAS: tl.constexpr, DELTA_SOFTPLUS: tl.constexpr,
        HAS_INITIAL_STATE: tl.constexpr, N_PAD: tl.constexpr, BLOCK_D: tl.constexpr,
        BLOCK_T: tl.constexpr):
    """Grid (cdiv(d, BLOCK_D), b). checkpoints [b, cdiv(L, BLOCK_T), d, n] fp32 contiguous:
    entry j is the state before step j * BLOCK_T."""
    batch = tl.program_id(1).to(tl.int64)
    channels = tl.program_id(0) * BLOCK_D + tl.arange(0, BLOCK_D)
    states = tl.arange(0, N_PAD)
    channel_mask = channels < d
    cell_mask = channel_mask[:, None] & (states < n)[None, :]
    steps = tl.arange(0, BLOCK_T)
    is_last_step = (steps == BLOCK_T - 1)[None, None, :]

    A = tl.load(A_ptr + channels[:, None] * stride_A_channel + states[None, :], mask=cell_mask,
                other=0.0).to(tl.float32)
    delta_bias = tl.load(delta_bias_ptr + channels, mask=channel_mask, other=0.0).to(tl.float32) \
        if HAS_DELTA_BIAS else 0.0
    bc_rows = bc_offsets(channels, states, channels_per_group, stride_bc_group, stride_bc_state)
    u_ptr += batch * stride_u_batch + channels[:, None] * stride_u_channel
    delta_ptr += batch * stride_delta_batch + channels[:, None] * stride_delta_channel
    B_ptr += batch * stride_bc_batch + bc_rows
    cells = channels[:, None] * n + states[None, :]
    checkpoint_ptr += batch * tl.cdiv(L, BLOCK_T) * d * n + cells
    if HAS_INITIAL_STATE:
        state = tl.load(h0_ptr + batch * stride_h0_batch + channels[:, None] * stride_h0_channel
                        + states[None, :] * stride_h0_state, mask=cell_mask,
                        other=0.0).to(tl.float32)
    else:
        state = tl.zeros([BLOCK_D, N_PAD], dtype=tl.float32)
    for block_start in range(0, L, BLOCK_T):
        tl.store(checkpoint_ptr, state, mask=cell_mask)
        checkpoint_ptr += d * n
        times = block_start + steps
        time_mask = times < L
        mask = channel_mask[:, None] & time_mask[None, :]
        u = tl.load(u_ptr + times[None, :], mask=mask, other=0.0).to(tl.float32)
        _, delta = step_sizes(delta_ptr + times[None, :], mask, delta_bias, HAS_DELTA_BIAS,
                              DELTA_SOFTPLUS)
        B = tl.load(B_ptr + times[None, None, :], mask=cell_mask[:, :, None]
                    & time_mask[None, None, :], other=0.0).to(tl.float32)
        in_range = time_mask[None, None, :]
        decay = tl.where(in_range, tl.exp(delta[:, None, :] * A[:, :, None]), 1.0)
        drive = tl.where(in_range, (delta * u)[:, None, :] * B, 0.0)
        decay_prefix, drive_prefix = tl.associative_scan((decay, drive), axis=2,
                                                         combine_fn=compose_affine)
        x = decay_prefix * state[:, :, None] + drive_prefix
        state = tl.sum(tl.where(is_last_step, x, 0.0), axis=2)


@triton.jit
def selective_scan_bwd_kernel(
        u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, delta_bias_ptr, checkpoint_ptr,
        dout_ptr, dlast_ptr, du_ptr, ddelta_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr,
        ddelta_bias_ptr, dh0_ptr, d, L, n, channels_per_group,
        stride_u_batch, stride_u_channel, stride_delta_batch, stride_delta_channel,
        stride_A_channel, stride_bc_batch, stride_bc_group, stride_bc_state,
        stride_z_batch, stride_z_channel, stride_dout_batch, stride_dout_channel,
        HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DELTA_BIAS: tl.constexpr,
        DELTA_SOFTPLUS: tl.constexpr, HAS_DLAST: tl.constexpr, NEED_DU: tl.constexpr,
        NEED_DDELTA: tl.constexpr, NEED_DA: tl.constexpr, NEED_DB: tl.constexpr,
        NEED_DC: tl.constexpr, NEED_DD: tl.constexpr, NEED_DZ: tl.constexpr,
        NEED_DDELTA_BIAS: tl.constexpr, NEED_DH0: tl.constexpr,
        TILE_IN_ONE_GROUP: tl.constexpr, N_PAD: tl.constexpr, BLOCK_D: tl.constexpr,
        BLOCK_T: tl.constexpr):
    """Grid (cdiv(d, BLOCK_D), b). checkpoints from ``state_checkpoints_kernel`` with the same
    BLOCK_T; dlast (the last state's upstream gradient) and dh0 [b, d, n], du, ddelta, dz
    [b, d, L] and the fp32 accumulators dA [d, n], dD, ddelta_bias [d] are contiguous; dB and dC
    are fp32 accumulators laid out like B and C. Everything is zero where it accumulates."""
    batch = tl.program_id(1).to(tl.int64)
    channels = tl.program_id(0) * BLOCK_D + tl.arange(0, BLOCK_D)
    states = tl.arange(0, N_PAD)
    channel_mask = channels < d
    cell_mask = channel_mask[:, None] & (states < n)[None, :]
    cells = channels[:, None] * n + states[None, :]
    steps = tl.arange(0, BLOCK_T)
    is_first_step = (steps == 0)[None, None, :]

    A = tl.load(A_ptr + channels[:, None] * stride_A_channel + states[None, :], mask=cell_mask,
                other=0.0).to(tl.float32)
    skip = tl.load(D_ptr + channels, mask=channel_mask, other=0.0).to(tl.float32) if HAS_D else 0.0
    delta_bias = tl.load(delta_bias_ptr + channels, mask=channel_mask, other=0.0).to(tl.float32) \
        if HAS_DELTA_BIAS else 0.0
    bc_rows = bc_offsets(channels, states, channels_per_group, stride_bc_group, stride_bc_state)
    u_ptr += batch * stride_u_batch + channels[:, None] * stride_u_channel
    delta_ptr += batch * stride_delta_batch + channels[:, None] * stride_delta_channel
    z_ptr += batch * stride_z_batch + channels[:, None] * stride_z_channel
    dout_ptr += batch * stride_dout_batch + channels[:, None] * stride_dout_channel
    B_ptr += batch * stride_bc_batch + bc_rows
    C_ptr += batch * stride_bc_batch + bc_rows
    streams = batch * d * L + channels[:, None] * L  # du, ddelta, dz rows
    if TILE_IN_ONE_GROUP:  # one group's rows: sum over the tile's channels, then one add
        group_rows = (batch * stride_bc_batch + (tl.program_id(0) * BLOCK_D // channels_per_group)
                      * stride_bc_group + states * stride_bc_state)[:, None]
    else:  # each channel adds into its own group's rows
        group_rows = batch * stride_bc_batch + bc_rows
    blocks = tl.cdiv(L, BLOCK_T)
    checkpoint_ptr += batch * blocks * d * n + cells

    if HAS_DLAST:
        carried = tl.load(dlast_ptr + batch * d * n + cells, mask=cell_mask, other=0.0)
    else:
        carried = tl.zeros([BLOCK_D, N_PAD], dtype=tl.float32)
    dA = tl.zeros([BLOCK_D, N_PAD], dtype=tl.float32)
    dD = tl.zeros([BLOCK_D], dtype=tl.float32)
    ddelta_bias = tl.zeros([BLOCK_D], dtype=tl.float32)
    for block in range(0, blocks):
        block_index = blocks - 1 - block
        times = block_index * BLOCK_T + steps
        time_mask = times < L
        mask = channel_mask[:, None] & time_mask[None, :]
        in_range = time_mask[None, None, :]
        tile_mask = cell_mask[:, :, None] & in_range
        # The block's states, recomputed from its checkpoint as the forward computed them.
        u = tl.load(u_ptr + times[None, :], mask=mask, other=0.0).to(tl.float32)
        raw, delta = step_sizes(delta_ptr + times[None, :], mask, delta_bias, HAS_DELTA_BIAS,
                                DELTA_SOFTPLUS)
        B = tl.load(B_ptr + times[None, None, :], mask=tile_mask, other=0.0).to(tl.float32)
        C = tl.load(C_ptr + times[None, None, :], mask=tile_mask, other=0.0).to(tl.float32)
        decay = tl.where(in_range, tl.exp(delta[:, None, :] * A[:, :, None]), 1.0)
        drive = tl.where(in_range, (delta * u)[:, None, :] * B, 0.0)
        decay_prefix, drive_prefix = tl.associative_scan((decay, drive), axis=2,
                                                         combine_fn=compose_affine)
        start = tl.load(checkpoint_ptr + block_index * d * n, mask=cell_mask, other=0.0)
        x = decay_prefix * start[:, :, None] + drive_prefix

        dout = tl.load(dout_ptr + times[None, :], mask=mask, other=0.0).to(tl.float32)
        if HAS_Z:
            z = tl.load(z_ptr + times[None, :], mask=mask, other=0.0).to(tl.float32)
            gate = tl.sigmoid(z)
            dy = dout * z * gate
            if NEED_DZ:
                y = tl.sum(x * C, axis=1)
                if HAS_D:
                    y += skip[:, None] * u
                dz = dout * y * gate * (1.0 + z * (1.0 - gate))
                tl.store(dz_ptr + streams + times[None, :], dz.to(dz_ptr.dtype.element_ty),
                         mask=mask)
        else:
            dy = dout

        # g backwards through the block: g_t = dy_t C_t + a_{t+1} g_{t+1}, a past L being 1.
        next_mask = channel_mask[:, None] & (times + 1 < L)[None, :]
        _, delta_next = step_sizes(delta_ptr + times[None, :] + 1, next_mask, delta_bias,
                                   HAS_DELTA_BIAS, DELTA_SOFTPLUS)
        decay_next = tl.where((times + 1 < L)[None, None, :],
                              tl.exp(delta_next[:, None, :] * A[:, :, None]), 1.0)
        g_decay, g = tl.associative_scan((decay_next, dy[:, None, :] * C), axis=2,
                                         combine_fn=compose_affine, reverse=True)
        g = g_decay * carried[:, :, None] + g
        carried = tl.sum(tl.where(is_first_step, g, 0.0), axis=2)

        if NEED_DU:
            du = delta * tl.sum(g * B, axis=1)
            if HAS_D:
                du += skip[:, None] * dy
            tl.store(du_ptr + streams + times[None, :], du.to(du_ptr.dtype.element_ty), mask=mask)
        decayed = tl.where(tile_mask, x - drive, 0.0)  # a_t x_{t-1}
        if NEED_DDELTA or NEED_DDELTA_BIAS:
            ddelta = tl.sum(g * (A[:, :, None] * decayed + B * u[:, None, :]), axis=1)
            if DELTA_SOFTPLUS:
                ddelta *= tl.sigmoid(raw)
            ddelta = tl.where(mask, ddelta, 0.0)
            if NEED_DDELTA:
                tl.store(ddelta_ptr + streams + times[None, :],
                         ddelta.to(ddelta_ptr.dtype.element_ty), mask=mask)
            ddelta_bias += tl.sum(ddelta, axis=1)
        if NEED_DA:
            dA += tl.sum(g * delta[:, None, :] * decayed, axis=2)
        if NEED_DD:
            dD += tl.sum(dy * u, axis=1)
        if NEED_DB:
            dB = g * (delta * u)[:, None, :]
            if TILE_IN_ONE_GROUP:
                tl.atomic_add(dB_ptr + group_rows + times[None, :], tl.sum(dB, axis=0),
                              mask=(states < n)[:, None] & time_mask[None, :])
            else:
                tl.atomic_add(dB_ptr + group_rows + times[None, None, :], dB, mask=tile_mask)
        if NEED_DC:
            dC = dy[:, None, :] * x
            if TILE_IN_ONE_GROUP:
                tl.atomic_add(dC_ptr + group_rows + times[None, :], tl.sum(dC, axis=0),
                              mask=(states < n)[:, None] & time_mask[None, :])
            else:
                tl.atomic_add(dC_ptr + group_rows + times[None, None, :], dC, mask=tile_mask)

    if NEED_DA:
        tl.atomic_add(dA_ptr + cells, dA, mask=cell_mask)
    if NEED_DD:
        tl.atomic_add(dD_ptr + channels, dD, mask=channel_mask)
    if NEED_DDELTA_BIAS:
        tl.atomic_add(ddelta_bias_ptr + channels, ddelta_bias, mask=channel_mask)
    if NEED_DH0:  # x_0 = a_0 x_{-1} + b_0
        _, first_delta = step_sizes(delta_ptr + tl.zeros([1], dtype=tl.int32)[None, :],
                                    channel_mask[:, None], delta_bias, HAS_DELTA_BIAS,
                                    DELTA_SOFTPLUS)
        first_decay = tl.exp(first_delta * A)  # [BLOCK_D, 1] * [BLOCK_D, N_PAD]
        tl.store(dh0_ptr + batch * d * n + cells, first_decay * carried, mask=cell_mask)
