"""Backward kernels of the chunkwise recurrence (``kernels.py``), for ``linear_attention`` and
``ssd``.

With b_t the cumulative log decay since the chunk start, S_prev the state before a chunk
(recomputed by the forward's state kernel) and dH the gradient of the state after it:

- ``dh``: dH before every chunk, a reverse pass: dH_prev = diag(exp(b_last)) dH
  + scale * sum_t (q_t exp(b_t)) do_t^T, starting from the final state's gradient; what is left
  after the first chunk is the initial state's gradient.
- ``dv``: dv_s = scale * sum_{t >= s} A[t, s] do_t + (k_s exp(b_last - b_s))^T dH, with A the
  forward's intra-chunk matrix (recomputed by its kernel).
- ``dqk``: with dA[t, s] = scale * do_t . v_s (s <= t),
  dq_t = sum_s dA[t, s] k_s exp(b_t - b_s) + scale * exp(b_t) (S_prev do_t),
  dk_s = sum_t dA[t, s] q_t exp(b_t - b_s) + exp(b_last - b_s) (dH v_s),
  per value head (fp32), so that grouped heads are summed after and dg can use them. For
  per-channel decay the rows are split into sub-chunks with a reference step between them, as
  in the forward's intra kernel, so every exponent stays <= 0.
- ``dg``: q and k enter only as q_t exp(B_t) and k_s exp(-B_s) (B the cumulative decay since the
  sequence start) and the final state as exp(B_T) (...), so dL/dB_t = q_t dq_t - k_t dk_t
  (+ sum_v dS_T S_T at the last step) and dg_t = sum_{t' >= t} dL/dB_t'. The part of that sum
  past t's chunk is <S, dH> for the state S after the chunk and its gradient dH (shifting every
  later B by one amount only scales S), so dg sums within a chunk (as fla does) and adds that
  inner product: no exponential, and no rounding error gathered over the whole sequence. As in
  fla, S enters as the state before the chunk decayed through it plus the chunk's own terms,
  sum_s k_s . (exp(b_last - b_s) dH v_s) from exact keys (the dqk kernels' ``carries``). The
  backward keeps the recomputed states and dH in fp32 (as fla's does); they are rounded to the
  input dtype only as tensor-core operands.
"""
from __future__ import annotations

import triton
import triton.language as tl

from seqtune.kernels.linear_attention.kernels import (chunk_at, chunk_slots, dot_fp32_operands,
                                                      sequence_span)


@triton.jit
def _dstate_kernel(q, do, g, dht, dhs, dh0, cu, chunk_offsets, T, H, QK_GROUP, NT, scale,
                   sqb, sqt, sqh, sqd, sdb, sdt, sdh, sdd, sgb, sgt, sgh, sgd,
                   K: tl.constexpr, V: tl.constexpr, GATE: tl.constexpr,
                   HAS_DHT: tl.constexpr, VARLEN: tl.constexpr, BT: tl.constexpr,
                   BK: tl.constexpr, BV: tl.constexpr, DOT: tl.constexpr):
    """The [BK, BV] block of dH after every chunk of a sequence into ``dhs`` [slots, H, K, V],
    and before its first chunk into ``dh0`` [N, H, K, V] fp32. Grid (K/BK, V/BV, N*H)."""
    pid_k, pid_v, bh = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    n, h = bh // H, bh % H
    b, bos, eos = sequence_span(n, cu, T, VARLEN)
    first_slot = chunk_slots(n, chunk_offsets, NT, VARLEN)
    d = pid_k * BK + tl.arange(0, BK)
    e = pid_v * BV + tl.arange(0, BV)
    d_mask, e_mask = d < K, e < V
    block = d[:, None] * V + e[None, :]
    block_mask = d_mask[:, None] & e_mask[None, :]
    grad = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_DHT:
        grad = tl.load(dht + bh * K * V + block, mask=block_mask, other=0.0).to(tl.float32)
    q_ptr = q + b * sqb + (h // QK_GROUP) * sqh + d[None, :] * sqd
    do_ptr = do + b * sdb + h * sdh + e[None, :] * sdd
    g_base = g + b * sgb + h * sgh
    n_chunks = tl.cdiv(eos - bos, BT)
    for i in range(n_chunks):
        chunk = n_chunks - 1 - i
        tl.store(dhs + ((first_slot + chunk) * H + h) * K * V + block,
                 grad.to(dhs.dtype.element_ty), mask=block_mask)
        t = bos + chunk * BT + tl.arange(0, BT)
        t_mask = t < eos
        q_tile = tl.load(q_ptr + t[:, None] * sqt, mask=t_mask[:, None] & d_mask[None, :],
                         other=0.0).to(tl.float32)
        do_tile = tl.load(do_ptr + t[:, None] * sdt, mask=t_mask[:, None] & e_mask[None, :],
                          other=0.0)
        if GATE == 1:
            decay = tl.load(g_base + t * sgt, mask=t_mask, other=0.0).to(tl.float32)
            grad *= tl.exp(tl.sum(decay, axis=0))
            q_tile = q_tile * tl.exp(tl.cumsum(decay, axis=0))[:, None]
        elif GATE == 2:
            decay = tl.load(g_base + t[:, None] * sgt + d[None, :] * sgd,
                            mask=t_mask[:, None] & d_mask[None, :], other=0.0).to(tl.float32)
            grad *= tl.exp(tl.sum(decay, axis=0))[:, None]
            q_tile = q_tile * tl.exp(tl.cumsum(decay, axis=0))
        q_tile = (q_tile * scale).to(do_tile.dtype)
        grad = tl.dot(tl.trans(q_tile).to(DOT), do_tile.to(DOT), grad, input_precision="ieee")
    tl.store(dh0 + bh * K * V + block, grad, mask=block_mask)


@triton.jit
def _dv_kernel(k, g, do, A, dhs, dv, cu, chunk_list, T, H, QK_GROUP, NT, scale,
               skb, skt, skh, skd, sgb, sgt, sgh, sgd, sdb, sdt, sdh, sdd,
               svb, svt, svh, svd,
               K: tl.constexpr, V: tl.constexpr, GATE: tl.constexpr, VARLEN: tl.constexpr,
               BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, DOT: tl.constexpr):
    """A [BT, BV] block of dv of one chunk. Grid (V/BV, chunks, B*H)."""
    pid_v, bh = tl.program_id(0), tl.program_id(2).to(tl.int64)
    b, h, bos, eos, c, slot = chunk_at(tl.program_id(1), bh, cu, chunk_list, T, H, NT, VARLEN)
    if c * BT >= eos - bos:
        return  # a spare row of a packed batch's chunk list
    pos = tl.arange(0, BT)
    t = bos + c * BT + pos
    t_mask = t < eos
    e = pid_v * BV + tl.arange(0, BV)
    e_mask = e < V
    do_tile = tl.load(do + b * sdb + h * sdh + t[:, None] * sdt + e[None, :] * sdd,
                      mask=t_mask[:, None] & e_mask[None, :], other=0.0)
    a_tile = tl.load(A + (bh * T + t[:, None]) * BT + pos[None, :], mask=t_mask[:, None],
                     other=0.0)
    # A in fp32, as fla keeps it for this dot (rounded to bf16, GLA's dv had 1.2-1.4x fla's error)
    acc = dot_fp32_operands(tl.trans(a_tile), do_tile.to(tl.float32),
                            tl.zeros([BT, BV], dtype=tl.float32),
                            do_tile.dtype == tl.float32) * scale
    k_base = k + b * skb + (h // QK_GROUP) * skh + t[:, None] * skt
    g_base = g + b * sgb + h * sgh + t * sgt
    if GATE == 1:
        decay = tl.load(g_base, mask=t_mask, other=0.0).to(tl.float32)
        to_end = tl.exp(tl.minimum(tl.cumsum(decay, axis=0, reverse=True) - decay, 0.0))
    grad_base = dhs + (slot * H + h) * K * V
    for k0 in range(0, K, BK):
        d = k0 + tl.arange(0, BK)
        d_mask = d < K
        k_tile = tl.load(k_base + d[None, :] * skd, mask=t_mask[:, None] & d_mask[None, :],
                         other=0.0)
        if GATE == 1:
            k_tile = (k_tile.to(tl.float32) * to_end[:, None]).to(do_tile.dtype)
        elif GATE == 2:
            channel = tl.load(g_base[:, None] + d[None, :] * sgd,
                              mask=t_mask[:, None] & d_mask[None, :], other=0.0).to(tl.float32)
            channel_to_end = tl.cumsum(channel, axis=0, reverse=True) - channel
            k_tile = (k_tile.to(tl.float32)
                      * tl.exp(tl.minimum(channel_to_end, 0.0))).to(do_tile.dtype)
        grad = tl.load(grad_base + d[:, None] * V + e[None, :],
                       mask=d_mask[:, None] & e_mask[None, :], other=0.0)
        acc = tl.dot(k_tile.to(DOT), grad.to(do_tile.dtype).to(DOT), acc,
                     input_precision="ieee")
    tl.store(dv + b * svb + h * svh + t[:, None] * svt + e[None, :] * svd,
             acc.to(dv.dtype.element_ty), mask=t_mask[:, None] & e_mask[None, :])


@triton.jit
def _dqk_kernel(q, k, v, g, do, hs, dhs, dq, dk, points, carries, cu, chunk_list, T, H,
                QK_GROUP, NT,
                scale,
                sqb, sqt, sqh, sqd, skb, skt, skh, skd, svb, svt, svh, svd,
                sgb, sgt, sgh, sdb, sdt, sdh, sdd,
                K: tl.constexpr, V: tl.constexpr, GATE: tl.constexpr, VARLEN: tl.constexpr,
                BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, DOT: tl.constexpr,
                SPLIT: tl.constexpr):
    """[BT, BK] blocks of dq and dk (per value head, fp32 [B, T, H, K]) of one chunk, for no or
    scalar decay. Grid (K/BK, chunks, B*H).

    With scalar decay also this K block's share of q_t . dq_t - k_t . dk_t (dg's point
    gradient, fp32 [B, T, H, K/BK]): its intra-chunk part as fla computes it, row sums minus
    column sums of dA * (q k^T) in fp32, so that the terms of each pair (t, s), which cancel in
    dg's reverse sum from t down to s, cancel exactly instead of leaving the rounding of dq's
    and dk's bf16 dot operands behind; and into ``carries`` (same shape) k_t . (exp(b_last -
    b_t) dH v_t), the chunk's share of <S, dH> after it (``_dg_kernel``)."""
    pid_k, bh = tl.program_id(0), tl.program_id(2).to(tl.int64)
    b, h, bos, eos, c, slot = chunk_at(tl.program_id(1), bh, cu, chunk_list, T, H, NT, VARLEN)
    if c * BT >= eos - bos:
        return  # a spare row of a packed batch's chunk list
    pos = tl.arange(0, BT)
    t = bos + c * BT + pos
    t_mask = t < eos
    d = pid_k * BK + tl.arange(0, BK)
    d_mask = d < K
    tile_mask = t_mask[:, None] & d_mask[None, :]
    state_base = hs + (slot * H + h) * K * V
    grad_base = dhs + (slot * H + h) * K * V
    scores = tl.zeros([BT, BT], dtype=tl.float32)
    q_inter = tl.zeros([BT, BK], dtype=tl.float32)
    k_inter = tl.zeros([BT, BK], dtype=tl.float32)
    for e0 in range(0, V, BV):
        e = e0 + tl.arange(0, BV)
        e_mask = e < V
        rows_mask = t_mask[:, None] & e_mask[None, :]
        do_tile = tl.load(do + b * sdb + h * sdh + t[:, None] * sdt + e[None, :] * sdd,
                          mask=rows_mask, other=0.0)
        v_tile = tl.load(v + b * svb + h * svh + t[:, None] * svt + e[None, :] * svd,
                         mask=rows_mask, other=0.0)
        block_mask = d_mask[:, None] & e_mask[None, :]
        state = tl.load(state_base + d[:, None] * V + e[None, :], mask=block_mask, other=0.0)
        grad = tl.load(grad_base + d[:, None] * V + e[None, :], mask=block_mask, other=0.0)
        scores = tl.dot(do_tile.to(DOT), tl.trans(v_tile).to(DOT), scores,
                        input_precision="ieee")
        q_inter = _dot_state(do_tile, state, q_inter, SPLIT, DOT)
        k_inter = _dot_state(v_tile, grad, k_inter, SPLIT, DOT)
    scores *= scale
    q_inter *= scale
    if GATE == 1:
        decay = tl.load(g + b * sgb + h * sgh + t * sgt, mask=t_mask, other=0.0).to(tl.float32)
        cum = tl.cumsum(decay, axis=0)
        scores *= tl.exp(tl.minimum(cum[:, None] - cum[None, :], 0.0))
        q_inter *= tl.exp(cum)[:, None]
        k_inter *= tl.exp(tl.minimum(tl.cumsum(decay, axis=0, reverse=True) - decay,
                                     0.0))[:, None]
    scores = tl.where(pos[:, None] >= pos[None, :], scores, 0.0)
    qk_head = h // QK_GROUP
    q_tile = tl.load(q + b * sqb + qk_head * sqh + t[:, None] * sqt + d[None, :] * sqd,
                     mask=tile_mask, other=0.0)
    k_tile = tl.load(k + b * skb + qk_head * skh + t[:, None] * skt + d[None, :] * skd,
                     mask=tile_mask, other=0.0)
    scores_in = scores.to(k_tile.dtype).to(DOT)
    dq_tile = tl.dot(scores_in, k_tile.to(DOT), q_inter, input_precision="ieee")
    dk_tile = tl.dot(tl.trans(scores_in), q_tile.to(DOT), k_inter, input_precision="ieee")
    if GATE == 1:
        pairs = scores * tl.dot(q_tile.to(DOT), tl.trans(k_tile).to(DOT), input_precision="ieee")
        q32, k32 = q_tile.to(tl.float32), k_tile.to(tl.float32)
        point = (tl.sum(pairs, axis=1) - tl.sum(pairs, axis=0)
                 + tl.sum(q32 * q_inter - k32 * k_inter, axis=1))
        at = ((b * T + t) * H + h) * tl.num_programs(0) + pid_k
        tl.store(points + at, point, mask=t_mask)
        tl.store(carries + at, tl.sum(k32 * k_inter, axis=1), mask=t_mask)
    out = (b * T + t[:, None]) * H * K + h * K + d[None, :]
    tl.store(dq + out, dq_tile, mask=tile_mask)
    tl.store(dk + out, dk_tile, mask=tile_mask)


@triton.jit
def _dot_state(rows, state, acc, SPLIT: tl.constexpr, DOT: tl.constexpr):
    """acc + rows @ state^T for a [BK, BV] fp32 block of a state or state gradient: the block
    rounded to the rows' dtype as the tensor-core operand and, with SPLIT (decay, bf16/fp16),
    what that rounding dropped as a second operand, ~16 bits in all. dg's inter-chunk terms
    (q dq, k dk summed over the chunk's steps and channels) would otherwise carry the state's
    8- or 11-bit rounding: its largest error (0.5 on gradients of ~100 in bf16, T=64)."""
    high = state.to(rows.dtype)
    acc = tl.dot(rows.to(DOT), tl.trans(high).to(DOT), acc, input_precision="ieee")
    if SPLIT:
        low = (state - high.to(tl.float32)).to(rows.dtype)
        acc = tl.dot(rows.to(DOT), tl.trans(low).to(DOT), acc, input_precision="ieee")
    return acc


@triton.jit
def _dqk_channel_kernel(q, k, v, g, do, hs, dhs, dq, dk, carries, cu, chunk_list, T, H,
                        QK_GROUP, NT,
                        scale, sqb, sqt, sqh, sqd, skb, skt, skh, skd, svb, svt, svh, svd,
                        sgb, sgt, sgh, sgd, sdb, sdt, sdh, sdd,
                        K: tl.constexpr, V: tl.constexpr, VARLEN: tl.constexpr,
                        BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                        SUB: tl.constexpr, DOT: tl.constexpr, SPLIT: tl.constexpr):
    """[SUB, BK] blocks of dq and dk (per value head, fp32) of SUB rows of a chunk, for
    per-channel decay, and of k_s * (exp(b_last - b_s) dH v_s) into ``carries`` (as dk; see
    ``_dg_kernel``). Grid (K/BK, chunks * BT/SUB, B*H).

    Against the earlier rows s of the chunk, dq of row t goes through the reference step
    r = row0 - 1: exp(b_t - b_s) = exp(b_t - b_r) exp(b_r - b_s), both <= 1; against the later
    rows t, dk of row s goes through r' = the sub-chunk's last row. Inside the sub-chunk both
    are summed elementwise over [SUB, SUB, BK] products."""
    pid_k, pid, bh = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    row0 = (pid % (BT // SUB)) * SUB
    b, h, bos, eos, c, slot = chunk_at(pid // (BT // SUB), bh, cu, chunk_list, T, H, NT, VARLEN)
    if c * BT >= eos - bos:
        return  # a spare row of a packed batch's chunk list
    pos = tl.arange(0, BT)
    sub = tl.arange(0, SUB)
    t_chunk = bos + c * BT + pos
    t_rows = bos + c * BT + row0 + sub
    chunk_mask = t_chunk < eos
    rows_mask = t_rows < eos
    d = pid_k * BK + tl.arange(0, BK)
    d_mask = d < K
    state_base = hs + (slot * H + h) * K * V
    grad_base = dhs + (slot * H + h) * K * V
    # do_rows . v_chunk (dq's scores), v_rows . do_chunk (dk's), and the inter-chunk terms
    rows_by_chunk = tl.zeros([SUB, BT], dtype=tl.float32)
    chunk_by_rows = tl.zeros([SUB, BT], dtype=tl.float32)
    q_inter = tl.zeros([SUB, BK], dtype=tl.float32)
    k_inter = tl.zeros([SUB, BK], dtype=tl.float32)
    for e0 in range(0, V, BV):
        e = e0 + tl.arange(0, BV)
        e_mask = e < V
        do_base = do + b * sdb + h * sdh + e[None, :] * sdd
        v_base = v + b * svb + h * svh + e[None, :] * svd
        do_rows = tl.load(do_base + t_rows[:, None] * sdt, mask=rows_mask[:, None] & e_mask[None, :],
                          other=0.0)
        v_rows = tl.load(v_base + t_rows[:, None] * svt, mask=rows_mask[:, None] & e_mask[None, :],
                         other=0.0)
        do_chunk = tl.load(do_base + t_chunk[:, None] * sdt,
                           mask=chunk_mask[:, None] & e_mask[None, :], other=0.0)
        v_chunk = tl.load(v_base + t_chunk[:, None] * svt,
                          mask=chunk_mask[:, None] & e_mask[None, :], other=0.0)
        rows_by_chunk = tl.dot(do_rows.to(DOT), tl.trans(v_chunk).to(DOT), rows_by_chunk,
                               input_precision="ieee")
        chunk_by_rows = tl.dot(v_rows.to(DOT), tl.trans(do_chunk).to(DOT), chunk_by_rows,
                               input_precision="ieee")
        block_mask = d_mask[:, None] & e_mask[None, :]
        state = tl.load(state_base + d[:, None] * V + e[None, :], mask=block_mask, other=0.0)
        grad = tl.load(grad_base + d[:, None] * V + e[None, :], mask=block_mask, other=0.0)
        q_inter = _dot_state(do_rows, state, q_inter, SPLIT, DOT)
        k_inter = _dot_state(v_rows, grad, k_inter, SPLIT, DOT)
    rows_by_chunk *= scale
    chunk_by_rows *= scale
    g_base = g + b * sgb + h * sgh + d[None, :] * sgd
    g_chunk = tl.load(g_base + t_chunk[:, None] * sgt, mask=chunk_mask[:, None] & d_mask[None, :],
                      other=0.0).to(tl.float32)
    g_rows = tl.load(g_base + t_rows[:, None] * sgt, mask=rows_mask[:, None] & d_mask[None, :],
                     other=0.0).to(tl.float32)
    cum_rows = tl.cumsum(g_rows, axis=0)  # b_t - b_r: since the step before the sub-chunk
    to_last_row = tl.cumsum(g_rows, axis=0, reverse=True) - g_rows  # b_r' - b_s
    before = tl.sum(tl.where((pos < row0)[:, None], g_chunk, 0.0), axis=0)
    after = tl.sum(tl.where((pos >= row0 + SUB)[:, None], g_chunk, 0.0), axis=0)
    q_inter *= scale * tl.exp(before[None, :] + cum_rows)
    k_inter *= tl.exp(tl.minimum(to_last_row + after[None, :], 0.0))
    qk_head = h // QK_GROUP
    q_base = q + b * sqb + qk_head * sqh + d[None, :] * sqd
    k_base = k + b * skb + qk_head * skh + d[None, :] * skd
    q_rows = tl.load(q_base + t_rows[:, None] * sqt, mask=rows_mask[:, None] & d_mask[None, :],
                     other=0.0).to(tl.float32)
    k_rows = tl.load(k_base + t_rows[:, None] * skt, mask=rows_mask[:, None] & d_mask[None, :],
                     other=0.0).to(tl.float32)
    earlier = pos < row0
    later = (pos >= row0 + SUB) & chunk_mask
    out = (b * T + t_rows[:, None]) * H * K + h * K + d[None, :]
    tile_mask = rows_mask[:, None] & d_mask[None, :]
    tl.store(carries + out, k_rows * k_inter, mask=tile_mask)
    dq_tile = q_inter
    dk_tile = k_inter
    if row0 > 0:
        g_earlier = tl.where(earlier[:, None], g_chunk, 0.0)
        to_ref = tl.cumsum(g_earlier, axis=0, reverse=True) - g_earlier  # b_r - b_s
        k_chunk = tl.load(k_base + t_chunk[:, None] * skt,
                          mask=(earlier & chunk_mask)[:, None] & d_mask[None, :], other=0.0)
        k_decayed = k_chunk.to(tl.float32) * tl.exp(tl.minimum(to_ref, 0.0))
        scores = tl.where(earlier[None, :], rows_by_chunk, 0.0)
        from_ref = dot_fp32_operands(scores, k_decayed, tl.zeros([SUB, BK], dtype=tl.float32),
                                     k_chunk.dtype == tl.float32)
        dq_tile += from_ref * tl.exp(cum_rows)
    if row0 + SUB < BT:
        g_later = tl.where(later[:, None], g_chunk, 0.0)
        from_last = tl.cumsum(g_later, axis=0)  # b_t - b_r'
        q_chunk = tl.load(q_base + t_chunk[:, None] * sqt, mask=later[:, None] & d_mask[None, :],
                          other=0.0)
        q_decayed = q_chunk.to(tl.float32) * tl.exp(tl.minimum(from_last, 0.0))
        scores = tl.where(later[None, :], chunk_by_rows, 0.0)
        to_last = dot_fp32_operands(scores, q_decayed, tl.zeros([SUB, BK], dtype=tl.float32),
                                    q_chunk.dtype == tl.float32)
        dk_tile += to_last * tl.exp(tl.minimum(to_last_row, 0.0))
    # the diagonal block: scores of the sub-chunk's rows against its own rows, elementwise
    diag_q = tl.zeros([SUB, SUB], dtype=tl.float32)
    for e0 in range(0, V, BV):
        e = e0 + tl.arange(0, BV)
        rows_2d = rows_mask[:, None] & (e < V)[None, :]
        do_rows = tl.load(do + b * sdb + h * sdh + t_rows[:, None] * sdt + e[None, :] * sdd,
                          mask=rows_2d, other=0.0)
        v_rows = tl.load(v + b * svb + h * svh + t_rows[:, None] * svt + e[None, :] * svd,
                         mask=rows_2d, other=0.0)
        diag_q = tl.dot(do_rows.to(DOT), tl.trans(v_rows).to(DOT), diag_q,
                        input_precision="ieee")
    causal = sub[:, None] >= sub[None, :]
    diag_q = tl.where(causal, diag_q * scale, 0.0)  # [t, s]
    diag_k = tl.trans(diag_q)  # [s, t]
    gap = tl.exp(tl.minimum(cum_rows[:, None, :] - cum_rows[None, :, :], 0.0))  # [t, s, k]
    dq_tile += tl.sum(diag_q[:, :, None] * gap * k_rows[None, :, :], axis=1)
    dk_tile += tl.sum(diag_k[:, :, None] * tl.permute(gap, (1, 0, 2)) * q_rows[None, :, :], axis=1)
    tl.store(dq + out, dq_tile, mask=tile_mask)
    tl.store(dk + out, dk_tile, mask=tile_mask)


@triton.jit
def _dg_kernel(q, k, g, dq, dk, points, carries, hs, dhs, dg, cu, chunk_offsets, T, H, QK_GROUP,
               NT, NK, sqb, sqt, sqh, sqd, skb, skt, skh, skd, sgb, sgt, sgh, sgd,
               K: tl.constexpr, V: tl.constexpr, GATE: tl.constexpr, VARLEN: tl.constexpr,
               BT: tl.constexpr, BK: tl.constexpr):
    """dg of one sequence and value head (and BK channels for per-channel decay), chunk by
    chunk: the reverse cumulative sum of the point gradients within the chunk, plus what all
    later steps add, <S, dH> for the state S after the chunk and its gradient dH. As fla does,
    S is taken as its two parts: the state before the chunk decayed through it (fp32, its
    rounding damped by the decay) and the chunk's own k_s v_s^T terms, whose share
    sum_s k_s . (exp(b_last - b_s) dH v_s) the dqk kernel leaves in ``carries`` from exact keys
    (the recomputed S after the chunk holds them rounded as the state dot's operands: its error
    went into every step's dg). Grid (K/BK or 1, N*H)."""
    pid_k, bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    n, h = bh // H, bh % H
    b, bos, eos = sequence_span(n, cu, T, VARLEN)
    first_slot = chunk_slots(n, chunk_offsets, NT, VARLEN)
    qk_head = h // QK_GROUP
    for c in range(tl.cdiv(eos - bos, BT)):
        slot = first_slot + c
        t = bos + c * BT + tl.arange(0, BT)
        t_mask = t < eos
        if GATE == 2:
            d = pid_k * BK + tl.arange(0, BK)
            d_mask = d < K
            mask = t_mask[:, None] & d_mask[None, :]
            point = _point_grad(q, k, dq, dk, b, t, d, mask, qk_head, h, T, H, K,
                                sqb, sqt, sqh, sqd, skb, skt, skh, skd)
            rows = (b * T + t[:, None]) * H * K + h * K + d[None, :]
            decay = tl.load(g + b * sgb + h * sgh + t[:, None] * sgt + d[None, :] * sgd,
                            mask=mask, other=0.0).to(tl.float32)
            later = (tl.exp(tl.sum(decay, axis=0)) * _boundary_grad(hs, dhs, slot, h, H, d,
                                                                    d_mask, K, V, BK)
                     + tl.sum(tl.load(carries + rows, mask=mask, other=0.0), axis=0))
            tl.store(dg + rows, tl.cumsum(point, axis=0, reverse=True) + later[None, :],
                     mask=mask)
        else:
            point = tl.zeros([BT], dtype=tl.float32)
            carried = tl.zeros([BT], dtype=tl.float32)
            for j in range(NK):
                at = ((b * T + t) * H + h) * NK + j
                point += tl.load(points + at, mask=t_mask, other=0.0)
                carried += tl.load(carries + at, mask=t_mask, other=0.0)
            decay = tl.load(g + b * sgb + h * sgh + t * sgt, mask=t_mask, other=0.0)
            later = (tl.exp(tl.sum(decay.to(tl.float32), axis=0))
                     * _state_inner(hs, dhs, slot, h, H, K, V, BK) + tl.sum(carried, axis=0))
            tl.store(dg + (b * T + t) * H + h, tl.cumsum(point, axis=0, reverse=True) + later,
                     mask=t_mask)


@triton.jit
def _state_inner(hs, dhs, slot, h, H, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr):
    """<S, dH> summed over the whole [K, V] state (scalar decay's term from later steps), S and
    dH as in ``_boundary_grad``. One [BK, BK] accumulator reduced once at the end: reducing
    every block to a scalar inside the loops left an 8 B stack spill on sm_80."""
    before, grad = _boundary_states(hs, dhs, slot, h, H, K, V)
    acc = tl.zeros([BK, BK], dtype=tl.float32)
    for k0 in range(0, K, BK):
        d = k0 + tl.arange(0, BK)
        for e0 in range(0, V, BK):
            e = e0 + tl.arange(0, BK)
            block = d[:, None] * V + e[None, :]
            mask = (d < K)[:, None] & (e < V)[None, :]
            acc += (tl.load(before + block, mask=mask, other=0.0)
                    * tl.load(grad + block, mask=mask, other=0.0))
    return tl.sum(tl.sum(acc, axis=1), axis=0)


@triton.jit
def _boundary_grad(hs, dhs, slot, h, H, d, d_mask, K: tl.constexpr, V: tl.constexpr,
                   BV: tl.constexpr):
    """sum_v S[d, v] dH[d, v], [BK], for the state S before chunk ``slot`` and dH, the gradient
    of the state after it (zero after a sequence's last chunk without a final state's)."""
    before, grad = _boundary_states(hs, dhs, slot, h, H, K, V)
    total = tl.sum(tl.zeros([BV, BV], dtype=tl.float32), axis=1)
    for e0 in range(0, V, BV):
        e = e0 + tl.arange(0, BV)
        block = d[:, None] * V + e[None, :]
        block_mask = d_mask[:, None] & (e < V)[None, :]
        total += tl.sum(tl.load(before + block, mask=block_mask, other=0.0)
                        * tl.load(grad + block, mask=block_mask, other=0.0), axis=1)
    return total


@triton.jit
def _boundary_states(hs, dhs, slot, h, H, K: tl.constexpr, V: tl.constexpr):
    """Pointers to the [K, V] state before chunk ``slot`` and to the gradient of the state
    after it (the chunk's slots of ``hs`` and ``dhs``)."""
    return hs + (slot * H + h) * K * V, dhs + (slot * H + h) * K * V


@triton.jit
def _point_grad(q, k, dq, dk, b, t, d, mask, qk_head, h, T, H, K,
                sqb, sqt, sqh, sqd, skb, skt, skh, skd):
    """q dq - k dk on a [BT, BK] tile: the gradient of the cumulative log decay at each step."""
    q_tile = tl.load(q + b * sqb + qk_head * sqh + t[:, None] * sqt + d[None, :] * sqd,
                     mask=mask, other=0.0).to(tl.float32)
    k_tile = tl.load(k + b * skb + qk_head * skh + t[:, None] * skt + d[None, :] * skd,
                     mask=mask, other=0.0).to(tl.float32)
    grads = (b * T + t[:, None]) * H * K + h * K + d[None, :]
    dq_tile = tl.load(dq + grads, mask=mask, other=0.0)
    dk_tile = tl.load(dk + grads, mask=mask, other=0.0)
    return q_tile * dq_tile - k_tile * dk_tile
