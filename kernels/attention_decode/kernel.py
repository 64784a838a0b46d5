"""The two Triton kernels of split-KV decoding.

Stage "split": one program per (sequence, kv head, split). It holds every query head of the kv
head's GQA group as the rows of one tile (padded to >= 16 rows so that ``tl.dot`` applies), walks
its split of the sequence's cache in blocks of ``BLOCK_N`` keys with an online softmax, and writes
the split's normalised output and its log-sum-exp (base 2). With a single split it writes the final
output directly and the combine stage is skipped.

Stage "combine": one program per (sequence, query head) merges the splits' partial outputs, each
weighted by ``exp2(lse_split - max lse)``.

Splits are cut per sequence from its own length (block-aligned), so ragged batches keep every
split busy on long sequences; a split past the end of a short sequence does no work and reports
``lse = -inf`` with a zero output, which the combine stage weighs by zero. A sequence of length 0
has only such splits and gets a zero output.
"""
import triton
import triton.language as tl


@triton.jit
def decode_split_kernel(
    q_ptr, k_ptr, v_ptr, seqlens_ptr, out_ptr, lse_ptr,
    stride_qb, stride_qh, stride_qd,
    stride_kb, stride_kn, stride_kh, stride_kd,
    stride_vb, stride_vn, stride_vh, stride_vd,
    stride_ob, stride_oh, stride_os, stride_od,
    qk_scale_log2, num_kv_heads, group_size,
    HEAD_DIM: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr,
    NUM_SPLITS: tl.constexpr, DOT_DTYPE: tl.constexpr,
):
    """Partial attention of one GQA group over one split of one sequence's cache.

    ``out_ptr`` is the fp32 scratch ``[B, Hq, NUM_SPLITS, D]`` (strided by ``stride_os`` per
    split) or, with one split, the output ``o`` itself; ``lse_ptr`` is ``[B, Hq, NUM_SPLITS]``
    contiguous and only written with more than one split. ``qk_scale_log2`` is the softmax scale
    times log2(e), so that the softmax runs on exp2. ``DOT_DTYPE`` is the dtype of the dot
    operands: the input dtype, except float32 for bfloat16 under the Triton interpreter, whose
    tl.dot multiplies bfloat16 tiles as their raw uint16 bits (bfloat16 products are exact in
    float32, so it computes the same). Dots accumulate in fp32; fp32 operands multiply in IEEE
    fp32, never TF32 (decode is memory-bound, so exactness costs nothing measurable).
    """
    batch_kv = tl.program_id(0)
    split = tl.program_id(1)
    batch = (batch_kv // num_kv_heads).to(tl.int64)  # int64: cache offsets exceed 2**31
    kv_head = batch_kv % num_kv_heads

    seqlen = tl.load(seqlens_ptr + batch)
    # Plain integer ceil-divisions: tl.cdiv is a nested JIT call, slow in the interpreter.
    keys_per_split = (seqlen + NUM_SPLITS - 1) // NUM_SPLITS
    split_len = (keys_per_split + BLOCK_N - 1) // BLOCK_N * BLOCK_N
    split_start = split * split_len
    split_end = tl.minimum(split_start + split_len, seqlen)

    rows = tl.arange(0, BLOCK_G)
    heads = kv_head * group_size + rows
    row_valid = rows < group_size
    dims = tl.arange(0, HEAD_DIM)
    q = tl.load(q_ptr + batch * stride_qb + heads[:, None] * stride_qh + dims[None, :] * stride_qd,
                mask=row_valid[:, None], other=0.0).to(DOT_DTYPE)

    # Block pointers advance by BLOCK_N rows per step, in 64-bit pointer arithmetic.
    k_block = k_ptr + batch * stride_kb + kv_head * stride_kh + split_start.to(tl.int64) * stride_kn
    v_block = v_ptr + batch * stride_vb + kv_head * stride_vh + split_start.to(tl.int64) * stride_vn
    keys = tl.arange(0, BLOCK_N)
    row_max = tl.full([BLOCK_G], float("-inf"), tl.float32)
    row_sum = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, HEAD_DIM], tl.float32)
    for block_start in range(split_start, split_end, BLOCK_N):
        key_valid = block_start + keys < split_end
        k_t = tl.load(k_block + keys[None, :] * stride_kn + dims[:, None] * stride_kd,
                      mask=key_valid[None, :], other=0.0).to(DOT_DTYPE)
        scores = tl.dot(q, k_t, input_precision="ieee") * qk_scale_log2
        scores = tl.where(key_valid[None, :], scores, float("-inf"))
        new_max = tl.maximum(row_max, tl.max(scores, axis=1))
        rescale = tl.exp2(row_max - new_max)
        probs = tl.exp2(scores - new_max[:, None])
        row_sum = row_sum * rescale + tl.sum(probs, axis=1)
        v = tl.load(v_block + keys[:, None] * stride_vn + dims[None, :] * stride_vd,
                    mask=key_valid[:, None], other=0.0)
        # probs round to the input dtype, as the p.v dot of a GPU runs on it.
        p_v = tl.dot(probs.to(v.dtype).to(DOT_DTYPE), v.to(DOT_DTYPE), input_precision="ieee")
        acc = acc * rescale[:, None] + p_v
        row_max = new_max
        k_block += BLOCK_N * stride_kn
        v_block += BLOCK_N * stride_vn

    # An empty split (or sequence) has row_sum 0: its output is 0 and its lse -inf.
    has_keys = row_sum > 0
    safe_sum = tl.where(has_keys, row_sum, 1.0)
    out = acc / safe_sum[:, None]
    out_rows = out_ptr + batch * stride_ob + split * stride_os + heads[:, None] * stride_oh
    tl.store(out_rows + dims[None, :] * stride_od, out.to(out_ptr.dtype.element_ty),
             mask=row_valid[:, None])
    if NUM_SPLITS > 1:
        lse = tl.where(has_keys, row_max + tl.log2(safe_sum), float("-inf"))
        num_heads = num_kv_heads * group_size
        tl.store(lse_ptr + (batch * num_heads + heads) * NUM_SPLITS + split, lse, mask=row_valid)


@triton.jit
def decode_combine_kernel(
    partial_ptr, lse_ptr, o_ptr,
    stride_ob, stride_oh, stride_od, num_heads,
    HEAD_DIM: tl.constexpr, NUM_SPLITS: tl.constexpr,
):
    """``o[b, h] = sum_s w_s partial[b, h, s] / sum_s w_s`` with ``w_s = exp2(lse_s - max lse)``.

    ``partial_ptr`` is contiguous ``[B, Hq, NUM_SPLITS, D]`` fp32, ``lse_ptr`` contiguous
    ``[B, Hq, NUM_SPLITS]`` fp32.
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
    out = tl.sum(weights[:, None] * partial, axis=0) / tl.where(total > 0, total, 1.0)
    tl.store(o_ptr + batch * stride_ob + head * stride_oh + dims * stride_od,
             out.to(o_ptr.dtype.element_ty))
