"""seqtune.compat.fla against an independent float64 recurrence written here, step by step
(fla itself is not installed on the CPU machines, so it is not compared against)."""
from __future__ import annotations

import inspect

import pytest
import torch
import torch.nn.functional as F

from seqtune.compat import fla, fla_linear

# The seqtune kernels' own tolerances (kernels/delta_rule/spec.py, linear_attention/spec.py):
# fp32 differs from float64 by accumulation order through the chunk recurrence (1e-4); bf16
# rounds the dot operands (states, decayed keys, scores) to 8 significant bits, and a few such
# roundings add up over a chunk: 6e-2 on O(1) outputs.
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 6e-2}


def recurrence(q, k, v, beta, g, scale, h0, delta):
    """(o [T, HV, V], S [HV, K, V]) float64 of one sequence: S <- diag(exp(g)) S, then the delta
    rule S += beta k (v - S^T k)^T (or S += k v^T), o = scale S^T q; key head of value head i
    is i // (HV / H)."""
    q, k, v = (x.double() for x in (q, k, v))
    group = v.shape[1] // q.shape[1]
    q, k = q.repeat_interleave(group, 1), k.repeat_interleave(group, 1)
    state = h0.double().clone()
    out = []
    for t in range(q.shape[0]):
        if g is not None:
            decay = g[t].double().exp()
            state = state * (decay[:, :, None] if decay.dim() == 2 else decay[:, None, None])
        if delta:
            error = v[t] - torch.einsum("hkv,hk->hv", state, k[t])
            state = state + beta[t].double()[:, None, None] * k[t][:, :, None] * error[:, None]
        else:
            state = state + k[t][:, :, None] * v[t][:, None]
        out.append(scale * torch.einsum("hkv,hk->hv", state, q[t]))
    return (torch.stack(out) if out else v.new_zeros(0, *v.shape[1:])), state


def reference(q, k, v, beta, g, h0, cu_seqlens=None, delta=True, scale=None):
    """(o, final states) of every sequence (batch rows, or cu_seqlens pieces) run alone."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    out = torch.zeros(*v.shape, dtype=torch.float64)
    finals = []
    pieces = ([(b, 0, q.shape[1]) for b in range(q.shape[0])] if cu_seqlens is None else
              [(0, s, e) for s, e in zip(cu_seqlens.tolist(), cu_seqlens[1:].tolist())])
    for n, (b, start, end) in enumerate(pieces):
        at = (b, slice(start, end))
        o, state = recurrence(q[at], k[at], v[at], None if beta is None else beta[at],
                              None if g is None else g[at], scale, h0[n], delta)
        out[at] = o
        finals.append(state)
    return out, torch.stack(finals)


def make_inputs(dtype, batch=2, length=37, seed=0):
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=generator)

    heads, value_heads, key_dim, value_dim = 1, 2, 16, 32
    return {
        "q": randn(batch, length, heads, key_dim).to(dtype),
        "k": F.normalize(randn(batch, length, heads, key_dim), dim=-1).to(dtype),
        "v": randn(batch, length, value_heads, value_dim).to(dtype),
        "beta": torch.rand(batch, length, value_heads, generator=generator),
        "g": F.logsigmoid(randn(batch, length, value_heads) + 2),
        "gk": F.logsigmoid(randn(batch, length, value_heads, key_dim) + 2),
        "raw": randn(batch, length, value_heads, key_dim),
        "A_log": randn(value_heads) * 0.3,
        "dt_bias": randn(value_heads * key_dim) * 0.3,
        "h0": randn(batch, value_heads, key_dim, value_dim),
    }


def _l2(x):
    return x.double() / (x.double().square().sum(-1, keepdim=True) + 1e-6).sqrt()


def _softplus_gate(raw, A_log, dt_bias):
    return -A_log.double().exp()[:, None] * F.softplus(raw.double() + dt_bias.double().view(
        A_log.numel(), -1))


# Each case: (function, its fla-style call on the inputs, the reference on the same inputs).
CASES = {
    "chunk_gated_delta_rule": (
        lambda a: fla.chunk_gated_delta_rule(a["q"], a["k"], a["v"], a["g"], a["beta"],
                                             initial_state=a["h0"], output_final_state=True),
        lambda a: reference(a["q"], a["k"], a["v"], a["beta"], a["g"], a["h0"])),
    "chunk_gated_delta_rule gate in kernel, l2norm, v-first state": (
        lambda a: fla.chunk_gated_delta_rule(
            a["q"], a["k"], a["v"], a["raw"][..., 0], a["beta"], initial_state=a["h0"].mT,
            output_final_state=True, use_qk_l2norm_in_kernel=True, state_v_first=True,
            use_gate_in_kernel=True, A_log=a["A_log"], dt_bias=a["dt_bias"][:2], chunk_size=64),
        lambda a: _transposed(reference(
            _l2(a["q"]), _l2(a["k"]), a["v"], a["beta"],
            _softplus_gate(a["raw"][..., :1], a["A_log"], a["dt_bias"][:2])[..., 0], a["h0"]))),
    "fused_recurrent_gated_delta_rule g + gk, sigmoid beta": (
        lambda a: fla.fused_recurrent_gated_delta_rule(
            a["q"], a["k"], a["v"], g=a["g"], gk=a["gk"], beta=a["raw"][..., 0],
            initial_state=a["h0"], output_final_state=True, use_beta_sigmoid_in_kernel=True,
            allow_neg_eigval=True),
        lambda a: reference(a["q"], a["k"], a["v"], 2 * a["raw"][..., 0].sigmoid(),
                            a["gk"] + a["g"][..., None], a["h0"])),
    "chunk_kda gate in kernel": (
        lambda a: fla.chunk_kda(a["q"], a["k"], a["v"], a["raw"], a["beta"], scale=0.2,
                                initial_state=a["h0"], output_final_state=True,
                                use_gate_in_kernel=True, A_log=a["A_log"],
                                dt_bias=a["dt_bias"]),
        lambda a: reference(a["q"], a["k"], a["v"], a["beta"],
                            _softplus_gate(a["raw"], a["A_log"], a["dt_bias"]), a["h0"],
                            scale=0.2)),
    "fused_recurrent_kda lower bound": (
        lambda a: fla.fused_recurrent_kda(a["q"], a["k"], a["v"], a["raw"], a["beta"],
                                          a["A_log"], a["dt_bias"], initial_state=a["h0"],
                                          output_final_state=True, use_gate_in_kernel=True,
                                          lower_bound=-3.0),
        lambda a: reference(a["q"], a["k"], a["v"], a["beta"], -3.0 * torch.sigmoid(
            a["A_log"].double().exp()[:, None]
            * (a["raw"].double() + a["dt_bias"].double().view(2, -1))), a["h0"])),
    "chunk_delta_rule": (
        lambda a: fla.chunk_delta_rule(a["q"], a["k"], a["v"], a["beta"],
                                       initial_state=a["h0"], output_final_state=True),
        lambda a: reference(a["q"], a["k"], a["v"], a["beta"], None, a["h0"])),
    "fused_recurrent_delta_rule no beta": (
        lambda a: fla.fused_recurrent_delta_rule(a["q"], a["k"], a["v"], None, None, a["h0"],
                                                 True),
        lambda a: reference(a["q"], a["k"], a["v"], torch.ones(a["v"].shape[:3]), None,
                            a["h0"])),
    "chunk_gla": (
        lambda a: fla.chunk_gla(a["q"], a["k"], a["v"], a["gk"], initial_state=a["h0"],
                                output_final_state=True),
        lambda a: reference(a["q"], a["k"], a["v"], None, a["gk"], a["h0"], delta=False)),
    "fused_recurrent_gla v-first state": (
        lambda a: fla.fused_recurrent_gla(a["q"], a["k"], a["v"], a["gk"],
                                          initial_state=a["h0"].mT, output_final_state=True,
                                          state_v_first=True),
        lambda a: _transposed(reference(a["q"], a["k"], a["v"], None, a["gk"], a["h0"],
                                        delta=False))),
    "chunk_simple_gla g + g_gamma": (
        lambda a: fla.chunk_simple_gla(a["q"], a["k"], a["v"], a["g"], a["A_log"] - 1,
                                       initial_state=a["h0"], output_final_state=True),
        lambda a: reference(a["q"], a["k"], a["v"], None, a["g"] + a["A_log"] - 1, a["h0"],
                            delta=False)),
    "fused_recurrent_simple_gla g_gamma": (
        lambda a: fla.fused_recurrent_simple_gla(a["q"], a["k"], a["v"], g_gamma=a["A_log"] - 1,
                                                 initial_state=a["h0"],
                                                 output_final_state=True),
        lambda a: reference(a["q"], a["k"], a["v"], None,
                            (a["A_log"] - 1).expand(*a["v"].shape[:3]), a["h0"], delta=False)),
}


def _transposed(result):
    out, final = result
    return out, final.mT


def assert_close(actual, expected, dtype):
    torch.testing.assert_close(actual.double(), expected, atol=TOLERANCE[dtype],
                               rtol=TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", sorted(CASES))
def test_function_matches_the_recurrence(case, dtype):
    call, expect = CASES[case]
    # batch 2 in fp32 (per-row states); bf16 checks the rounding on one row, for time
    inputs = make_inputs(dtype, batch=2 if dtype == torch.float32 else 1)
    out, final = call(inputs)
    expected_out, expected_final = expect(inputs)
    assert out.dtype == dtype and out.shape == inputs["v"].shape
    assert final.dtype == torch.float32 and final.shape == expected_final.shape
    assert_close(out, expected_out, dtype)
    assert_close(final, expected_final, dtype)


CU_SEQLENS = torch.tensor([0, 0, 1, 20, 37])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_sequences_run_alone(dtype):
    a = make_inputs(dtype, batch=1, seed=1)
    h0 = torch.randn(4, *a["h0"].shape[1:], generator=torch.Generator().manual_seed(2))
    out, final = fla.chunk_gated_delta_rule(a["q"], a["k"], a["v"], a["g"], a["beta"],
                                            initial_state=h0, output_final_state=True,
                                            cu_seqlens=CU_SEQLENS)
    expected = reference(a["q"], a["k"], a["v"], a["beta"], a["g"], h0, CU_SEQLENS)
    assert_close(out, expected[0], dtype)
    assert_close(final, expected[1], dtype)
    out, final = fla.chunk_gla(a["q"], a["k"], a["v"], a["gk"], initial_state=h0,
                               output_final_state=True, cu_seqlens=CU_SEQLENS.int())
    expected = reference(a["q"], a["k"], a["v"], None, a["gk"], h0, CU_SEQLENS, delta=False)
    assert_close(out, expected[0], dtype)
    assert_close(final, expected[1], dtype)


def test_reverse_runs_each_packed_sequence_backwards():
    a = make_inputs(torch.float32, batch=1, seed=3)
    h0 = torch.randn(4, *a["h0"].shape[1:], generator=torch.Generator().manual_seed(4))
    out, final = fla.fused_recurrent_simple_gla(a["q"], a["k"], a["v"], a["g"],
                                                initial_state=h0, output_final_state=True,
                                                reverse=True, cu_seqlens=CU_SEQLENS)
    for n, (start, end) in enumerate(zip(CU_SEQLENS.tolist(), CU_SEQLENS[1:].tolist())):
        steps = slice(start, end)
        o, state = recurrence(*(a[x][0, steps].flip(0) for x in ("q", "k", "v")), None,
                              a["g"][0, steps].flip(0), 16 ** -0.5, h0[n], delta=False)
        assert_close(out[0, steps], o.flip(0), torch.float32)
        assert_close(final[n], state, torch.float32)


@pytest.mark.parametrize("chunk, recurrent", [
    (fla.chunk_gated_delta_rule, fla.fused_recurrent_gated_delta_rule),
    (fla.chunk_simple_gla, fla.fused_recurrent_simple_gla),
])
def test_decoding_token_by_token_equals_the_chunkwise_function(chunk, recurrent):
    a = make_inputs(torch.float32, length=7, seed=5)
    gates = {"g": a["g"]} | ({"beta": a["beta"]} if chunk is fla.chunk_gated_delta_rule
                             else {})
    out, final = chunk(a["q"], a["k"], a["v"], **gates, initial_state=a["h0"],
                       output_final_state=True)
    state, steps = a["h0"], []
    for t in range(7):
        step = slice(t, t + 1)
        o, state = recurrent(a["q"][:, step], a["k"][:, step], a["v"][:, step],
                             **{name: x[:, step] for name, x in gates.items()},
                             initial_state=state, output_final_state=True)
        steps.append(o)
    torch.testing.assert_close(torch.cat(steps, 1), out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(state, final, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("delta", [True, False])
def test_packed_decoding_step_leaves_the_initial_state_untouched(dtype, delta):
    """vLLM-style decoding: N sequences of one token each, packed (cu_seqlens = 0..N), with a
    per-channel gate and a V-first state, on the step kernels (KDA: delta_rule_step, GLA:
    linear_attention_step): equals the recurrence, and initial_state is not written."""
    a = make_inputs(dtype, batch=1, length=3, seed=6)
    h0 = torch.randn(3, 2, 32, 16, generator=torch.Generator().manual_seed(7))  # [N, HV, V, K]
    before = h0.clone()
    options = dict(initial_state=h0, output_final_state=True, state_v_first=True,
                   cu_seqlens=torch.arange(4))
    if delta:
        out, final = fla.fused_recurrent_kda(a["q"], a["k"], a["v"], a["gk"], a["beta"],
                                             **options)
    else:
        out, final = fla.fused_recurrent_gla(a["q"], a["k"], a["v"], a["gk"], **options)
    expected, expected_final = reference(a["q"], a["k"], a["v"], a["beta"], a["gk"], h0.mT,
                                         torch.arange(4), delta=delta)
    assert torch.equal(h0, before)
    assert final.shape == (3, 2, 32, 16) and final.dtype == torch.float32
    assert_close(out, expected, dtype)
    assert_close(final.mT, expected_final, dtype)


def _args(a):
    return a["q"], a["k"], a["v"]


@pytest.mark.parametrize("call, error, message", [
    (lambda a: fla.fused_recurrent_gla(*_args(a), gv=a["v"]), NotImplementedError, "gv"),
    (lambda a: fla.fused_recurrent_gated_delta_rule(*_args(a), gv=a["v"], beta=a["beta"]),
     NotImplementedError, "gv"),
    (lambda a: fla.chunk_delta_rule(*_args(a), a["beta"], head_first=True),
     NotImplementedError, "head_first"),
    (lambda a: fla.chunk_simple_gla(*_args(a), a["g"], use_magic=True), NotImplementedError,
     "use_magic"),
    (lambda a: fla.chunk_kda(*_args(a), a["gk"], a["beta"], return_intermediate_states=True),
     RuntimeError, "inference_mode"),
    (lambda a: fla.chunk_gated_delta_rule(*_args(a), a["g"], a["beta"], cp_context=object()),
     NotImplementedError, "cp_context"),
    (lambda a: fla.fused_recurrent_delta_rule(*_args(a), a["v"]), NotImplementedError, "beta"),
    (lambda a: fla.chunk_gated_delta_rule(*_args(a), a["g"], a["beta"], chunk_size=0),
     ValueError, "chunk_size"),
    (lambda a: fla.chunk_kda(*_args(a), a["gk"], a["beta"], allow_neg_eigval=True),
     ValueError, "allow_neg_eigval"),
    (lambda a: fla.chunk_gated_delta_rule(*_args(a), a["g"], a["beta"],
                                          use_gate_in_kernel=True), ValueError, "A_log"),
    (lambda a: fla.chunk_gla(*_args(a), a["gk"], cu_seqlens=torch.tensor([0, 5, 3])),
     ValueError, "cu_seqlens"),
])
def test_bad_arguments_give_one_line_errors(call, error, message):
    with pytest.raises(error, match=message) as raised:
        call(make_inputs(torch.float32, length=5))
    assert "\n" not in str(raised.value)


def test_chunk_gla_gradients_match_float64_autograd():
    """Through the v-first state views, the GVA heads and the per-channel gate: gradients of
    every input against float64 autograd of the recurrence (fp32 backward kernels: 1e-3)."""
    a = make_inputs(torch.float32, length=13, seed=8)
    names = ("q", "k", "v", "gk", "h0")
    ours = {n: a[n].detach().clone().requires_grad_() for n in names}
    ref = {n: a[n].detach().double().requires_grad_() for n in names}
    weights = torch.randn(*a["v"].shape, generator=torch.Generator().manual_seed(9))
    out, final = fla.chunk_gla(ours["q"], ours["k"], ours["v"], ours["gk"],
                               initial_state=ours["h0"].mT, output_final_state=True,
                               state_v_first=True)
    expected, expected_final = reference(ref["q"], ref["k"], ref["v"], None, ref["gk"],
                                         ref["h0"], delta=False)
    grads = torch.autograd.grad((out * weights).sum() + final.square().sum(),
                                [ours[n] for n in names])
    wanted = torch.autograd.grad((expected * weights).sum() + expected_final.mT.square().sum(),
                                 [ref[n] for n in names])
    for name, grad, want in zip(names, grads, wanted):
        torch.testing.assert_close(grad.double(), want, atol=1e-3, rtol=1e-3, msg=name)


# The originals' signatures, as fla 0.6 defines them (fla/ops/<op>/chunk.py and
# fused_recurrent.py): same names, order and defaults.
ORIGINAL_SIGNATURES = {
    "chunk_gated_delta_rule":
        "(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False, "
        "use_qk_l2norm_in_kernel=False, use_beta_sigmoid_in_kernel=False, "
        "allow_neg_eigval=False, state_v_first=False, cu_seqlens=None, cu_seqlens_cpu=None, "
        "chunk_indices=None, cp_context=None, **kwargs)",
    "fused_recurrent_gated_delta_rule":
        "(q, k, v, g=None, gk=None, gv=None, beta=None, scale=None, initial_state=None, "
        "output_final_state=False, use_qk_l2norm_in_kernel=False, use_gate_in_kernel=False, "
        "A_log=None, dt_bias=None, use_beta_sigmoid_in_kernel=False, allow_neg_eigval=False, "
        "state_v_first=False, cu_seqlens=None, **kwargs)",
    "chunk_kda":
        "(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False, "
        "use_qk_l2norm_in_kernel=False, use_gate_in_kernel=False, "
        "use_beta_sigmoid_in_kernel=False, allow_neg_eigval=False, safe_gate=False, "
        "lower_bound=None, disable_recompute=False, return_intermediate_states=False, "
        "state_v_first=False, cu_seqlens=None, cu_seqlens_cpu=None, cp_context=None, "
        "**kwargs)",
    "fused_recurrent_kda":
        "(q, k, v, g, beta, A_log=None, dt_bias=None, scale=None, initial_state=None, "
        "output_final_state=False, use_qk_l2norm_in_kernel=False, use_gate_in_kernel=False, "
        "use_beta_sigmoid_in_kernel=False, allow_neg_eigval=False, lower_bound=None, "
        "state_v_first=False, cu_seqlens=None, **kwargs)",
    "chunk_delta_rule":
        "(q, k, v, beta, scale=None, initial_state=None, output_final_state=False, "
        "use_qk_l2norm_in_kernel=False, cu_seqlens=None, cu_seqlens_cpu=None, **kwargs)",
    "fused_recurrent_delta_rule":
        "(q, k, v, beta=None, scale=None, initial_state=None, output_final_state=False, "
        "use_qk_l2norm_in_kernel=False, cu_seqlens=None)",
    "chunk_gla":
        "(q, k, v, g, scale=None, initial_state=None, output_final_state=False, "
        "state_v_first=False, cu_seqlens=None, cu_seqlens_cpu=None)",
    "fused_recurrent_gla":
        "(q, k, v, gk=None, gv=None, scale=None, initial_state=None, "
        "output_final_state=False, reverse=False, state_v_first=False, cu_seqlens=None, "
        "**kwargs)",
    "chunk_simple_gla":
        "(q, k, v, g=None, g_gamma=None, scale=None, initial_state=None, "
        "output_final_state=False, state_v_first=False, cu_seqlens=None, cu_seqlens_cpu=None, "
        "**kwargs)",
    "fused_recurrent_simple_gla":
        "(q, k, v, g=None, g_gamma=None, scale=None, initial_state=None, "
        "output_final_state=False, reverse=False, state_v_first=False, cu_seqlens=None, "
        "**kwargs)",
}


@pytest.mark.parametrize("name", sorted(ORIGINAL_SIGNATURES))
def test_signature_is_the_originals(name):
    assert str(inspect.signature(getattr(fla, name))) == ORIGINAL_SIGNATURES[name]


def test_chunk_gated_delta_rule_gradients_through_the_pytorch_prologue():
    """Qwen3-Next's call (qk L2 norm, gate and sigmoid beta from raw inputs, done in PyTorch
    before the kernel): gradients of every raw input, A_log and dt_bias included, against
    float64 autograd of the recurrence (fp32 backward kernels: 1e-3)."""
    a = make_inputs(torch.float32, length=13, seed=11)
    tensors = {"q": a["q"], "k": a["k"] * 3, "v": a["v"], "g": a["raw"][..., 0],
               "beta": a["raw"][..., 1], "A_log": a["A_log"], "dt_bias": a["dt_bias"][:2],
               "h0": a["h0"]}
    ours = {n: t.detach().clone().requires_grad_() for n, t in tensors.items()}
    ref = {n: t.detach().double().requires_grad_() for n, t in tensors.items()}
    out, final = fla.chunk_gated_delta_rule(
        ours["q"], ours["k"], ours["v"], ours["g"], ours["beta"], initial_state=ours["h0"],
        output_final_state=True, use_qk_l2norm_in_kernel=True, use_beta_sigmoid_in_kernel=True,
        use_gate_in_kernel=True, A_log=ours["A_log"], dt_bias=ours["dt_bias"])
    gate = -ref["A_log"].exp() * F.softplus(ref["g"] + ref["dt_bias"])
    expected, expected_final = reference(_l2(ref["q"]), _l2(ref["k"]), ref["v"],
                                         ref["beta"].sigmoid(), gate, ref["h0"])
    weights = torch.randn(*a["v"].shape, generator=torch.Generator().manual_seed(12))
    names = sorted(tensors)
    grads = torch.autograd.grad((out * weights).sum() + final.square().sum(),
                                [ours[n] for n in names])
    wanted = torch.autograd.grad((expected * weights).sum() + expected_final.square().sum(),
                                 [ref[n] for n in names])
    for name, grad, want in zip(names, grads, wanted):
        torch.testing.assert_close(grad.double(), want, atol=1e-3, rtol=1e-3, msg=name)


def _per_head_inputs(seed):
    """make_inputs with one value head per key head (H = HV = 1: retention, lightning and plain
    linear attention take no GVA), float32."""
    a = make_inputs(torch.float32, batch=1, length=19, seed=seed)
    return {n: x[:, :, :1] if n in ("v", "beta", "g", "gk") else x[:, :1] if n == "h0" else x
            for n, x in a.items()}


# every compat chunk function: (q, k, v, inputs) -> (o, final_state)
CHUNK_CALLS = {
    "chunk_gated_delta_rule": lambda q, k, v, a, **s: fla.chunk_gated_delta_rule(
        q, k, v, a["g"], a["beta"], **s),
    "chunk_kda": lambda q, k, v, a, **s: fla.chunk_kda(q, k, v, a["gk"], a["beta"], **s),
    "chunk_delta_rule": lambda q, k, v, a, **s: fla.chunk_delta_rule(q, k, v, a["beta"], **s),
    "chunk_gla": lambda q, k, v, a, **s: fla.chunk_gla(q, k, v, a["gk"], **s),
    "chunk_simple_gla": lambda q, k, v, a, **s: fla.chunk_simple_gla(q, k, v, a["g"], **s),
    "chunk_linear_attn": lambda q, k, v, a, **s: fla_linear.chunk_linear_attn(
        q, k, v, normalize=False, **s),
    "fused_chunk_linear_attn": lambda q, k, v, a, **s: fla_linear.fused_chunk_linear_attn(
        q, k, v, normalize=False, **s),
    "chunk_retention": lambda q, k, v, a, **s: fla_linear.chunk_retention(q, k, v, **s),
    "fused_chunk_retention": lambda q, k, v, a, **s: fla_linear.fused_chunk_retention(
        q, k, v, **s),
    "chunk_lightning_attn": lambda q, k, v, a, **s: fla_linear.chunk_lightning_attn(
        q, k, v, 1, 4, **s),
    "fused_chunk_simple_gla": lambda q, k, v, a, **s: fla_linear.fused_chunk_simple_gla(
        q, k, v, a["g"], **s),
}


@pytest.mark.parametrize("name", sorted(CHUNK_CALLS))
def test_every_chunk_function_takes_float32_q_k_with_float16_v(name):
    """fla's mixed input dtypes: q, k float32 and v float16 run in the widest dtype (float32)
    and o comes back in v's dtype: the all-float32 call on the same (fp16-exact) v, with o
    rounded to float16, exactly."""
    a = _per_head_inputs(seed=30)
    v16 = a["v"].half()
    state = {"initial_state": a["h0"], "output_final_state": True}
    out, final = CHUNK_CALLS[name](a["q"], a["k"], v16, a, **state)
    want, want_final = CHUNK_CALLS[name](a["q"], a["k"], v16.float(), a, **state)
    assert out.dtype == torch.float16 and final.dtype == torch.float32
    assert torch.equal(out, want.half()) and torch.equal(final, want_final)
