"""seqtune.compat.fla_linear (fla's linear attention, retention, lightning attention and the
other simple GLA entry points) against float64 references written here from fla's reference
math: the step recurrence of test_compat_fla.py for states, and the quadratic form of fla's
``naive_retention`` (scores ``scale q_i . k_j exp(G_i - G_j)``, j <= i) for outputs; the
normalizer of ``normalize=True`` as fla's: divided by ``scale q_t . (z_0 + sum_{s<=t} k_s) +
1e-10``. Forward and backward."""
from __future__ import annotations

import inspect
import math

import pytest
import torch
import torch.nn.functional as F
from test_compat_fla import _transposed, reference

from seqtune.compat import fla_linear

B, T, H, K, V = 2, 13, 2, 16, 24
TOLERANCE = 1e-4  # fp32 chunk kernels against float64 (test_compat_fla.py)
GRAD_TOLERANCE = 1e-3


def inputs(seed=0, batch=B):
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=generator)

    return {"q": randn(batch, T, H, K), "k": F.normalize(randn(batch, T, H, K), dim=-1),
            "v": randn(batch, T, H, V), "g": F.logsigmoid(randn(batch, T, H) + 2),
            "h0": randn(batch, H, K, V), "z0": randn(batch, 1, H, K).abs()}


def retention_decay():
    return torch.tensor([math.log(1 - 2.0 ** (-5 - h)) for h in range(H)], dtype=torch.float64)


def lightning_decay(layer_idx, num_layers):
    return torch.tensor([-(8 / H) * (1 - layer_idx / num_layers) * h for h in range(H)],
                        dtype=torch.float64)


def quadratic(q, k, v, g, scale=K ** -0.5):
    """fla's naive_retention generalised to a per-step decay g [B, T, H] (None: none), float64:
    o_i = sum_{j <= i} scale (q_i . k_j) exp(G_i - G_j) v_j, and those scores [B, H, T, T]."""
    q, k, v = (x.double() for x in (q, k, v))
    scores = torch.einsum("bihk,bjhk->bhij", q, k) * scale
    causal = torch.ones(q.shape[1], q.shape[1], dtype=torch.bool).tril()
    if g is not None:
        total = g.double().cumsum(1).transpose(1, 2)
        scores = scores * (total[..., :, None] - total[..., None, :]).masked_fill(
            ~causal, 0).exp()
    scores = scores.masked_fill(~causal, 0)
    return torch.einsum("bhij,bjhv->bihv", scores, v), scores


def fixed(decay, batch=B):
    return decay.view(1, 1, H).expand(batch, T, H)


def recurrent(a, g, h0, scale=None, reverse=False):
    """(o, final) of the recurrence with a [B, T, H] decay, optionally run backwards."""
    q, k, v = a["q"], a["k"], a["v"]
    if reverse:
        q, k, v = (x.flip(1) for x in (q, k, v))
        g = None if g is None else g.flip(1)
    out, final = reference(q, k, v, None, g, h0, delta=False, scale=scale)
    return (out.flip(1) if reverse else out), final


CASES = {
    "chunk_retention": (
        lambda a: fla_linear.chunk_retention(a["q"], a["k"], a["v"], initial_state=a["h0"],
                                             output_final_state=True),
        lambda a: recurrent(a, fixed(retention_decay()), a["h0"])),
    "fused_chunk_retention scale": (
        lambda a: fla_linear.fused_chunk_retention(a["q"], a["k"], a["v"], 0.3, a["h0"], True),
        lambda a: recurrent(a, fixed(retention_decay()), a["h0"], scale=0.3)),
    "fused_recurrent_retention reverse, v-first state": (
        lambda a: fla_linear.fused_recurrent_retention(
            a["q"], a["k"], a["v"], initial_state=a["h0"].mT, output_final_state=True,
            reverse=True, state_v_first=True),
        lambda a: _transposed(recurrent(a, fixed(retention_decay()), a["h0"], reverse=True))),
    "chunk_lightning_attn": (
        lambda a: fla_linear.chunk_lightning_attn(a["q"], a["k"], a["v"], 1, 4,
                                                  initial_state=a["h0"],
                                                  output_final_state=True),
        lambda a: recurrent(a, fixed(lightning_decay(1, 4)), a["h0"])),
    "fused_recurrent_lightning_attn reverse": (
        lambda a: fla_linear.fused_recurrent_lightning_attn(
            a["q"], a["k"], a["v"], layer_idx=0, num_layers=3, initial_state=a["h0"],
            output_final_state=True, reverse=True),
        lambda a: recurrent(a, fixed(lightning_decay(0, 3)), a["h0"], reverse=True)),
    "fused_chunk_simple_gla g": (
        lambda a: fla_linear.fused_chunk_simple_gla(a["q"], a["k"], a["v"], a["g"],
                                                    initial_state=a["h0"],
                                                    output_final_state=True),
        lambda a: recurrent(a, a["g"], a["h0"])),
    "chunk_linear_attn unnormalized": (
        lambda a: fla_linear.chunk_linear_attn(a["q"], a["k"], a["v"], initial_state=a["h0"],
                                               output_final_state=True, normalize=False),
        lambda a: recurrent(a, None, a["h0"])),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_function_matches_the_recurrence(case):
    call, expect = CASES[case]
    a = inputs(seed=1)
    out, final = call(a)
    expected, expected_final = expect(a)
    assert out.shape == (B, T, H, V) and final.dtype == torch.float32
    torch.testing.assert_close(out.double(), expected, atol=TOLERANCE, rtol=TOLERANCE)
    torch.testing.assert_close(final.double(), expected_final, atol=TOLERANCE, rtol=TOLERANCE)


def normalized(a, z0, reverse=False):
    """fla's normalized linear attention without an initial kv state, float64: (o, z_state)."""
    k = a["k"].double()
    running = k.flip(1).cumsum(1).flip(1) if reverse else k.cumsum(1)
    out, _ = recurrent(a, None, torch.zeros(B, H, K, V), reverse=reverse)
    denominator = (a["q"].double() * K ** -0.5 * (running + z0.double())).sum(-1, True) + 1e-10
    return out / denominator, k.sum(1, keepdim=True) + z0.double()


@pytest.mark.parametrize("function, reverse", [
    (fla_linear.chunk_linear_attn, False), (fla_linear.fused_chunk_linear_attn, False),
    (fla_linear.fused_recurrent_linear_attn, True)])
def test_normalized_linear_attention_carries_the_key_sum(function, reverse):
    a = inputs(seed=2)
    options = {"reverse": reverse} if reverse else {}
    out, (final, z_state) = function(a["q"], a["k"], a["v"], initial_state=(None, a["z0"]),
                                     normalize=True, **options)
    expected, expected_z = normalized(a, a["z0"], reverse)
    assert final is None and z_state.shape == (B, 1, H, K)
    torch.testing.assert_close(out.double(), expected, atol=TOLERANCE, rtol=TOLERANCE)
    torch.testing.assert_close(z_state.double(), expected_z, atol=1e-6, rtol=1e-6)


def test_normalized_packed_sequences_each_sum_their_own_keys():
    """cu_seqlens: the key sum restarts per sequence (an empty one included) from its own z0."""
    a = inputs(seed=3, batch=1)
    cu_seqlens = torch.tensor([0, 4, 4, 13])
    z0 = torch.rand(3, 1, H, K, generator=torch.Generator().manual_seed(4))
    out, (final, z_state) = fla_linear.chunk_linear_attn(
        a["q"], a["k"], a["v"], initial_state=(None, z0), output_final_state=True,
        cu_seqlens=cu_seqlens)
    assert final.shape == (3, H, K, V) and z_state.shape == (3, 1, H, K)
    for n, (start, end) in enumerate(zip(cu_seqlens.tolist(), cu_seqlens[1:].tolist())):
        piece = {name: x[:, start:end] for name, x in a.items() if x.shape[1] == T}
        k = piece["k"].double()
        plain, _ = reference(piece["q"], k, piece["v"], None, None, torch.zeros(1, H, K, V),
                             delta=False)
        denominator = (piece["q"].double() * K ** -0.5
                       * (k.cumsum(1) + z0[n].double())).sum(-1, True) + 1e-10
        torch.testing.assert_close(out[:, start:end].double(), plain / denominator,
                                   atol=TOLERANCE, rtol=TOLERANCE)
        torch.testing.assert_close(z_state[n].double(), k.sum(1)[0:1] + z0[n].double(),
                                   atol=1e-6, rtol=1e-6)


def test_parallel_functions_match_the_quadratic_form_and_return_its_scores():
    a = inputs(seed=5)
    out, scores = fla_linear.parallel_retention(a["q"], a["k"], a["v"], output_attentions=True)
    expected, expected_scores = quadratic(a["q"], a["k"], a["v"], fixed(retention_decay()))
    assert scores.shape == (B, H, T, T) and not scores.requires_grad
    torch.testing.assert_close(out.double(), expected, atol=TOLERANCE, rtol=TOLERANCE)
    torch.testing.assert_close(scores.double(), expected_scores, atol=1e-5, rtol=1e-5)
    out, scores = fla_linear.parallel_simple_gla(a["q"], a["k"], a["v"], a["g"], scale=0.2)
    assert scores is None
    torch.testing.assert_close(out.double(), quadratic(a["q"], a["k"], a["v"], a["g"], 0.2)[0],
                               atol=TOLERANCE, rtol=TOLERANCE)


def _gradients(outputs, leaves):
    weights = [torch.randn(*x.shape, generator=torch.Generator().manual_seed(6 + i)).double()
               for i, x in enumerate(outputs)]
    loss = sum((x.double() * w).sum() for x, w in zip(outputs, weights))
    return torch.autograd.grad(loss, leaves)


@pytest.mark.parametrize("case", ["chunk_retention", "chunk_linear_attn normalized",
                                  "parallel_simple_gla"])
def test_gradients_match_float64_autograd(case):
    a = inputs(seed=7)
    names = {"chunk_retention": ("q", "k", "v", "h0"),
             "chunk_linear_attn normalized": ("q", "k", "v", "z0"),
             "parallel_simple_gla": ("q", "k", "v", "g")}[case]
    ours = {n: a[n].clone().requires_grad_() for n in names}
    ref = {n: a[n].double().requires_grad_() for n in names}
    if case == "chunk_retention":
        got = fla_linear.chunk_retention(ours["q"], ours["k"], ours["v"],
                                         initial_state=ours["h0"], output_final_state=True)
        want = recurrent(ref, fixed(retention_decay()), ref["h0"])
    elif case == "parallel_simple_gla":
        got = fla_linear.parallel_simple_gla(ours["q"], ours["k"], ours["v"], ours["g"])[:1]
        want = quadratic(ref["q"], ref["k"], ref["v"], ref["g"])[:1]
    else:
        o, (_, z_state) = fla_linear.chunk_linear_attn(ours["q"], ours["k"], ours["v"],
                                                       initial_state=(None, ours["z0"]))
        got = (o, z_state)
        want = normalized(ref, ref["z0"])
    for name, grad, expected in zip(names, _gradients(got, list(ours.values())),
                                    _gradients(want, list(ref.values()))):
        torch.testing.assert_close(grad.double(), expected, atol=GRAD_TOLERANCE,
                                   rtol=GRAD_TOLERANCE, msg=name)


def _qkv(a):
    return a["q"], a["k"], a["v"]


@pytest.mark.parametrize("call, error, message", [
    (lambda a: fla_linear.chunk_lightning_attn(*_qkv(a), 0, 0), ValueError, "num_layers"),
    (lambda a: fla_linear.chunk_lightning_attn(*_qkv(a), 0.5, 4), TypeError, "layer_idx"),
    (lambda a: fla_linear.chunk_retention(a["q"], a["k"], a["v"].repeat(1, 1, 2, 1)),
     ValueError, "chunk_retention: v must have the H=2 heads of q"),
    (lambda a: fla_linear.chunk_retention(*_qkv(a), chunk_size=48), ValueError, "chunk_size"),
    (lambda a: fla_linear.chunk_retention(*_qkv(a), transpose_state_layout=True),
     NotImplementedError, "transpose_state_layout"),
    (lambda a: fla_linear.parallel_simple_gla(*_qkv(a), a["h0"]), ValueError,
     r"parallel_simple_gla: g must have shape \[B, T, HV\] = \(2, 13, 2\)"),
    (lambda a: fla_linear.fused_chunk_simple_gla(*_qkv(a), g_gamma=a["g"]), ValueError,
     "g_gamma must have shape"),
    (lambda a: fla_linear.parallel_retention(a["q"][:1], a["k"][:1], a["v"][:1],
                                             output_attentions=True,
                                             cu_seqlens=torch.tensor([0, 13])),
     ValueError, "output_attentions"),
    (lambda a: fla_linear.chunk_linear_attn(*_qkv(a), initial_state=(a["h0"], a["z0"][0])),
     ValueError, r"z_state of initial_state must have shape \[N, 1, H, K\]"),
])
def test_bad_arguments_give_one_line_errors(call, error, message):
    with pytest.raises(error, match=message) as raised:
        call(inputs())
    assert "\n" not in str(raised.value)


def test_transpose_state_layout_warns_in_fused_recurrent_retention():
    a = inputs(seed=8)
    with pytest.warns(DeprecationWarning, match="transpose_state_layout"):
        out, final = fla_linear.fused_recurrent_retention(
            *_qkv(a), initial_state=a["h0"].mT, output_final_state=True,
            transpose_state_layout=True)
    expected, expected_final = recurrent(a, fixed(retention_decay()), a["h0"])
    torch.testing.assert_close(out.double(), expected, atol=TOLERANCE, rtol=TOLERANCE)
    torch.testing.assert_close(final.mT.double(), expected_final, atol=TOLERANCE,
                               rtol=TOLERANCE)


# fla (fla/ops/{linear_attn,retention,lightning_attn,simple_gla}): names, order and defaults
ORIGINAL_SIGNATURES = {
    "chunk_linear_attn": "(q, k, v, scale=None, initial_state=None, output_final_state=False, "
                         "normalize=True, cu_seqlens=None)",
    "fused_chunk_linear_attn": "(q, k, v, scale=None, initial_state=None, "
                               "output_final_state=False, normalize=True, cu_seqlens=None)",
    "fused_recurrent_linear_attn": "(q, k, v, scale=None, initial_state=None, "
                                   "output_final_state=False, reverse=False, normalize=False, "
                                   "cu_seqlens=None)",
    "chunk_retention": "(q, k, v, scale=None, initial_state=None, output_final_state=False, "
                       "cu_seqlens=None, **kwargs)",
    "fused_chunk_retention": "(q, k, v, scale=None, initial_state=None, "
                             "output_final_state=False, cu_seqlens=None, **kwargs)",
    "fused_recurrent_retention": "(q, k, v, scale=None, initial_state=None, "
                                 "output_final_state=False, reverse=False, "
                                 "state_v_first=False, cu_seqlens=None, **kwargs)",
    "parallel_retention": "(q, k, v, scale=None, output_attentions=False, cu_seqlens=None, "
                          "**kwargs)",
    "chunk_lightning_attn": "(q, k, v, layer_idx, num_layers, scale=None, initial_state=None, "
                            "output_final_state=False, cu_seqlens=None, **kwargs)",
    "fused_recurrent_lightning_attn": "(q, k, v, layer_idx, num_layers, scale=None, "
                                      "initial_state=None, output_final_state=False, "
                                      "reverse=False, cu_seqlens=None, **kwargs)",
    "fused_chunk_simple_gla": "(q, k, v, g=None, g_gamma=None, scale=None, initial_state=None, "
                              "output_final_state=False, cu_seqlens=None)",
    "parallel_simple_gla": "(q, k, v, g=None, scale=None, output_attentions=False, "
                           "cu_seqlens=None, cu_seqlens_cpu=None, **kwargs)",
}


@pytest.mark.parametrize("name", sorted(ORIGINAL_SIGNATURES))
def test_signature_is_the_originals(name):
    assert str(inspect.signature(getattr(fla_linear, name))) == ORIGINAL_SIGNATURES[name]


def test_bfloat16_inputs_round_as_the_simple_gla_kernel_does():
    """bf16: the chunk kernel's own tolerance (6e-2 on O(1) outputs, test_compat_fla.py)."""
    a = {n: x.bfloat16() if n in ("q", "k", "v") else x for n, x in inputs(seed=9, batch=1).items()}
    out, final = fla_linear.chunk_lightning_attn(a["q"], a["k"], a["v"], 2, 5,
                                                 initial_state=a["h0"][:1],
                                                 output_final_state=True)
    expected, expected_final = reference(a["q"], a["k"], a["v"], None,
                                         fixed(lightning_decay(2, 5), batch=1), a["h0"][:1],
                                         delta=False)
    assert out.dtype == torch.bfloat16 and final.dtype == torch.float32
    torch.testing.assert_close(out.double(), expected, atol=6e-2, rtol=6e-2)
    torch.testing.assert_close(final.double(), expected_final, atol=6e-2, rtol=6e-2)


def test_normalized_decoding_token_by_token_chains_both_states():
    """fused_recurrent_linear_attn one token at a time (the step kernel), feeding back
    (kv_state, z_state), equals the whole sequence in one call."""
    a = inputs(seed=10)
    a["k"] = a["k"].abs()  # keys of one sign keep the normalizer away from 0
    out, (final, z_state) = fla_linear.fused_recurrent_linear_attn(
        *_qkv(a), normalize=True, output_final_state=True)
    state, steps = (torch.zeros(B, H, K, V), torch.zeros(B, 1, H, K)), []
    for t in range(T):
        step = slice(t, t + 1)
        o, state = fla_linear.fused_recurrent_linear_attn(
            a["q"][:, step], a["k"][:, step], a["v"][:, step], initial_state=state,
            normalize=True, output_final_state=True)
        steps.append(o)
    torch.testing.assert_close(torch.cat(steps, 1), out, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(state[0], final, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(state[1], z_state, atol=1e-6, rtol=1e-6)
