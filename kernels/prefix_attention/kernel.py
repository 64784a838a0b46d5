"""Triton kernel of attention as an RNN: one query per (batch, head) attends to every prefix.

o_t = sum_{s<=t} softmax_s(scale q.k_s) v_s for every t. A prefix is summarised by the softmax
state (running max m, normaliser l = sum exp(score - m), weighted sum a = sum exp(score - m) v);
merging two states is associative, so each block of BLOCK_T steps is an associative scan of
states in registers, merged with the state carried from the previous blocks. A program owns one
(batch, head) and BLOCK_DV value dims; m and l are replicated across those dims so that every
scan operand has the same shape.
"""
import triton
import triton.language as tl


@triton.jit
def merge_softmax_states(max_first, norm_first, sum_first, max_then, norm_then, sum_then):
    """The state of two consecutive spans, relative to the larger max.

    Both rescale factors are exp of a non-positive number, so nothing overflows for any score;
    the side holding the max gets exactly 1, which also merges two empty spans (max = -inf)
    into an empty span instead of exp(-inf - -inf) = nan.
    """
    new_max = tl.maximum(max_first, max_then)
    scale_first = tl.where(max_first == new_max, 1.0, tl.exp(max_first - new_max))
    scale_then = tl.where(max_then == new_max, 1.0, tl.exp(max_then - new_max))
    return (new_max, norm_first * scale_first + norm_then * scale_then,
            sum_first * scale_first + sum_then * scale_then)


@triton.jit
def prefix_attention_kernel(q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr, T, H, D, scale,
                            stride_q_batch, stride_q_head,
                            stride_k_batch, stride_k_time, stride_k_head,
                            stride_v_batch, stride_v_time, stride_v_head,
                            stride_o_batch, stride_o_time, stride_o_head,
                            STORE_LSE: tl.constexpr, D_PAD: tl.constexpr, BLOCK_T: tl.constexpr,
                            BLOCK_DV: tl.constexpr):
    """Grid (B * H, cdiv(D, BLOCK_DV)); the head dim is the unit-stride last axis of q, k, v, o.
    With STORE_LSE the first value tile also writes every prefix's log-sum-exp of scores,
    lse [B, H, T] fp32 contiguous, for the backward."""
    batch = (tl.program_id(0) // H).to(tl.int64)
    head = tl.program_id(0) % H
    dims = tl.arange(0, D_PAD)
    dim_mask = dims < D
    value_dims = tl.program_id(1) * BLOCK_DV + tl.arange(0, BLOCK_DV)
    value_mask = value_dims < D
    steps = tl.arange(0, BLOCK_T)
    is_last_step = (steps == BLOCK_T - 1)[:, None]

    q = tl.load(q_ptr + batch * stride_q_batch + head * stride_q_head + dims, mask=dim_mask,
                other=0.0).to(tl.float32) * scale
    k_ptr += batch * stride_k_batch + head * stride_k_head + dims[None, :]
    v_ptr += batch * stride_v_batch + head * stride_v_head + value_dims[None, :]
    o_ptr += batch * stride_o_batch + head * stride_o_head + value_dims[None, :]
    lse_ptr += (batch * H + head) * T
    lse_steps = tl.where(tl.program_id(1) == 0, T, 0)  # only the first value tile writes lse
    carried_max = tl.full([1, BLOCK_DV], float("-inf"), dtype=tl.float32)
    carried_norm = tl.zeros([1, BLOCK_DV], dtype=tl.float32)
    carried_sum = tl.zeros([1, BLOCK_DV], dtype=tl.float32)
    for block_start in range(0, T, BLOCK_T):
        times = block_start + steps
        time_mask = times < T
        k = tl.load(k_ptr + times[:, None] * stride_k_time,
                    mask=time_mask[:, None] & dim_mask[None, :], other=0.0).to(tl.float32)
        v = tl.load(v_ptr + times[:, None] * stride_v_time,
                    mask=time_mask[:, None] & value_mask[None, :], other=0.0).to(tl.float32)
        # Each step alone is the state (score, 1, v); steps past T are empty spans (-inf, 0, 0),
        # which the merge leaves every prefix unchanged by.
        scores = tl.where(time_mask, tl.sum(k * q[None, :], axis=1), float("-inf"))
        maxes = tl.broadcast_to(scores[:, None], (BLOCK_T, BLOCK_DV))
        norms = tl.broadcast_to(tl.where(time_mask, 1.0, 0.0)[:, None], (BLOCK_T, BLOCK_DV))
        maxes, norms, sums = tl.associative_scan((maxes, norms, v), axis=0,
                                                 combine_fn=merge_softmax_states)
        maxes, norms, sums = merge_softmax_states(carried_max, carried_norm, carried_sum,
                                                  maxes, norms, sums)
        tl.store(o_ptr + times[:, None] * stride_o_time,
                 (sums / norms).to(o_ptr.dtype.element_ty),
                 mask=time_mask[:, None] & value_mask[None, :])
        if STORE_LSE:  # max and norm are replicated over the value dims: any column serves
            lse = tl.max(maxes + tl.log(norms), axis=1)
            tl.store(lse_ptr + times, lse, mask=times < lse_steps)
        carried_max = tl.max(tl.where(is_last_step, maxes, float("-inf")), axis=0, keep_dims=True)
        carried_norm = tl.sum(tl.where(is_last_step, norms, 0.0), axis=0, keep_dims=True)
        carried_sum = tl.sum(tl.where(is_last_step, sums, 0.0), axis=0, keep_dims=True)
