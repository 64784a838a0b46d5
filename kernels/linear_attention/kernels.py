"""The chunkwise linear-recurrence kernels shared by ``linear_attention`` and ``ssd``.

Recurrence (per batch and head): S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T, o_t = scale S_t^T q_t.
The sequence is cut into chunks of BT steps; with b_t the cumulative log decay since the chunk
start (b_t <= 0, decreasing), the output of step t of a chunk is

    o_t = scale * [ (q_t * exp(b_t))^T S_prev + sum_{s <= t in chunk} A[t, s] v_s ],
    A[t, s] = sum_k q_t[k] k_s[k] exp(b_t[k] - b_s[k]),

and the state after the chunk is diag(exp(b_last)) S_prev + sum_s (k_s * exp(b_last - b_s)) v_s^T.
Every exponent above is a sum of log decays over a range of steps, so it is <= 0: nothing is ever
exponentiated that could overflow, however strong the decay or long the sequence.

Three stages, each its own kernel:
- ``intra``: A for every chunk (``_intra_kernel`` for no/scalar decay, where A is one masked
  matmul; ``_intra_channel_kernel`` for per-channel decay, see there).
- ``h``: the state before every chunk, passed sequentially over the chunks in fp32.
- ``o``: the outputs of every chunk from its state and its A.
``chunked.run_chunked`` launches the three on prepared tensors.

Packed batches (``VARLEN``): the tensors have batch 1 and sequence n spans steps
[cu[n], cu[n + 1]); chunks start at each sequence's first step, so none straddles two. The
chunk-parallel kernels run over a list of (sequence, chunk) pairs (``chunk_list``, built on the
host by ``varlen.py``); the state kernel runs one program per sequence and head and finds its
chunks' slots in the per-chunk state buffer at ``chunk_offsets[n]``. Without ``VARLEN`` sequence n
is batch row n, of length T. The per-chunk buffers are laid out [chunks of all sequences, H, ...].

Gates: ``GATE`` is 0 (none), 1 (scalar per step and head) or 2 (per key channel). The q/k head
of value head ``h`` is ``h // QK_GROUP`` (grouped B/C in SSD). ``VSCALE`` (no or scalar decay
only) scales v by a per-step, per-head fp32 factor (SSD's dt): the factor of step s is multiplied
into the fp32 column s of A and into the fp32 k_s of the state update, never into v itself, so v
(SSD's x) reaches the dots exactly as loaded and dt x is never rounded to the input dtype (fla's
SSD-as-simple-GLA rounds v = dt x once more). ``HAS_D`` adds ``D[h] * v`` (unscaled) to the output
(SSD's skip term).

The states before each chunk are stored in the input dtype (the output kernel's dot takes them
in it anyway); the running state and the final state are fp32. Batch*head program ids are
int64: that buffer passes 2^31 elements for long sequences with large heads, and every offset
derives from them.

Dots take operands in the input dtype (bf16/fp16 tensor cores) with fp32 accumulation; fp32
inputs use ``input_precision="ieee"`` (exact fp32, no TF32), so fp32 is a verification dtype.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

from seqtune.launch import dot_precision


GATES = {"none": 0, "scalar": 1, "channel": 2}
# Rows of the sub-chunks that per-channel decay is computed in: the smallest tl.dot M.
SUB = 16
# Channels per step of the elementwise diagonal blocks of per-channel decay ([SUB, SUB, DIAG_BK]
# products in registers).
DIAG_BK = 16


@triton.jit
def sequence_span(n, cu, T, VARLEN: tl.constexpr):
    """(batch row, first step, end step) of sequence ``n``."""
    if VARLEN:
        bos = tl.load(cu + n).to(tl.int64)
        eos = tl.load(cu + n + 1).to(tl.int64)
        return n * 0, bos, eos
    else:
        return n, n * 0, n * 0 + T


@triton.jit
def chunk_at(pid, bh, cu, chunk_list, T, H, NT, VARLEN: tl.constexpr):
    """What program ``pid`` of a chunk-parallel grid works on: (batch row, head, sequence
    start, sequence end, chunk index within the sequence, global chunk slot)."""
    h = bh % H
    if VARLEN:
        n = tl.load(chunk_list + 2 * pid).to(tl.int64)
        c = tl.load(chunk_list + 2 * pid + 1).to(tl.int64)
        slot = pid.to(tl.int64)
    else:
        n = bh // H
        c = pid.to(tl.int64)
        slot = n * NT + c
    b, bos, eos = sequence_span(n, cu, T, VARLEN)
    return b, h, bos, eos, c, slot


@triton.jit
def chunk_slots(n, chunk_offsets, NT, VARLEN: tl.constexpr):
    """The global slot of sequence ``n``'s first chunk."""
    if VARLEN:
        return tl.load(chunk_offsets + n).to(tl.int64)
    else:
        return n * NT


@triton.jit
def dot_fp32_operands(a, b, acc, EXACT: tl.constexpr):
    """acc + a @ b for fp32 ``a`` and ``b`` (decayed q and k, dA's scores, A): exact for fp32
    problems, else as three bf16 products (hi hi + hi lo + lo hi, ~16 bits; exact in the
    interpreter). Rounding each operand to the input dtype kept 8 bits in bf16, 3 fewer than
    the tf32 dots of fla's chunk_gla (issue 28); what it costs in registers and shared memory
    is in benchmarks/results/precision_grads.md."""
    if EXACT:
        return tl.dot(a, b, acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc, input_precision=dot_precision("bf16x3", "ieee"))


@triton.jit
def _intra_kernel(q, k, g, vs, A, cu, chunk_list, T, H, QK_GROUP, NT,
                  sqb, sqt, sqh, sqd, skb, skt, skh, skd, sgb, sgt, sgh,
                  K: tl.constexpr, GATE: tl.constexpr, VSCALE: tl.constexpr, BT: tl.constexpr,
                  BK: tl.constexpr, VARLEN: tl.constexpr, DOT: tl.constexpr):
    """A of one chunk for no or scalar decay: tril(q k^T) * exp(b_t - b_s), times the value
    factor of column s with VSCALE. Grid (chunks, B*H)."""
    bh = tl.program_id(1).to(tl.int64)
    b, h, bos, eos, c, slot = chunk_at(tl.program_id(0), bh, cu, chunk_list, T, H, NT, VARLEN)
    if c * BT >= eos - bos:
        return  # a spare row of a packed batch's chunk list
    pos = tl.arange(0, BT)
    t = bos + c * BT + pos
    t_mask = t < eos
    q_base = b * sqb + (h // QK_GROUP) * sqh
    k_base = b * skb + (h // QK_GROUP) * skh
    acc = tl.zeros([BT, BT], dtype=tl.float32)
    for k0 in range(0, K, BK):
        d = k0 + tl.arange(0, BK)
        mask = t_mask[:, None] & (d < K)[None, :]
        q_tile = tl.load(q + q_base + t[:, None] * sqt + d[None, :] * sqd, mask=mask, other=0.0)
        k_tile = tl.load(k + k_base + t[:, None] * skt + d[None, :] * skd, mask=mask, other=0.0)
        acc = tl.dot(q_tile.to(DOT), tl.trans(k_tile.to(DOT)), acc, input_precision="ieee")
    causal = pos[:, None] >= pos[None, :]
    if GATE == 1:
        decay = tl.load(g + b * sgb + t * sgt + h * sgh, mask=t_mask, other=0.0).to(tl.float32)
        cum = tl.cumsum(decay, axis=0)
        acc *= tl.exp(tl.minimum(cum[:, None] - cum[None, :], 0.0))
    if VSCALE:
        # SSD's dt_s joins A here in fp32, so that the output kernel's dot takes x as loaded:
        # one rounding (of A) instead of two (of A and of dt x). Offsets from the chunk's
        # first step in 32 bits and the product inside the causal select: on sm_90 per-step
        # 64-bit offsets and a separate multiply took up to 115 registers, this up to 93.
        column = tl.load(vs + ((b * T + bos + c * BT) * H + h) + pos * H, mask=t_mask,
                         other=0.0)
        acc = tl.where(causal, acc * column[None, :], 0.0)
    else:
        acc = tl.where(causal, acc, 0.0)
    a_rows = A + (bh * T + t[:, None]) * BT + pos[None, :]
    tl.store(a_rows, acc.to(A.dtype.element_ty), mask=t_mask[:, None])


@triton.jit
def _intra_channel_kernel(q, k, g, A, cu, chunk_list, T, H, QK_GROUP, NT,
                          sqb, sqt, sqh, sqd, skb, skt, skh, skd, sgb, sgt, sgh, sgd,
                          K: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                          SUB: tl.constexpr, DIAG_BK: tl.constexpr, VARLEN: tl.constexpr):
    """SUB rows of A of one chunk for per-channel decay. Grid (chunks * BT/SUB, B*H).

    exp(b_t - b_s) does not factor into exp(b_t) * exp(-b_s) safely (exp(-b_s) overflows for
    strong decay), so the rows are split into sub-chunks. Against the columns s of earlier
    sub-chunks, take the reference point r = the last step before this sub-chunk (s <= r < t):
    q_t exp(b_t - b_r) and k_s exp(b_r - b_s) both have exponents <= 0, and their dot is A[t, s].
    Inside the sub-chunk (the diagonal block) A is summed elementwise over [SUB, SUB, DIAG_BK]
    products.
    """
    pid, bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    row0 = (pid % (BT // SUB)) * SUB
    b, h, bos, eos, c, slot = chunk_at(pid // (BT // SUB), bh, cu, chunk_list, T, H, NT, VARLEN)
    if c * BT >= eos - bos:
        return  # a spare row of a packed batch's chunk list
    pos = tl.arange(0, BT)
    sub = tl.arange(0, SUB)
    t_chunk = bos + c * BT + pos
    t_rows = bos + c * BT + row0 + sub
    rows_mask = t_rows < eos
    earlier = (pos < row0) & (t_chunk < eos)
    q_rows = q + b * sqb + (h // QK_GROUP) * sqh + t_rows[:, None] * sqt
    k_chunk = k + b * skb + (h // QK_GROUP) * skh + t_chunk[:, None] * skt
    k_rows = k + b * skb + (h // QK_GROUP) * skh + t_rows[:, None] * skt
    g_chunk = g + b * sgb + h * sgh + t_chunk[:, None] * sgt
    g_rows = g + b * sgb + h * sgh + t_rows[:, None] * sgt
    acc = tl.zeros([SUB, BT], dtype=tl.float32)
    if row0 > 0:  # the first sub-chunk has no earlier columns
        for k0 in range(0, K, BK):
            d = k0 + tl.arange(0, BK)
            chunk_mask = earlier[:, None] & (d < K)[None, :]
            rows_2d = rows_mask[:, None] & (d < K)[None, :]
            g_earlier = tl.load(g_chunk + d[None, :] * sgd, mask=chunk_mask,
                                other=0.0).to(tl.float32)
            # log decay from step s to the reference point: the sum over the steps after s
            to_ref = tl.cumsum(g_earlier, axis=0, reverse=True) - g_earlier
            k_tile = tl.load(k_chunk + d[None, :] * skd, mask=chunk_mask, other=0.0)
            k_decayed = k_tile.to(tl.float32) * tl.exp(tl.minimum(to_ref, 0.0))
            g_tile = tl.load(g_rows + d[None, :] * sgd, mask=rows_2d, other=0.0).to(tl.float32)
            q_tile = tl.load(q_rows + d[None, :] * sqd, mask=rows_2d, other=0.0)
            q_decayed = q_tile.to(tl.float32) * tl.exp(tl.cumsum(g_tile, axis=0))
            acc = dot_fp32_operands(q_decayed, tl.trans(k_decayed), acc,
                                    k_tile.dtype == tl.float32)
    diag = tl.zeros([SUB, SUB], dtype=tl.float32)
    for k0 in range(0, K, DIAG_BK):
        d = k0 + tl.arange(0, DIAG_BK)
        rows_2d = rows_mask[:, None] & (d < K)[None, :]
        g_tile = tl.load(g_rows + d[None, :] * sgd, mask=rows_2d, other=0.0).to(tl.float32)
        cum = tl.cumsum(g_tile, axis=0)
        q_tile = tl.load(q_rows + d[None, :] * sqd, mask=rows_2d, other=0.0).to(tl.float32)
        k_tile = tl.load(k_rows + d[None, :] * skd, mask=rows_2d, other=0.0).to(tl.float32)
        decay = tl.exp(tl.minimum(cum[:, None, :] - cum[None, :, :], 0.0))
        diag += tl.sum(q_tile[:, None, :] * k_tile[None, :, :] * decay, axis=2)
    diag = tl.where(sub[:, None] >= sub[None, :], diag, 0.0)
    # Two stores to disjoint columns: the earlier and later ones, then the diagonal block.
    a_rows = A + (bh * T + t_rows[:, None]) * BT
    outside = (pos < row0) | (pos >= row0 + SUB)
    tl.store(a_rows + pos[None, :], acc.to(A.dtype.element_ty),
             mask=rows_mask[:, None] & outside[None, :])
    tl.store(a_rows + row0 + sub[None, :], diag.to(A.dtype.element_ty), mask=rows_mask[:, None])


@triton.jit
def _state_kernel(k, v, g, vs, h0, hs, hT, cu, chunk_offsets, T, H, QK_GROUP, NT,
                  skb, skt, skh, skd, svb, svt, svh, svd, sgb, sgt, sgh, sgd,
                  K: tl.constexpr, V: tl.constexpr, GATE: tl.constexpr, VSCALE: tl.constexpr,
                  HAS_INITIAL: tl.constexpr, STORE_FINAL: tl.constexpr, VARLEN: tl.constexpr,
                  BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, DOT: tl.constexpr):
    """The [BK, BV] block of the state before each chunk of a sequence, into ``hs``
    [chunks, H, K, V]; the state after its last one into ``hT`` [N, H, K, V] when STORE_FINAL.
    Grid (K/BK, V/BV, N*H)."""
    pid_k, pid_v, bh = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    n, h = bh // H, bh % H
    b, bos, eos = sequence_span(n, cu, T, VARLEN)
    first_slot = chunk_slots(n, chunk_offsets, NT, VARLEN)
    d = pid_k * BK + tl.arange(0, BK)
    e = pid_v * BV + tl.arange(0, BV)
    d_mask, e_mask = d < K, e < V
    block = d[:, None] * V + e[None, :]
    block_mask = d_mask[:, None] & e_mask[None, :]
    state = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_INITIAL:
        state = tl.load(h0 + bh * K * V + block, mask=block_mask, other=0.0).to(tl.float32)
    k_ptr = k + b * skb + (h // QK_GROUP) * skh + d[None, :] * skd
    v_ptr = v + b * svb + h * svh + e[None, :] * svd
    g_base = g + b * sgb + h * sgh
    for chunk in range(tl.cdiv(eos - bos, BT)):
        tl.store(hs + ((first_slot + chunk) * H + h) * K * V + block,
                 state.to(hs.dtype.element_ty), mask=block_mask)
        t = bos + chunk * BT + tl.arange(0, BT)
        t_mask = t < eos
        k_tile = tl.load(k_ptr + t[:, None] * skt, mask=t_mask[:, None] & d_mask[None, :],
                         other=0.0)
        v_tile = tl.load(v_ptr + t[:, None] * svt, mask=t_mask[:, None] & e_mask[None, :],
                         other=0.0)
        if VSCALE:
            # SSD's dt_s scales k_s in fp32 with the decay, not x_s: the dot's k operand is
            # rounded once and x goes in as loaded (dt x rounded to the dtype would be a second
            # rounding of every term of the state).
            factor = tl.load(vs + (b * T + t) * H + h, mask=t_mask, other=0.0)
            k_tile = k_tile.to(tl.float32) * factor[:, None]
        if GATE == 1:
            decay = tl.load(g_base + t * sgt, mask=t_mask, other=0.0).to(tl.float32)
            # log decay from step s to the chunk end: the sum over the steps strictly after s
            to_end = tl.cumsum(decay, axis=0, reverse=True) - decay
            state *= tl.exp(tl.sum(decay, axis=0))
            k_tile = (k_tile.to(tl.float32) * tl.exp(tl.minimum(to_end, 0.0))[:, None])
        elif GATE == 2:
            decay = tl.load(g_base + t[:, None] * sgt + d[None, :] * sgd,
                            mask=t_mask[:, None] & d_mask[None, :], other=0.0).to(tl.float32)
            to_end = tl.cumsum(decay, axis=0, reverse=True) - decay
            state *= tl.exp(tl.sum(decay, axis=0))[:, None]
            k_tile = k_tile.to(tl.float32) * tl.exp(tl.minimum(to_end, 0.0))
        k_tile = k_tile.to(v_tile.dtype)
        state = tl.dot(tl.trans(k_tile).to(DOT), v_tile.to(DOT), state, input_precision="ieee")
    if STORE_FINAL:
        tl.store(hT + bh * K * V + block, state, mask=block_mask)


@triton.jit
def _output_kernel(q, v, g, D, hs, A, o, cu, chunk_list, T, H, QK_GROUP, NT, scale,
                   sqb, sqt, sqh, sqd, svb, svt, svh, svd, sgb, sgt, sgh, sgd,
                   sob, sot, soh, sod,
                   K: tl.constexpr, V: tl.constexpr, GATE: tl.constexpr, HAS_D: tl.constexpr,
                   VARLEN: tl.constexpr, BT: tl.constexpr,
                   BK: tl.constexpr, BV: tl.constexpr, DOT: tl.constexpr):
    """A [BT, BV] block of the output of one chunk. Grid (V/BV, chunks, B*H)."""
    pid_v, bh = tl.program_id(0), tl.program_id(2).to(tl.int64)
    b, h, bos, eos, c, slot = chunk_at(tl.program_id(1), bh, cu, chunk_list, T, H, NT, VARLEN)
    if c * BT >= eos - bos:
        return  # a spare row of a packed batch's chunk list
    pos = tl.arange(0, BT)
    t = bos + c * BT + pos
    t_mask = t < eos
    e = pid_v * BV + tl.arange(0, BV)
    e_mask = e < V
    q_base = b * sqb + (h // QK_GROUP) * sqh
    g_base = g + b * sgb + h * sgh
    state_base = hs + (slot * H + h) * K * V
    acc = tl.zeros([BT, BV], dtype=tl.float32)
    for k0 in range(0, K, BK):
        d = k0 + tl.arange(0, BK)
        d_mask = d < K
        q_tile = tl.load(q + q_base + t[:, None] * sqt + d[None, :] * sqd,
                         mask=t_mask[:, None] & d_mask[None, :], other=0.0)
        state = tl.load(state_base + d[:, None] * V + e[None, :],
                        mask=d_mask[:, None] & e_mask[None, :], other=0.0)
        if GATE == 2:
            decay = tl.load(g_base + t[:, None] * sgt + d[None, :] * sgd,
                            mask=t_mask[:, None] & d_mask[None, :], other=0.0).to(tl.float32)
            q_tile = (q_tile.to(tl.float32) * tl.exp(tl.cumsum(decay, axis=0))).to(q_tile.dtype)
        acc = tl.dot(q_tile.to(DOT), state.to(q_tile.dtype).to(DOT), acc, input_precision="ieee")
    if GATE == 1:
        decay = tl.load(g_base + t * sgt, mask=t_mask, other=0.0).to(tl.float32)
        acc *= tl.exp(tl.cumsum(decay, axis=0))[:, None]
    a_tile = tl.load(A + (bh * T + t[:, None]) * BT + pos[None, :], mask=t_mask[:, None],
                     other=0.0)
    # v as loaded: SSD's dt is already in A's columns and in the states (``_intra_kernel``)
    v_tile = tl.load(v + b * svb + h * svh + t[:, None] * svt + e[None, :] * svd,
                     mask=t_mask[:, None] & e_mask[None, :], other=0.0)
    acc = tl.dot(a_tile.to(v_tile.dtype).to(DOT), v_tile.to(DOT), acc, input_precision="ieee")
    acc *= scale
    if HAS_D:
        acc += tl.load(D + h).to(tl.float32) * v_tile.to(tl.float32)
    tl.store(o + b * sob + h * soh + t[:, None] * sot + e[None, :] * sod,
             acc.to(o.dtype.element_ty), mask=t_mask[:, None] & e_mask[None, :])


_TL_DTYPES = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}


def dot_type(dtype: torch.dtype) -> tl.dtype:
    """The dtype dot operands are cast to: the input dtype, but fp32 for bf16 under the Triton
    interpreter, which multiplies bf16 operands as their raw uint16 storage (triton 3.9). The
    upcast is exact (bf16 products are exact in fp32), so the interpreter computes what the GPU
    does."""
    if dtype == torch.bfloat16 and isinstance(_state_kernel, InterpretedFunction):
        return tl.float32
    return _TL_DTYPES[dtype]
