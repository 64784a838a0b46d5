"""Triton kernels of the chunkwise delta rule: ``wy`` (per chunk), ``h`` (over chunks), ``o``.

Within a chunk of BT tokens, with gam_t the in-chunk cumulative log decay (per channel for KDA,
a scalar for Gated DeltaNet, zero for DeltaNet) and S_0 the state entering the chunk, the
recurrence unrolls to S_t = diag(exp(gam_t)) S_0 + sum_{i<=t} diag(exp(gam_t - gam_i)) k_i u_i^T
with pseudo-values u solving the unit lower-triangular system

    (I + A) U = diag(beta) V - diag(beta) (K * exp(gam)) S_0,
    A[t, i] = beta_t k_t^T diag(exp(gam_t - gam_i)) k_i   (i < t).

So with T = (I + A)^-1 (forward substitution in-kernel), W = T diag(beta) (K * exp(gam)) and
U0 = T diag(beta) V, each chunk needs U = U0 - W S_0, and

    S_next = diag(exp(gam_last)) S_0 + (K * exp(gam_last - gam))^T U,
    O = scale * ((Q * exp(gam)) S_0 + Aqk U),  Aqk[t, i] = q_t^T diag(exp(gam_t - gam_i)) k_i (i <= t).

Every exponent above is a decay over a forward time span (<= 0 for g <= 0), so nothing
overflows however strong the decay. For the per-channel decay the pairwise factors cannot be
pulled out of the k-k and q-k products as one matrix; ``_channel_gram`` splits the chunk into
16-row blocks: across blocks both sides are decayed to the boundary between them (each factor
<= 1, then a tensor-core product), within a block the 16 columns are summed exactly.

Layouts: q, k, g (channel), w, kd [B, T, H, K]; v, u0, u, o [B, T, H, V]; beta, g (scalar)
[B, T, H]; chunk states [B * H, NT, K, V]; chunk_decay [B * H, NT, K] fp32; initial/final
state [B, H, K, V] fp32. ``w``, ``kd``, ``u0``, ``u`` and the chunk states are scratch in the
input dtype (what the tensor cores take).
"""
from __future__ import annotations

import os

import triton
import triton.language as tl

GATE_NONE = tl.constexpr(0)
GATE_SCALAR = tl.constexpr(1)
GATE_CHANNEL = tl.constexpr(2)
# Rows per block of the per-channel gram: the smallest tile tl.dot accepts.
SUB = tl.constexpr(16)
# fp32 dots in full fp32 (not TF32): fp32 is the dtype a caller picks for accuracy.
PRECISION = tl.constexpr("ieee")
# Triton reads TRITON_INTERPRET when kernels are defined, so it is fixed for this import too.
INTERPRETED = tl.constexpr(os.environ.get("TRITON_INTERPRET", "0") == "1")


@triton.jit
def _mma(a, b):
    """a @ b with fp32 accumulation. The interpreter multiplies bf16 operands as their integer
    bit patterns, so there the (already bf16-rounded) operands go in as fp32, which is the
    same arithmetic as the tensor cores' exact products."""
    if INTERPRETED:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision=PRECISION)
    else:
        return tl.dot(a, b, input_precision=PRECISION)


@triton.jit
def _load_rows(ptr, bos, rows, head, H, width, cols, T):
    """Rows ``rows`` x columns ``cols`` of a [B, T, H, width] tensor; 0 outside it."""
    offsets = ((bos + rows)[:, None] * H + head) * width + cols[None, :]
    mask = (rows < T)[:, None] & (cols < width)[None, :]
    return tl.load(ptr + offsets, mask=mask, other=0.0)


@triton.jit
def _store_rows(ptr, value, bos, rows, head, H, width, cols, T):
    offsets = ((bos + rows)[:, None] * H + head) * width + cols[None, :]
    mask = (rows < T)[:, None] & (cols < width)[None, :]
    tl.store(ptr + offsets, value.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def _load_per_token(ptr, bos, rows, head, H, T):
    """A [B, T, H] tensor (beta, scalar gate) at ``rows``, in fp32; 0 past the end."""
    return tl.load(ptr + (bos + rows) * H + head, mask=rows < T, other=0.0).to(tl.float32)


@triton.jit
def _pair_decay(gam, INCLUSIVE: tl.constexpr, BT: tl.constexpr):
    """exp(gam_t - gam_i) for i < t (i <= t if INCLUSIVE), else 0, for a scalar gate."""
    idx = tl.arange(0, BT)
    if INCLUSIVE:
        keep = idx[:, None] >= idx[None, :]
    else:
        keep = idx[:, None] > idx[None, :]
    # masked before exp: the upper triangle would be a growth and may overflow
    return tl.exp(tl.where(keep, gam[:, None] - gam[None, :], float("-inf")))


@triton.jit
def _gram_across_blocks(a, b, gam, BT: tl.constexpr, BK: tl.constexpr):
    """sum_k a[t,k] b[i,k] exp(gam[t,k] - gam[i,k]) for i in an earlier 16-row block than t.

    Both sides are decayed to the last row before t's block: a by exp(gam_t - gam_ref) and b by
    exp(gam_ref - gam_i), each a decay over a forward span, then multiplied on tensor cores.
    """
    idx = tl.arange(0, BT)
    a32, b32 = a.to(tl.float32), b.to(tl.float32)
    gram = tl.zeros([BT, BT], dtype=tl.float32)
    for block in tl.static_range(1, BT // SUB):
        ref_row = block * SUB - 1
        gam_ref = tl.sum(tl.where(idx[:, None] == ref_row, gam, 0.0), axis=0)
        in_block = (idx // SUB == block)[:, None]
        before = (idx <= ref_row)[:, None]
        a_dec = tl.where(in_block, a32 * tl.exp(tl.where(in_block, gam - gam_ref[None, :], 0.0)),
                         0.0)
        b_dec = tl.where(before, b32 * tl.exp(tl.where(before, gam_ref[None, :] - gam, 0.0)), 0.0)
        gram += _mma(a_dec.to(b.dtype), tl.trans(b_dec.to(b.dtype)))
    return gram


@triton.jit
def _gram_within_blocks(a, b, gam, INCLUSIVE: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr):
    """sum_k a[t,k] b[i,k] exp(gam[t,k] - gam[i,k]) for i < t (i <= t) in t's 16-row block,
    one column of every block at a time, exactly (no factor is ever > 1)."""
    NB: tl.constexpr = BT // SUB
    a3 = tl.reshape(a.to(tl.float32), [NB, SUB, BK])
    b3 = tl.reshape(b.to(tl.float32), [NB, SUB, BK])
    gam3 = tl.reshape(gam, [NB, SUB, BK])
    row3 = tl.arange(0, SUB)[None, :, None]
    col3 = tl.arange(0, SUB)[None, None, :]
    blocks = tl.zeros([NB, SUB, SUB], dtype=tl.float32)
    for j in tl.static_range(SUB):
        pick = row3 == j
        b_j = tl.sum(tl.where(pick, b3, 0.0), axis=1)
        gam_j = tl.sum(tl.where(pick, gam3, 0.0), axis=1)
        if INCLUSIVE:
            keep = row3 >= j
        else:
            keep = row3 > j
        decay = tl.exp(tl.where(keep, gam3 - gam_j[:, None, :], float("-inf")))
        column = tl.sum(a3 * b_j[:, None, :] * decay, axis=2)
        blocks += tl.where(col3 == j, column[:, :, None], 0.0)
    return _block_diagonal(blocks, BT)


@triton.jit
def _channel_gram(a, b, gam, INCLUSIVE: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr):
    """[BT, BT]: sum_k a[t,k] b[i,k] exp(gam[t,k] - gam[i,k]) for i < t (i <= t if INCLUSIVE)."""
    gram = _gram_within_blocks(a, b, gam, INCLUSIVE, BT, BK)
    if BT > SUB:
        gram += _gram_across_blocks(a, b, gam, BT, BK)
    return gram


@triton.jit
def _block_diagonal(blocks, BT: tl.constexpr):
    """[NB, SUB, SUB] diagonal blocks -> the [BT, BT] block-diagonal matrix."""
    NB: tl.constexpr = BT // SUB
    flat = tl.reshape(blocks, [BT, SUB])
    row_block = (tl.arange(0, BT) // SUB)[:, None, None]
    col_block = tl.arange(0, NB)[None, :, None]
    return tl.reshape(tl.where(row_block == col_block, flat[:, None, :], 0.0), [BT, BT])


@triton.jit
def _diagonal_blocks(matrix, BT: tl.constexpr):
    """The [NB, SUB, SUB] diagonal blocks of a [BT, BT] matrix."""
    NB: tl.constexpr = BT // SUB
    grid = tl.reshape(matrix, [NB, SUB, NB, SUB])
    same = tl.arange(0, NB)[:, None, None, None] == tl.arange(0, NB)[None, None, :, None]
    return tl.sum(tl.where(same, grid, 0.0), axis=2)


@triton.jit
def _unit_lower_inverse(a, EXACT: tl.constexpr, BT: tl.constexpr):
    """(I + a)^-1 for a strictly lower-triangular [BT, BT] a, in fp32.

    The 16x16 diagonal blocks are inverted together by forward substitution (row i of a
    block's inverse is e_i - sum_{j<i} a[i, j] row_j); then block row r of the inverse, X_r =
    D_r^-1 (E_r - L_r X) with L the part below the diagonal blocks, is formed top-down from
    the rows already done. EXACT keeps those products in full fp32 (fp32 problems)."""
    NB: tl.constexpr = BT // SUB
    idx = tl.arange(0, SUB)
    # a block's row i sits in a column of the transposed blocks: no layout change in the loop
    blocks_t = tl.permute(_diagonal_blocks(a, BT), (0, 2, 1))
    inverse = tl.broadcast_to((idx[:, None] == idx[None, :]).to(tl.float32)[None, :, :],
                              [NB, SUB, SUB])
    for i in range(1, SUB):
        a_row = tl.sum(tl.where(idx[None, None, :] == i, blocks_t, 0.0), axis=2)
        update = tl.sum(a_row[:, :, None] * inverse, axis=1)
        inverse -= tl.where(idx[None, :, None] == i, update[:, None, :], 0.0)
    diagonal_inverse = _block_diagonal(inverse, BT)
    full = diagonal_inverse
    if NB > 1:
        block = tl.arange(0, BT) // SUB
        below = tl.where(block[:, None] > block[None, :], a, 0.0)
        for r in tl.static_range(1, NB):
            done = _mm_f32(diagonal_inverse, _mm_f32(below, full, EXACT), EXACT)
            full -= tl.where((block == r)[:, None], done, 0.0)
    return full


@triton.jit
def _mm_f32(a, b, EXACT: tl.constexpr):
    """a @ b for fp32 operands: full fp32, or TF32 where the result is rounded to 16 bits
    anyway."""
    if EXACT:
        return tl.dot(a, b, input_precision="ieee")
    else:
        return tl.dot(a, b, input_precision="tf32")


@triton.jit
def _key_gram(k, g, bos, rows, head, H, K, T, GATE: tl.constexpr, BT: tl.constexpr,
              BK: tl.constexpr):
    """sum_k k_t[k] k_i[k] (decayed per channel for KDA) for i < t, over all of K."""
    gram = tl.zeros([BT, BT], dtype=tl.float32)
    for k0 in range(0, K, BK):
        cols = k0 + tl.arange(0, BK)
        k_tile = _load_rows(k, bos, rows, head, H, K, cols, T)
        if GATE == GATE_CHANNEL:
            gam = tl.cumsum(_load_rows(g, bos, rows, head, H, K, cols, T).to(tl.float32), axis=0)
            gram += _channel_gram(k_tile, k_tile, gam, False, BT, BK)
        else:
            gram += _mma(k_tile, tl.trans(k_tile))
    return gram


@triton.jit
def wy_kernel(k, v, beta, g, w, u0, kd, chunk_decay, T, H, K, V, NT, GATE: tl.constexpr,
              BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr):
    """One chunk: W = (I + A)^-1 diag(beta) (K * exp(gam)), U0 = (I + A)^-1 diag(beta) V and,
    gated, the keys decayed to the chunk's end K * exp(gam_last - gam) and exp(gam_last), so
    that the sequential state kernel does no decay arithmetic of its own.

    Grid (chunks, B * H)."""
    chunk, bh = tl.program_id(0), tl.program_id(1)
    bos = (bh // H).to(tl.int64) * T
    head = bh % H
    rows = chunk * BT + tl.arange(0, BT)
    beta_rows = _load_per_token(beta, bos, rows, head, H, T)
    gram = _key_gram(k, g, bos, rows, head, H, K, T, GATE, BT, BK)
    gam = tl.zeros([BT], dtype=tl.float32)
    if GATE == GATE_SCALAR:
        gam = tl.cumsum(_load_per_token(g, bos, rows, head, H, T), axis=0)
        gram *= _pair_decay(gam, False, BT)
    idx = tl.arange(0, BT)
    a = tl.where(idx[:, None] > idx[None, :], gram * beta_rows[:, None], 0.0)
    inverse = _unit_lower_inverse(a, k.dtype.element_ty == tl.float32, BT)
    inverse = inverse.to(k.dtype.element_ty)
    decay_base = (bh.to(tl.int64) * NT + chunk) * K
    for k0 in range(0, K, BK):
        cols = k0 + tl.arange(0, BK)
        keys = _load_rows(k, bos, rows, head, H, K, cols, T).to(tl.float32)
        if GATE != GATE_NONE:
            if GATE == GATE_SCALAR:
                gam_tile = tl.broadcast_to(gam[:, None], [BT, BK])
            else:
                gam_tile = tl.cumsum(
                    _load_rows(g, bos, rows, head, H, K, cols, T).to(tl.float32), axis=0)
            # padded rows have g = 0, so the last row holds the chunk's total decay
            gam_last = tl.sum(tl.where(idx[:, None] == BT - 1, gam_tile, 0.0), axis=0)
            _store_rows(kd, keys * tl.exp(gam_last[None, :] - gam_tile), bos, rows, head, H, K,
                        cols, T)
            tl.store(chunk_decay + decay_base + cols, tl.exp(gam_last), mask=cols < K)
            keys *= tl.exp(gam_tile)
        keys = (keys * beta_rows[:, None]).to(k.dtype.element_ty)
        _store_rows(w, _mma(inverse, keys), bos, rows, head, H, K, cols, T)
    for v0 in range(0, V, BV):
        cols = v0 + tl.arange(0, BV)
        values = _load_rows(v, bos, rows, head, H, V, cols, T).to(tl.float32)
        values = (values * beta_rows[:, None]).to(v.dtype.element_ty)
        _store_rows(u0, _mma(inverse, values), bos, rows, head, H, V, cols, T)


@triton.jit
def state_kernel(keys, chunk_decay, w, u0, u, states, h0, ht, T, H, K, V, NT,
                 GATED: tl.constexpr, HAS_H0: tl.constexpr, STORE_HT: tl.constexpr,
                 BT: tl.constexpr, KP: tl.constexpr, BV: tl.constexpr):
    """The recurrence over chunks for one [K, BV] slice of the state (all of K in registers):
    stores each chunk's entering state S and its pseudo-values U = U0 - W S, then
    S <- diag(chunk_decay) S + keys^T U (keys already decayed to the chunk's end if GATED).

    Grid (V tiles, B * H)."""
    v_tile, bh = tl.program_id(0), tl.program_id(1)
    bos = (bh // H).to(tl.int64) * T
    head = bh % H
    kdim = tl.arange(0, KP)
    vcols = v_tile * BV + tl.arange(0, BV)
    state_mask = (kdim < K)[:, None] & (vcols < V)[None, :]
    state_offsets = kdim[:, None] * V + vcols[None, :]
    state = tl.zeros([KP, BV], dtype=tl.float32)
    if HAS_H0:
        state += tl.load(h0 + bh.to(tl.int64) * K * V + state_offsets, mask=state_mask, other=0.0)
    for chunk in range(NT):
        rows = chunk * BT + tl.arange(0, BT)
        chunk_base = bh.to(tl.int64) * NT + chunk
        tl.store(states + chunk_base * K * V + state_offsets, state.to(states.dtype.element_ty),
                 mask=state_mask)
        w_c = _load_rows(w, bos, rows, head, H, K, kdim, T)
        u_c = _load_rows(u0, bos, rows, head, H, V, vcols, T).to(tl.float32)
        u_c -= _mma(w_c, state.to(w_c.dtype))
        _store_rows(u, u_c, bos, rows, head, H, V, vcols, T)
        k_c = _load_rows(keys, bos, rows, head, H, K, kdim, T)
        if GATED:
            state *= tl.load(chunk_decay + chunk_base * K + kdim, mask=kdim < K, other=0.0)[:, None]
        state += _mma(tl.trans(k_c), u_c.to(k_c.dtype))
    if STORE_HT:
        tl.store(ht + bh.to(tl.int64) * K * V + state_offsets, state, mask=state_mask)


@triton.jit
def output_kernel(q, k, g, u, states, o, scale, T, H, K, V, NT, GATE: tl.constexpr,
                  BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr):
    """One chunk and V tile: O = scale * ((Q * exp(gam)) S + Aqk U).

    Grid (V tiles, chunks, B * H)."""
    v_tile, chunk, bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    bos = (bh // H).to(tl.int64) * T
    head = bh % H
    rows = chunk * BT + tl.arange(0, BT)
    vcols = v_tile * BV + tl.arange(0, BV)
    chunk_base = (bh.to(tl.int64) * NT + chunk) * K * V
    from_state = tl.zeros([BT, BV], dtype=tl.float32)
    scores = tl.zeros([BT, BT], dtype=tl.float32)
    for k0 in range(0, K, BK):
        kcols = k0 + tl.arange(0, BK)
        q_tile = _load_rows(q, bos, rows, head, H, K, kcols, T)
        k_tile = _load_rows(k, bos, rows, head, H, K, kcols, T)
        state = tl.load(states + chunk_base + kcols[:, None] * V + vcols[None, :],
                        mask=(kcols < K)[:, None] & (vcols < V)[None, :], other=0.0)
        if GATE == GATE_CHANNEL:
            gam = tl.cumsum(_load_rows(g, bos, rows, head, H, K, kcols, T).to(tl.float32), axis=0)
            decayed_q = (q_tile.to(tl.float32) * tl.exp(gam)).to(q_tile.dtype)
            from_state += _mma(decayed_q, state)
            scores += _channel_gram(q_tile, k_tile, gam, True, BT, BK)
        else:
            from_state += _mma(q_tile, state)
            scores += _mma(q_tile, tl.trans(k_tile))
    idx = tl.arange(0, BT)
    if GATE == GATE_SCALAR:
        gam = tl.cumsum(_load_per_token(g, bos, rows, head, H, T), axis=0)
        from_state *= tl.exp(gam)[:, None]
        scores *= _pair_decay(gam, True, BT)
    scores = tl.where(idx[:, None] >= idx[None, :], scores, 0.0)
    u_c = _load_rows(u, bos, rows, head, H, V, vcols, T)
    out = scale * (from_state + _mma(scores.to(u_c.dtype), u_c))
    _store_rows(o, out, bos, rows, head, H, V, vcols, T)
