"""Triton kernel of the gradients of prefix attention.

With x_s = scale q.k_s, lse_t the log-sum-exp of x_0..x_t (saved by the forward) and
p_s = exp(x_s - lse_s), the weight of step s in o_t (t >= s) is exp(x_s - lse_t). Summing over
every later output t:

    G_s = sum_{t>=s} exp(lse_s - lse_t) do_t = do_s + r_s G_{s+1}      (a vector, [D])
    E_s = sum_{t>=s} exp(lse_s - lse_t) (do_t . o_t) = do_s . o_s + r_s E_{s+1}
    dv_s = p_s G_s,   dx_s = p_s (v_s . G_s - E_s),   dk_s = scale dx_s q,   dq = scale sum dx_s k_s

with r_s = exp(lse_s - lse_{s+1}) <= 1 (lse never decreases), so nothing overflows for any score.
G and E are reverse scans; a program owns one (batch, head) and every head dim, walks blocks of
BLOCK_T steps from the last, loads each latest step first so that a forward associative scan
composes the maps from the end, and carries G and E at the block's earliest step.
"""
import triton
import triton.language as tl

from seqtune.kernels.linear_scan.kernel import compose_affine


@triton.jit
def prefix_attention_bwd_kernel(
        q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr, do_ptr, dq_ptr, dk_ptr, dv_ptr, T, H, D, scale,
        stride_q_batch, stride_q_head, stride_k_batch, stride_k_time, stride_k_head,
        stride_v_batch, stride_v_time, stride_v_head, stride_o_batch, stride_o_time,
        stride_o_head, stride_do_batch, stride_do_time, stride_do_head,
        stride_dq_batch, stride_dq_head, stride_dk_batch, stride_dk_time, stride_dk_head,
        stride_dv_batch, stride_dv_time, stride_dv_head,
        NEED_DQ: tl.constexpr, NEED_DK: tl.constexpr, NEED_DV: tl.constexpr,
        D_PAD: tl.constexpr, BLOCK_T: tl.constexpr):
    """Grid (B * H,); the head dim is the unit-stride last axis of every tensor but lse, which
    is [B, H, T] fp32 contiguous. Gradients are written in their tensors' dtypes."""
    batch = (tl.program_id(0) // H).to(tl.int64)
    head = tl.program_id(0) % H
    dims = tl.arange(0, D_PAD)
    dim_mask = dims < D
    latest_first = BLOCK_T - 1 - tl.arange(0, BLOCK_T)
    is_earliest = latest_first == 0

    q = tl.load(q_ptr + batch * stride_q_batch + head * stride_q_head + dims, mask=dim_mask,
                other=0.0).to(tl.float32)
    k_ptr += batch * stride_k_batch + head * stride_k_head + dims[None, :]
    v_ptr += batch * stride_v_batch + head * stride_v_head + dims[None, :]
    o_ptr += batch * stride_o_batch + head * stride_o_head + dims[None, :]
    do_ptr += batch * stride_do_batch + head * stride_do_head + dims[None, :]
    dk_ptr += batch * stride_dk_batch + head * stride_dk_head + dims[None, :]
    dv_ptr += batch * stride_dv_batch + head * stride_dv_head + dims[None, :]
    lse_ptr += (batch * H + head) * T

    carried_g = tl.zeros([D_PAD], dtype=tl.float32)
    carried_e = tl.zeros([1], dtype=tl.float32)
    dq = tl.zeros([D_PAD], dtype=tl.float32)
    blocks = tl.cdiv(T, BLOCK_T)
    for block in range(0, blocks):
        times = (blocks - 1 - block) * BLOCK_T + latest_first
        time_mask = times < T
        mask = time_mask[:, None] & dim_mask[None, :]
        lse = tl.load(lse_ptr + times, mask=time_mask, other=0.0)
        lse_next = tl.load(lse_ptr + times + 1, mask=times + 1 < T, other=0.0)
        # Past the last step the maps are identities (1, 0); G and E are 0 after step T - 1.
        ratio = tl.exp(tl.where(times + 1 < T, lse - lse_next, 0.0))
        do = tl.load(do_ptr + times[:, None] * stride_do_time, mask=mask, other=0.0).to(tl.float32)
        o = tl.load(o_ptr + times[:, None] * stride_o_time, mask=mask, other=0.0).to(tl.float32)
        ratios, g = tl.associative_scan((tl.broadcast_to(ratio[:, None], (BLOCK_T, D_PAD)), do),
                                        axis=0, combine_fn=compose_affine)
        g += ratios * carried_g[None, :]
        e_ratios, e = tl.associative_scan((ratio, tl.sum(do * o, axis=1)), axis=0,
                                          combine_fn=compose_affine)
        e += e_ratios * carried_e

        k = tl.load(k_ptr + times[:, None] * stride_k_time, mask=mask, other=0.0).to(tl.float32)
        v = tl.load(v_ptr + times[:, None] * stride_v_time, mask=mask, other=0.0).to(tl.float32)
        weight = tl.where(time_mask, tl.exp(scale * tl.sum(k * q[None, :], axis=1) - lse), 0.0)
        if NEED_DV:
            tl.store(dv_ptr + times[:, None] * stride_dv_time,
                     (weight[:, None] * g).to(dv_ptr.dtype.element_ty), mask=mask)
        dscore = weight * (tl.sum(v * g, axis=1) - e)
        if NEED_DK:
            tl.store(dk_ptr + times[:, None] * stride_dk_time,
                     (scale * dscore[:, None] * q[None, :]).to(dk_ptr.dtype.element_ty),
                     mask=mask)
        if NEED_DQ:
            dq += scale * tl.sum(dscore[:, None] * k, axis=0)
        carried_g = tl.sum(tl.where(is_earliest[:, None], g, 0.0), axis=0)
        carried_e = tl.sum(tl.where(is_earliest, e, 0.0), axis=0, keep_dims=True)

    if NEED_DQ:
        tl.store(dq_ptr + batch * stride_dq_batch + head * stride_dq_head + dims,
                 dq.to(dq_ptr.dtype.element_ty), mask=dim_mask)
