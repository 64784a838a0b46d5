"""Padding slots (vLLM's PAD_SLOT_ID, SGLang's): a negative ``state_indices`` entry reads and
writes no pool row and gives a zero output row, in all five step ops and in both compat decode
entry points (``pad_slot_id``)."""
from __future__ import annotations

import pytest
import torch

from seqtune.compat.causal_conv1d import causal_conv1d_update
from seqtune.compat.mamba_ssm import selective_state_update
from step_cases import NAMES, POOL, step_case

ROWS = torch.tensor([3, -1, 0])
LIVE = torch.tensor([0, 2])
UNUSED_ROWS = [1, 2, 4]


def _poison_padded_inputs(case, slot: int) -> None:
    """A padded slot's inputs are whatever a server left there: NaN, never read."""
    for tensor in case.batched.values():
        tensor[slot] = float("nan")


@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("name", NAMES)
def test_padding_slot_is_skipped(name, index_dtype):
    case = step_case(name)
    _poison_padded_inputs(case, 1)
    before = case.state.clone()
    padded_pool = case.state.clone()
    out = case.call(padded_pool, ROWS.to(index_dtype))
    unpadded_pool = case.state.clone()
    expected = case.subset(LIVE).call(unpadded_pool, ROWS[LIVE].to(index_dtype))
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    torch.testing.assert_close(out[LIVE], expected, rtol=0, atol=0)
    assert torch.equal(padded_pool[UNUSED_ROWS], before[UNUSED_ROWS])  # bit for bit
    torch.testing.assert_close(padded_pool, unpadded_pool, rtol=0, atol=0)
    assert not torch.equal(padded_pool[3], before[3])  # the live rows did step


@pytest.mark.parametrize("name", NAMES)
def test_an_all_padding_batch_touches_nothing(name):
    case = step_case(name, seed=1)
    pool = case.state.clone()
    out = case.call(pool, torch.tensor([-1, -7, -1]))
    assert torch.equal(out, torch.zeros_like(out))
    assert torch.equal(pool, case.state)


def _mamba1_update(pool, rows, **kwargs):
    generator = torch.Generator().manual_seed(5)
    d, n = pool.shape[1:]
    x, dt, z = (torch.randn(3, d, generator=generator) for _ in range(3))
    x[1] = float("nan")
    A = -torch.rand(d, n, generator=generator)
    B, C = (torch.randn(3, n, generator=generator) for _ in range(2))
    return selective_state_update(pool, x, dt, A, B, C, D=torch.ones(d), z=z,
                                  dt_bias=torch.zeros(d), dt_softplus=True,
                                  state_batch_indices=rows, **kwargs)


def _mamba2_update(pool, rows, **kwargs):
    """Mamba-2's per-head layout (dt, A, dt_bias expanded over p): ssd_step; z and a D that
    varies over p are applied after the kernel, so they must keep padded rows zero too."""
    generator = torch.Generator().manual_seed(6)
    heads, p, n = pool.shape[1:]
    x = torch.randn(3, heads, p, generator=generator).to(pool.dtype)
    x[1] = float("nan")
    z = torch.randn(3, heads, p, generator=generator).to(pool.dtype)
    dt = torch.rand(3, heads, 1, generator=generator).expand(3, heads, p)
    A = -torch.rand(heads, 1, 1, generator=generator).expand(heads, p, n)
    B, C = (torch.randn(3, 1, n, generator=generator).to(pool.dtype) for _ in range(2))
    D = torch.randn(heads, p, generator=generator)
    return selective_state_update(pool, x, dt, A, B, C, D=D, z=z, state_batch_indices=rows,
                                  **kwargs)


@pytest.mark.parametrize("update, shape, dtype", [
    (_mamba1_update, (POOL, 6, 4), torch.float32),
    (_mamba2_update, (POOL, 2, 16, 16), torch.float32),
    (_mamba2_update, (POOL, 2, 16, 16), torch.bfloat16),  # stepped copy, rows written back
])
@pytest.mark.parametrize("pad_slot_id", [None, 4])
def test_selective_state_update_pad_slot_id(update, shape, dtype, pad_slot_id):
    """pad_slot_id is mamba_ssm's (vLLM's) keyword, default -1; another value marks its own
    entries as padding (then row 4 is never a state)."""
    before = torch.randn(*shape, generator=torch.Generator().manual_seed(7)).to(dtype)
    pad = -1 if pad_slot_id is None else pad_slot_id
    kwargs = {} if pad_slot_id is None else {"pad_slot_id": pad_slot_id}
    pool = before.clone()
    out = update(pool, torch.tensor([3, pad, 0], dtype=torch.int32), **kwargs)
    reference_pool = before.clone()
    reference = update(reference_pool, torch.tensor([3, 1, 0]))
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    torch.testing.assert_close(out[LIVE], reference[LIVE], rtol=0, atol=0)
    assert torch.equal(pool[[1, 2, 4]], before[[1, 2, 4]])
    torch.testing.assert_close(pool[[0, 3]], reference_pool[[0, 3]], rtol=0, atol=0)


@pytest.mark.parametrize("length, state_len", [(None, 3), (2, 5)])
@pytest.mark.parametrize("pad_slot_id", [None, 4])
def test_causal_conv1d_update_pad_slot_id(length, state_len, pad_slot_id):
    """One token on the step kernel, and two tokens through a longer state (the gathered
    window, written back without a boolean index)."""
    generator = torch.Generator().manual_seed(8)
    shape = (3, 8) if length is None else (3, 8, length)
    x = torch.randn(*shape, generator=generator)
    x[1] = float("nan")
    weight, bias = torch.randn(8, 4, generator=generator), torch.randn(8, generator=generator)
    before = torch.randn(POOL, 8, state_len, generator=generator)
    pad = -1 if pad_slot_id is None else pad_slot_id
    kwargs = {} if pad_slot_id is None else {"pad_slot_id": pad_slot_id}
    pool, reference_pool = before.clone(), before.clone()
    out = causal_conv1d_update(x, pool, weight, bias, "silu",
                               conv_state_indices=torch.tensor([3, pad, 0]), **kwargs)
    reference = causal_conv1d_update(x, reference_pool, weight, bias, "silu",
                                     conv_state_indices=torch.tensor([3, 1, 0]))
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    torch.testing.assert_close(out[LIVE], reference[LIVE], rtol=0, atol=0)
    assert torch.equal(pool[[1, 2, 4]], before[[1, 2, 4]])
    torch.testing.assert_close(pool[[0, 3]], reference_pool[[0, 3]], rtol=0, atol=0)


@pytest.mark.parametrize("call", [
    lambda: causal_conv1d_update(torch.zeros(1, 8), torch.zeros(1, 8, 3), torch.zeros(8, 4),
                                 pad_slot_id=1.5),
    lambda: _mamba1_update(torch.zeros(POOL, 6, 4), torch.tensor([0, 1, 2]), pad_slot_id=True),
])
def test_pad_slot_id_must_be_an_int(call):
    with pytest.raises(TypeError, match="pad_slot_id must be an int"):
        call()


def test_delta_rule_two_pass_tiles_skip_padding_too():
    """K in several BK tiles reads the state twice (prediction, then update): both passes
    are masked for a padding slot."""
    from seqtune.kernels import delta_rule_step

    generator = torch.Generator().manual_seed(9)
    q, k = (torch.nn.functional.normalize(torch.randn(3, 1, 48, generator=generator), dim=-1)
            for _ in range(2))
    v, beta = torch.randn(3, 1, 24, generator=generator), torch.rand(3, 1, generator=generator)
    q[1] = float("nan")
    before = torch.randn(POOL, 1, 48, 24, generator=generator)
    pool, reference_pool = before.clone(), before.clone()
    out = delta_rule_step(q, k, v, beta, state=pool, state_indices=ROWS,
                          config={"BK": 16, "BV": 16})
    expected = delta_rule_step(q[LIVE], k[LIVE], v[LIVE], beta[LIVE], state=reference_pool,
                               state_indices=ROWS[LIVE], config={"BK": 16, "BV": 16})
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    torch.testing.assert_close(out[LIVE], expected, rtol=0, atol=0)
    torch.testing.assert_close(pool, reference_pool, rtol=0, atol=0)
