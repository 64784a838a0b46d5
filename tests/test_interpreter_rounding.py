"""The interpreter rounds float32 to bfloat16 to nearest even inside seqtune's launches, as GPUs
do (``seqtune.interpreter_rounding``), and with it attention's bf16 gradients meet flash-attn's
own bound (at most twice PyTorch's bf16 error against float64) in the case the peers' suite
failed on: T=100 queries, S=3 keys, d=59, causal (issue 28). Over seeds 0-11 the ratio to
PyTorch's error is at most 1.14 with the GPU's rounding and up to 3.09 with the interpreter's
truncating cast (seeds 1 and 4, tested here, gave 3.09 and 2.49)."""
from __future__ import annotations

import math

import pytest
import torch
import triton
import triton.language as tl

from seqtune.interpreter_rounding import gpu_rounding
from seqtune.kernels import attention
from seqtune.launch import launch


@triton.jit
def _to_bf16(x_ptr, y_ptr, N: tl.constexpr):
    offsets = tl.arange(0, N)
    tl.store(y_ptr + offsets, tl.load(x_ptr + offsets).to(tl.bfloat16))


def test_launches_round_float32_to_bfloat16_to_nearest_even():
    # Random values, exact ties between two bf16 neighbours (even and odd), and values a hair
    # past the tie on either side.
    x = torch.cat([torch.randn(4093, generator=torch.Generator().manual_seed(0)),
                   torch.tensor([1 + 2 ** -8, 1 + 3 * 2 ** -8, -(1 + 2 ** -8) - 2 ** -20])])
    x = x[:4096]
    y = torch.empty(4096, dtype=torch.bfloat16)
    launch(_to_bf16, (1,), x, y, N=4096)
    assert torch.equal(y, x.to(torch.bfloat16))


def test_the_cast_is_restored_after_the_launch():
    from triton.runtime.interpreter import InterpreterBuilder

    before = InterpreterBuilder.cast_impl
    with gpu_rounding():
        assert InterpreterBuilder.cast_impl is not before
        with gpu_rounding():  # re-entrant: the inner exit leaves the outer cast in place
            pass
        assert InterpreterBuilder.cast_impl is not before
    assert InterpreterBuilder.cast_impl is before


def _softmax_attention(q, k, v):
    """Causal (bottom-right aligned) softmax attention in the inputs' dtype (PyTorch's ops)."""
    queries, keys = q.shape[1], k.shape[1]
    scores = torch.einsum("bthd,bshd->bhts", q, k) / math.sqrt(q.shape[-1])
    above = torch.arange(keys)[None, :] > torch.arange(queries)[:, None] + keys - queries
    weights = torch.softmax(scores.masked_fill(above, float("-inf")), -1).nan_to_num()
    return torch.einsum("bhts,bshd->bthd", weights, v)


@pytest.mark.parametrize("seed", [1, 4])
def test_bf16_gradients_within_twice_pytorchs_error(seed):
    g = torch.Generator().manual_seed(seed)
    q, do = (torch.randn(2, 100, 3, 59, generator=g) for _ in range(2))
    k, v = (torch.randn(2, 3, 3, 59, generator=g) for _ in range(2))
    grads = {}
    for name, dtype, op in (("float64", torch.float64, _softmax_attention),
                            ("pytorch", torch.bfloat16, _softmax_attention),
                            ("seqtune", torch.bfloat16,
                             lambda *a: attention(*a, causal=True))):
        inputs = [x.to(dtype).requires_grad_() for x in (q, k, v)]
        op(*inputs).backward(do.to(dtype))
        grads[name] = [x.grad.double() for x in inputs]
    for name, truth, pytorch, seqtune in zip("qkv", *grads.values()):
        bound = 2 * (pytorch - truth).abs().max().item()
        assert (seqtune - truth).abs().max().item() <= bound, name
