"""attention's sliding window, soft-capping, ALiBi and returned log-sum-exp (forward and
backward kernels, dense and packed) against the float64 reference, and flash-attn's compat
functions that pass them on (Triton interpreter)."""
from __future__ import annotations

import math

import pytest
import torch

from seqtune.compat.flash_attn import (flash_attn_func, flash_attn_kvpacked_func,
                                       flash_attn_qkvpacked_func, flash_attn_varlen_func,
                                       flash_attn_varlen_kvpacked_func,
                                       flash_attn_varlen_qkvpacked_func)
from seqtune.kernels.attention.op import attention
from seqtune.kernels.attention.reference import attention_math, row_log_sum_exp
from seqtune.kernels.attention.varlen import key_lengths, offsets_of, sequence_lengths

# Tiles of 16 make T=37, S=53 ragged and put several tiles inside and outside each window.
CONFIG = {"BLOCK_M": 16, "BLOCK_N": 16}
BWD_CONFIG = {"dkdv.BLOCK_M": 16, "dkdv.BLOCK_N": 16, "dq.BLOCK_M": 16, "dq.BLOCK_N": 16}
# The interpreter computes float32 dots in float32 (no TF32): beyond accumulation order the
# error is rounding, far below 1e-4. bfloat16 rounds q, k, v, the weights fed to P V and dS
# fed to the gradient dots (8 mantissa bits: 4e-3 each), and the outputs once more: 2e-2
# bounds a few such roundings on values of order one.
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 2e-2}
DTYPES = pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
B, T, S, HQ, HKV, D, DV = 2, 37, 53, 4, 2, 40, 24
SEQUENCES = 5  # packed lengths: sequence_lengths gives an empty one and one of length 1


def _slopes(*shape):
    """ALiBi slopes of the usual geometric kind (powers of 2**-1 .. 2**-4), float32."""
    heads = shape[-1]
    return (2.0 ** -torch.linspace(1, 4, heads)).repeat(*shape[:-1], 1).contiguous()


# Keyword arguments of dense [B, T] x [B, S] cases (T < S: bottom-right alignment matters).
DENSE = {
    "window-causal": {"causal": True, "window": (20, -1)},
    "window-under-a-tile-causal": {"causal": True, "window": (5, 3)},
    "window-asymmetric": {"window": (2, 11)},
    "window-right-only": {"window": (-1, 4)},
    "softcap": {"softcap": 0.8},
    "softcap-causal-scaled": {"causal": True, "softcap": 3.0, "scale": 0.5},
    "alibi-heads": {"alibi_slopes": _slopes(HQ)},
    "alibi-batch-causal": {"causal": True, "alibi_slopes": _slopes(B, HQ)},
    "combined": {"causal": True, "window": (13, 2), "softcap": 1.5,
                 "alibi_slopes": _slopes(B, HQ)},
}
# Packed cases: SEQUENCES sequences of queries and (other) key lengths.
PACKED = {
    "alibi-sequences-causal": {"causal": True, "alibi_slopes": _slopes(SEQUENCES, HQ)},
    "alibi-heads-window": {"window": (4, 6), "alibi_slopes": _slopes(HQ)},
    "combined": {"causal": True, "window": (7, -1), "softcap": 2.0,
                 "alibi_slopes": _slopes(SEQUENCES, HQ)},
}


def _inputs(dtype, packed, seed=0, batch=B):
    generator = torch.Generator().manual_seed(seed)
    batch = 1 if packed else batch
    shapes = ((batch, T, HQ, D), (batch, S, HKV, D), (batch, S, HKV, DV))
    leaves = [torch.randn(shape, generator=generator).to(dtype).requires_grad_()
              for shape in shapes]
    grad_out = torch.randn(batch, T, HQ, DV, generator=generator).to(dtype)
    packing = {}
    if packed:
        packing = {"cu_seqlens": offsets_of(sequence_lengths(T, SEQUENCES), "cpu"),
                   "cu_seqlens_k": offsets_of(key_lengths(S, SEQUENCES), "cpu")}
    return leaves, grad_out, packing


def _reference(leaves, grad_out, kwargs):
    """(o, natural-log lse, grads of q, k, v) in float64."""
    leaves64 = [leaf.detach().double().requires_grad_() for leaf in leaves]
    arguments = {"causal": False, "scale": None, **kwargs}
    out = attention_math(*leaves64, score="softmax", sigmoid_bias=None, **arguments)
    lse = row_log_sum_exp(*leaves64[:2], **arguments) * math.log(2)
    return out, lse, torch.autograd.grad(out, leaves64, grad_out.double())


def _assert_close(actual, expected, dtype, name):
    tolerance = TOLERANCE[dtype]
    torch.testing.assert_close(actual.double(), expected.double(), atol=tolerance,
                               rtol=tolerance, msg=lambda message: f"{name}: {message}")


def _check_case(kwargs, dtype, packed):
    # A batch of two only where per-row slopes need it: the interpreter's time grows with B.
    slopes = kwargs.get("alibi_slopes")
    leaves, grad_out, packing = _inputs(dtype, packed,
                                        batch=B if slopes is not None and slopes.dim() == 2
                                        else 1)
    kwargs = {**kwargs, **packing}
    out, lse = attention(*leaves, **kwargs, config=CONFIG, bwd_config=BWD_CONFIG,
                         return_lse=True)
    grads = torch.autograd.grad(out, leaves, grad_out)
    out64, lse64, grads64 = _reference(leaves, grad_out, kwargs)
    if packed:  # flash-attn's varlen layout [Hq, total_T]
        lse64 = lse64.squeeze(0)
    assert lse.dtype == torch.float32 and lse.shape == lse64.shape
    assert not lse.requires_grad
    _assert_close(out, out64, dtype, "o")
    # Rows that see no key have lse +inf in both.
    assert torch.equal(lse.isinf(), lse64.isinf())
    finite = lse64.isfinite()
    _assert_close(lse[finite], lse64[finite], dtype, "lse")
    for name, grad, grad64 in zip("qkv", grads, grads64):
        _assert_close(grad, grad64, dtype, f"d{name}")


@DTYPES
@pytest.mark.parametrize("name", list(DENSE))
def test_dense_features_match_float64(name, dtype):
    _check_case(DENSE[name], dtype, packed=False)


@DTYPES
@pytest.mark.parametrize("name", list(PACKED))
def test_packed_features_match_float64(name, dtype):
    _check_case(PACKED[name], dtype, packed=True)


def test_rows_outside_every_window_output_zero_and_lse_inf():
    """A window (0, 0) with T=20 > S=8 puts query i at key i - 12: the first 12 queries see no
    key (o is 0, lse +inf, flash-attn's value), the others exactly one (o is its value)."""
    generator = torch.Generator().manual_seed(3)
    q = torch.randn(1, 20, 2, 16, generator=generator)
    k, v = (torch.randn(1, 8, 2, 16, generator=generator) for _ in range(2))
    out, lse = attention(q, k, v, window=(0, 0), return_lse=True, config=CONFIG)
    assert torch.equal(out[:, :12], torch.zeros_like(out[:, :12]))
    torch.testing.assert_close(out[:, 12:], v, atol=1e-6, rtol=1e-6)
    assert lse[:, :, :12].isinf().all() and (lse[:, :, :12] > 0).all()
    assert lse[:, :, 12:].isfinite().all()


def test_tiles_outside_the_window_are_never_read():
    """NaN in the first and last 16 rows of q, k, v and dO cannot reach the middle tile's o, dq,
    dk and dv when a window (2, 2) keeps them two tiles away: the kernels skip those tiles
    (visiting them would multiply NaN by a zero weight)."""
    length = 112
    generator = torch.Generator().manual_seed(1)
    clean = [torch.randn(1, length, 2, 16, generator=generator) for _ in range(4)]
    poisoned = [tensor.clone() for tensor in clean]
    for tensor in poisoned:
        tensor[:, :16] = float("nan")
        tensor[:, -16:] = float("nan")
    middle = slice(48, 64)
    results = []
    for q, k, v, grad_out in (clean, poisoned):
        leaves = [tensor.requires_grad_() for tensor in (q, k, v)]
        out = attention(*leaves, window=(2, 2), config=CONFIG, bwd_config=BWD_CONFIG)
        results.append([out, *torch.autograd.grad(out, leaves, grad_out)])
    for name, expected, actual in zip(("o", "dq", "dk", "dv"), *results):
        assert actual[:, middle].isfinite().all(), name
        torch.testing.assert_close(actual[:, middle], expected[:, middle], atol=1e-6, rtol=1e-6)


def test_lse_without_gradients_and_under_no_grad():
    leaves, _, _ = _inputs(torch.float32, packed=False)
    q, k, v = (leaf.detach() for leaf in leaves)
    with torch.no_grad():
        out, lse = attention(q, k, v, causal=True, return_lse=True, config=CONFIG)
    _, lse64, _ = _reference(leaves, torch.zeros(B, T, HQ, DV), {"causal": True})
    torch.testing.assert_close(lse.double(), lse64, atol=1e-4, rtol=1e-4)
    assert attention(q, k, v, config=CONFIG).shape == out.shape


@pytest.mark.parametrize("kwargs, message", [
    ({"window": (-2, 0)}, "window"),
    ({"window": (1.5, 0)}, "window"),
    ({"window": (3,)}, "window"),
    ({"window": (True, 0)}, "window"),
    ({"softcap": -1.0}, "softcap"),
    ({"softcap": float("nan")}, "softcap"),
    ({"alibi_slopes": torch.ones(HQ, dtype=torch.float64)}, "alibi_slopes must be float32"),
    ({"alibi_slopes": torch.ones(HQ + 1)}, "alibi_slopes must have shape"),
    ({"alibi_slopes": torch.ones(B + 1, HQ)}, "alibi_slopes must have shape"),
    ({"score": "sigmoid", "window": (4, 0)}, "window applies only to score='softmax'"),
    ({"score": "sigmoid", "return_lse": True}, "return_lse applies only"),
])
def test_bad_feature_arguments_raise_one_line(kwargs, message):
    leaves, _, _ = _inputs(torch.float32, packed=False)
    with pytest.raises(ValueError, match=message) as error:
        attention(*leaves, **kwargs)
    assert "\n" not in str(error.value)


# --- seqtune.compat.flash_attn -----------------------------------------------------------

FEATURES = {"window_size": (9, 3), "softcap": 2.5, "alibi_slopes": _slopes(HQ)}
REFERENCE_FEATURES = {"window": (9, 3), "softcap": 2.5, "alibi_slopes": _slopes(HQ)}


def test_flash_attn_func_features_and_lse():
    leaves, grad_out, _ = _inputs(torch.float32, packed=False)
    out, lse, probabilities = flash_attn_func(*leaves, causal=True, return_attn_probs=True,
                                              **FEATURES)
    out64, lse64, grads64 = _reference(leaves, grad_out, {"causal": True,
                                                          **REFERENCE_FEATURES})
    assert probabilities is None
    _assert_close(out, out64, torch.float32, "o")
    _assert_close(lse, lse64, torch.float32, "lse")
    for grad, grad64 in zip(torch.autograd.grad(out, leaves, grad_out), grads64):
        _assert_close(grad, grad64, torch.float32, "grad")


def test_flash_attn_varlen_func_features_and_lse_layout():
    leaves, grad_out, packing = _inputs(torch.float32, packed=True)
    slopes = _slopes(SEQUENCES, HQ)
    out, lse, probabilities = flash_attn_varlen_func(
        *(leaf.squeeze(0) for leaf in leaves), packing["cu_seqlens"], packing["cu_seqlens_k"],
        None, None, window_size=(6, -1), softcap=1.0, alibi_slopes=slopes,
        return_attn_probs=True)
    out64, lse64, _ = _reference(leaves, grad_out, {"window": (6, -1), "softcap": 1.0,
                                                    "alibi_slopes": slopes, **packing})
    assert probabilities is None and lse.shape == (HQ, T)
    _assert_close(out, out64.squeeze(0), torch.float32, "o")
    finite = lse64.squeeze(0).isfinite()
    _assert_close(lse[finite], lse64.squeeze(0)[finite], torch.float32, "lse")


def test_packed_forms_pass_features_on():
    generator = torch.Generator().manual_seed(2)
    qkv = torch.randn(1, 29, 3, 2, 16, generator=generator)
    slopes = _slopes(2)
    features = {"window_size": (4, 1), "softcap": 3.0, "alibi_slopes": slopes}
    expected = flash_attn_func(*qkv.unbind(2), return_attn_probs=True, **features)
    lengths = offsets_of([0, 29], "cpu")
    for actual, squeeze in (
            (flash_attn_qkvpacked_func(qkv, return_attn_probs=True, **features), False),
            (flash_attn_kvpacked_func(qkv[:, :, 0], qkv[:, :, 1:], return_attn_probs=True,
                                      **features), False),
            (flash_attn_varlen_qkvpacked_func(qkv[0], lengths, 29, return_attn_probs=True,
                                              **features), True),
            (flash_attn_varlen_kvpacked_func(qkv[0, :, 0], qkv[0, :, 1:], lengths, lengths,
                                             29, 29, return_attn_probs=True, **features),
             True)):
        assert len(actual) == 3 and actual[2] is None
        torch.testing.assert_close(actual[0], expected[0][0] if squeeze else expected[0])
        torch.testing.assert_close(actual[1], expected[1][0] if squeeze else expected[1])


@pytest.mark.parametrize("kwargs, error, message", [
    ({"dropout_p": 0.1}, NotImplementedError, "dropout_p"),
    ({"window_size": (-3, 0)}, ValueError, "window_size"),
    ({"softcap": -2.0}, ValueError, "softcap"),
])
def test_compat_refusals_are_one_line(kwargs, error, message):
    leaves, _, _ = _inputs(torch.float32, packed=False)
    with pytest.raises(error, match=message) as raised:
        flash_attn_func(*leaves, **kwargs)
    assert "\n" not in str(raised.value)


def test_features_compile_into_one_graph():
    """window, softcap, slopes and the returned lse go through the op's schema: a fullgraph
    compile (aot_eager traces forward and backward as inductor would) equals eager."""
    generator = torch.Generator().manual_seed(4)
    leaves = [torch.randn(1, 21, 2, 16, generator=generator).requires_grad_() for _ in range(3)]
    slopes = _slopes(2)

    def fn(q, k, v):
        return attention(q, k, v, causal=True, window=(5, -1), softcap=2.0,
                         alibi_slopes=slopes, return_lse=True, config=CONFIG,
                         bwd_config=BWD_CONFIG)

    results = []
    for function in (fn, torch.compile(fn, fullgraph=True, backend="aot_eager")):
        out, lse = function(*leaves)
        results.append([out, lse, *torch.autograd.grad(out.square().sum(), leaves)])
    for got, want in zip(*results):
        torch.testing.assert_close(got, want)
