"""The attention backward kernels (FlashAttention-2 style): no ``T x S`` tensor is ever formed.

Inputs are q, k, v, the output O, the upstream gradient dO and, for softmax, the forward's row
log-sum-exp (base 2, ``+inf`` for rows that see no key). Each kernel recomputes its tile of
weights ``P`` from q, k and the log-sum-exp (softmax: ``P = exp2(logit(s) - lse)``; sigmoid:
``P = sigmoid(scale * s + bias)``), then with ``dP = dO V^T``:

- softmax: ``dS = P * (dP - delta)`` with ``delta = rowsum(dO * O)`` from the preprocessing kernel,
  times ``1 - tanh^2`` of the soft-capped score with a softcap (ALiBi's bias is a constant);
- sigmoid: ``dS = dP * P * (1 - P)``;

and ``dQ = scale dS K``, ``dK = scale dS^T Q``, ``dV = P^T dO``.

- ``attention_bwd_delta_kernel``: ``delta [B, Hq, T]`` (softmax only).
- ``attention_bwd_dkdv_kernel``: one program per ``BLOCK_N`` keys of one key/value head; it loops
  over the query heads of its group and their query blocks, so dK and dV are summed over the
  group in registers (no atomics, no per-query-head copy).
- ``attention_bwd_dq_kernel``: one program per ``BLOCK_M`` queries of one query head, looping
  over its visible key blocks.

Both visit only the blocks inside the sliding window's band (``key_bounds``, ``_query_bounds``).
"""
import triton
import triton.language as tl

from seqtune.kernels.attention.kernel import (alibi_slope, batch_row, dot, key_bounds,
                                             load_tile, locate_sequence, locate_tile,
                                             softmax_logits, visible_keys)


@triton.jit
def attention_bwd_delta_kernel(
        o_ptr, do_ptr, delta_ptr,
        stride_ob, stride_ot, stride_oh, stride_od,
        stride_dob, stride_dot, stride_doh, stride_dod,
        stride_db, stride_dh,
        T, DV: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_M: tl.constexpr):
    """Grid ``(cdiv(T, BLOCK_M), Hq, B)``: ``delta[b, h, t] = sum_d O * dO`` in float32 (packed
    rows need no sequence bounds: the sum is per row)."""
    batch = tl.program_id(2).to(tl.int64)
    head = tl.program_id(1).to(tl.int64)
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_dv = tl.arange(0, BLOCK_DV)
    mask = (offs_m[:, None] < T) & (offs_dv[None, :] < DV)
    rows = offs_m.to(tl.int64)[:, None]
    o = tl.load(o_ptr + batch * stride_ob + head * stride_oh + rows * stride_ot
                + offs_dv[None, :] * stride_od, mask=mask, other=0.0)
    do = tl.load(do_ptr + batch * stride_dob + head * stride_doh + rows * stride_dot
                 + offs_dv[None, :] * stride_dod, mask=mask, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(delta_ptr + batch * stride_db + head * stride_dh + offs_m, delta, mask=offs_m < T)


@triton.jit
def _row_statistics(lse_ptr, delta_ptr, offsets, rows_ok, SIGMOID: tl.constexpr,
                    MASKED: tl.constexpr):
    """``(lse, delta)`` of a block of query rows; softmax only (sigmoid weights need neither:
    zeros stand in). With MASKED, rows past the sequence read lse = +inf: their weights are 0."""
    if SIGMOID:
        lse = tl.zeros(rows_ok.shape, dtype=tl.float32)
        delta = lse
    elif MASKED:
        lse = tl.load(lse_ptr + offsets, mask=rows_ok, other=float("inf"))
        delta = tl.load(delta_ptr + offsets, mask=rows_ok, other=0.0)
    else:
        lse = tl.load(lse_ptr + offsets)
        delta = tl.load(delta_ptr + offsets)
    return lse, delta


@triton.jit
def _score_gradient(scores, visible, queries, keys, lse, delta, dp, shift, qk_scale,
                    sigmoid_bias, softcap_in, slope_log2, SOFTCAP: tl.constexpr,
                    ALIBI: tl.constexpr, SIGMOID: tl.constexpr, MASKED: tl.constexpr):
    """``(P, dS)`` of a tile from its raw scores ``q . k``, either orientation (``queries``,
    ``keys``, ``lse`` and ``delta`` already broadcast to the tile); with MASKED, zero where not
    ``visible``. ``dS`` is the gradient of ``q . k`` divided by ``scale``."""
    if SIGMOID:
        weights = tl.sigmoid(scores * qk_scale + sigmoid_bias)
        if MASKED:
            weights = tl.where(visible, weights, 0.0)
        grad = dp * weights * (1.0 - weights)
    else:
        logits, capped = softmax_logits(scores, queries, keys, shift, qk_scale, softcap_in,
                                        slope_log2, SOFTCAP, ALIBI)
        weights = tl.math.exp2(logits - lse)
        if MASKED:
            weights = tl.where(visible, weights, 0.0)
        grad = weights * (dp - delta)
        if SOFTCAP:
            # d/dx softcap tanh(scale x / softcap) = scale (1 - tanh^2); scale comes at the end.
            grad = grad * (1.0 - capped * capped)
    return weights, grad


@triton.jit
def _dkdv_query_blocks(dk, dv, k, v, q_head, do_head, lse_ptr, delta_ptr, row_head, offs_m,
                       offs_n, offs_d, offs_dv, d_ok, dv_ok, keys_ok, first_lo, first_hi,
                       second_lo, second_hi, q_len, shift, lo_shift, hi_shift, qk_scale,
                       sigmoid_bias, softcap_in, slope_log2, stride_qt, stride_qd, stride_dot,
                       stride_dod, BLOCK_M: tl.constexpr, MASKED: tl.constexpr,
                       PAD_D: tl.constexpr, PAD_DV: tl.constexpr, CAUSAL: tl.constexpr,
                       WINDOW: tl.constexpr, SOFTCAP: tl.constexpr, ALIBI: tl.constexpr,
                       SIGMOID: tl.constexpr, UPCAST_BF16: tl.constexpr, GRAD_K: tl.constexpr,
                       GRAD_V: tl.constexpr):
    """Fold the query blocks of ``[first_lo, first_hi)`` then ``[second_lo, second_hi)`` (each
    bound a multiple of BLOCK_M but the last) of one query head into the key tile's (dk, dv):
    one loop for two ranges keeps a single copy of the body. Without MASKED every row is in the
    sequence and sees every key of the tile (keys past the sequence are computed, not stored).
    Only GRAD_K accumulates dk (and forms dP from v), only GRAD_V dv."""
    first_blocks = tl.cdiv(first_hi - first_lo, BLOCK_M)
    blocks = first_blocks + tl.cdiv(second_hi - second_lo, BLOCK_M)
    for block in range(0, blocks):
        start_m = tl.where(block < first_blocks, first_lo + block * BLOCK_M,
                           second_lo + (block - first_blocks) * BLOCK_M)
        queries = start_m + offs_m
        rows_ok = queries < q_len
        q = load_tile(q_head + queries.to(tl.int64)[:, None] * stride_qt
                      + offs_d[None, :] * stride_qd, rows_ok[:, None], d_ok[None, :],
                      MASKED, PAD_D)
        do = load_tile(do_head + queries.to(tl.int64)[:, None] * stride_dot
                       + offs_dv[None, :] * stride_dod, rows_ok[:, None], dv_ok[None, :],
                       MASKED, PAD_DV)
        lse, delta = _row_statistics(lse_ptr, delta_ptr, row_head + queries, rows_ok, SIGMOID,
                                     MASKED)
        scores_t = dot(k, tl.trans(q), None, UPCAST_BF16)
        visible = visible_keys(keys_ok[:, None] & rows_ok[None, :], queries[None, :],
                               offs_n[:, None], lo_shift, hi_shift, CAUSAL, WINDOW)
        if GRAD_K:
            dp_t = dot(v, tl.trans(do), None, UPCAST_BF16)
        else:
            dp_t = scores_t  # dV needs no dP: the gradient computed from it goes unused
        weights_t, grad_t = _score_gradient(
            scores_t, visible, queries[None, :], offs_n[:, None], lse[None, :], delta[None, :],
            dp_t, shift, qk_scale, sigmoid_bias, softcap_in, slope_log2, SOFTCAP, ALIBI,
            SIGMOID, MASKED)
        if GRAD_V:
            dv = dot(weights_t.to(do.dtype), do, dv, UPCAST_BF16)
        if GRAD_K:
            dk = dot(grad_t.to(q.dtype), q, dk, UPCAST_BF16)
    return dk, dv


@triton.jit
def _dq_key_block(dq, q, do, lse, delta, k_head, v_head, start_n, offs_m, offs_n, offs_d,
                  offs_dv, d_ok, dv_ok, rows_ok, k_len, shift, lo_shift, hi_shift, qk_scale,
                  sigmoid_bias, softcap_in, slope_log2, stride_kn, stride_kd, stride_vn,
                  stride_vd, MASKED: tl.constexpr, PAD_D: tl.constexpr, PAD_DV: tl.constexpr,
                  CAUSAL: tl.constexpr, WINDOW: tl.constexpr, SOFTCAP: tl.constexpr,
                  ALIBI: tl.constexpr, SIGMOID: tl.constexpr, UPCAST_BF16: tl.constexpr):
    """dq plus the key block at ``start_n``'s share."""
    keys = start_n + offs_n
    keys_ok = keys < k_len
    k = load_tile(k_head + keys.to(tl.int64)[:, None] * stride_kn
                  + offs_d[None, :] * stride_kd, keys_ok[:, None], d_ok[None, :],
                  MASKED, PAD_D)
    v = load_tile(v_head + keys.to(tl.int64)[:, None] * stride_vn
                  + offs_dv[None, :] * stride_vd, keys_ok[:, None], dv_ok[None, :],
                  MASKED, PAD_DV)
    scores = dot(q, tl.trans(k), None, UPCAST_BF16)
    visible = visible_keys(rows_ok[:, None] & keys_ok[None, :], offs_m[:, None],
                           keys[None, :], lo_shift, hi_shift, CAUSAL, WINDOW)
    dp = dot(do, tl.trans(v), None, UPCAST_BF16)
    _, grad = _score_gradient(scores, visible, offs_m[:, None], keys[None, :],
                              lse[:, None], delta[:, None], dp, shift, qk_scale,
                              sigmoid_bias, softcap_in, slope_log2, SOFTCAP, ALIBI,
                              SIGMOID, MASKED)
    return dot(grad.to(k.dtype), k, dq, UPCAST_BF16)


@triton.jit
def _dq_key_range(dq, q, do, lse, delta, k_head, v_head, offs_m, offs_n, offs_d, offs_dv, d_ok,
                  dv_ok, rows_ok, key_lo, key_hi, second_lo, second_hi, k_len, shift, lo_shift,
                  hi_shift, qk_scale, sigmoid_bias, softcap_in, slope_log2, stride_kn,
                  stride_kd, stride_vn, stride_vd, BLOCK_N: tl.constexpr, MASKED: tl.constexpr,
                  PAD_D: tl.constexpr, PAD_DV: tl.constexpr, CAUSAL: tl.constexpr,
                  WINDOW: tl.constexpr, SOFTCAP: tl.constexpr, ALIBI: tl.constexpr,
                  SIGMOID: tl.constexpr, UPCAST_BF16: tl.constexpr, TWO_RANGES: tl.constexpr):
    """Fold the key blocks from ``key_lo`` up to ``key_hi`` into dq, then with TWO_RANGES
    those of ``[second_lo, second_hi)`` in the same loop (one copy of the body: a sliding
    window's third copy spilled on sm_90). Without MASKED every key is in the sequence and
    visible to every row of the tile (rows past the sequence have q = dO = 0 and lse = +inf:
    they add nothing and are not stored)."""
    if TWO_RANGES:
        first_blocks = tl.cdiv(key_hi - key_lo, BLOCK_N)
        blocks = first_blocks + tl.cdiv(second_hi - second_lo, BLOCK_N)
        for block in range(0, blocks):
            start_n = tl.where(block < first_blocks, key_lo + block * BLOCK_N,
                               second_lo + (block - first_blocks) * BLOCK_N)
            dq = _dq_key_block(dq, q, do, lse, delta, k_head, v_head, start_n, offs_m, offs_n,
                               offs_d, offs_dv, d_ok, dv_ok, rows_ok, k_len, shift, lo_shift,
                               hi_shift, qk_scale, sigmoid_bias, softcap_in, slope_log2,
                               stride_kn, stride_kd, stride_vn, stride_vd, MASKED, PAD_D, PAD_DV,
                               CAUSAL, WINDOW, SOFTCAP, ALIBI, SIGMOID, UPCAST_BF16)
    else:
        for start_n in range(key_lo, key_hi, BLOCK_N):
            dq = _dq_key_block(dq, q, do, lse, delta, k_head, v_head, start_n, offs_m, offs_n,
                               offs_d, offs_dv, d_ok, dv_ok, rows_ok, k_len, shift, lo_shift,
                               hi_shift, qk_scale, sigmoid_bias, softcap_in, slope_log2,
                               stride_kn, stride_kd, stride_vn, stride_vd, MASKED, PAD_D, PAD_DV,
                               CAUSAL, WINDOW, SOFTCAP, ALIBI, SIGMOID, UPCAST_BF16)
    return dq


@triton.jit
def _query_bounds(start_n, q_len, lo_shift, hi_shift, BLOCK_M: tl.constexpr,
                  BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, WINDOW: tl.constexpr):
    """``(query_lo, unmasked_lo, unmasked_hi, query_hi)`` of the key tile at ``start_n``: rows
    ``[query_lo, query_hi)`` hold every query that may see a key of the tile; ``[unmasked_lo,
    unmasked_hi)`` (multiples of BLOCK_M) those in the sequence that see the whole tile. Query
    blocks outside the band are never visited."""
    full_hi = (q_len // BLOCK_M) * BLOCK_M
    query_lo = start_n * 0
    unmasked_lo = query_lo
    unmasked_hi = full_hi
    query_hi = q_len
    if CAUSAL:
        # Query i sees key j when i >= j - hi_shift: blocks above the first key's horizon see
        # none; blocks from the last key's horizon on see the whole tile. The first key's
        # horizon is below q_len (start_n < k_len, hi_shift >= k_len - q_len), so query_lo
        # needs no clamp (one more would spill on sm_90).
        query_lo = (tl.maximum(start_n - hi_shift, 0) // BLOCK_M) * BLOCK_M
        last_key_horizon = tl.maximum(start_n + BLOCK_N - 1 - hi_shift, 0)
        unmasked_lo = tl.cdiv(last_key_horizon, BLOCK_M) * BLOCK_M
    if WINDOW:
        # Query i sees key j when i <= j - lo_shift: rows past the first key's edge miss part
        # of the tile, rows past the last key's edge see none of it.
        query_hi = tl.minimum(tl.maximum(start_n + BLOCK_N - lo_shift, 0), q_len)
        edge = (tl.maximum(start_n + 1 - lo_shift, 0) // BLOCK_M) * BLOCK_M
        unmasked_hi = tl.minimum(edge, full_hi)
    unmasked_lo = tl.minimum(unmasked_lo, unmasked_hi)
    return query_lo, unmasked_lo, unmasked_hi, query_hi


@triton.jit
def attention_bwd_dkdv_kernel(
        q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr, cu_q_ptr, cu_k_ptr,
        tiles_ptr, alibi_ptr,
        stride_qb, stride_qt, stride_qh, stride_qd,
        stride_kb, stride_kn, stride_kh, stride_kd,
        stride_vb, stride_vn, stride_vh, stride_vd,
        stride_dob, stride_dot, stride_doh, stride_dod,
        stride_dkb, stride_dkn, stride_dkh, stride_dkd,
        stride_dvb, stride_dvn, stride_dvh, stride_dvd,
        stride_lb, stride_lh, stride_as, stride_ah,
        T, S, heads_per_kv, scale, qk_scale, sigmoid_bias, window_left, window_right,
        softcap_in,
        D: tl.constexpr, DV: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
        WINDOW: tl.constexpr, SOFTCAP: tl.constexpr, ALIBI: tl.constexpr,
        SIGMOID: tl.constexpr, DEFAULT_BIAS: tl.constexpr, VARLEN: tl.constexpr,
        UPCAST_BF16: tl.constexpr, GRAD_K: tl.constexpr, GRAD_V: tl.constexpr):
    """Grid ``(cdiv(S, BLOCK_N), Hkv, B)``, or packed ``(rows of the key tile table, Hkv, 1)``.
    Score tiles are kept transposed (keys as rows: ``s^T = K Q^T``), so dK and dV accumulate
    without transposing them; every tile is loaded row-major (transposed loads through pointers
    cost twice the registers). ``lse`` and ``delta`` are ``[B, Hq, T]`` with unit row stride and
    share strides. Scores, window and slopes as in ``attention_fwd_kernel``. GRAD_K computes
    and stores dK, GRAD_V dV: wide heads may run one launch of each, so that a program holds
    half the float32 accumulators."""
    seq, tile_n = locate_tile(tiles_ptr, VARLEN, False)
    q_start, q_len, k_start, k_len = locate_sequence(cu_q_ptr, cu_k_ptr, seq, T, S, VARLEN)
    start_n = tile_n * BLOCK_N
    if start_n >= k_len:
        return
    kv_head = tl.program_id(1)
    batch = batch_row(seq, VARLEN)
    if SIGMOID and DEFAULT_BIAS:
        sigmoid_bias = -tl.log(tl.maximum(k_len, 1).to(tl.float32))

    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    d_ok = offs_d < D
    dv_ok = offs_dv < DV
    keys_ok = offs_n < k_len
    key_rows = k_start.to(tl.int64) + offs_n.to(tl.int64)

    k_ptrs = (k_ptr + batch * stride_kb + kv_head.to(tl.int64) * stride_kh
              + key_rows[:, None] * stride_kn + offs_d[None, :] * stride_kd)
    k = load_tile(k_ptrs, keys_ok[:, None], d_ok[None, :], True, BLOCK_D != D)
    v_ptrs = (v_ptr + batch * stride_vb + kv_head.to(tl.int64) * stride_vh
              + key_rows[:, None] * stride_vn + offs_dv[None, :] * stride_vd)
    v = load_tile(v_ptrs, keys_ok[:, None], dv_ok[None, :], True, BLOCK_DV != DV)

    shift = k_len - q_len
    lo_shift = shift - window_left
    hi_shift = shift + window_right
    # Query blocks [query_lo, unmasked_lo) run masked (the causal diagonal or the window's
    # upper edge), [unmasked_lo, unmasked_hi) unmasked (in the sequence, seeing the whole key
    # tile), [unmasked_hi, query_hi) masked (the window's lower edge and the ragged last block).
    query_lo, unmasked_lo, unmasked_hi, query_hi = _query_bounds(
        start_n, q_len, lo_shift, hi_shift, BLOCK_M, BLOCK_N, CAUSAL, WINDOW)
    pad_d: tl.constexpr = BLOCK_D != D
    pad_dv: tl.constexpr = BLOCK_DV != DV
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_DV], dtype=tl.float32)
    for group_member in range(0, heads_per_kv):
        head = (kv_head * heads_per_kv + group_member).to(tl.int64)
        q_head = q_ptr + batch * stride_qb + head * stride_qh + q_start.to(tl.int64) * stride_qt
        do_head = (do_ptr + batch * stride_dob + head * stride_doh
                   + q_start.to(tl.int64) * stride_dot)
        row_head = batch * stride_lb + head * stride_lh + q_start.to(tl.int64)
        slope_log2 = alibi_slope(alibi_ptr, seq, head, stride_as, stride_ah, ALIBI)
        dk, dv = _dkdv_query_blocks(
            dk, dv, k, v, q_head, do_head, lse_ptr, delta_ptr, row_head, offs_m, offs_n,
            offs_d, offs_dv, d_ok, dv_ok, keys_ok, query_lo, unmasked_lo, unmasked_hi,
            query_hi, q_len, shift, lo_shift, hi_shift, qk_scale, sigmoid_bias, softcap_in,
            slope_log2, stride_qt, stride_qd, stride_dot, stride_dod, BLOCK_M, True, pad_d,
            pad_dv, CAUSAL, WINDOW, SOFTCAP, ALIBI, SIGMOID, UPCAST_BF16, GRAD_K, GRAD_V)
        dk, dv = _dkdv_query_blocks(
            dk, dv, k, v, q_head, do_head, lse_ptr, delta_ptr, row_head, offs_m, offs_n,
            offs_d, offs_dv, d_ok, dv_ok, keys_ok, unmasked_lo, unmasked_hi, unmasked_hi,
            unmasked_hi, q_len, shift, lo_shift, hi_shift, qk_scale, sigmoid_bias, softcap_in,
            slope_log2, stride_qt, stride_qd, stride_dot, stride_dod, BLOCK_M, False, pad_d,
            pad_dv, CAUSAL, WINDOW, SOFTCAP, ALIBI, SIGMOID, UPCAST_BF16, GRAD_K, GRAD_V)

    if GRAD_K:
        dk_ptrs = (dk_ptr + batch * stride_dkb + kv_head.to(tl.int64) * stride_dkh
                   + key_rows[:, None] * stride_dkn + offs_d[None, :] * stride_dkd)
        tl.store(dk_ptrs, (dk * scale).to(dk_ptr.dtype.element_ty),
                 mask=keys_ok[:, None] & d_ok[None, :])
    if GRAD_V:
        dv_ptrs = (dv_ptr + batch * stride_dvb + kv_head.to(tl.int64) * stride_dvh
                   + key_rows[:, None] * stride_dvn + offs_dv[None, :] * stride_dvd)
        tl.store(dv_ptrs, dv.to(dv_ptr.dtype.element_ty),
                 mask=keys_ok[:, None] & dv_ok[None, :])


@triton.jit
def attention_bwd_dq_kernel(
        q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr, cu_q_ptr, cu_k_ptr, tiles_ptr,
        alibi_ptr,
        stride_qb, stride_qt, stride_qh, stride_qd,
        stride_kb, stride_kn, stride_kh, stride_kd,
        stride_vb, stride_vn, stride_vh, stride_vd,
        stride_dob, stride_dot, stride_doh, stride_dod,
        stride_dqb, stride_dqt, stride_dqh, stride_dqd,
        stride_lb, stride_lh, stride_as, stride_ah,
        T, S, heads_per_kv, scale, qk_scale, sigmoid_bias, window_left, window_right,
        softcap_in,
        D: tl.constexpr, DV: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
        WINDOW: tl.constexpr, SOFTCAP: tl.constexpr, ALIBI: tl.constexpr,
        SIGMOID: tl.constexpr, DEFAULT_BIAS: tl.constexpr, VARLEN: tl.constexpr,
        UPCAST_BF16: tl.constexpr):
    """Grid ``(cdiv(T, BLOCK_M), Hq, B)``, or packed ``(rows of the query tile table, Hq, 1)``."""
    seq, tile_m = locate_tile(tiles_ptr, VARLEN, False)
    q_start, q_len, k_start, k_len = locate_sequence(cu_q_ptr, cu_k_ptr, seq, T, S, VARLEN)
    start_m = tile_m * BLOCK_M
    if start_m >= q_len:
        return
    head = tl.program_id(1)
    kv_head = (head // heads_per_kv).to(tl.int64)
    head = head.to(tl.int64)
    batch = batch_row(seq, VARLEN)
    if SIGMOID and DEFAULT_BIAS:
        sigmoid_bias = -tl.log(tl.maximum(k_len, 1).to(tl.float32))
    slope_log2 = alibi_slope(alibi_ptr, seq, head, stride_as, stride_ah, ALIBI)

    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    d_ok = offs_d < D
    dv_ok = offs_dv < DV
    rows_ok = offs_m < q_len
    query_rows = q_start.to(tl.int64) + offs_m.to(tl.int64)

    q = load_tile(q_ptr + batch * stride_qb + head * stride_qh + query_rows[:, None] * stride_qt
                  + offs_d[None, :] * stride_qd, rows_ok[:, None], d_ok[None, :],
                  True, BLOCK_D != D)
    do = load_tile(do_ptr + batch * stride_dob + head * stride_doh
                   + query_rows[:, None] * stride_dot + offs_dv[None, :] * stride_dod,
                   rows_ok[:, None], dv_ok[None, :], True, BLOCK_DV != DV)
    row_ptrs = batch * stride_lb + head * stride_lh + query_rows
    lse, delta = _row_statistics(lse_ptr, delta_ptr, row_ptrs, rows_ok, SIGMOID, True)

    shift = k_len - q_len
    lo_shift = shift - window_left
    hi_shift = shift + window_right
    key_lo, unmasked_lo, unmasked_hi, key_hi = key_bounds(
        start_m, k_len, lo_shift, hi_shift, BLOCK_M, BLOCK_N, CAUSAL, WINDOW)
    k_head = k_ptr + batch * stride_kb + kv_head * stride_kh + k_start.to(tl.int64) * stride_kn
    v_head = v_ptr + batch * stride_vb + kv_head * stride_vh + k_start.to(tl.int64) * stride_vn
    pad_d: tl.constexpr = BLOCK_D != D
    pad_dv: tl.constexpr = BLOCK_DV != DV
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    # The unmasked blocks, then the masked ones: the causal diagonal (or the window's upper
    # edge) and the ragged end, and with a window its lower edge in the same loop. With a
    # window both loops take the two-range form: a third loop, or two loops of different
    # forms, spilled on sm_90 (64 and 8 B at D=192/Dv=128; 96 and 24 B with softcap, ALiBi).
    dq = _dq_key_range(dq, q, do, lse, delta, k_head, v_head, offs_m, offs_n, offs_d, offs_dv,
                       d_ok, dv_ok, rows_ok, unmasked_lo, unmasked_hi, unmasked_hi, unmasked_hi,
                       k_len, shift, lo_shift, hi_shift, qk_scale, sigmoid_bias, softcap_in,
                       slope_log2, stride_kn, stride_kd, stride_vn, stride_vd, BLOCK_N, False,
                       pad_d, pad_dv, CAUSAL, WINDOW, SOFTCAP, ALIBI, SIGMOID, UPCAST_BF16,
                       WINDOW)
    if WINDOW:
        dq = _dq_key_range(dq, q, do, lse, delta, k_head, v_head, offs_m, offs_n, offs_d,
                           offs_dv, d_ok, dv_ok, rows_ok, key_lo, unmasked_lo, unmasked_hi,
                           key_hi, k_len, shift, lo_shift, hi_shift, qk_scale, sigmoid_bias,
                           softcap_in, slope_log2, stride_kn, stride_kd, stride_vn, stride_vd,
                           BLOCK_N, True, pad_d, pad_dv, CAUSAL, WINDOW, SOFTCAP, ALIBI,
                           SIGMOID, UPCAST_BF16, True)
    else:
        dq = _dq_key_range(dq, q, do, lse, delta, k_head, v_head, offs_m, offs_n, offs_d,
                           offs_dv, d_ok, dv_ok, rows_ok, unmasked_hi, key_hi, key_hi, key_hi,
                           k_len, shift, lo_shift, hi_shift, qk_scale, sigmoid_bias, softcap_in,
                           slope_log2, stride_kn, stride_kd, stride_vn, stride_vd, BLOCK_N, True,
                           pad_d, pad_dv, CAUSAL, WINDOW, SOFTCAP, ALIBI, SIGMOID, UPCAST_BF16,
                           False)

    dq_ptrs = (dq_ptr + batch * stride_dqb + head * stride_dqh + query_rows[:, None] * stride_dqt
               + offs_d[None, :] * stride_dqd)
    tl.store(dq_ptrs, (dq * scale).to(dq_ptr.dtype.element_ty),
             mask=rows_ok[:, None] & d_ok[None, :])
