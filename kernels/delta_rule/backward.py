"""Triton kernels of the delta rule's backward: ``dstate_kernel`` (over chunks in reverse) and
``dchunk_kernel`` (per chunk), after the forward's wy and h stages are recomputed.

Per chunk (notation of ``kernels.py``: gam the in-chunk cumulative log decay, gl its last row,
T = (I + A)^-1, Kg = K * exp(gam), Kd = K * exp(gl - gam), Vb = diag(beta) V, Kb = diag(beta) Kg,
W = T Kb, U = T Vb - W S, O = scale (Qg S + P U), S_next = exp(gl) S + Kd^T U), with dS_next
the gradient reaching the state that leaves the chunk:

    dU = scale P^T dO + Kd dS_next
    dS = exp(gl) dS_next + scale Qg^T dO - W^T dU                  (the reverse recurrence)
    dVb = T^T dU;  dA = -dVb U^T (strictly lower);  dP = scale dO U^T (lower)
    dKb = -T^T dU S^T;  dQg = scale dO S^T;  dKd = U dS_next^T

(dA = -T^T dT T^T with dT = dU Vb^T + dW Kb^T reduces to -dVb U^T because Kb S = Vb - (I + A) U.)
The decayed grams A[t, i] = beta_t sum_c k_tc k_ic exp(gam_tc - gam_ic) and P give back to q, k
and gam through ``_decayed_mix``, with every exponent a decay over a forward span (<= 0) as in
the forward; gam's gradient becomes g's by a reverse cumulative sum within the chunk, plus the
chunk total's.

Layouts as in ``kernels.py``; dstates [chunks, HV, K, V] fp32 (the gradient reaching the state
that leaves each chunk), du [tokens, HV, V] fp32; the gradients dq, dk [tokens, HV, K]
(per value head, summed over a key head's value heads by the caller), dv, dbeta, dg fp32.
"""
from __future__ import annotations

import triton
import triton.language as tl

from seqtune.kernels.delta_rule.kernels import (BLOCK, GATE_CHANNEL, GATE_NONE, GATE_SCALAR,
                                                _grams, _load_per_token, _load_rows, _mm_f32,
                                                _mma, _pair_decay, _store_rows,
                                                _unit_lower_inverse, sequence_chunk)
from seqtune.launch import dot_precision


@triton.jit
def dstate_kernel(q, g, keys, chunk_decay, w, scores, do, du, dstates, dht, dh0, cu_seqlens,
                  chunk_offsets, scale, H, HK, HV, K, V, GATE: tl.constexpr,
                  HAS_DHT: tl.constexpr, STORE_DH0: tl.constexpr, EXACT: tl.constexpr,
                  BT: tl.constexpr, KP: tl.constexpr, BV: tl.constexpr):
    """The reverse recurrence over one sequence's chunks for a [K, BV] slice of a value head's
    state gradient (all of K in registers): stores the gradient reaching each chunk's leaving
    state and each chunk's dU, then steps dS back through the chunk. ``keys``: with a
    per-channel gate the decayed keys (HK = HV heads), else k (a scalar decay goes on the
    product); ``q``: with a per-channel gate the decayed queries
    Q * exp(gam) (HV heads, from the recomputed wy stage), else q.

    Grid (sequences * HV, V tiles)."""
    seq_head, v_tile = tl.program_id(0), tl.program_id(1)
    seq, hv = seq_head // HV, seq_head % HV
    head, key_head = hv // (HV // H), hv // (HV // HK)
    bos = tl.load(cu_seqlens + seq).to(tl.int64)
    T = (tl.load(cu_seqlens + seq + 1).to(tl.int64) - bos).to(tl.int32)
    first_chunk = tl.load(chunk_offsets + seq).to(tl.int64)
    idx = tl.arange(0, BT)
    kdim = tl.arange(0, KP)
    vcols = v_tile * BV + tl.arange(0, BV)
    state_mask = (kdim < K)[:, None] & (vcols < V)[None, :]
    state_offsets = kdim[:, None] * V + vcols[None, :]
    own_state = seq_head.to(tl.int64) * K * V
    dstate = tl.zeros([KP, BV], dtype=tl.float32)
    if HAS_DHT:
        dstate += tl.load(dht + own_state + state_offsets, mask=state_mask, other=0.0)
    chunks = tl.cdiv(T, BT)
    for step in range(chunks):
        local = chunks - 1 - step
        rows = local * BT + idx
        chunk_base = (first_chunk + local) * HV + hv
        tl.store(dstates + chunk_base * K * V + state_offsets,
                 dstate.to(dstates.dtype.element_ty), mask=state_mask)
        do_c = _load_rows(do, bos, rows, hv, HV, V, vcols, T)
        p = _load_rows(scores, bos, rows, hv, HV, BT, idx, T)
        k_c = _load_rows(keys, bos, rows, key_head, HK, K, kdim, T)
        # products with the (fp32) state gradient stay in fp32: the gradients of the keys sum
        # many such terms that largely cancel
        from_keys = _mm_f32(k_c.to(tl.float32), dstate, EXACT)
        if GATE == GATE_SCALAR:
            # k itself (exact in the input dtype), the decay to the chunk's end on the product,
            # as the forward's state kernel does it (no keys decayed and rounded)
            gam = tl.cumsum(_load_per_token(g, bos, rows, hv, HV, T), axis=0)
            # padded rows have g = 0, so the last row holds the chunk's total decay
            gam_last = tl.sum(tl.where(idx == BT - 1, gam, 0.0), axis=0)
            from_keys *= tl.exp(gam_last - gam)[:, None]
        du_c = scale * _mma(tl.trans(p), do_c) + from_keys
        _store_rows(du, du_c, bos, rows, hv, HV, V, vcols, T)
        if GATE == GATE_CHANNEL:
            q_c = _load_rows(q, bos, rows, hv, HV, K, kdim, T)
        else:
            q_c = _load_rows(q, bos, rows, head, H, K, kdim, T)
        if GATE == GATE_SCALAR:
            # dO decayed to the chunk's start stays fp32, a bf16x3 dot operand (~16 bits):
            # rounded to the input dtype it was most of bf16 dh0's error (fla keeps Q exp(gam)
            # fp32). Triton's bf16x3 took up to 30 fewer registers on sm_80 than _mma_split.
            do_decayed = do_c.to(tl.float32) * tl.exp(gam)[:, None]
            if EXACT:
                from_queries = _mm_f32(tl.trans(q_c).to(tl.float32), do_decayed, EXACT)
            else:
                from_queries = tl.dot(tl.trans(q_c).to(tl.float32), do_decayed,
                                      input_precision=dot_precision("bf16x3", "ieee"))
        else:
            from_queries = _mma(tl.trans(q_c), do_c)
        if GATE != GATE_NONE:
            decay = tl.load(chunk_decay + chunk_base * K + kdim, mask=kdim < K, other=0.0)
            dstate *= decay[:, None]
        w_c = _load_rows(w, bos, rows, hv, HV, K, kdim, T)
        dstate += scale * from_queries
        dstate -= _mm_f32(tl.trans(w_c.to(tl.float32)), du_c, EXACT)
    if STORE_DH0:
        tl.store(dh0 + own_state + state_offsets, dstate, mask=state_mask)


@triton.jit
def _gather_column(m, offset, BT: tl.constexpr):
    """m[t, first_t + offset] for every row t, first_t the first row of t's BLOCK-row block."""
    idx = tl.arange(0, BT)
    target = idx - idx % BLOCK + offset
    return tl.sum(tl.where(idx[None, :] == target[:, None], m, 0.0), axis=1)


@triton.jit
def _gather_row(m, offset, BT: tl.constexpr):
    """m[first_i + offset, i] for every column i, as a vector over i."""
    idx = tl.arange(0, BT)
    target = idx - idx % BLOCK + offset
    return tl.sum(tl.where(idx[:, None] == target[None, :], m, 0.0), axis=0)


@triton.jit
def _decayed_mix(m, left, right, left_ptr, right_ptr, g, gam, bos, rows, head, H, hv, HV, K,
                 cols, T, EXACT: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr):
    """For a lower-triangular m [BT, BT] and a per-channel decay, over one K tile:

        row_t = sum_i m[t, i] right_i exp(gam_t - gam_i)
        col_i = sum_t m[t, i] left_t exp(gam_t - gam_i)

    Pairs in different BLOCK-row blocks go through the last row r before t's block (both
    factors exp(gam_t - gam_r), exp(gam_r - gam_i) <= 1) as products; pairs inside a block one
    offset at a time, the span of g between them summed from rows re-read from memory (as in
    the forward's ``_within_sub_blocks``), masked before exp."""
    idx = tl.arange(0, BT)
    row = tl.zeros([BT, BK], dtype=tl.float32)
    col = tl.zeros([BT, BK], dtype=tl.float32)
    for s in range(1, BT // BLOCK):
        ref = tl.sum(tl.where(idx[:, None] == s * BLOCK - 1, gam, 0.0), axis=0)
        late = (idx // BLOCK == s)[:, None]
        early = (idx < s * BLOCK)[:, None]
        to_ref = tl.where(late, tl.exp(tl.where(late, gam - ref[None, :], 0.0)), 0.0)
        from_ref = tl.where(early, tl.exp(tl.where(early, ref[None, :] - gam, 0.0)), 0.0)
        pairs = tl.where((idx // BLOCK == s)[:, None] & (idx < s * BLOCK)[None, :], m, 0.0)
        row += to_ref * _mm_f32(pairs, right * from_ref, EXACT)
        col += from_ref * _mm_f32(tl.trans(pairs), left * to_ref, EXACT)
    local = (idx % BLOCK)[:, None]
    first = rows - idx % BLOCK
    span = tl.zeros([BT, BK], dtype=tl.float32)
    for step in range(BLOCK):
        j = BLOCK - 1 - step
        g_next = _load_rows(g, bos, first + j + 1, hv, HV, K, cols, T).to(tl.float32)
        span += tl.where(local > j, g_next, 0.0)
        right_j = _load_rows(right_ptr, bos, first + j, head, H, K, cols, T).to(tl.float32)
        decay = tl.exp(tl.where(local >= j, span, float("-inf")))
        row += _gather_column(m, j, BT)[:, None] * right_j * decay
    span = tl.zeros([BT, BK], dtype=tl.float32)
    for j in range(BLOCK):
        g_j = _load_rows(g, bos, first + j, hv, HV, K, cols, T).to(tl.float32)
        span += tl.where(local < j, g_j, 0.0)
        left_j = _load_rows(left_ptr, bos, first + j, head, H, K, cols, T).to(tl.float32)
        decay = tl.exp(tl.where(local <= j, span, float("-inf")))
        col += _gather_row(m, j, BT)[:, None] * left_j * decay
    return row, col


@triton.jit
def _chunk_state_products(u, states, dstates, do, du, bos, rows, hv, HV, K, V, chunk_base,
                          kcols, T, EXACT: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                          BV: tl.constexpr):
    """Over all of V, for one K tile: (dO S^T, dU S^T, U dS_next^T, sum_v S * dS_next), in
    fp32 (dU and dS_next are fp32: the key gradients sum such products that largely cancel)."""
    d_qg = tl.zeros([BT, BK], dtype=tl.float32)
    d_us = tl.zeros([BT, BK], dtype=tl.float32)
    d_kd = tl.zeros([BT, BK], dtype=tl.float32)
    d_decay = tl.zeros([BK], dtype=tl.float32)
    for v0 in range(0, V, BV):
        vcols = v0 + tl.arange(0, BV)
        offsets = chunk_base * K * V + kcols[:, None] * V + vcols[None, :]
        mask = (kcols < K)[:, None] & (vcols < V)[None, :]
        s0 = tl.load(states + offsets, mask=mask, other=0.0).to(tl.float32)
        ds = tl.load(dstates + offsets, mask=mask, other=0.0).to(tl.float32)
        do_t = _load_rows(do, bos, rows, hv, HV, V, vcols, T)
        du_t = _load_rows(du, bos, rows, hv, HV, V, vcols, T)
        u_t = _load_rows(u, bos, rows, hv, HV, V, vcols, T)
        d_qg += _mm_f32(do_t.to(tl.float32), tl.trans(s0), EXACT)
        d_us += _mm_f32(du_t, tl.trans(s0), EXACT)
        d_kd += _mm_f32(u_t.to(tl.float32), tl.trans(ds), EXACT)
        d_decay += tl.sum(s0 * ds, axis=1)
    return d_qg, d_us, d_kd, d_decay


@triton.jit
def dchunk_kernel(q, k, v, beta, g, u, states, dstates, do, du, dq, dk, dv, dbeta, dg,
                  chunk_table, cu_seqlens, scale, H, HV, K, V, GATE: tl.constexpr,
                  BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr):
    """One chunk and value head: dv, dbeta, dg and this value head's share of dq and dk.

    Grid (chunks, HV)."""
    chunk, hv = tl.program_id(0), tl.program_id(1)
    _, bos, T, local = sequence_chunk(chunk_table, cu_seqlens, chunk)
    if local * BT >= T:
        return  # a spare row of a packed batch's chunk table
    head = hv // (HV // H)
    idx = tl.arange(0, BT)
    rows = local * BT + idx
    exact = k.dtype.element_ty == tl.float32
    kk, qk = _grams(q, k, g, bos, rows, head, H, hv, HV, K, T, GATE, BT, BK)
    beta_rows = _load_per_token(beta, bos, rows, hv, HV, T)
    inverse = _unit_lower_inverse(kk * beta_rows[:, None], exact, BT)
    d_a = tl.zeros([BT, BT], dtype=tl.float32)
    d_p = tl.zeros([BT, BT], dtype=tl.float32)
    d_beta = tl.zeros([BT], dtype=tl.float32)
    for v0 in range(0, V, BV):
        vcols = v0 + tl.arange(0, BV)
        du_t = _load_rows(du, bos, rows, hv, HV, V, vcols, T)
        u_t = _load_rows(u, bos, rows, hv, HV, V, vcols, T).to(tl.float32)
        d_vb = _mm_f32(tl.trans(inverse), du_t, exact)
        _store_rows(dv, d_vb * beta_rows[:, None], bos, rows, hv, HV, V, vcols, T)
        values = _load_rows(v, bos, rows, hv, HV, V, vcols, T).to(tl.float32)
        d_beta += tl.sum(d_vb * values, axis=1)
        d_a += _mm_f32(d_vb, tl.trans(u_t), exact)
        do_t = _load_rows(do, bos, rows, hv, HV, V, vcols, T).to(tl.float32)
        d_p += _mm_f32(do_t, tl.trans(u_t), exact)
    d_a = tl.where(idx[:, None] > idx[None, :], -d_a, 0.0)
    d_beta += tl.sum(d_a * kk, axis=1)
    mix_a = d_a * beta_rows[:, None]
    mix_p = tl.where(idx[:, None] >= idx[None, :], scale * d_p, 0.0)
    gam_scalar = tl.zeros([BT], dtype=tl.float32)
    d_gam_scalar = tl.zeros([BT], dtype=tl.float32)
    if GATE == GATE_SCALAR:
        gam_scalar = tl.cumsum(_load_per_token(g, bos, rows, hv, HV, T), axis=0)
        # the grams already carry the pair decays: their gradient to gam_t - gam_i
        pair_a, pair_p = mix_a * kk, mix_p * qk
        d_gam_scalar = (tl.sum(pair_a, axis=1) - tl.sum(pair_a, axis=0)
                        + tl.sum(pair_p, axis=1) - tl.sum(pair_p, axis=0))
        mix_a *= _pair_decay(gam_scalar, False, BT)
        mix_p *= _pair_decay(gam_scalar, True, BT)
    d_last_scalar = tl.sum(tl.zeros([BK], dtype=tl.float32), axis=0)
    for k0 in range(0, K, BK):
        kcols = k0 + tl.arange(0, BK)
        d_qg, d_us, d_kd, d_decay = _chunk_state_products(
            u, states, dstates, do, du, bos, rows, hv, HV, K, V,
            chunk.to(tl.int64) * HV + hv, kcols, T, exact, BT, BK, BV)
        q_t = _load_rows(q, bos, rows, head, H, K, kcols, T).to(tl.float32)
        k_t = _load_rows(k, bos, rows, head, H, K, kcols, T).to(tl.float32)
        if GATE == GATE_CHANNEL:
            gam = tl.cumsum(_load_rows(g, bos, rows, hv, HV, K, kcols, T).to(tl.float32), axis=0)
        else:
            gam = tl.broadcast_to(gam_scalar[:, None], [BT, BK])
        # padded rows have g = 0, so the last row holds the chunk's total decay
        gam_last = tl.sum(tl.where(idx[:, None] == BT - 1, gam, 0.0), axis=0)
        decay_in = tl.exp(gam)
        decay_out = tl.exp(gam_last[None, :] - gam)
        keys_in = k_t * decay_in
        d_kb = -_mm_f32(tl.trans(inverse), d_us, exact)
        d_beta += tl.sum(d_kb * keys_in, axis=1)
        d_kg = d_kb * beta_rows[:, None]
        dq_t = scale * d_qg * decay_in
        dk_t = d_kg * decay_in + d_kd * decay_out
        d_gam = d_kg * keys_in + dq_t * q_t - d_kd * k_t * decay_out
        d_last = tl.sum(d_kd * k_t * decay_out, axis=0) + tl.exp(gam_last) * d_decay
        if GATE == GATE_CHANNEL:
            row_a, col_a = _decayed_mix(mix_a, k_t, k_t, k, k, g, gam, bos, rows, head, H, hv,
                                        HV, K, kcols, T, exact, BT, BK)
            row_p, col_p = _decayed_mix(mix_p, q_t, k_t, q, k, g, gam, bos, rows, head, H, hv,
                                        HV, K, kcols, T, exact, BT, BK)
            d_gam += k_t * (row_a - col_a) + q_t * row_p - k_t * col_p
            d_g = tl.cumsum(d_gam, axis=0, reverse=True) + d_last[None, :]
            _store_rows(dg, d_g, bos, rows, hv, HV, K, kcols, T)
        else:
            row_a = _mm_f32(mix_a, k_t, exact)
            col_a = _mm_f32(tl.trans(mix_a), k_t, exact)
            row_p = _mm_f32(mix_p, k_t, exact)
            col_p = _mm_f32(tl.trans(mix_p), q_t, exact)
            d_gam_scalar += tl.sum(d_gam, axis=1)
            d_last_scalar += tl.sum(d_last, axis=0)
        _store_rows(dq, dq_t + row_p, bos, rows, hv, HV, K, kcols, T)
        _store_rows(dk, dk_t + row_a + col_a + col_p, bos, rows, hv, HV, K, kcols, T)
    tl.store(dbeta + (bos + rows) * HV + hv, d_beta, mask=rows < T)
    if GATE == GATE_SCALAR:
        d_g = tl.cumsum(d_gam_scalar, axis=0, reverse=True) + d_last_scalar
        tl.store(dg + (bos + rows) * HV + hv, d_g, mask=rows < T)
