"""Every op under ``torch.compile(fullgraph=True)``: each is one opaque ``torch.ops.seqtune`` call
with a fake implementation, so compiled outputs, gradients and in-place pool updates equal the
eager ones, and one dynamic graph serves every length (the config lookup runs inside the op).

Shapes are tiny (compiling and the interpreter dominate); ``aot_eager`` traces the joint
forward/backward graph as inductor would, without generating code.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from op_cases import DIFFERENTIABLE, loss_of

import seqtune.kernels as K

BACKEND = "aot_eager"


def _outputs_and_grads(fn, inputs):
    leaves = [x for x in inputs if x.requires_grad]
    outputs = fn(*inputs)
    return outputs, torch.autograd.grad(loss_of(outputs), leaves)


@pytest.mark.parametrize("name", sorted(DIFFERENTIABLE))
def test_compiled_outputs_and_gradients_equal_eager(name):
    torch.manual_seed(0)
    fn, inputs = DIFFERENTIABLE[name]()
    eager, eager_grads = _outputs_and_grads(fn, inputs)
    compiled, compiled_grads = _outputs_and_grads(
        torch.compile(fn, fullgraph=True, backend=BACKEND), inputs)
    assert len(compiled) == len(eager)
    for got, want in zip(compiled, eager):
        torch.testing.assert_close(got, want)
    assert len(compiled_grads) == len(eager_grads) > 0
    for got, want in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(got, want)


def test_compiled_attention_decode_equals_eager():
    torch.manual_seed(0)
    q, k_cache, v_cache = torch.randn(2, 4, 16), torch.randn(2, 9, 2, 16), torch.randn(2, 9, 2, 16)
    lengths = torch.tensor([3, 9], dtype=torch.int32)

    def fn(q, k_cache, v_cache, lengths):
        return K.attention_decode(q, k_cache, v_cache, lengths, scale=0.3)

    torch.testing.assert_close(torch.compile(fn, fullgraph=True, backend=BACKEND)(
        q, k_cache, v_cache, lengths), fn(q, k_cache, v_cache, lengths))


INDICES = torch.tensor([2, 0], dtype=torch.int32)  # row 1 of each 3-row pool stays untouched


def _delta_rule_step():
    return (lambda q, k, v, beta, g, pool: K.delta_rule_step(q, k, v, beta, g, state=pool,
                                                             state_indices=INDICES),
            (F.normalize(torch.randn(2, 1, 16), dim=-1), F.normalize(torch.randn(2, 1, 16), dim=-1),
             torch.randn(2, 2, 16), torch.rand(2, 2), -torch.rand(2, 2)),
            torch.randn(3, 2, 16, 16))


def _linear_attention_step():
    return (lambda q, k, v, g, pool: K.linear_attention_step(q, k, v, g, state=pool,
                                                             state_indices=INDICES),
            (torch.randn(2, 1, 16), torch.randn(2, 1, 16), torch.randn(2, 2, 24),
             -torch.rand(2, 2, 16)),
            torch.randn(3, 2, 16, 24))


def _ssd_step():
    return (lambda x, dt, A, B, C, pool: K.ssd_step(x, dt, A, B, C, state=pool, dt_softplus=True,
                                                    state_indices=INDICES),
            (torch.randn(2, 2, 8), torch.rand(2, 2), -torch.rand(2), torch.randn(2, 1, 16),
             torch.randn(2, 1, 16)),
            torch.randn(3, 2, 16, 8))


def _selective_scan_step():
    return (lambda u, delta, A, B, C, z, pool: K.selective_scan_step(
                u, delta, A, B, C, state=pool, z=z, delta_softplus=True, state_indices=INDICES),
            (torch.randn(2, 6), torch.rand(2, 6), -torch.rand(6, 4), torch.randn(2, 4),
             torch.randn(2, 4), torch.randn(2, 6)),
            torch.randn(3, 6, 4))


def _causal_conv1d_step():
    return (lambda x, w, b, pool: K.causal_conv1d_step(x, w, b, activation="silu", state=pool,
                                                       state_indices=INDICES),
            (torch.randn(2, 8), torch.randn(8, 4), torch.randn(8)),
            torch.randn(3, 8, 3))


STEPS = {"delta_rule_step": _delta_rule_step, "linear_attention_step": _linear_attention_step,
         "ssd_step": _ssd_step, "selective_scan_step": _selective_scan_step,
         "causal_conv1d_step": _causal_conv1d_step}


@pytest.mark.parametrize("name", sorted(STEPS))
def test_compiled_step_updates_the_pool_as_eager(name):
    torch.manual_seed(0)
    fn, inputs, pool = STEPS[name]()
    eager_pool, compiled_pool = pool.clone(), pool.clone()
    eager = fn(*inputs, eager_pool)
    compiled = torch.compile(fn, fullgraph=True, backend=BACKEND)(*inputs, compiled_pool)
    torch.testing.assert_close(compiled, eager)
    torch.testing.assert_close(compiled_pool, eager_pool)
    assert not torch.equal(eager_pool[[0, 2]], pool[[0, 2]])  # the step wrote its rows...
    assert torch.equal(compiled_pool[1], pool[1])  # ...and only those


def test_one_graph_serves_every_length():
    """Five lengths in five config buckets: one dynamic graph (the lookup is inside the op)."""
    graphs = []

    def counting_backend(graph, example_inputs):
        graphs.append(graph)
        return graph.forward

    torch._dynamo.reset()

    def fn(q, k, v):
        return K.attention(q, k, v, causal=True) * 2

    compiled = torch.compile(fn, fullgraph=True, dynamic=True, backend=counting_backend)
    torch.manual_seed(0)
    with torch.no_grad():
        for length in (5, 9, 17, 33, 65):
            q, k, v = (torch.randn(1, length, 2, 16) for _ in range(3))
            torch.testing.assert_close(compiled(q, k, v), fn(q, k, v))
    assert 1 <= len(graphs) <= 2


def test_an_explicit_config_compiles_and_is_used():
    """``config=`` travels into the op as its canonical text: a bad knob still fails in one
    line at the call, compiled or not."""
    a, b = torch.rand(2, 9, 8), torch.randn(2, 9, 8)

    def fn(a, b):
        return K.linear_scan(a, b, config={"BLOCK_T": 16, "num_warps": 2})

    torch.testing.assert_close(torch.compile(fn, fullgraph=True, backend=BACKEND)(a, b),
                               K.linear_scan(a, b))
    with pytest.raises(ValueError, match="NOT_A_KNOB") as raised:
        K.linear_scan(a, b, config={"NOT_A_KNOB": 1})
    assert "\n" not in str(raised.value)
    with pytest.raises(TypeError, match="config must map knob names"):
        K.linear_scan(a, b, config={"BLOCK_T": float("nan")})


def test_opcheck_on_a_differentiable_and_a_mutating_op():
    """torch's own consistency checks of schema, fake implementation, autograd registration and
    AOT dispatch."""
    torch.manual_seed(0)
    a, b = torch.rand(2, 5, 8).requires_grad_(), torch.randn(2, 5, 8).requires_grad_()
    torch.library.opcheck(torch.ops.seqtune.linear_scan.default, (a, b, None, None, None))
    x, weight, pool = torch.randn(2, 8), torch.randn(8, 4), torch.randn(3, 8, 3)
    torch.library.opcheck(torch.ops.seqtune.causal_conv1d_step.default,
                          (x, weight, None, "silu", pool, INDICES, None))
