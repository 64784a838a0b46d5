"""No host read on the step path: a CUDA graph captured at batch B must replay for any slot
assignment, and dynamo must not break the graph, so while a step op (or a compat decode entry
point) runs, seqtune's own code never reads a tensor's values into Python, and never
allocates by a value-dependent size (boolean indexing, nonzero, unique).

On the CPU the step ops do read the indices on the host, on purpose: there the value checks
(range, duplicates) give a clear one-line ValueError, and a read costs nothing. On CUDA they
run on the device instead. These tests exercise the device path on the CPU by switching the
predicate ``seqtune.checks.host_reads_allowed`` off: the checks then run as on CUDA
(``torch._assert_async``, synchronous on CPU tensors), and the guard below makes any host read
from seqtune's code raise."""
from __future__ import annotations

import contextlib
import os
import sys

import pytest
import torch

import seqtune
import seqtune.checks
import seqtune.kernels
from seqtune.compat.causal_conv1d import causal_conv1d_update
from seqtune.compat.mamba_ssm import selective_state_update
from step_cases import NAMES, step_case

OWN_DIRS = tuple(os.path.dirname(module.__file__) + os.sep
                 for module in (seqtune, seqtune.kernels))
ROWS = torch.tensor([3, -1, 0], dtype=torch.int32)


class HostRead(AssertionError):
    pass


def _from_seqtune(frame) -> bool:
    return frame.f_code.co_filename.startswith(OWN_DIRS)


def _guarded(name, original, refuses=lambda *args, **kwargs: True):
    """``original``, raising HostRead when seqtune's code calls it (and ``refuses``)."""
    def guarded(*args, **kwargs):
        caller = sys._getframe(1)
        if _from_seqtune(caller) and refuses(*args, **kwargs):
            raise HostRead(f"{name} from {caller.f_code.co_filename}:{caller.f_lineno}")
        return original(*args, **kwargs)
    return guarded


def _boolean_index(tensor, index, *rest) -> bool:
    """Indexing by a boolean mask: its result's size depends on values (a nonzero inside)."""
    parts = index if isinstance(index, tuple) else (index,)
    return any(isinstance(p, torch.Tensor) and p.dtype == torch.bool for p in parts)


def _no_output_size(*args, **kwargs) -> bool:
    return kwargs.get("output_size") is None


TENSOR_READS = ("item", "tolist", "__int__", "__bool__", "__index__", "__float__", "cpu",
                "numpy", "nonzero", "unique", "masked_select")
TORCH_READS = ("nonzero", "unique", "masked_select", "argwhere")


@contextlib.contextmanager
def no_host_reads(monkeypatch):
    """Any host read from seqtune's code raises HostRead while the block runs."""
    with monkeypatch.context() as patch:
        for name in TENSOR_READS:
            patch.setattr(torch.Tensor, name, _guarded(name, getattr(torch.Tensor, name)))
        for name in TORCH_READS:
            patch.setattr(torch, name, _guarded(f"torch.{name}", getattr(torch, name)))
        for name in ("__getitem__", "__setitem__"):
            patch.setattr(torch.Tensor, name,
                          _guarded(f"boolean {name}", getattr(torch.Tensor, name),
                                   _boolean_index))
        patch.setattr(torch, "repeat_interleave",
                      _guarded("repeat_interleave", torch.repeat_interleave, _no_output_size))
        yield


@pytest.fixture
def device_checks(monkeypatch):
    """The value checks as on CUDA: on the device, never read on the host."""
    monkeypatch.setattr(seqtune.checks, "host_reads_allowed", lambda tensor: False)


@pytest.mark.parametrize("name", NAMES)
def test_step_ops_read_nothing_on_the_host(name, monkeypatch, device_checks):
    case = step_case(name)
    expected_pool = case.state.clone()
    expected = case.call(expected_pool, ROWS)
    pool = case.state.clone()
    with no_host_reads(monkeypatch):
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
def test_compat_decode_reads_nothing_on_the_host(update, shape, dtype, monkeypatch,
                                                 device_checks):
    before = torch.randn(*shape, generator=torch.Generator().manual_seed(2)).to(dtype)
    expected_pool = before.clone()
    expected = update(expected_pool, ROWS)
    pool = before.clone()
    with no_host_reads(monkeypatch):
        out = update(pool, ROWS)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    torch.testing.assert_close(pool, expected_pool, rtol=0, atol=0)


@pytest.mark.parametrize("rows, message", [
    (torch.tensor([2, -1, 2]), "state_indices has a row more than once"),
    (torch.tensor([0, 5, 1]), "state_indices must be < N=5"),
])
def test_device_checks_still_refuse_bad_rows(rows, message, monkeypatch, device_checks):
    """On the device path a bad row is a device-side assert (synchronous on the CPU), raised
    before the kernel writes anything."""
    case = step_case("delta_rule_step")
    pool = case.state.clone()
    with no_host_reads(monkeypatch), pytest.raises(RuntimeError, match=message):
        case.call(pool, rows)
    assert torch.equal(pool, case.state)


def test_the_guard_catches_the_host_path(monkeypatch):
    """Without the switch the CPU checks read the indices on the host: the guard sees it (so
    a passing test above means no read happened, not a blind guard)."""
    case = step_case("causal_conv1d_step")
    with no_host_reads(monkeypatch), pytest.raises(HostRead, match="checks.py"):
        case.call(case.state.clone(), ROWS)
