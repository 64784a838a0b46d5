"""Widths 5..8 of causal_conv1d, its backward, its decode step and the causal-conv1d entry
points (lfm3's short convolution is 7 wide), against the float64 F.conv1d reference.

Tolerances as in test_causal_conv1d.py: fp32 sums at most W + 1 = 9 fp32 terms (a few ulp);
bf16 reads the same rounded inputs as the reference, so the error is the output's rounding
(half an ulp, 2^-8 relative), allowed ~2x; states are copies, exact. dweight and dbias sum over
every token in fp32 before one rounding.
"""
import pytest
import torch

from seqtune.compat.causal_conv1d import causal_conv1d_fn, causal_conv1d_update
from seqtune.kernels import causal_conv1d, causal_conv1d_step
from seqtune.kernels.causal_conv1d.reference import reference_conv

TOL = {torch.float32: {"atol": 1e-5, "rtol": 1e-5}, torch.bfloat16: {"atol": 1e-3, "rtol": 8e-3}}
GRAD_TOL = {torch.float32: {"atol": 1e-4, "rtol": 1e-4},
            torch.bfloat16: {"atol": 2e-3, "rtol": 8e-3}}
SMALL_TILES = {"BT": 16, "BD": 16, "num_warps": 1, "num_stages": 1}
PACKED = [3, 0, 1, 11, 2, 9]  # sequences shorter than W - 1, an empty one, tiles spanning several


def make(B, T, D, W, dtype, *, N=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, D, generator=g).to(dtype)
    weight = ((torch.rand(D, W, generator=g) - 0.5) * 2 * W ** -0.5).to(dtype)
    bias = torch.randn(D, generator=g).to(dtype)
    state = torch.randn(N or B, D, W - 1, generator=g).to(dtype)
    return x, weight, bias, state


def cu(lengths):
    return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)


def assert_close(got, want, dtype, tol=TOL):
    torch.testing.assert_close(got.double(), want.double(), **tol[dtype])


@pytest.mark.parametrize("W", [5, 7, 8])
@pytest.mark.parametrize("dtype, config", [(torch.float32, SMALL_TILES), (torch.bfloat16, None)])
def test_wide_forward_and_final_state_match_the_reference(W, dtype, config):
    x, weight, bias, state = make(2, 37, 21, W, dtype)
    y, final = causal_conv1d(x, weight, bias, activation="silu", initial_state=state,
                             output_final_state=True, config=config)
    want_y, want_final = reference_conv(x, weight, bias, state, None, True)
    assert_close(y, want_y, dtype)
    torch.testing.assert_close(final.double(), want_final, atol=0, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_wide_packed_sequences_match_the_reference(dtype):
    bounds = cu(PACKED)
    x, weight, bias, state = make(1, sum(PACKED), 13, 7, dtype, N=len(PACKED))
    y, final = causal_conv1d(x, weight, bias, activation="silu", initial_state=state,
                             output_final_state=True, cu_seqlens=bounds, config=SMALL_TILES)
    want_y, want_final = reference_conv(x, weight, bias, state, bounds, True)
    assert_close(y, want_y, dtype)
    torch.testing.assert_close(final.double(), want_final, atol=0, rtol=0)


@pytest.mark.parametrize("W, varlen, dtype", [
    (5, False, torch.float32), (7, True, torch.float32), (8, False, torch.bfloat16),
    (7, True, torch.bfloat16)])
def test_wide_gradients_of_every_input(W, varlen, dtype):
    bounds = cu(PACKED) if varlen else None
    shape = (1, sum(PACKED)) if varlen else (2, 19)
    leaves = make(*shape, 11, W, dtype, N=len(PACKED) if varlen else None)
    g = torch.Generator().manual_seed(3)
    dy = torch.randn(shape + (11,), generator=g).to(dtype)
    dfinal = torch.randn(leaves[3].shape, generator=g).to(dtype)
    mine = [t.clone().requires_grad_() for t in leaves]
    y, final = causal_conv1d(*mine[:3], activation="silu", initial_state=mine[3],
                             output_final_state=True, cu_seqlens=bounds, bwd_config=SMALL_TILES)
    got = torch.autograd.grad([y, final], mine, [dy, dfinal])
    ref = [t.detach().double().requires_grad_() for t in leaves]
    want_y, want_final = reference_conv(*ref[:3], ref[3], bounds, True)
    want = torch.autograd.grad([want_y, want_final], ref, [dy.double(), dfinal.double()])
    for name, have, expected in zip(("dx", "dweight", "dbias", "dstate"), got, want):
        assert have.dtype == dtype, name
        assert_close(have, expected, dtype, GRAD_TOL)


@pytest.mark.parametrize("W, dtype", [(5, torch.float32), (7, torch.bfloat16),
                                      (8, torch.float32)])
def test_wide_steps_token_by_token_equal_the_whole_sequence(W, dtype):
    B, T, D = 3, 9, 13
    x, weight, bias, state = make(B, T, D, W, dtype)
    want_y, want_final = reference_conv(x, weight, bias, state, None, True)
    pool = torch.randn(B + 2, D, W - 1).to(dtype)
    indices = torch.tensor([4, 0, 2], dtype=torch.int32)
    pool[indices.long()] = state
    for t in range(T):
        y_t = causal_conv1d_step(x[:, t], weight, bias, activation="silu", state=pool,
                                 state_indices=indices, config={"BD": 32, "num_warps": 1})
        assert_close(y_t, want_y[:, t], dtype)
    torch.testing.assert_close(pool[indices.long()].double(), want_final, atol=0, rtol=0)


def test_compat_entry_points_take_width_7():
    x, weight, bias, state = make(2, 15, 9, 7, torch.float32)
    out, final = causal_conv1d_fn(x.transpose(1, 2), weight, bias, initial_states=state,
                                  return_final_states=True, activation="silu")
    want_y, want_final = reference_conv(x, weight, bias, state, None, True)
    assert_close(out, want_y.transpose(1, 2), torch.float32)
    torch.testing.assert_close(final.double(), want_final, atol=0, rtol=0)
    conv_state = want_final.float().clone()  # [B, D, W - 1]: the step kernel's path
    token = torch.randn(2, 9, generator=torch.Generator().manual_seed(5))
    stepped = causal_conv1d_update(token, conv_state, weight, bias, activation="silu")
    follow = torch.cat([x, token[:, None]], dim=1)
    assert_close(stepped, reference_conv(follow, weight, bias, state, None, True)[0][:, -1],
                 torch.float32)
    torch.testing.assert_close(conv_state, follow[:, -6:].transpose(1, 2), atol=0, rtol=0)
