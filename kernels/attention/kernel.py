"""The tiled attention forward kernel (FlashAttention-2 style).

One program computes a ``BLOCK_M`` x ``D`` tile of the output for one (batch, query head). It keeps
the query tile on chip and streams key/value tiles of ``BLOCK_N`` rows through two ``tl.dot``s:
scores ``Q K^T`` and the weighted sum ``P V``. With ``SIGMOID`` the weights are
``sigmoid(scale * s + bias)`` and are summed as they are; otherwise they are the softmax over the
visible keys, accumulated with a running row maximum and normaliser (online softmax), so the
``T x S`` score matrix never exists in memory.

Key blocks fall in two ranges. Blocks that every query row of the tile may see in full, and that
lie inside ``S``, run without masks; the rest (the causal diagonal and the ragged end of ``S``)
run with the causal and bounds masks. Causal masking is bottom-right aligned: query ``i`` sees
keys ``j <= i + S - T``. A query row that sees no key at all (``T > S``, causal) gets zeros.
"""
import triton
import triton.language as tl

LOG2_E = 1.4426950408889634

# The switch that makes @triton.jit below build interpreted (numpy) functions instead of GPU code.
INTERPRETED = triton.knobs.runtime.interpret


@triton.jit
def _dot(a, b, acc, UPCAST_BF16: tl.constexpr):
    """``acc + a @ b`` with float32 accumulation.

    float32 operands run as TF32 on the tensor cores (about 1e-3 relative error): IEEE float32
    dots fall back to FMA code that spills heavily (kilobytes of stack per thread at D=128).
    UPCAST_BF16 is for the Triton interpreter only, whose tl.dot multiplies the raw bit patterns
    of bfloat16 operands; their exact float32 values give what bfloat16 MMA gives on a GPU."""
    if UPCAST_BF16:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision="tf32")


@triton.jit
def _attend_key_range(acc, row_max, row_sum, q, k_tile_ptrs, v_tile_ptrs, offs_m, offs_n,
                      key_lo, key_hi, S, causal_shift, qk_scale, sigmoid_bias,
                      stride_kn, stride_vn,
                      BLOCK_N: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr,
                      SIGMOID: tl.constexpr, UPCAST_BF16: tl.constexpr):
    """Fold the key blocks starting at ``key_lo`` (a multiple of BLOCK_N) up to ``key_hi`` into
    the accumulator; returns the updated (acc, row_max, row_sum)."""
    for start_n in range(key_lo, key_hi, BLOCK_N):
        keys = start_n + offs_n
        # Pointer offsets of a block grow with the sequence: form them in 64 bits.
        k_block_ptrs = k_tile_ptrs + tl.cast(start_n, tl.int64) * stride_kn
        v_block_ptrs = v_tile_ptrs + tl.cast(start_n, tl.int64) * stride_vn
        if MASKED:
            k_t = tl.load(k_block_ptrs, mask=keys[None, :] < S, other=0.0)
            v = tl.load(v_block_ptrs, mask=keys[:, None] < S, other=0.0)
        else:
            k_t = tl.load(k_block_ptrs)
            v = tl.load(v_block_ptrs)
        scores = _dot(q, k_t, None, UPCAST_BF16)
        if MASKED:
            visible = keys[None, :] < S
            if CAUSAL:
                visible = visible & (keys[None, :] <= offs_m[:, None] + causal_shift)
        if SIGMOID:
            weights = tl.sigmoid(scores * qk_scale + sigmoid_bias)
            if MASKED:
                weights = tl.where(visible, weights, 0.0)
        else:
            # qk_scale carries log2(e): exp2 of these logits is the softmax numerator.
            logits = scores * qk_scale
            if MASKED:
                logits = tl.where(visible, logits, float("-inf"))
            new_max = tl.maximum(row_max, tl.max(logits, 1))
            # A row that has seen no visible key yet keeps a -inf maximum; shifting by 0 instead
            # keeps its weights exp2(-inf) = 0 rather than exp2(-inf + inf) = NaN.
            shift = tl.where(new_max == float("-inf"), 0.0, new_max)
            weights = tl.math.exp2(logits - shift[:, None])
            rescale = tl.math.exp2(row_max - shift)
            row_sum = row_sum * rescale + tl.sum(weights, 1)
            acc = acc * rescale[:, None]
            row_max = new_max
        acc = _dot(weights.to(v.dtype), v, acc, UPCAST_BF16)
    return acc, row_max, row_sum


@triton.jit
def attention_fwd_kernel(
        q_ptr, k_ptr, v_ptr, o_ptr,
        stride_qb, stride_qt, stride_qh, stride_qd,
        stride_kb, stride_kn, stride_kh, stride_kd,
        stride_vb, stride_vn, stride_vh, stride_vd,
        stride_ob, stride_ot, stride_oh, stride_od,
        T, S, heads_per_kv, qk_scale, sigmoid_bias,
        D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        CAUSAL: tl.constexpr, SIGMOID: tl.constexpr, UPCAST_BF16: tl.constexpr):
    """Grid ``(cdiv(T, BLOCK_M), Hq, B)``. ``qk_scale`` is ``scale * log2(e)`` for softmax and
    ``scale`` for sigmoid; ``sigmoid_bias`` is used only with SIGMOID."""
    if CAUSAL:
        # Causal tiles further down hold more keys: start those first for a better tail.
        tile_m = tl.num_programs(0) - 1 - tl.program_id(0)
    else:
        tile_m = tl.program_id(0)
    head = tl.program_id(1)
    batch = tl.program_id(2).to(tl.int64)
    kv_head = head // heads_per_kv
    start_m = tile_m * BLOCK_M

    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D)

    q_base = q_ptr + batch * stride_qb + head.to(tl.int64) * stride_qh
    q_ptrs = q_base + offs_m.to(tl.int64)[:, None] * stride_qt + offs_d[None, :] * stride_qd
    q = tl.load(q_ptrs, mask=offs_m[:, None] < T, other=0.0)
    k_base = k_ptr + batch * stride_kb + kv_head.to(tl.int64) * stride_kh
    k_tile_ptrs = k_base + offs_n[None, :] * stride_kn + offs_d[:, None] * stride_kd
    v_base = v_ptr + batch * stride_vb + kv_head.to(tl.int64) * stride_vh
    v_tile_ptrs = v_base + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd

    causal_shift = S - T
    if CAUSAL:
        # Keys below the first row's horizon are visible to every row of the tile.
        unmasked_hi = tl.minimum(tl.maximum(start_m + 1 + causal_shift, 0), S)
        key_hi = tl.minimum(tl.maximum(start_m + BLOCK_M + causal_shift, 0), S)
    else:
        unmasked_hi = S
        key_hi = S
    unmasked_hi = (unmasked_hi // BLOCK_N) * BLOCK_N

    acc = tl.zeros([BLOCK_M, D], dtype=tl.float32)
    row_max = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    row_sum = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc, row_max, row_sum = _attend_key_range(
        acc, row_max, row_sum, q, k_tile_ptrs, v_tile_ptrs, offs_m, offs_n,
        0, unmasked_hi, S, causal_shift, qk_scale, sigmoid_bias, stride_kn, stride_vn,
        BLOCK_N, False, CAUSAL, SIGMOID, UPCAST_BF16)
    acc, row_max, row_sum = _attend_key_range(
        acc, row_max, row_sum, q, k_tile_ptrs, v_tile_ptrs, offs_m, offs_n,
        unmasked_hi, key_hi, S, causal_shift, qk_scale, sigmoid_bias, stride_kn, stride_vn,
        BLOCK_N, True, CAUSAL, SIGMOID, UPCAST_BF16)
    if not SIGMOID:
        # Rows that saw no key have row_sum 0 and acc 0: divide by 1 to output zeros.
        acc = acc / tl.where(row_sum == 0.0, 1.0, row_sum)[:, None]

    o_base = o_ptr + batch * stride_ob + head.to(tl.int64) * stride_oh
    o_ptrs = o_base + offs_m.to(tl.int64)[:, None] * stride_ot + offs_d[None, :] * stride_od
    tl.store(o_ptrs, acc.to(o_ptr.dtype.element_ty), mask=offs_m[:, None] < T)
