"""fla's ``chunk_kda(..., return_intermediate_states=True)`` (fla 0.6.0: inference mode only;
``(o, final_state, h)``, h the state entering each chunk of ``chunk_size`` tokens,
``[B, NT, HV, K, V]``, or ``[1, total chunks, HV, K, V]`` when packed, in the inputs' dtype)
against a float64 token-by-token recurrence written here."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from seqtune.compat import fla

# Max |err| / max |ref| per output. fp32: accumulation order through the chunk recurrence
# (states are stored in fp32). bf16: the chunkwise op's own bound (benchmarks/precision.py:
# o and states <= 1.3e-2 from bf16 inputs) plus h itself stored in bf16 (2^-8 relative at most),
# with some margin for these seeds.
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 3e-2}
HEADS, KEY_DIM, VALUE_DIM = 2, 32, 24


def make_inputs(dtype, batch, length, sequences, seed=0):
    """Normalised q and k, beta in (0, 1), per-channel log decays mostly in [-0.3, 0] (a memory
    spanning chunks), a unit-scale initial state per sequence."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen)

    return {"q": F.normalize(randn(batch, length, HEADS, KEY_DIM), dim=-1).to(dtype),
            "k": F.normalize(randn(batch, length, HEADS, KEY_DIM), dim=-1).to(dtype),
            "v": randn(batch, length, HEADS, VALUE_DIM).to(dtype),
            "g": F.logsigmoid(randn(batch, length, HEADS, KEY_DIM) + 3),
            "beta": torch.sigmoid(randn(batch, length, HEADS)).to(dtype),
            "initial_state": randn(sequences, HEADS, KEY_DIM, VALUE_DIM)}


def reference(a, spans, chunk):
    """float64 (o [B, T, H, V], final states [N, H, K, V], entering states [chunks, H, K, V])
    over ``spans`` (row, start, end) in order; a chunk starts every ``chunk`` tokens of a
    sequence: S <- diag(exp(g)) S; S += beta k (v - S^T k)^T; o = K^-1/2 S^T q."""
    q, k, v, g, beta = (a[n].double() for n in ("q", "k", "v", "g", "beta"))
    out, finals, entering = torch.zeros_like(v), [], []
    for n, (row, start, end) in enumerate(spans):
        state = a["initial_state"][n].double().clone()
        for t in range(start, end):
            if (t - start) % chunk == 0:
                entering.append(state.clone())
            state = state * g[row, t].exp()[:, :, None]
            error = v[row, t] - torch.einsum("hkv,hk->hv", state, k[row, t])
            state = state + beta[row, t][:, None, None] * k[row, t][:, :, None] * error[:, None]
            out[row, t] = KEY_DIM ** -0.5 * torch.einsum("hkv,hk->hv", state, q[row, t])
        finals.append(state)
    return out, torch.stack(finals), torch.stack(entering)


def max_relative(actual, expected):
    return ((actual.double() - expected).abs().max() / expected.abs().max()).item()


def run(a, **kwargs):
    with torch.inference_mode():
        return fla.chunk_kda(a["q"], a["k"], a["v"], a["g"], a["beta"],
                             initial_state=a["initial_state"], output_final_state=True,
                             return_intermediate_states=True, **kwargs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("chunk", [64, 32])
def test_states_entering_each_chunk_match_the_recurrence(dtype, chunk):
    a = make_inputs(dtype, batch=2, length=77, sequences=2)
    extra = {} if chunk == 64 else {"chunk_size": chunk}
    o, final, h = run(a, **extra)
    ref_o, ref_final, ref_h = reference(a, [(0, 0, 77), (1, 0, 77)], chunk)
    chunks = -(-77 // chunk)
    assert h.shape == (2, chunks, HEADS, KEY_DIM, VALUE_DIM) and h.dtype == dtype
    assert max_relative(h, ref_h.view(h.shape)) < TOLERANCE[dtype]
    assert max_relative(o, ref_o) < TOLERANCE[dtype]
    assert max_relative(final, ref_final) < TOLERANCE[dtype]
    # no final state among them: the first is the initial state, as stored in the dtype (the
    # interpreter's fp32 -> bf16 cast truncates: within 2^-7 relative; fp32 exact)
    rtol = 2 ** -7 if dtype == torch.bfloat16 else 0.0
    torch.testing.assert_close(h[:, 0].float(), a["initial_state"], rtol=rtol, atol=0.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_sequences_list_their_chunks_in_order(dtype):
    bounds = [0, 5, 70, 77]  # 1 + 2 + 1 chunks of 64
    a = make_inputs(dtype, batch=1, length=77, sequences=3, seed=1)
    cu_seqlens = torch.tensor(bounds, dtype=torch.int32)
    o, final, h = run(a, cu_seqlens=cu_seqlens)
    ref_o, ref_final, ref_h = reference(a, [(0, s, e) for s, e in zip(bounds, bounds[1:])], 64)
    assert h.shape == (1, 4, HEADS, KEY_DIM, VALUE_DIM)
    assert max_relative(h[0], ref_h) < TOLERANCE[dtype]
    assert max_relative(o, ref_o) < TOLERANCE[dtype]
    assert max_relative(final, ref_final) < TOLERANCE[dtype]


def test_state_v_first_transposes_the_states_too():
    a = make_inputs(torch.float32, batch=1, length=21, sequences=1, seed=2)
    _, final, h = run(a)
    flipped = dict(a, initial_state=a["initial_state"].transpose(-1, -2))
    _, final_vk, h_vk = run(flipped, state_v_first=True)
    assert torch.equal(h_vk, h.transpose(-1, -2)) and torch.equal(final_vk,
                                                                  final.transpose(-1, -2))


@pytest.mark.parametrize("kwargs, error", [({}, RuntimeError),
                                           ({"disable_recompute": True}, ValueError)])
def test_fla_conditions_give_one_line_errors(kwargs, error):
    a = make_inputs(torch.float32, batch=1, length=5, sequences=1)
    call = (lambda: fla.chunk_kda(a["q"], a["k"], a["v"], a["g"], a["beta"],
                                  return_intermediate_states=True, **kwargs))
    if kwargs:  # disable_recompute is refused inside inference mode too
        def call(inner=call):
            with torch.inference_mode():
                return inner()
    with pytest.raises(error, match="return_intermediate_states") as raised:
        call()
    assert "\n" not in str(raised.value)


def test_chunk_gated_delta_rule_refuses_it_as_an_unknown_keyword():
    """fla 0.6.0's chunk_gated_delta_rule has no return_intermediate_states (its **kwargs drop
    it): seqtune refuses it rather than return two results where three are expected."""
    a = make_inputs(torch.float32, batch=1, length=5, sequences=1)
    with pytest.raises(NotImplementedError, match="return_intermediate_states") as raised:
        with torch.inference_mode():
            fla.chunk_gated_delta_rule(a["q"], a["k"], a["v"], a["g"][..., 0], a["beta"],
                                       return_intermediate_states=True)
    assert "\n" not in str(raised.value)
