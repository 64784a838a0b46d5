"""flash-attn's packed entry points (qkv / kv in one tensor, padded and varlen) and
causal-conv1d's ``causal_conv1d_varlen_states``, against float64 references written here from
the originals' reference math (flash-attn's ``attention_ref`` on the unpacked tensors,
causal-conv1d's ``causal_conv1d_varlen_states_ref``), forward and backward."""
from __future__ import annotations

import inspect

import pytest
import torch
from test_compat_flash_attn import naive_attention

from seqtune.compat import causal_conv1d, flash_attn

TOLERANCE = 2e-4  # fp32 kernels against float64 (test_compat_flash_attn.py)
GRAD_TOLERANCE = 1e-3


def _random(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _packed_reference(q, k, v, causal, cu_q=None, cu_k=None):
    """float64 attention per batch row, or per packed sequence of cu_q / cu_k."""
    if cu_q is None:
        return torch.stack([naive_attention(q[b], k[b], v[b], causal) for b in range(len(q))])
    pieces = [naive_attention(q[sq:eq], k[sk:ek], v[sk:ek], causal)
              for sq, eq, sk, ek in zip(cu_q.tolist(), cu_q[1:].tolist(), cu_k.tolist(),
                                        cu_k[1:].tolist())]
    return torch.cat(pieces)


def _check_gradients(out, expected, ours, theirs):
    weights = _random(*out.shape, seed=99).double()
    grads = torch.autograd.grad((out.double() * weights).sum(), ours)
    wanted = torch.autograd.grad((expected * weights).sum(), theirs)
    for grad, want in zip(grads, wanted):
        torch.testing.assert_close(grad.double(), want, atol=GRAD_TOLERANCE,
                                   rtol=GRAD_TOLERANCE)


@pytest.mark.parametrize("causal", [False, True])
def test_qkvpacked_matches_attention_of_its_parts(causal):
    qkv = _random(2, 13, 3, 2, 24, seed=1).requires_grad_()
    out = flash_attn.flash_attn_qkvpacked_func(qkv, causal=causal)
    ref = qkv.detach().double().requires_grad_()
    expected = _packed_reference(ref[:, :, 0], ref[:, :, 1], ref[:, :, 2], causal)
    assert out.shape == (2, 13, 2, 24) and out.dtype == qkv.dtype
    torch.testing.assert_close(out.double(), expected, atol=TOLERANCE, rtol=TOLERANCE)
    _check_gradients(out, expected, [qkv], [ref])


def test_kvpacked_with_grouped_heads_and_fewer_keys():
    q = _random(2, 11, 4, 16, seed=2).requires_grad_()
    kv = _random(2, 7, 2, 2, 16, seed=3).requires_grad_()  # [B, S, 2, Hkv, D]
    out = flash_attn.flash_attn_kvpacked_func(q, kv, 0.0, None, True)
    refs = [t.detach().double().requires_grad_() for t in (q, kv)]
    expected = _packed_reference(refs[0], refs[1][:, :, 0], refs[1][:, :, 1], True)
    torch.testing.assert_close(out.double(), expected, atol=TOLERANCE, rtol=TOLERANCE)
    _check_gradients(out, expected, [q, kv], refs)


CU = torch.tensor([0, 5, 5, 17], dtype=torch.int32)


def test_varlen_qkvpacked_attends_within_each_sequence():
    qkv = _random(17, 3, 2, 16, seed=4).requires_grad_()
    out = flash_attn.flash_attn_varlen_qkvpacked_func(qkv, CU, 12, causal=True)
    ref = qkv.detach().double().requires_grad_()
    expected = _packed_reference(ref[:, 0], ref[:, 1], ref[:, 2], True, CU, CU)
    assert out.shape == (17, 2, 16)
    torch.testing.assert_close(out.double(), expected, atol=TOLERANCE, rtol=TOLERANCE)
    _check_gradients(out, expected, [qkv], [ref])


def test_varlen_kvpacked_with_other_key_lengths():
    cu_k = torch.tensor([0, 3, 9, 10], dtype=torch.int32)
    q = _random(17, 4, 16, seed=5).requires_grad_()
    kv = _random(10, 2, 1, 16, seed=6).requires_grad_()
    out = flash_attn.flash_attn_varlen_kvpacked_func(q, kv, CU, cu_k, 12, 6, causal=False)
    refs = [t.detach().double().requires_grad_() for t in (q, kv)]
    expected = _packed_reference(refs[0], refs[1][:, 0], refs[1][:, 1], False, CU, cu_k)
    torch.testing.assert_close(out.double(), expected, atol=TOLERANCE, rtol=TOLERANCE)
    _check_gradients(out, expected, [q, kv], refs)


@pytest.mark.parametrize("call, error, message", [
    (lambda: flash_attn.flash_attn_qkvpacked_func(_random(1, 5, 2, 2, 16, seed=7)),
     ValueError, "qkv must have 3 at dim 2"),
    (lambda: flash_attn.flash_attn_varlen_kvpacked_func(
        _random(5, 2, 16, seed=7), _random(5, 3, 2, 16, seed=8), CU, CU, 5, 5),
     ValueError, "kv must have 2 at dim 1"),
    (lambda: flash_attn.flash_attn_kvpacked_func(_random(1, 5, 2, 16, seed=7),
                                                 _random(1, 5, 2, 16, seed=8)),
     ValueError, "kv must have 5 dimensions"),
    (lambda: flash_attn.flash_attn_qkvpacked_func(_random(1, 5, 3, 2, 16, seed=7),
                                                  dropout_p=0.1),
     NotImplementedError, "dropout_p"),
])
def test_bad_packed_arguments_give_one_line_errors(call, error, message):
    with pytest.raises(error, match=message) as raised:
        call()
    assert "\n" not in str(raised.value)


# flash-attn 2.x (flash_attn/flash_attn_interface.py)
ORIGINAL_SIGNATURES = {
    "flash_attn_qkvpacked_func":
        "(qkv, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1), "
        "softcap=0.0, alibi_slopes=None, deterministic=False, return_attn_probs=False)",
    "flash_attn_kvpacked_func":
        "(q, kv, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1), "
        "softcap=0.0, alibi_slopes=None, deterministic=False, return_attn_probs=False)",
    "flash_attn_varlen_qkvpacked_func":
        "(qkv, cu_seqlens, max_seqlen, dropout_p=0.0, softmax_scale=None, causal=False, "
        "window_size=(-1, -1), softcap=0.0, alibi_slopes=None, deterministic=False, "
        "return_attn_probs=False)",
    "flash_attn_varlen_kvpacked_func":
        "(q, kv, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0, "
        "softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0, "
        "alibi_slopes=None, deterministic=False, return_attn_probs=False)",
}


@pytest.mark.parametrize("name", sorted(ORIGINAL_SIGNATURES))
def test_flash_attn_signature_is_the_originals(name):
    assert str(inspect.signature(getattr(flash_attn, name))) == ORIGINAL_SIGNATURES[name]


def varlen_states_reference(x, cu_seqlens, state_len):
    """causal-conv1d's reference: per sequence its last min(length, state_len) tokens at the
    end of a zero state [D, state_len]."""
    states = torch.zeros(len(cu_seqlens) - 1, x.shape[1], state_len, dtype=torch.float64)
    for i, (start, end) in enumerate(zip(cu_seqlens.tolist(), cu_seqlens[1:].tolist())):
        first = max(start, end - state_len)
        if end > first:
            states[i, :, state_len - (end - first):] = x[first:end].double().T
    return states


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_varlen_states_are_each_sequences_last_tokens(dtype):
    x = _random(23, 6, seed=9).to(dtype)
    cu_seqlens = torch.tensor([0, 2, 2, 9, 20, 21])  # short, empty, long, one-token sequences
    for state_len in (0, 3, 4):
        states = causal_conv1d.causal_conv1d_varlen_states(x, cu_seqlens, state_len)
        assert states.shape == (5, 6, state_len) and states.dtype == dtype
        assert state_len == 0 or states.stride(1) == 1  # D contiguous, as causal-conv1d's
        assert torch.equal(states.double(), varlen_states_reference(x, cu_seqlens, state_len))


@pytest.mark.parametrize("arguments, message", [
    ((_random(5, 2, seed=10), torch.tensor([0, 3, 2]), 3), "cu_seqlens must be non-decreasing"),
    ((_random(5, 2, seed=10), torch.tensor([0, 6]), 3), "total_tokens=5"),
    ((_random(5, 2, seed=10), torch.tensor([], dtype=torch.int64), 3), "N \\+ 1 >= 1"),
    ((_random(5, 2, seed=10), torch.tensor([0.0, 5.0]), 3), "int32 or int64"),
    ((_random(5, 2, seed=10), torch.tensor([0, 5]), -1), "state_len"),
    ((_random(1, 5, 2, seed=10), torch.tensor([0, 5]), 3), "x must have 2 dimensions"),
])
def test_varlen_states_bad_arguments_give_one_line_errors(arguments, message):
    with pytest.raises(ValueError, match=message) as raised:
        causal_conv1d.causal_conv1d_varlen_states(*arguments)
    assert "\n" not in str(raised.value)


def test_varlen_states_signature_is_the_originals():
    assert (str(inspect.signature(causal_conv1d.causal_conv1d_varlen_states))
            == "(x, cu_seqlens, state_len)")
