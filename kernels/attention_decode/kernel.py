"""The two Triton kernels of split-KV decoding.

Stage "split": one program per (sequence, kv head, split). It holds every query head of the kv
head's GQA group as the rows of one tile (padded to >= 16 rows so that ``tl.dot`` applies), walks
its split of the sequence's visible keys (after a left pad, inside a sliding window; contiguous or
paged cache) in blocks of ``BLOCK_N`` keys with an online softmax, and writes the split's
normalised output and its log-sum-exp (base 2). With a single split it writes the final output
and log-sum-exp directly and the combine stage is skipped.

Stage "combine": one program per (sequence, query head) merges the splits' partial outputs, each
weighted by ``exp2(lse_split - max lse)``.

Splits are cut per sequence from its own visible length (block-aligned), so ragged batches keep
every split busy on long sequences; a split past the end of a short sequence does no work and
reports ``lse = -inf`` with a zero output, which the combine stage weighs by zero. A sequence that
sees no key has only such splits and gets a zero output (and a final lse of +inf).
"""
import triton
import triton.language as tl

from seqtune.kernels.attention.kernel import tanh


LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)


@triton.jit
def decode_split_kernel(
    q_ptr, k_ptr, v_ptr, seqlens_ptr, out_ptr, lse_ptr,
    table_ptr, leftpad_ptr, alibi_ptr,
    stride_qb, stride_qh, stride_qd,
    stride_kb, stride_kn, stride_kh, stride_kd,
    stride_vb, stride_vn, stride_vh, stride_vd,
    stride_ob, stride_oh, stride_os, stride_od,
    stride_tb, stride_ab,
    scale, softcap, window_left, num_kv_heads, group_size,
    HEAD_DIM: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr,
    NUM_SPLITS: tl.constexpr, DOT_DTYPE: tl.constexpr, PAGE_SIZE: tl.constexpr,
    HAS_LEFTPAD: tl.constexpr, SOFTCAP: tl.constexpr, ALIBI: tl.constexpr,
):
    """Partial attention of one GQA group over one split of one sequence's visible keys.

    The visible keys are cache positions ``[lo, seqlen)``: ``lo`` is the left pad, raised to
    ``seqlen - 1 - window_left`` by a window (``window_left >= 0``); the query sits at position
    ``seqlen - 1``, so a window's right bound never hides a key. Splits cut only this range, so
    keys outside the window cost nothing.

    ``PAGE_SIZE > 0``: the caches are paged ``[num_blocks, PAGE_SIZE, Hkv, D]`` and position p
    of sequence b lives in row ``p % PAGE_SIZE`` of block ``table[b, p // PAGE_SIZE]``;
    ``PAGE_SIZE == 0``: the caches are ``[B, S_max, Hkv, D]``. ``table_ptr``, ``leftpad_ptr``
    and ``alibi_ptr`` are only read when their feature is on (a dummy pointer otherwise).

    A score is ``scale * q.k``, then ``softcap * tanh(score / softcap)`` (``SOFTCAP``), then
    ``- slope * (seqlen - 1 - p)`` (``ALIBI``; slopes ``[B or 1, Hq]`` by ``stride_ab``), the
    order of flash-attn; the online softmax runs on exp2 of it times log2(e).

    ``out_ptr`` is the fp32 scratch ``[B, Hq, NUM_SPLITS, D]`` (strided by ``stride_os`` per
    split) or, with one split, the output ``o`` itself. ``lse_ptr`` is contiguous
    ``[B, Hq, NUM_SPLITS]``: with several splits each split's base-2 log-sum-exp (-inf when
    empty), with one split the final natural-log one (+inf when no key is visible, as
    flash-attn). ``DOT_DTYPE`` is the dtype of the dot operands: the input dtype, except float32
    for bfloat16 under the Triton interpreter, whose tl.dot multiplies bfloat16 tiles as their
    raw uint16 bits (bfloat16 products are exact in float32, so it computes the same). Dots
    accumulate in fp32; fp32 operands multiply in IEEE fp32, never TF32 (decode is
    memory-bound, so exactness costs nothing measurable).
    """
    batch_kv = tl.program_id(0)
    split = tl.program_id(1)
    batch = (batch_kv // num_kv_heads).to(tl.int64)  # int64: cache offsets exceed 2**31
    kv_head = batch_kv % num_kv_heads

    seqlen = tl.load(seqlens_ptr + batch)
    lo = seqlen * 0
    if HAS_LEFTPAD:
        lo = tl.load(leftpad_ptr + batch)
    lo = tl.where(window_left >= 0, tl.maximum(lo, seqlen - 1 - window_left), lo)
    visible = tl.maximum(seqlen - lo, 0)
    # Plain integer ceil-divisions: tl.cdiv is a nested JIT call, slow in the interpreter.
    keys_per_split = (visible + NUM_SPLITS - 1) // NUM_SPLITS
    split_len = (keys_per_split + BLOCK_N - 1) // BLOCK_N * BLOCK_N
    split_start = lo + split * split_len
    split_end = tl.minimum(split_start + split_len, seqlen)

    rows = tl.arange(0, BLOCK_G)
    heads = kv_head * group_size + rows
    row_valid = rows < group_size
    dims = tl.arange(0, HEAD_DIM)
    q = tl.load(q_ptr + batch * stride_qb + heads[:, None] * stride_qh + dims[None, :] * stride_qd,
                mask=row_valid[:, None], other=0.0).to(DOT_DTYPE)
    if ALIBI:
        slopes = tl.load(alibi_ptr + batch * stride_ab + heads, mask=row_valid, other=0.0)

    k_head = k_ptr + kv_head * stride_kh
    v_head = v_ptr + kv_head * stride_vh
    keys = tl.arange(0, BLOCK_N)
    row_max = tl.full([BLOCK_G], float("-inf"), tl.float32)
    row_sum = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, HEAD_DIM], tl.float32)
    for block_start in range(split_start, split_end, BLOCK_N):
        positions = block_start + keys
        key_valid = positions < split_end
        if PAGE_SIZE > 0:
            pages = tl.load(table_ptr + batch * stride_tb + positions // PAGE_SIZE,
                            mask=key_valid, other=0).to(tl.int64)
            k_rows = pages * stride_kb + (positions % PAGE_SIZE) * stride_kn
            v_rows = pages * stride_vb + (positions % PAGE_SIZE) * stride_vn
        else:
            k_rows = batch * stride_kb + positions.to(tl.int64) * stride_kn
            v_rows = batch * stride_vb + positions.to(tl.int64) * stride_vn
        k_t = tl.load(k_head + k_rows[None, :] + dims[:, None] * stride_kd,
                      mask=key_valid[None, :], other=0.0).to(DOT_DTYPE)
        scores = tl.dot(q, k_t, input_precision="ieee") * scale
        if SOFTCAP:
            scores = softcap * tanh(scores / softcap)  # the prefill kernel's overflow-free tanh
        if ALIBI:
            distance = (seqlen - 1 - positions).to(tl.float32)
            scores -= slopes[:, None] * distance[None, :]
        scores = tl.where(key_valid[None, :], scores * LOG2E, float("-inf"))
        new_max = tl.maximum(row_max, tl.max(scores, axis=1))
        rescale = tl.exp2(row_max - new_max)
        probs = tl.exp2(scores - new_max[:, None])
        row_sum = row_sum * rescale + tl.sum(probs, axis=1)
        v = tl.load(v_head + v_rows[:, None] + dims[None, :] * stride_vd,
                    mask=key_valid[:, None], other=0.0)
        # probs round to the input dtype, as the p.v dot of a GPU runs on it.
        p_v = tl.dot(probs.to(v.dtype).to(DOT_DTYPE), v.to(DOT_DTYPE), input_precision="ieee")
        acc = acc * rescale[:, None] + p_v
        row_max = new_max

    # An empty split (or sequence) has row_sum 0: its output is 0.
    has_keys = row_sum > 0
    safe_sum = tl.where(has_keys, row_sum, 1.0)
    out = acc / safe_sum[:, None]
    out_rows = out_ptr + batch * stride_ob + split * stride_os + heads[:, None] * stride_oh
    tl.store(out_rows + dims[None, :] * stride_od, out.to(out_ptr.dtype.element_ty),
             mask=row_valid[:, None])
    lse = row_max + tl.log2(safe_sum)
    if NUM_SPLITS > 1:
        lse = tl.where(has_keys, lse, float("-inf"))  # weighs zero in the combine stage
    else:
        lse = tl.where(has_keys, lse * LN2, float("inf"))
    num_heads = num_kv_heads * group_size
    tl.store(lse_ptr + (batch * num_heads + heads) * NUM_SPLITS + split, lse, mask=row_valid)


@triton.jit
def decode_combine_kernel(
    partial_ptr, lse_ptr, o_ptr, lse_out_ptr,
    stride_ob, stride_oh, stride_od, num_heads,
    HEAD_DIM: tl.constexpr, NUM_SPLITS: tl.constexpr,
):
    """``o[b, h] = sum_s w_s partial[b, h, s] / sum_s w_s`` with ``w_s = exp2(lse_s - max lse)``.

    ``partial_ptr`` is contiguous ``[B, Hq, NUM_SPLITS, D]`` fp32, ``lse_ptr`` contiguous
    ``[B, Hq, NUM_SPLITS]`` fp32 (base 2). Writes the row's natural-log log-sum-exp to the
    contiguous ``[B, Hq]`` fp32 ``lse_out_ptr``: +inf when no split saw a key, as flash-attn.
    """
    batch_head = tl.program_id(0).to(tl.int64)
    batch = batch_head // num_heads
    head = batch_head % num_heads
    splits = tl.arange(0, NUM_SPLITS)
    dims = tl.arange(0, HEAD_DIM)

    lse = tl.load(lse_ptr + batch_head * NUM_SPLITS + splits)
    lse_max = tl.max(lse, axis=0)
    # Every split empty (a sequence of length 0): all weights 0 instead of exp2(-inf + inf) = NaN.
    lse_max = tl.where(lse_max == float("-inf"), 0.0, lse_max)
    weights = tl.exp2(lse - lse_max)
    total = tl.sum(weights, axis=0)

    partial = tl.load(partial_ptr + (batch_head * NUM_SPLITS + splits[:, None]) * HEAD_DIM
                      + dims[None, :])
    safe_total = tl.where(total > 0, total, 1.0)
    out = tl.sum(weights[:, None] * partial, axis=0) / safe_total
    tl.store(o_ptr + batch * stride_ob + head * stride_oh + dims * stride_od,
             out.to(o_ptr.dtype.element_ty))
    lse_out = tl.where(total > 0, (lse_max + tl.log2(safe_total)) * LN2, float("inf"))
    tl.store(lse_out_ptr + batch_head, lse_out)
