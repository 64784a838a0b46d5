"""delta_rule's backward (Triton kernels through the WY representation) against float64 autograd
of the independent recurrence: every gradient, every gate kind, fp32 and bf16, with and without
an initial state, the final state's gradient, packed sequences with grouped value heads, and a
long sequence with strong decay and beta near 1."""
from __future__ import annotations

import pytest
import torch

from seqtune.agreement import check_case, compare
from seqtune.kernels.delta_rule import autograd as autograd_module
from seqtune.kernels.delta_rule.op import delta_rule
from seqtune.kernels.delta_rule.reference import delta_rule_reference
from seqtune.registry import get_spec
from seqtune.spec import DeviceLimits
from test_delta_rule_varlen import packed_inputs

SPEC = get_spec("delta_rule_bwd")
NAMES = ("q", "k", "v", "beta", "g", "initial_state")
A100 = DeviceLimits(backend="cuda", shared_memory_per_block=166912, compute_capability=(8, 0))
H100 = DeviceLimits(backend="cuda", shared_memory_per_block=232448, compute_capability=(9, 0))


def _gradients(tensors, bounds=None, use_final=True, seed=7, **options):
    """(kernel gradients, float64 autograd gradients) of sum(o * do) (+ sum(final * dht)) for
    the tensors (None entries skipped) that require grad."""
    leaves = {n: t.detach().clone().requires_grad_() for n, t in zip(NAMES, tensors)
              if t is not None}
    generator = torch.Generator().manual_seed(seed)
    out, final = delta_rule(*(leaves.get(n) for n in NAMES[:5]),
                            initial_state=leaves.get("initial_state"), cu_seqlens=bounds,
                            output_final_state=True, **options)
    do = torch.randn(out.shape, generator=generator).to(out.dtype)
    dht = torch.randn(final.shape, generator=generator)
    loss = (out.float() * do.float()).sum() + (final * dht).sum() * use_final
    got = torch.autograd.grad(loss, list(leaves.values()))
    exact = {n: t.detach().double().requires_grad_() for n, t in leaves.items()}
    out64, final64 = delta_rule_reference(*(exact.get(n) for n in NAMES[:5]),
                                          initial_state=exact.get("initial_state"),
                                          cu_seqlens=bounds, detach=False)
    loss64 = (out64 * do.double()).sum() + (final64 * dht.double()).sum() * use_final
    return got, torch.autograd.grad(loss64, list(exact.values()))


def _tolerance(dtype):
    return SPEC.tolerances[str(dtype).removeprefix("torch.")]


def _assert_agree(got, want, dtype):
    for index, (have, expected) in enumerate(zip(got, want)):
        agreement = compare((have,), (expected,), _tolerance(dtype))
        assert agreement.ok, f"gradient {index}: {agreement.detail} ({agreement.max_rel_err:.2e})"


# T = 45 is no multiple of any chunk size (16, 32, 64); K = 32 != V = 48
@pytest.mark.parametrize("gate, dtype, with_state", [
    ("none", torch.float32, True), ("scalar", torch.float32, False),
    ("channel", torch.float32, True), ("none", torch.bfloat16, False),
    ("scalar", torch.bfloat16, True), ("channel", torch.bfloat16, False),
], ids=["none-fp32-h0", "scalar-fp32", "channel-fp32-h0", "none-bf16", "scalar-bf16-h0",
        "channel-bf16"])
def test_every_gradient_matches_float64_autograd(gate, dtype, with_state):
    """bf16 with a scalar gate: fp32 beta and g (as the models pass them), else all in dtype."""
    gate_dtype = torch.float32 if gate == "scalar" else dtype
    q, k, v, beta, g, state, _ = packed_inputs(lengths=(45,), group=1, value_dim=48, gate=gate,
                                               dtype=dtype, gate_dtype=gate_dtype)
    got, want = _gradients((q, k, v, beta, g, state if with_state else None))
    assert len(got) == 5 + (g is not None) - (not with_state)
    _assert_agree(got, want, dtype)


@pytest.mark.parametrize("chunk", [16, 64])
def test_packed_sequences_with_grouped_value_heads(chunk):
    """Lengths 37, 0, 1, 70, 5 packed, 2 value heads per key head (dq and dk summed over them),
    per-sequence initial states, fp32 gates; both other chunk sizes of the backward."""
    q, k, v, beta, g, state, bounds = packed_inputs(gate="scalar" if chunk == 16 else "channel")
    got, want = _gradients((q, k, v, beta, g, state), bounds=bounds,
                           bwd_config={"BT": chunk})
    _assert_agree(got, want, torch.float32)


def test_unused_final_state_and_inputs_without_grad():
    """Only v and the initial state require grad, the final state is not used downstream."""
    q, k, v, beta, g, state, _ = packed_inputs(lengths=(30,), gate="scalar")
    v, state = v.clone().requires_grad_(), state.clone().requires_grad_()
    out, _ = delta_rule(q, k, v, beta, g, initial_state=state)
    do = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    (out * do).sum().backward()
    assert q.grad is None and k.grad is None and beta.grad is None and g.grad is None
    exact = [t.detach().double().requires_grad_() for t in (v, state)]
    out64, _ = delta_rule_reference(q.double(), k.double(), exact[0], beta.double(), g.double(),
                                    initial_state=exact[1], detach=False)
    want = torch.autograd.grad((out64 * do.double()).sum(), exact)
    _assert_agree((v.grad, state.grad), want, torch.float32)


def test_only_the_final_state_used():
    """No gradient reaches the output: the backward runs on the final state's alone (q gets
    zeros: the final state does not depend on it)."""
    q, k, v, beta, g, state, _ = packed_inputs(lengths=(33,), gate="channel")
    q, k, g = (t.clone().requires_grad_() for t in (q, k, g))
    _, final = delta_rule(q, k, v, beta, g, initial_state=state, output_final_state=True)
    dht = torch.randn(final.shape, generator=torch.Generator().manual_seed(2))
    (final * dht).sum().backward()
    assert torch.equal(q.grad, torch.zeros_like(q))
    exact = [t.detach().double().requires_grad_() for t in (k, g)]
    _, final64 = delta_rule_reference(q.double(), exact[0], v.double(), beta.double(), exact[1],
                                      initial_state=state.double(), detach=False)
    want = torch.autograd.grad((final64 * dht.double()).sum(), exact)
    _assert_agree((k.grad, g.grad), want, torch.float32)


def test_bfloat16_initial_state_gets_a_bfloat16_gradient():
    q, k, v, beta, g, state, _ = packed_inputs(lengths=(20,), gate="none")
    state = state.to(torch.bfloat16).requires_grad_()
    out, final = delta_rule(q, k, v, beta, initial_state=state, output_final_state=True)
    (out.sum() + final.sum()).backward()
    assert state.grad.dtype == torch.bfloat16 and torch.isfinite(state.grad).all()


@pytest.mark.parametrize("gate", ["scalar", "channel"])
def test_long_sequence_with_strong_decay_and_beta_near_one(gate):
    """T = 400 (13 chunks), log decays down to -30 per step (factors to 1e-13), beta ~ 1:
    every exponent the backward takes is a decay over a forward span, so the gradients stay
    finite, and they agree with float64 autograd."""
    length = 400
    q, k, v, beta, _, state, _ = packed_inputs(lengths=(length,), heads=1, group=1,
                                               key_dim=16, value_dim=16, gate="none", seed=4)
    generator = torch.Generator().manual_seed(5)
    shape = (1, length, 1) if gate == "scalar" else (1, length, 1, 16)
    g = -30.0 * torch.rand(*shape, generator=generator) ** 4
    beta = torch.full_like(beta, 0.999)
    got, want = _gradients((q, k, v, beta, g, state))
    assert all(torch.isfinite(grad).all() for grad in got)
    _assert_agree(got, want, torch.float32)


def test_bad_bwd_config_raises_before_launching(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a kernel was launched")

    monkeypatch.setattr(autograd_module, "launch", refuse)
    q, k, v, beta, g, _, _ = packed_inputs(lengths=(9,))
    q.requires_grad_()
    with pytest.raises(ValueError, match="unknown config key") as caught:
        delta_rule(q, k, v, beta, g, bwd_config={"dqk.BLOCK": 64})
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("limits", [A100, H100], ids=["sm80", "sm90"])
def test_untuned_config_is_valid_for_every_preset_and_verify_problem(limits):
    """The default, except at K = 256 where the state and gradient slices narrow to BV = 16."""
    problems = [p for preset in SPEC.presets.values() for p in preset] + list(SPEC.verify_cases)
    for problem in problems:
        config = SPEC.default_for(problem, limits)
        assert SPEC.check(config, problem, limits) is None
        narrowed = {**SPEC.default_config, "h.BV": 16, "dh.BV": 16}
        assert config == (narrowed if problem["K"] > 128 else SPEC.default_config)


@pytest.mark.parametrize("problem", [SPEC.verify_cases[7]], ids=["scalar-bf16-packed-gva"])
def test_spec_runs_only_the_backward_and_agrees(problem):
    agreement = check_case(SPEC, problem, dict(SPEC.default_config))
    assert agreement.ok, agreement.detail


def test_plain_pytorch_baseline_gives_the_same_gradients():
    """The bench's autograd baseline differentiates the same function (packed, grouped)."""
    problem = SPEC.verify_cases[8]
    inputs = SPEC.make_inputs(problem, "cpu", 0)
    agreement = compare(SPEC.baselines["torch"](inputs), SPEC.reference(inputs),
                        SPEC.tolerances["float32"])
    assert agreement.ok, agreement.detail
