"""No host read on the step path: a CUDA graph captured at batch B must replay for any slot
assignment, and dynamo must not break the graph, so while a step op (or a compat decode entry
point) runs, seqtune's own code never reads a tensor's values into Python, and never
allocates by a value-dependent size (boolean indexing, nonzero, unique).

On the CPU the step ops do read the indices on the host, on purpose: there the value checks
(range, duplicates) give a clear one-line ValueError, and a read costs nothing. On CUDA they
run on the device instead. These tests exercise the device path on the CPU by switching the
predicate ``seqtune.checks.host_reads_allowed`` off: the checks then run as on CUDA
(``torch._assert_async``, synchronous on CPU tensors), and ``host_reads.forbid_host_reads``
makes any host read from seqtune's code raise."""
from __future__ import annotations

import pytest
import torch

from host_reads import HostRead, forbid_host_reads
from seqtune.compat.causal_conv1d import causal_conv1d_update
from seqtune.compat.mamba_ssm import selective_state_update
from step_cases import NAMES, step_case

ROWS = torch.tensor([3, -1, 0], dtype=torch.int32)


@pytest.mark.parametrize("name", NAMES)
def test_step_ops_read_nothing_on_the_host(name):
    case = step_case(name)
    expected_pool = case.state.clone()
    expected = case.call(expected_pool, ROWS)
    pool = case.state.clone()
    with forbid_host_reads():
        out = case.call(pool, ROWS)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    torch.testing.assert_close(pool, expected_pool, rtol=0, atol=0)


def _mamba_update(pool, rows):
    generator = torch.Generator().manual_seed(3)
    heads, p, n = pool.shape[1:]
    x, z = (torch.randn(3, heads, p, generator=generator) for _ in range(2))
    dt = torch.rand(3, heads, 1, generator=generator).expand(3, heads, p)
    A = -torch.rand(heads, 1, 1, generator=generator).expand(heads, p, n)
    B, C = (torch.randn(3, 1, n, generator=generator) for _ in range(2))
    D = torch.randn(heads, p, generator=generator)
    return selective_state_update(pool, x, dt, A, B, C, D=D, z=z, state_batch_indices=rows)


def _conv_update(pool, rows):
    generator = torch.Generator().manual_seed(4)
    shape = (3, 8) if pool.shape[2] == 3 else (3, 8, 2)
    x = torch.randn(*shape, generator=generator)
    weight, bias = torch.randn(8, 4, generator=generator), torch.randn(8, generator=generator)
    return causal_conv1d_update(x, pool, weight, bias, "silu", conv_state_indices=rows)


@pytest.mark.parametrize("update, shape, dtype", [
    (_mamba_update, (5, 2, 16, 16), torch.float32),
    (_mamba_update, (5, 2, 16, 16), torch.bfloat16),  # a stepped copy written back
    (_conv_update, (5, 8, 3), torch.float32),         # one token: the step kernel
    (_conv_update, (5, 8, 5), torch.float32),         # a window gathered and written back
], ids=["mamba-fp32", "mamba-bf16", "conv-step", "conv-window"])
def test_compat_decode_reads_nothing_on_the_host(update, shape, dtype):
    before = torch.randn(*shape, generator=torch.Generator().manual_seed(2)).to(dtype)
    expected_pool = before.clone()
    expected = update(expected_pool, ROWS)
    pool = before.clone()
    with forbid_host_reads():
        out = update(pool, ROWS)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    torch.testing.assert_close(pool, expected_pool, rtol=0, atol=0)


@pytest.mark.parametrize("rows, message", [
    (torch.tensor([2, -1, 2]), "state_indices has a row more than once"),
    (torch.tensor([0, 5, 1]), "state_indices must be < N=5"),
])
def test_device_checks_still_refuse_bad_rows(rows, message):
    """On the device path a bad row is a device-side assert (synchronous on the CPU), raised
    before the kernel writes anything."""
    case = step_case("delta_rule_step")
    pool = case.state.clone()
    with forbid_host_reads(), pytest.raises(RuntimeError, match=message):
        case.call(pool, rows)
    assert torch.equal(pool, case.state)


def test_the_guard_catches_the_host_path():
    """Without the switch the CPU checks read the indices on the host: the guard sees it (so
    a passing test above means no read happened, not a blind guard)."""
    case = step_case("causal_conv1d_step")
    with forbid_host_reads(device_path=False), pytest.raises(HostRead, match="checks.py"):
        case.call(case.state.clone(), ROWS)
