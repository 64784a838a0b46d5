"""Triton kernels of the chunkwise delta rule: ``wy`` (per chunk), ``h`` (over chunks), ``o``.

Within a chunk of BT tokens, with gam_t the in-chunk cumulative log decay (per channel for KDA,
a scalar for Gated DeltaNet, zero for DeltaNet) and S_0 the state entering the chunk, the
recurrence unrolls to S_t = diag(exp(gam_t)) S_0 + sum_{i<=t} diag(exp(gam_t - gam_i)) k_i u_i^T
with pseudo-values u solving the unit lower-triangular system

    (I + A) U = diag(beta) V - diag(beta) (K * exp(gam)) S_0,
    A[t, i] = beta_t k_t^T diag(exp(gam_t - gam_i)) k_i   (i < t).

So with T = (I + A)^-1, W = T diag(beta) (K * exp(gam)) and U0 = T diag(beta) V, each chunk
needs U = U0 - W S_0, and

    S_next = diag(exp(gam_last)) S_0 + (K * exp(gam_last - gam))^T U,
    O = scale * ((Q * exp(gam)) S_0 + P U),  P[t, i] = q_t^T diag(exp(gam_t - gam_i)) k_i (i <= t).

Every exponent above is a decay over a forward time span (<= 0 for g <= 0), so nothing
overflows however strong the decay. A per-channel decay cannot be pulled out of the k-k and
q-k products as one matrix: ``_grams`` decays both sides of a pair to a boundary between them
(two levels of blocks, 16 then 4 rows, each factor <= 1, then a tensor-core product) and sums
only the pairs inside a 4-row block elementwise. The triangular solve is blocked the same way.

Stages: ``wy_kernel`` (per chunk: both grams, the solve, W, U0, the scores P, and for gated
decays exp(gam_last) and, per channel, the keys decayed to the chunk's end), ``state_kernel``
(sequential over chunks: U and the state entering every chunk; a scalar decay to the chunk's end
goes on U there instead of on the keys), ``output_kernel`` (per chunk and V tile: O).

Layouts, all token-major and packed (a [B, T] batch is B sequences of length T laid end to end;
``cu_seqlens`` [N + 1] marks where each sequence starts): q, k [tokens, H, K]; g (channel), w,
kd [tokens, HV, K]; v, u0, u, o [tokens, HV, V]; beta, g (scalar) [tokens, HV]; scores
[tokens, HV, BT]; chunk states [chunks, HV, K, V]; chunk_decay [chunks, HV, K] fp32;
initial/final state [N, HV, K, V] (the initial one of any float dtype, the final fp32). Value
head hv reads key head hv // (HV / H). Chunks never straddle sequences: ``chunk_table``
[chunks, 2] holds each chunk's (sequence, index within it), ``chunk_offsets`` [N + 1] each
sequence's first chunk. ``w``, ``kd``, ``u``, ``scores`` and the chunk states are scratch in
the input dtype (what the tensor cores take); ``u0`` is fp32 (only ever added to).
"""
from __future__ import annotations

import os

import triton
import triton.language as tl

from seqtune.launch import dot_precision

GATE_NONE = tl.constexpr(0)
GATE_SCALAR = tl.constexpr(1)
GATE_CHANNEL = tl.constexpr(2)
# Block sizes of the per-channel grams and of the triangular solve: 16 is the smallest tl.dot
# tile; 4-row blocks are what is left to do elementwise.
BLOCK = tl.constexpr(16)
SUB = tl.constexpr(4)
# Triton reads TRITON_INTERPRET when kernels are defined, so it is fixed for this import too.
INTERPRETED = tl.constexpr(os.environ.get("TRITON_INTERPRET", "0") == "1")


@triton.jit
def _mma(a, b):
    """a @ b with fp32 accumulation, operands in the input dtype. fp32 operands go through
    3xTF32 (fp32 accuracy on tensor cores; plain fp32 dots spill badly at these sizes). The
    interpreter multiplies bf16 operands as their integer bit patterns, so there the (already
    rounded) operands go in as fp32: the same arithmetic as the tensor cores' exact products."""
    if INTERPRETED:
        return tl.dot(a.to(tl.float32), b.to(tl.float32))
    elif a.dtype == tl.float32:
        return tl.dot(a, b, input_precision=dot_precision("tf32x3", "ieee"))
    else:
        return tl.dot(a, b)


@triton.jit
def _mma_split(a, b):
    """a @ b for an fp32 ``b`` (the running state) and ``a`` in the input dtype: b rounded to
    a's dtype, plus what that rounding dropped as a second product (~16 bits in all; exact
    for fp32). The state re-enters every chunk through U = U0 - W S, so its 8-bit rounding
    would otherwise gather over the chunks into the output and the final state."""
    high = b.to(a.dtype)
    product = _mma(a, high)
    if a.dtype != tl.float32:
        product += _mma(a, (b - high.to(tl.float32)).to(a.dtype))
    return product


@triton.jit
def _mma_split_left(a, b):
    """a @ b for an fp32 ``a`` (the UT transform's inverse, whose entries grow where keys are
    close: rounding it to 8 bits was the largest error of U0 and W) and ``b`` in the input
    dtype, as ``_mma_split`` does it."""
    high = a.to(b.dtype)
    product = _mma(high, b)
    if b.dtype != tl.float32:
        product += _mma((a - high.to(tl.float32)).to(b.dtype), b)
    return product


@triton.jit
def _mm_f32(a, b, EXACT: tl.constexpr):
    """a @ b of fp32 operands: 3xTF32 when EXACT (fp32 problems), else Triton's default, TF32
    on NVIDIA (the result is rounded to 16 bits anyway; AMD's gfx90a/gfx950 have no TF32)."""
    if EXACT:
        return tl.dot(a, b, input_precision=dot_precision("tf32x3", "ieee"))
    else:
        return tl.dot(a, b)


@triton.jit
def _load_rows(ptr, bos, rows, head, H, width, cols, T):
    """Rows ``rows`` (of the sequence starting at token ``bos``, length T) x columns ``cols`` of
    head ``head`` of a [tokens, H, width] tensor; 0 outside it."""
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
    """A [tokens, H] tensor (beta, scalar gate) at ``rows``, in fp32; 0 past the end."""
    return tl.load(ptr + (bos + rows) * H + head, mask=rows < T, other=0.0).to(tl.float32)


@triton.jit
def _within_sub_blocks(near_kk, near_qk, q_tile, k_tile, k, g, bos, rows, head, H, g_head, HV,
                       K, cols, T, BT: tl.constexpr, BK: tl.constexpr):
    """Adds the pairs inside one SUB-row block, summed exactly, to near_kk (k-k, i < t) and
    near_qk (q-k, i <= t), [BT, SUB] with column j for row j of t's block. Column j of every
    block at a time, its key row and the decays re-read from memory (cache hits) rather than
    gathered from registers."""
    idx = tl.arange(0, BT)
    local = idx % SUB
    first = rows - local
    column = tl.arange(0, SUB)[None, :]
    q32, k32 = q_tile.to(tl.float32), k_tile.to(tl.float32)
    # span = sum of g over rows j+1 .. t of t's block = gam_t - gam_j, built as j descends
    span = tl.zeros([BT, BK], dtype=tl.float32)
    for step in range(SUB):
        j = SUB - 1 - step
        # rows past t's block are masked out (for j = SUB - 1 they are all of them)
        g_next = _load_rows(g, bos, first + j + 1, g_head, HV, K, cols, T).to(tl.float32)
        span += tl.where((local > j)[:, None], g_next, 0.0)
        k_j = _load_rows(k, bos, first + j, head, H, K, cols, T).to(tl.float32)
        # masked before exp: rows above j would be a growth and may overflow
        weighted = k_j * tl.exp(tl.where((local >= j)[:, None], span, float("-inf")))
        near_kk += tl.where((column == j) & (local > j)[:, None],
                            tl.sum(k32 * weighted, axis=1)[:, None], 0.0)
        near_qk += tl.where(column == j, tl.sum(q32 * weighted, axis=1)[:, None], 0.0)
    return near_kk, near_qk


@triton.jit
def _spread_sub_blocks(near, BT: tl.constexpr):
    """[BT, SUB] (column j: row j of t's SUB-row block) -> [BT, BT] block diagonal."""
    idx = tl.arange(0, BT)
    column = tl.arange(0, SUB)[None, :]
    spread = tl.zeros([BT, BT], dtype=tl.float32)
    for j in tl.static_range(SUB):
        near_j = tl.sum(tl.where(column == j, near, 0.0), axis=1)
        spread += tl.where(idx[None, :] == (idx - idx % SUB + j)[:, None], near_j[:, None], 0.0)
    return spread


@triton.jit
def _across_blocks(kk, qk, q, k, gam, INNER: tl.constexpr, OUTER: tl.constexpr,
                   BT: tl.constexpr, BK: tl.constexpr):
    """Adds to (kk: k-k, qk: q-k) the pairs (t, i) in the same OUTER-row block with i in an
    earlier INNER-row block than t. For t's INNER block s, both sides are decayed to the last row
    before it, t by exp(gam_t - gam_ref) and i by exp(gam_ref - gam_i), each a decay over a
    forward span (<= 1), then multiplied on tensor cores."""
    idx = tl.arange(0, BT)
    part = (idx % OUTER) // INNER
    q32, k32 = q.to(tl.float32), k.to(tl.float32)
    same = (idx // OUTER)[:, None] == (idx // OUTER)[None, :]
    for s in range(1, OUTER // INNER):
        ref = tl.zeros([BT, BK], dtype=tl.float32)
        for outer in range(BT // OUTER):
            ref_row = tl.sum(tl.where(idx[:, None] == outer * OUTER + s * INNER - 1, gam, 0.0),
                             axis=0)
            ref += tl.where((idx // OUTER == outer)[:, None], ref_row[None, :], 0.0)
        late = (part == s)[:, None]
        early = (part < s)[:, None]
        to_ref = tl.exp(tl.where(late, gam - ref, 0.0))
        from_ref = tl.where(early, k32 * tl.exp(tl.where(early, ref - gam, 0.0)), 0.0)
        from_ref = tl.trans(from_ref.to(k.dtype))
        kk += tl.where(same, _mma(tl.where(late, k32 * to_ref, 0.0).to(k.dtype), from_ref), 0.0)
        qk += tl.where(same, _mma(tl.where(late, q32 * to_ref, 0.0).to(q.dtype), from_ref), 0.0)
    return kk, qk


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
def _grams(q, k, g, bos, rows, head, H, g_head, HV, K, T, GATE: tl.constexpr,
           BT: tl.constexpr, BK: tl.constexpr):
    """The chunk's decayed k-k gram (i < t) and q-k scores (i <= t) over all of K, fp32.

    Per-channel decay: pairs in different 16-row blocks, then in different 4-row blocks, via
    products decayed to a boundary between them; pairs inside a 4-row block elementwise, kept
    apart as [BT, SUB] so the big accumulators only ever take products."""
    idx = tl.arange(0, BT)
    kk = tl.zeros([BT, BT], dtype=tl.float32)
    qk = tl.zeros([BT, BT], dtype=tl.float32)
    near_kk = tl.zeros([BT, SUB], dtype=tl.float32)
    near_qk = tl.zeros([BT, SUB], dtype=tl.float32)
    for k0 in range(0, K, BK):
        cols = k0 + tl.arange(0, BK)
        q_tile = _load_rows(q, bos, rows, head, H, K, cols, T)
        k_tile = _load_rows(k, bos, rows, head, H, K, cols, T)
        if GATE == GATE_CHANNEL:
            gam = tl.cumsum(_load_rows(g, bos, rows, g_head, HV, K, cols, T).to(tl.float32),
                            axis=0)
            near_kk, near_qk = _within_sub_blocks(near_kk, near_qk, q_tile, k_tile, k, g, bos,
                                                  rows, head, H, g_head, HV, K, cols, T, BT, BK)
            kk, qk = _across_blocks(kk, qk, q_tile, k_tile, gam, SUB, BLOCK, BT, BK)
            if BT > BLOCK:
                kk, qk = _across_blocks(kk, qk, q_tile, k_tile, gam, BLOCK, BT, BT, BK)
        else:
            kk += _mma(k_tile, tl.trans(k_tile))
            qk += _mma(q_tile, tl.trans(k_tile))
    if GATE == GATE_CHANNEL:
        kk += _spread_sub_blocks(near_kk, BT)
        qk += _spread_sub_blocks(near_qk, BT)
    else:
        if GATE == GATE_SCALAR:
            gam = tl.cumsum(_load_per_token(g, bos, rows, g_head, HV, T), axis=0)
            kk *= _pair_decay(gam, False, BT)
            qk *= _pair_decay(gam, True, BT)
        kk = tl.where(idx[:, None] > idx[None, :], kk, 0.0)
        qk = tl.where(idx[:, None] >= idx[None, :], qk, 0.0)
    return kk, qk


@triton.jit
def _merge_block_rows(inverse, a, INNER: tl.constexpr, OUTER: tl.constexpr,
                      EXACT: tl.constexpr, BT: tl.constexpr):
    """(I + a)^-1 on the OUTER-row diagonal blocks, from ``inverse`` holding it on the
    INNER-row ones: block row r is X_r = D_r^-1 (E_r - L_r X), L the part of a below the INNER
    blocks, formed top-down from the rows already done (block forward substitution)."""
    idx = tl.arange(0, BT)
    part = (idx % OUTER) // INNER
    below = ((idx // OUTER)[:, None] == (idx // OUTER)[None, :]) & \
        ((idx // INNER)[:, None] > (idx // INNER)[None, :])
    below = tl.where(below, a, 0.0)
    diagonal_inverse = inverse
    for r in range(1, OUTER // INNER):
        done = _mm_f32(below, inverse, EXACT)
        if INNER > 1:
            done = _mm_f32(diagonal_inverse, done, EXACT)
        inverse -= tl.where((part == r)[:, None], done, 0.0)
    return inverse


@triton.jit
def _unit_lower_inverse(a, EXACT: tl.constexpr, BT: tl.constexpr):
    """(I + a)^-1 for a strictly lower-triangular [BT, BT] a, in fp32: row by row inside
    4-row blocks, then 4-row blocks into 16-row ones, then those into the whole chunk; every
    step one or two products on tensor cores."""
    idx = tl.arange(0, BT)
    inverse = (idx[:, None] == idx[None, :]).to(tl.float32)
    inverse = _merge_block_rows(inverse, a, 1, SUB, EXACT, BT)
    inverse = _merge_block_rows(inverse, a, SUB, BLOCK, EXACT, BT)
    if BT > BLOCK:
        inverse = _merge_block_rows(inverse, a, BLOCK, BT, EXACT, BT)
    return inverse


@triton.jit
def sequence_chunk(chunk_table, cu_seqlens, index):
    """Chunk ``index`` of the packed batch: (its sequence, the sequence's first token as int64,
    the sequence's length, the chunk's index within the sequence)."""
    seq = tl.load(chunk_table + 2 * index)
    local = tl.load(chunk_table + 2 * index + 1)
    bos = tl.load(cu_seqlens + seq).to(tl.int64)
    length = (tl.load(cu_seqlens + seq + 1).to(tl.int64) - bos).to(tl.int32)
    return seq, bos, length, local


@triton.jit
def wy_kernel(q, k, v, beta, g, w, u0, kd, chunk_decay, scores, qg, chunk_table, cu_seqlens,
              H, HV, K, V, GATE: tl.constexpr, STORE_KD: tl.constexpr, STORE_QG: tl.constexpr,
              BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr):
    """One chunk and value head: the scores P, W = (I + A)^-1 diag(beta) (K * exp(gam)),
    U0 = (I + A)^-1 diag(beta) V and, gated, exp(gam_last); with STORE_KD (per-channel gate)
    the keys decayed to the chunk's end K * exp(gam_last - gam);
    with STORE_QG (the backward's recompute, per-channel gate) also the decayed queries
    Q * exp(gam) for the reverse recurrence. q and k are read at the value head's key head.

    Grid (chunks, HV)."""
    chunk, hv = tl.program_id(0), tl.program_id(1)
    _, bos, T, local = sequence_chunk(chunk_table, cu_seqlens, chunk)
    if local * BT >= T:
        return  # a spare row of a packed batch's chunk table
    head = hv // (HV // H)
    idx = tl.arange(0, BT)
    rows = local * BT + idx
    kk, qk = _grams(q, k, g, bos, rows, head, H, hv, HV, K, T, GATE, BT, BK)
    _store_rows(scores, qk, bos, rows, hv, HV, BT, idx, T)
    beta_rows = _load_per_token(beta, bos, rows, hv, HV, T)
    # fp32, as fla keeps the UT transform's intermediates: W and U0 take it in two parts
    inverse = _unit_lower_inverse(kk * beta_rows[:, None], k.dtype.element_ty == tl.float32, BT)
    gam = tl.zeros([BT], dtype=tl.float32)
    if GATE == GATE_SCALAR:
        gam = tl.cumsum(_load_per_token(g, bos, rows, hv, HV, T), axis=0)
    decay_base = (chunk.to(tl.int64) * HV + hv) * K
    for k0 in range(0, K, BK):
        cols = k0 + tl.arange(0, BK)
        keys = _load_rows(k, bos, rows, head, H, K, cols, T).to(tl.float32)
        if GATE != GATE_NONE:
            if GATE == GATE_SCALAR:
                gam_tile = tl.broadcast_to(gam[:, None], [BT, BK])
            else:
                gam_tile = tl.cumsum(
                    _load_rows(g, bos, rows, hv, HV, K, cols, T).to(tl.float32), axis=0)
            # padded rows have g = 0, so the last row holds the chunk's total decay
            gam_last = tl.sum(tl.where(idx[:, None] == BT - 1, gam_tile, 0.0), axis=0)
            if STORE_KD:
                _store_rows(kd, keys * tl.exp(gam_last[None, :] - gam_tile), bos, rows, hv, HV,
                            K, cols, T)
            tl.store(chunk_decay + decay_base + cols, tl.exp(gam_last), mask=cols < K)
            keys *= tl.exp(gam_tile)
            if STORE_QG:
                queries = _load_rows(q, bos, rows, head, H, K, cols, T).to(tl.float32)
                _store_rows(qg, queries * tl.exp(gam_tile), bos, rows, hv, HV, K, cols, T)
        keys = (keys * beta_rows[:, None]).to(k.dtype.element_ty)
        _store_rows(w, _mma_split_left(inverse, keys), bos, rows, hv, HV, K, cols, T)
    for v0 in range(0, V, BV):
        cols = v0 + tl.arange(0, BV)
        values = _load_rows(v, bos, rows, hv, HV, V, cols, T).to(tl.float32)
        values = (values * beta_rows[:, None]).to(v.dtype.element_ty)
        _store_rows(u0, _mma_split_left(inverse, values), bos, rows, hv, HV, V, cols, T)


@triton.jit
def state_kernel(keys, g, chunk_decay, w, u0, u, states, h0, ht, cu_seqlens, chunk_offsets, HK,
                 HV, K, V, GATE: tl.constexpr, HAS_H0: tl.constexpr, STORE_HT: tl.constexpr,
                 BT: tl.constexpr, KP: tl.constexpr, BV: tl.constexpr):
    """The recurrence over one sequence's chunks for one [K, BV] slice of a value head's state
    (all of K in registers): stores each chunk's entering state S and its pseudo-values
    U = U0 - W S, then S <- diag(chunk_decay) S + keys^T (U * decay) (``keys`` has HK heads).

    Per-channel gate: ``keys`` are decayed to the chunk's end (HK = HV) and decay = 1. Scalar
    gate: ``keys`` is k itself (exact in the input dtype) and decay = exp(gam_last - gam) is
    applied to U in fp32, so the state's increment takes one rounding to the input dtype (of
    U * decay) instead of two (of U and of the decayed keys).

    Grid (sequences * HV, V tiles)."""
    seq_head, v_tile = tl.program_id(0), tl.program_id(1)
    seq, hv = seq_head // HV, seq_head % HV
    key_head = hv // (HV // HK)
    bos = tl.load(cu_seqlens + seq).to(tl.int64)
    T = (tl.load(cu_seqlens + seq + 1).to(tl.int64) - bos).to(tl.int32)
    first_chunk = tl.load(chunk_offsets + seq).to(tl.int64)
    idx = tl.arange(0, BT)
    kdim = tl.arange(0, KP)
    vcols = v_tile * BV + tl.arange(0, BV)
    state_mask = (kdim < K)[:, None] & (vcols < V)[None, :]
    state_offsets = kdim[:, None] * V + vcols[None, :]
    own_state = seq_head.to(tl.int64) * K * V
    state = tl.zeros([KP, BV], dtype=tl.float32)
    if HAS_H0:
        state += tl.load(h0 + own_state + state_offsets, mask=state_mask, other=0.0).to(tl.float32)
    for local in range(tl.cdiv(T, BT)):
        rows = local * BT + idx
        chunk_base = (first_chunk + local) * HV + hv
        tl.store(states + chunk_base * K * V + state_offsets, state.to(states.dtype.element_ty),
                 mask=state_mask)
        w_c = _load_rows(w, bos, rows, hv, HV, K, kdim, T)
        u_c = _load_rows(u0, bos, rows, hv, HV, V, vcols, T).to(tl.float32)
        u_c -= _mma_split(w_c, state)
        _store_rows(u, u_c, bos, rows, hv, HV, V, vcols, T)
        k_c = _load_rows(keys, bos, rows, key_head, HK, K, kdim, T)
        if GATE != GATE_NONE:
            state *= tl.load(chunk_decay + chunk_base * K + kdim, mask=kdim < K, other=0.0)[:, None]
        if GATE == GATE_SCALAR:
            gam = tl.cumsum(_load_per_token(g, bos, rows, hv, HV, T), axis=0)
            # padded rows have g = 0 (and U = 0), so the last row holds the chunk's total decay
            gam_last = tl.sum(tl.where(idx == BT - 1, gam, 0.0), axis=0)
            u_c *= tl.exp(gam_last - gam)[:, None]
        state += _mma(tl.trans(k_c), u_c.to(k_c.dtype))
    if STORE_HT:
        tl.store(ht + own_state + state_offsets, state, mask=state_mask)


@triton.jit
def output_kernel(q, g, u, states, scores, o, scale, chunk_table, cu_seqlens, H, HV, K, V,
                  GATE: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr):
    """One chunk, value head and V tile: O = scale * ((Q * exp(gam)) S + P U).

    Grid (chunks, V tiles, HV)."""
    chunk, v_tile, hv = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    _, bos, T, local = sequence_chunk(chunk_table, cu_seqlens, chunk)
    if local * BT >= T:
        return  # a spare row of a packed batch's chunk table
    head = hv // (HV // H)
    idx = tl.arange(0, BT)
    rows = local * BT + idx
    vcols = v_tile * BV + tl.arange(0, BV)
    chunk_base = (chunk.to(tl.int64) * HV + hv) * K * V
    from_state = tl.zeros([BT, BV], dtype=tl.float32)
    for k0 in range(0, K, BK):
        kcols = k0 + tl.arange(0, BK)
        q_tile = _load_rows(q, bos, rows, head, H, K, kcols, T)
        state = tl.load(states + chunk_base + kcols[:, None] * V + vcols[None, :],
                        mask=(kcols < K)[:, None] & (vcols < V)[None, :], other=0.0)
        if GATE == GATE_CHANNEL:
            gam = tl.cumsum(_load_rows(g, bos, rows, hv, HV, K, kcols, T).to(tl.float32), axis=0)
            q_tile = (q_tile.to(tl.float32) * tl.exp(gam)).to(q_tile.dtype)
        from_state += _mma(q_tile, state)
    if GATE == GATE_SCALAR:
        from_state *= tl.exp(tl.cumsum(_load_per_token(g, bos, rows, hv, HV, T), axis=0))[:, None]
    p = _load_rows(scores, bos, rows, hv, HV, BT, idx, T)
    u_c = _load_rows(u, bos, rows, hv, HV, V, vcols, T)
    _store_rows(o, scale * (from_state + _mma(p, u_c)), bos, rows, hv, HV, V, vcols, T)
