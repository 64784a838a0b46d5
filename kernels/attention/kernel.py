"""The tiled attention forward kernel (FlashAttention-2 style) and the device helpers the
backward kernels share with it.

One program computes a ``BLOCK_M`` x ``DV`` tile of the output for one (sequence, query head). It
keeps the query tile on chip and streams key/value tiles of ``BLOCK_N`` rows through two
``tl.dot``s: scores ``Q K^T`` and the weighted sum ``P V``. With ``SIGMOID`` the weights are
``sigmoid(scale * s + bias)`` and are summed as they are; otherwise they are the softmax over the
visible keys, accumulated with a running row maximum and normaliser (online softmax), so the
``T x S`` score matrix never exists in memory. With ``STORE_LSE`` (softmax, for the backward) the
program also writes each row's log-sum-exp in base 2, ``+inf`` for a row that sees no key, so the
backward's ``exp2(logit - lse)`` is 0 there.

A sequence is a batch row (dense) or a slice of the packed rows given by ``cu_seqlens`` /
``cu_seqlens_k`` (``VARLEN``). Head dims ``D`` (q, k) and ``DV`` (v, o) are padded to the
power-of-two tiles ``BLOCK_D`` / ``BLOCK_DV`` (at least 16, tl.dot's smallest edge): padded
columns load as zeros, which add nothing to ``q . k``, and are never stored.

Softmax scores may be soft-capped (``softcap * tanh(scale * s / softcap)``, SOFTCAP) and biased
by ALiBi (``-slope * |i + S_n - T_n - j|``, ALIBI) before the softmax. Masking is bottom-right
aligned per sequence: query ``i`` sees keys ``j <= i + S_n - T_n + right`` (CAUSAL: causal, right
= 0, or a right-bounded window) and ``j >= i + S_n - T_n - left`` (WINDOW: a left-bounded
window). Key blocks fall in three ranges (``key_bounds``): blocks that every query row of the tile
may see in full, and that lie inside the sequence's keys, run without row masks; those below
(the window's lower edge) and above (the causal diagonal or the window's upper edge, the ragged
end) run masked; blocks outside the band are never visited. A query row that sees no key gets
zeros.
"""
import triton
import triton.language as tl

LOG2_E = 1.4426950408889634

# The switch that makes @triton.jit below build interpreted (numpy) functions instead of GPU code.
INTERPRETED = triton.knobs.runtime.interpret


@triton.jit
def dot(a, b, acc, UPCAST_BF16: tl.constexpr):
    """``acc + a @ b`` with float32 accumulation.

    float32 operands run as TF32 on the tensor cores (about 1e-3 relative error): IEEE float32
    dots fall back to FMA code that spills heavily (kilobytes of stack per thread at D=128).
    TF32 is Triton's default precision on NVIDIA; on AMD its default is IEEE (gfx90a and gfx950
    have no TF32, and their fp32 matrix cores are exact).
    UPCAST_BF16 is for the Triton interpreter only, whose tl.dot multiplies the raw bit patterns
    of bfloat16 operands; their exact float32 values give what bfloat16 MMA gives on a GPU."""
    if UPCAST_BF16:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, acc)


@triton.jit
def load_tile(ptrs, rows_ok, cols_ok, MASK_ROWS: tl.constexpr, MASK_COLS: tl.constexpr):
    """A 2-D tile, zero where a row or column is out of range. Masks only what the constexpr
    flags ask for, so tiles known to be in range load without predicates."""
    if MASK_ROWS and MASK_COLS:
        tile = tl.load(ptrs, mask=rows_ok & cols_ok, other=0.0)
    elif MASK_ROWS:
        tile = tl.load(ptrs, mask=rows_ok, other=0.0)
    elif MASK_COLS:
        tile = tl.load(ptrs, mask=cols_ok, other=0.0)
    else:
        tile = tl.load(ptrs)
    return tile


@triton.jit
def locate_sequence(cu_q_ptr, cu_k_ptr, seq, T, S, VARLEN: tl.constexpr):
    """``(first query row, queries, first key row, keys)`` of sequence ``seq``: a slice of the
    packed rows with VARLEN, else the whole of batch row ``seq`` (rows counted from it)."""
    if VARLEN:
        q_start = tl.load(cu_q_ptr + seq)
        q_len = tl.load(cu_q_ptr + seq + 1) - q_start
        k_start = tl.load(cu_k_ptr + seq)
        k_len = tl.load(cu_k_ptr + seq + 1) - k_start
    else:
        q_start = seq * 0
        q_len = T + seq * 0
        k_start = seq * 0
        k_len = S + seq * 0
    return q_start, q_len, k_start, k_len


@triton.jit
def locate_tile(tiles_ptr, VARLEN: tl.constexpr, REVERSE: tl.constexpr):
    """``(sequence, tile within it)`` of this program: grid axes 2 and 0 for a dense batch; with
    VARLEN row ``program_id(0)`` of the (sequence, tile) table, whose spare rows name a tile past
    the last sequence's end (the program exits). REVERSE walks axis 0 from its end."""
    pid = tl.program_id(0)
    if REVERSE:
        pid = tl.num_programs(0) - 1 - pid
    if VARLEN:
        seq = tl.load(tiles_ptr + 2 * pid)
        tile = tl.load(tiles_ptr + 2 * pid + 1)
    else:
        seq = tl.program_id(2)
        tile = pid
    return seq, tile


@triton.jit
def batch_row(seq, VARLEN: tl.constexpr):
    """The batch row of sequence ``seq`` (int64, for pointer offsets): 0 when packed."""
    if VARLEN:
        batch = seq.to(tl.int64) * 0
    else:
        batch = seq.to(tl.int64)
    return batch


@triton.jit
def tanh(x):
    """``tanh(x)`` that never overflows: exp2 sees only non-positive arguments."""
    # 2.885... is 2 log2(e): exp2(-2 log2(e) |x|) = exp(-2 |x|).
    small = tl.math.exp2(-2.8853900817779268 * tl.abs(x))
    magnitude = (1.0 - small) / (1.0 + small)
    return tl.where(x < 0.0, -magnitude, magnitude)


@triton.jit
def softmax_logits(scores, queries, keys, shift, qk_scale, softcap_in, slope_log2,
                   SOFTCAP: tl.constexpr, ALIBI: tl.constexpr):
    """``(base-2 logits, capped)`` of raw scores ``q . k`` at (query, key) positions (any
    broadcastable orientation). With SOFTCAP ``capped = tanh(scores * softcap_in)`` (the
    backward's derivative needs it) and ``qk_scale`` is ``softcap * log2(e)``; else ``capped``
    is ``scores``. ALIBI subtracts ``slope * |query + shift - key|`` (slope in base 2)."""
    capped = scores
    if SOFTCAP:
        capped = tanh(scores * softcap_in)
    logits = capped * qk_scale
    if ALIBI:
        logits = logits - slope_log2 * tl.abs(queries + shift - keys).to(tl.float32)
    return logits, capped


@triton.jit
def visible_keys(visible, queries, keys, lo_shift, hi_shift, CAUSAL: tl.constexpr,
                 WINDOW: tl.constexpr):
    """``visible`` where key ``keys`` is in the band of query ``queries``: at most
    ``queries + hi_shift`` with CAUSAL (a causal or right-bounded window), at least
    ``queries + lo_shift`` with WINDOW (a left-bounded window)."""
    if CAUSAL:
        visible = visible & (keys <= queries + hi_shift)
    if WINDOW:
        visible = visible & (keys >= queries + lo_shift)
    return visible


@triton.jit
def key_bounds(start_m, k_len, lo_shift, hi_shift, BLOCK_M: tl.constexpr,
               BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, WINDOW: tl.constexpr):
    """``(key_lo, unmasked_lo, unmasked_hi, key_hi)`` of the query tile at ``start_m``: keys
    ``[key_lo, key_hi)`` hold every key a row of the tile may see; ``[unmasked_lo,
    unmasked_hi)`` (multiples of BLOCK_N) those every row sees, all in the sequence. Key tiles
    outside the band are never visited, so a window costs O(T * window)."""
    key_lo = start_m * 0
    unmasked_lo = key_lo
    key_hi = k_len
    unmasked_hi = k_len
    if CAUSAL:
        # Keys up to the first row's horizon are visible to every row of the tile.
        unmasked_hi = tl.minimum(tl.maximum(start_m + 1 + hi_shift, 0), k_len)
        key_hi = tl.minimum(tl.maximum(start_m + BLOCK_M + hi_shift, 0), k_len)
    unmasked_hi = (unmasked_hi // BLOCK_N) * BLOCK_N
    if WINDOW:
        # Keys from the last row's lower edge on are visible to every row of the tile.
        key_lo = (tl.minimum(tl.maximum(start_m + lo_shift, 0), k_len) // BLOCK_N) * BLOCK_N
        last_lo = tl.minimum(tl.maximum(start_m + BLOCK_M - 1 + lo_shift, 0), k_len)
        unmasked_lo = tl.minimum(tl.cdiv(last_lo, BLOCK_N) * BLOCK_N, key_hi)
        unmasked_hi = tl.maximum(unmasked_hi, unmasked_lo)
    return key_lo, unmasked_lo, unmasked_hi, key_hi


@triton.jit
def _attend_key_range(acc, row_max, row_sum, q, k_tile_ptrs, v_tile_ptrs, offs_m, offs_n,
                      d_ok, dv_ok, key_lo, key_hi, k_len, shift, lo_shift, hi_shift, qk_scale,
                      sigmoid_bias, softcap_in, slope_log2, stride_kn, stride_vn,
                      BLOCK_N: tl.constexpr, MASKED: tl.constexpr, PAD_D: tl.constexpr,
                      PAD_DV: tl.constexpr, CAUSAL: tl.constexpr, WINDOW: tl.constexpr,
                      SOFTCAP: tl.constexpr, ALIBI: tl.constexpr, SIGMOID: tl.constexpr,
                      UPCAST_BF16: tl.constexpr):
    """Fold the key blocks starting at ``key_lo`` up to ``key_hi`` into the accumulator;
    returns the updated (acc, row_max, row_sum)."""
    for start_n in range(key_lo, key_hi, BLOCK_N):
        keys = start_n + offs_n
        # Pointer offsets of a block grow with the sequence: form them in 64 bits.
        k_block_ptrs = k_tile_ptrs + tl.cast(start_n, tl.int64) * stride_kn
        v_block_ptrs = v_tile_ptrs + tl.cast(start_n, tl.int64) * stride_vn
        k_t = load_tile(k_block_ptrs, d_ok[:, None], keys[None, :] < k_len, PAD_D, MASKED)
        v = load_tile(v_block_ptrs, keys[:, None] < k_len, dv_ok[None, :], MASKED, PAD_DV)
        scores = dot(q, k_t, None, UPCAST_BF16)
        if MASKED:
            visible = visible_keys(keys[None, :] < k_len, offs_m[:, None], keys[None, :],
                                   lo_shift, hi_shift, CAUSAL, WINDOW)
        if SIGMOID:
            weights = tl.sigmoid(scores * qk_scale + sigmoid_bias)
            if MASKED:
                weights = tl.where(visible, weights, 0.0)
        else:
            # qk_scale carries log2(e): exp2 of these logits is the softmax numerator.
            logits, _ = softmax_logits(scores, offs_m[:, None], keys[None, :], shift, qk_scale,
                                       softcap_in, slope_log2, SOFTCAP, ALIBI)
            if MASKED:
                logits = tl.where(visible, logits, float("-inf"))
            new_max = tl.maximum(row_max, tl.max(logits, 1))
            # A row that has seen no visible key yet keeps a -inf maximum; shifting by 0 instead
            # keeps its weights exp2(-inf) = 0 rather than exp2(-inf + inf) = NaN.
            new_shift = tl.where(new_max == float("-inf"), 0.0, new_max)
            weights = tl.math.exp2(logits - new_shift[:, None])
            rescale = tl.math.exp2(row_max - new_shift)
            row_sum = row_sum * rescale + tl.sum(weights, 1)
            acc = acc * rescale[:, None]
            row_max = new_max
        acc = dot(weights.to(v.dtype), v, acc, UPCAST_BF16)
    return acc, row_max, row_sum


@triton.jit
def alibi_slope(alibi_ptr, seq, head, stride_as, stride_ah, ALIBI: tl.constexpr):
    """The ALiBi slope of (sequence, query head) in base 2 (times log2(e)); 0 without ALIBI."""
    slope = 0.0
    if ALIBI:
        slope = tl.load(alibi_ptr + seq * stride_as + head * stride_ah) * 1.4426950408889634
    return slope


@triton.jit
def attention_fwd_kernel(
        q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr, cu_q_ptr, cu_k_ptr, tiles_ptr, alibi_ptr,
        stride_qb, stride_qt, stride_qh, stride_qd,
        stride_kb, stride_kn, stride_kh, stride_kd,
        stride_vb, stride_vn, stride_vh, stride_vd,
        stride_ob, stride_ot, stride_oh, stride_od,
        stride_lb, stride_lh, stride_as, stride_ah,
        T, S, heads_per_kv, qk_scale, sigmoid_bias, window_left, window_right, softcap_in,
        D: tl.constexpr, DV: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
        WINDOW: tl.constexpr, SOFTCAP: tl.constexpr, ALIBI: tl.constexpr,
        SIGMOID: tl.constexpr, DEFAULT_BIAS: tl.constexpr, VARLEN: tl.constexpr,
        STORE_LSE: tl.constexpr, UPCAST_BF16: tl.constexpr):
    """Grid ``(cdiv(T, BLOCK_M), Hq, B)``, or packed ``(rows of the query tile table, Hq, 1)``.
    ``qk_scale`` is ``scale * log2(e)`` for softmax (``softcap * log2(e)`` with SOFTCAP, whose
    tanh takes ``scores * softcap_in``) and ``scale`` for sigmoid; ``sigmoid_bias`` is used only
    with SIGMOID, replaced by ``-ln(S_n)`` per sequence with DEFAULT_BIAS. Query ``i`` sees keys
    ``j <= i + S_n - T_n + window_right`` with CAUSAL (0 when causal) and ``j >= i + S_n - T_n -
    window_left`` with WINDOW. ``alibi`` holds one slope per (sequence, query head) at strides
    ``(stride_as, stride_ah)``. ``lse`` is ``[B, Hq, T]`` with unit row stride (written with
    STORE_LSE only)."""
    # Causal tiles further down hold more keys: start those first for a better tail.
    seq, tile_m = locate_tile(tiles_ptr, VARLEN, CAUSAL)
    q_start, q_len, k_start, k_len = locate_sequence(cu_q_ptr, cu_k_ptr, seq, T, S, VARLEN)
    start_m = tile_m * BLOCK_M
    if start_m >= q_len:
        return
    head = tl.program_id(1)
    batch = batch_row(seq, VARLEN)
    kv_head = head // heads_per_kv
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

    q_base = (q_ptr + batch * stride_qb + q_start.to(tl.int64) * stride_qt
              + head.to(tl.int64) * stride_qh)
    q_ptrs = q_base + offs_m.to(tl.int64)[:, None] * stride_qt + offs_d[None, :] * stride_qd
    q = load_tile(q_ptrs, rows_ok[:, None], d_ok[None, :], True, BLOCK_D != D)
    k_base = (k_ptr + batch * stride_kb + k_start.to(tl.int64) * stride_kn
              + kv_head.to(tl.int64) * stride_kh)
    k_tile_ptrs = k_base + offs_n[None, :] * stride_kn + offs_d[:, None] * stride_kd
    v_base = (v_ptr + batch * stride_vb + k_start.to(tl.int64) * stride_vn
              + kv_head.to(tl.int64) * stride_vh)
    v_tile_ptrs = v_base + offs_n[:, None] * stride_vn + offs_dv[None, :] * stride_vd

    shift = k_len - q_len
    lo_shift = shift - window_left
    hi_shift = shift + window_right
    key_lo, unmasked_lo, unmasked_hi, key_hi = key_bounds(
        start_m, k_len, lo_shift, hi_shift, BLOCK_M, BLOCK_N, CAUSAL, WINDOW)

    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    row_max = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    row_sum = tl.zeros([BLOCK_M], dtype=tl.float32)
    pad_d: tl.constexpr = BLOCK_D != D
    pad_dv: tl.constexpr = BLOCK_DV != DV
    # Masked: the window's lower edge, the causal diagonal (or upper edge) and the ragged end.
    if WINDOW:
        acc, row_max, row_sum = _attend_key_range(
            acc, row_max, row_sum, q, k_tile_ptrs, v_tile_ptrs, offs_m, offs_n, d_ok, dv_ok,
            key_lo, unmasked_lo, k_len, shift, lo_shift, hi_shift, qk_scale, sigmoid_bias,
            softcap_in, slope_log2, stride_kn, stride_vn, BLOCK_N, True, pad_d, pad_dv, CAUSAL,
            WINDOW, SOFTCAP, ALIBI, SIGMOID, UPCAST_BF16)
    acc, row_max, row_sum = _attend_key_range(
        acc, row_max, row_sum, q, k_tile_ptrs, v_tile_ptrs, offs_m, offs_n, d_ok, dv_ok,
        unmasked_lo, unmasked_hi, k_len, shift, lo_shift, hi_shift, qk_scale, sigmoid_bias,
        softcap_in, slope_log2, stride_kn, stride_vn, BLOCK_N, False, pad_d, pad_dv, CAUSAL,
        WINDOW, SOFTCAP, ALIBI, SIGMOID, UPCAST_BF16)
    acc, row_max, row_sum = _attend_key_range(
        acc, row_max, row_sum, q, k_tile_ptrs, v_tile_ptrs, offs_m, offs_n, d_ok, dv_ok,
        unmasked_hi, key_hi, k_len, shift, lo_shift, hi_shift, qk_scale, sigmoid_bias,
        softcap_in, slope_log2, stride_kn, stride_vn, BLOCK_N, True, pad_d, pad_dv, CAUSAL,
        WINDOW, SOFTCAP, ALIBI, SIGMOID, UPCAST_BF16)
    if not SIGMOID:
        # Rows that saw no key have row_sum 0 and acc 0: divide by 1 to output zeros.
        seen = row_sum > 0.0
        acc = acc / tl.where(seen, row_sum, 1.0)[:, None]
        if STORE_LSE:
            lse = tl.where(seen, row_max + tl.math.log2(tl.where(seen, row_sum, 1.0)),
                           float("inf"))
            lse_ptrs = (lse_ptr + batch * stride_lb + head.to(tl.int64) * stride_lh
                        + q_start.to(tl.int64) + offs_m)
            tl.store(lse_ptrs, lse, mask=rows_ok)

    o_base = (o_ptr + batch * stride_ob + q_start.to(tl.int64) * stride_ot
              + head.to(tl.int64) * stride_oh)
    o_ptrs = o_base + offs_m.to(tl.int64)[:, None] * stride_ot + offs_dv[None, :] * stride_od
    tl.store(o_ptrs, acc.to(o_ptr.dtype.element_ty), mask=rows_ok[:, None] & dv_ok[None, :])
