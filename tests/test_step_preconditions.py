"""What the five step ops require, each refused before any launch with one line naming the
argument: distinct rows, a pool with its own memory that does not require grad, tensors (not
lists) on one real device, no input sharing the pool's memory."""
from __future__ import annotations

import pytest
import torch

from seqtune.launch import capture_launches
from step_cases import BATCH, NAMES, POOL, step_case


def _expanded_pool(case):
    """A stride-0 pool: every row one memory row (several rows' updates would land in it)."""
    return case.state[:1].expand(case.state.shape)


def _aliased(case):
    """The first per-element input rebuilt as a view of the pool's own memory."""
    name, tensor = next(iter(case.batched.items()))
    view = case.state.view(-1)[:tensor.numel()].view(tensor.shape)
    return {name: view}, name


BAD = {
    "duplicate-rows": (lambda c: ({}, None, torch.tensor([2, -1, 2])), ValueError,
                       "state_indices has row 2 more than once"),
    "row-beyond-pool": (lambda c: ({}, None, torch.tensor([0, POOL, 1])), ValueError,
                        f"state_indices must be < N={POOL}"),
    "expanded-pool": (lambda c: ({}, _expanded_pool(c), torch.tensor([0, 1, 2])), ValueError,
                      "state overlaps itself in memory"),
    "pool-requires-grad": (lambda c: ({}, c.state.clone().requires_grad_(),
                                      torch.tensor([0, 1, 2])), ValueError,
                           "state requires grad"),
    "state-list": (lambda c: ({}, c.state.tolist(), torch.tensor([0, 1, 2])), TypeError,
                   "state must be a torch.Tensor, got list"),
    "indices-list": (lambda c: ({}, None, [0, 1, 2]), TypeError,
                     "state_indices must be a torch.Tensor"),
    "meta-indices": (lambda c: ({}, None, torch.tensor([0, 1, 2], device="meta")), ValueError,
                     "state_indices is a meta tensor"),
    "meta-state": (lambda c: ({}, c.state.to("meta"), torch.tensor([0, 1, 2])), ValueError,
                   "state is a meta tensor"),
}


@pytest.mark.parametrize("bad", sorted(BAD))
@pytest.mark.parametrize("name", NAMES)
def test_refused_in_one_line_before_any_launch(name, bad):
    case = step_case(name)
    build, error, message = BAD[bad]
    changes, state, rows = build(case)
    pool = case.state if state is None else state
    snapshot = case.state.clone()
    with capture_launches() as launched, pytest.raises(error) as raised:
        case.run({**case.inputs(), **changes}, pool, rows)
    assert message in str(raised.value) and "\n" not in str(raised.value)
    assert not launched
    assert torch.equal(case.state, snapshot)


@pytest.mark.parametrize("name", NAMES)
def test_an_input_sharing_the_pool_memory_is_refused(name):
    """A view of a row written in the same call would be read after (or while) it is
    written: undefined, refused when it lies in the pool's storage."""
    case = step_case(name)
    changes, input_name = _aliased(case)
    with capture_launches() as launched, pytest.raises(ValueError) as raised:
        case.run({**case.inputs(), **changes}, case.state, torch.tensor([0, 1, 2]))
    assert f"{input_name} shares memory with state" in str(raised.value)
    assert not launched


@pytest.mark.parametrize("name", NAMES)
def test_strided_pools_with_their_own_memory_are_accepted(name):
    """Every other row of a larger buffer (a sliced pool) and a permuted one do not overlap:
    they step as the contiguous pool does."""
    case = step_case(name)
    rows = torch.tensor([4, -1, 1])
    contiguous = case.state.clone()
    expected = case.call(contiguous, rows)
    sliced = torch.zeros(2 * POOL, *case.state.shape[1:])[::2]
    sliced.copy_(case.state)
    torch.testing.assert_close(case.call(sliced, rows), expected, rtol=0, atol=0)
    torch.testing.assert_close(sliced, contiguous, rtol=0, atol=0)
    permuted = case.state.transpose(0, -1).contiguous().transpose(0, -1)
    torch.testing.assert_close(case.call(permuted, rows), expected, rtol=0, atol=0)
    torch.testing.assert_close(permuted, contiguous, rtol=0, atol=0)


def test_a_pool_without_indices_is_checked_too():
    """Without state_indices the pool is one row per element: still checked for overlap."""
    case = step_case("delta_rule_step")
    pool = case.state[:BATCH].clone()
    case.call(pool)
    with pytest.raises(ValueError, match="state overlaps itself"):
        case.call(pool[:1].expand(pool.shape))
