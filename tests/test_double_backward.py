"""A gradient of seqtune's gradients (a gradient penalty, a Hessian-vector product) is refused
with one line when it is taken, for every op with a backward (``once_differentiable``
semantics): the Triton backward kernels have no derivative, and silently treating them as
constants gave wrong results. First-order gradients taken with ``create_graph=True`` are
unchanged."""
from __future__ import annotations

import pytest
import torch
from op_cases import DIFFERENTIABLE, loss_of


@pytest.mark.parametrize("name", sorted(DIFFERENTIABLE))
def test_double_backward_is_refused_in_one_line(name):
    torch.manual_seed(0)
    fn, inputs = DIFFERENTIABLE[name]()
    leaves = [x for x in inputs if x.requires_grad]
    plain = torch.autograd.grad(loss_of(fn(*inputs)), leaves)
    grads = torch.autograd.grad(loss_of(fn(*inputs)), leaves, create_graph=True)
    for got, want in zip(grads, plain):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    penalty = sum(grad.square().sum() for grad in grads)
    assert penalty.requires_grad  # the refusal is recorded, not a constant that hides it
    with pytest.raises(RuntimeError, match=f"seqtune.{name}: double backward") as raised:
        penalty.backward()
    assert "\n" not in str(raised.value)


def _scan_reference(a, b):
    states, h = [], torch.zeros_like(b[:, 0])
    for t in range(b.shape[1]):
        h = a[:, t] * h + b[:, t]
        states.append(h)
    return torch.stack(states, 1)


def test_a_penalty_that_needs_only_first_order_seqtune_gradients_works():
    """Only differentiating seqtune's backward is refused: a penalty on the gradient of a plain
    torch parameter downstream of an op backpropagates through the op's (first-order)
    backward, and matches a pure-torch computation."""
    torch.manual_seed(0)
    a = torch.rand(2, 5, 8)
    results = []
    for scan in (lambda a, b: torch.ops.seqtune.linear_scan(a, b, None, None, None),
                 _scan_reference):
        b = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(1)).requires_grad_()
        weight = torch.tensor(1.5, requires_grad=True)
        (grad,) = torch.autograd.grad((weight * scan(a, b)).square().sum(), weight,
                                      create_graph=True)
        grad.square().backward()
        results.append((weight.grad, b.grad))
    for got, want in zip(*results):
        torch.testing.assert_close(got, want)
