"""causal_conv1d, its backward and its decode step against a float64 F.conv1d reference.

Tolerances: fp32 computes at most W + 1 fp32 terms (a few ulp of |y| <= ~5); half types read
the same rounded inputs as the reference, so the error is the output's rounding (bf16: half
an ulp, 2^-8 relative), allowed ~2x; states are copies, exact. Gradients of weight and bias sum
over every token in fp32 before one rounding.
"""
import pytest
import torch

from seqtune.kernels import causal_conv1d, causal_conv1d_step
from seqtune.kernels.causal_conv1d.reference import reference_conv
from seqtune.registry import all_specs
from seqtune.spec import INTERPRETER_LIMITS

TOL = {torch.float32: {"atol": 1e-5, "rtol": 1e-5}, torch.bfloat16: {"atol": 1e-3, "rtol": 8e-3}}
GRAD_TOL = {torch.float32: {"atol": 1e-4, "rtol": 1e-4},
            torch.bfloat16: {"atol": 2e-3, "rtol": 8e-3}}
SMALL_TILES = {"BT": 16, "BD": 16, "num_warps": 1, "num_stages": 1}


def make(B, T, D, W, dtype, *, bias=True, state=False, N=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, D, generator=g).to(dtype)
    weight = (torch.rand(D, W, generator=g) - 0.5).to(dtype)
    b = torch.randn(D, generator=g).to(dtype) if bias else None
    h = torch.randn(N or B, D, W - 1, generator=g).to(dtype) if state else None
    return x, weight, b, h


def assert_close(got, want, dtype, tol=TOL):
    torch.testing.assert_close(got.double(), want.double(), **tol[dtype])


def cu(lengths):
    return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)


@pytest.mark.parametrize("W, bias, silu, state, dtype", [
    (2, True, True, True, torch.float32),
    (3, False, False, False, torch.bfloat16),
    (4, True, True, True, torch.bfloat16),
    (4, False, True, False, torch.float32),
])
@pytest.mark.parametrize("config", [None, SMALL_TILES], ids=["default", "small-tiles"])
def test_forward_matches_conv1d(W, bias, silu, state, dtype, config):
    x, weight, b, h = make(2, 37, 20, W, dtype, bias=bias, state=state)
    activation = "silu" if silu else None
    y, final = causal_conv1d(x, weight, b, activation=activation, initial_state=h,
                             output_final_state=True, config=config)
    ref_y, ref_final = reference_conv(x, weight, b, h, None, silu)
    assert y.dtype == dtype and final.dtype == dtype
    assert_close(y, ref_y, dtype)
    torch.testing.assert_close(final.double(), ref_final, atol=0, rtol=0)
    only_y, none = causal_conv1d(x, weight, b, activation=activation, initial_state=h,
                                 config=config)
    assert none is None and torch.equal(only_y, y)


def test_swish_is_silu_and_short_row_final_state_reaches_into_initial_state():
    x, weight, b, h = make(2, 1, 6, 4, torch.float32, state=True)
    y, final = causal_conv1d(x, weight, b, activation="swish", initial_state=h,
                             output_final_state=True)
    ref_y, _ = reference_conv(x, weight, b, h, None, True)
    assert_close(y, ref_y, torch.float32)
    expected = torch.cat([h[:, :, 1:], x.transpose(1, 2)], dim=2)
    assert torch.equal(final, expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_sequences_equal_each_sequence_alone(dtype):
    lengths = [7, 0, 1, 13, 2, 0, 20]  # tiles of 16 span several sequences
    bounds = cu(lengths)
    x, weight, b, h = make(1, sum(lengths), 12, 4, dtype, state=True, N=len(lengths))
    y, final = causal_conv1d(x, weight, b, activation="silu", initial_state=h,
                             output_final_state=True, cu_seqlens=bounds, config=SMALL_TILES)
    for n, (start, end) in enumerate(zip(bounds.tolist(), bounds[1:].tolist())):
        alone_y, alone_final = causal_conv1d(x[:, start:end], weight, b, activation="silu",
                                             initial_state=h[n:n + 1], output_final_state=True)
        torch.testing.assert_close(y[:, start:end], alone_y, atol=0, rtol=0)
        assert torch.equal(final[n], alone_final[0])
    ref_y, ref_final = reference_conv(x, weight, b, h, bounds, True)
    assert_close(y, ref_y, dtype)
    assert torch.equal(final.double(), ref_final)


def test_packed_sequences_without_initial_state_start_from_zeros():
    lengths = [1, 0, 5, 3]
    x, weight, b, _ = make(1, 9, 5, 3, torch.float32)
    y, final = causal_conv1d(x, weight, b, output_final_state=True,
                             cu_seqlens=cu(lengths).long())
    ref_y, ref_final = reference_conv(x, weight, b, None, cu(lengths), False)
    assert_close(y, ref_y, torch.float32)
    assert torch.equal(final.double(), ref_final)
    assert torch.equal(final[1], torch.zeros(5, 2))  # the empty sequence's state: zeros


@pytest.mark.parametrize("W", [2, 3, 4])
def test_steps_token_by_token_equal_the_whole_sequence(W):
    B, T, D = 3, 7, 21
    x, weight, b, h = make(B, T, D, W, torch.float32, state=True)
    y, final = causal_conv1d(x, weight, b, activation="silu", initial_state=h,
                             output_final_state=True)
    pool = torch.randn(B + 4, D, W - 1)
    indices = torch.randperm(B + 4, generator=torch.Generator().manual_seed(1))[:B]
    pool[indices] = h
    untouched = pool.clone()
    for t in range(T):
        y_t = causal_conv1d_step(x[:, t], weight, b, activation="silu", state=pool,
                                 state_indices=indices.int(), config={"BD": 32, "num_warps": 1})
        assert_close(y_t, y[:, t], torch.float32)
    assert torch.equal(pool[indices], final)
    others = torch.ones(B + 4, dtype=torch.bool)
    others[indices] = False
    assert torch.equal(pool[others], untouched[others])


def test_step_without_indices_and_padding_slot():
    x, weight, b, h = make(2, 1, 9, 3, torch.bfloat16, state=True)
    state = h.clone()
    y = causal_conv1d_step(x[:, 0], weight, b, state=state)
    ref_y, ref_final = reference_conv(x, weight, b, h, None, False)
    assert_close(y, ref_y[:, 0], torch.bfloat16)
    assert torch.equal(state.double(), ref_final)
    pool = h.clone()
    y = causal_conv1d_step(x[:, 0], weight, b, state=pool,
                           state_indices=torch.tensor([-1, 0], dtype=torch.int64))
    assert torch.equal(y[0], torch.zeros(9, dtype=torch.bfloat16))
    assert torch.equal(pool[1], h[1])  # no batch element owns row 1
    assert torch.equal(pool[0], torch.cat([h[0, :, 1:], x[1, 0, :, None]], dim=1))


def grads_of(x, weight, b, h, bounds, silu, run, dy, dfinal):
    leaves = [t for t in (x, weight, b, h) if t is not None and t.requires_grad]
    y, final = run(x, weight, b, h, bounds, silu)
    return torch.autograd.grad([y, final], leaves, [dy, dfinal])


@pytest.mark.parametrize("W, varlen, dtype", [
    (4, False, torch.float32), (3, True, torch.float32), (2, False, torch.bfloat16),
    (4, True, torch.bfloat16)])
def test_gradients_of_every_input(W, varlen, dtype):
    lengths = [5, 0, 1, 9, 2]
    bounds = cu(lengths) if varlen else None
    shape = (1, sum(lengths)) if varlen else (2, 13)
    x, weight, b, h = make(*shape, 10, W, dtype, state=True,
                           N=len(lengths) if varlen else None)
    for t in (x, weight, b, h):
        t.requires_grad_()
    g = torch.Generator().manual_seed(3)
    dy = torch.randn(x.shape, generator=g).to(dtype)
    dfinal = torch.randn(h.shape, generator=g).to(dtype)

    def mine(*args):
        return causal_conv1d(*args[:3], activation="silu", initial_state=args[3],
                             output_final_state=True, cu_seqlens=args[4],
                             bwd_config=SMALL_TILES)

    got = grads_of(x, weight, b, h, bounds, True, mine, dy, dfinal)
    leaves64 = [t.detach().double().requires_grad_() for t in (x, weight, b, h)]
    want = grads_of(*leaves64, bounds, True, reference_conv, dy.double(), dfinal.double())
    for name, have, expected, leaf in zip(("dx", "dweight", "dbias", "dstate"), got, want,
                                          (x, weight, b, h)):
        assert have.dtype == leaf.dtype, name
        assert_close(have, expected, dtype, GRAD_TOL)


def test_only_inputs_that_require_grad_get_one():
    x, weight, b, h = make(2, 9, 6, 3, torch.float32, state=True)
    weight.requires_grad_()
    y, final = causal_conv1d(x, weight, b, activation="silu", initial_state=h,
                             output_final_state=True)
    y.sum().backward()  # the final state is unused: no gradient reaches it
    ref_w = weight.detach().double().requires_grad_()
    ref_y, _ = reference_conv(x, ref_w, b, h, None, True)
    ref_y.sum().backward()
    assert_close(weight.grad, ref_w.grad, torch.float32, GRAD_TOL)
    assert all(t.grad is None for t in (x, b, h))
    with torch.no_grad():
        y, _ = causal_conv1d(x, weight, b)
    assert y.grad_fn is None


def test_strided_views_give_the_contiguous_answer():
    x, weight, b, h = make(2, 23, 10, 4, torch.float32, state=True)
    dense = causal_conv1d(x, weight, b, activation="silu", initial_state=h,
                          output_final_state=True)
    x_view = x.transpose(1, 2).contiguous().transpose(1, 2)  # [B, D, T] memory, as Mamba's
    weight_view = weight.t().contiguous().t()
    b_view = torch.stack([b, b], dim=1)[:, 0]
    h_view = h.permute(2, 0, 1).contiguous().permute(1, 2, 0)
    strided = causal_conv1d(x_view, weight_view, b_view, activation="silu",
                            initial_state=h_view, output_final_state=True)
    for want, got in zip(dense, strided):
        assert torch.equal(got, want)
    leaves = [t.clone().requires_grad_() for t in (x, weight, b, h)]
    views = [x_view, weight_view, b_view, h_view]
    views = [v.clone().requires_grad_() for v in views]  # clones keep the strides
    dy = torch.randn(2, 23, 10).transpose(0, 1).contiguous().transpose(0, 1)
    grads = []
    for args in (leaves, views):
        y, final = causal_conv1d(args[0], args[1], args[2], activation="silu",
                                 initial_state=args[3], output_final_state=True)
        grads.append(torch.autograd.grad([y, final], args, [dy, torch.ones_like(final)]))
    for want, got in zip(*grads):
        assert torch.equal(got, want)


X = torch.zeros(1, 5, 4)
W4 = torch.zeros(4, 4)


@pytest.mark.parametrize("kwargs, error, message", [
    ({"weight": torch.zeros(4, 9)}, ValueError, "W in 2..8"),
    ({"weight": torch.zeros(4, 1)}, ValueError, "W in 2..8"),
    ({"weight": torch.zeros(3, 4)}, ValueError, "weight must have shape"),
    ({"bias": torch.zeros(5)}, ValueError, "bias must have shape"),
    ({"activation": "relu"}, ValueError, "activation"),
    ({"x": torch.zeros(5, 4)}, ValueError, "x must have 3 dimensions"),
    ({"x": torch.zeros(1, 5, 4, dtype=torch.int32)}, TypeError, "x has dtype int32"),
    ({"initial_state": torch.zeros(1, 4, 2)}, ValueError, "initial_state must have shape"),
    ({"cu_seqlens": torch.tensor([0, 2, 5], dtype=torch.float32)}, ValueError, "int32 or int64"),
    ({"cu_seqlens": torch.tensor([0, 3, 2, 5])}, ValueError, "not decrease"),
    ({"cu_seqlens": torch.tensor([0, 2, 4])}, ValueError, "end at T=5"),
    ({"cu_seqlens": torch.tensor([1, 5])}, ValueError, "start at 0"),
    ({"x": torch.zeros(2, 5, 4), "cu_seqlens": torch.tensor([0, 5])}, ValueError, "batch 1"),
    ({"cu_seqlens": torch.tensor([0, 2, 5]), "initial_state": torch.zeros(1, 4, 3)}, ValueError,
     r"initial_state must have shape \(2, 4, 3\)"),
    ({"config": {"BT": 3}}, ValueError, "BT=3"),
])
def test_bad_arguments_raise_one_line_errors(kwargs, error, message):
    args = {"x": X, "weight": W4, **kwargs}
    x, weight = args.pop("x"), args.pop("weight")
    with pytest.raises(error, match=message) as raised:
        causal_conv1d(x, weight, **args)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("kwargs, error, message", [
    ({"state": torch.zeros(2, 4, 2)}, ValueError, r"state must have shape \(2, 4, 3\)"),
    ({"state": torch.zeros(3, 4, 3), "state_indices": torch.tensor([0, 3])}, ValueError,
     "must be < N=3"),
    ({"state": torch.zeros(3, 4, 3), "state_indices": torch.tensor([0.0, 1.0])}, ValueError,
     "int32 or int64"),
    ({"state": torch.zeros(3, 4, 3), "state_indices": torch.tensor([0])}, ValueError,
     "state_indices must have shape"),
    ({"state": torch.zeros(2, 4, 8), "weight": torch.zeros(4, 9)}, ValueError, "W in 2..8"),
])
def test_step_bad_arguments_raise_one_line_errors(kwargs, error, message):
    weight = kwargs.pop("weight", W4)
    with pytest.raises(error, match=message) as raised:
        causal_conv1d_step(torch.zeros(2, 4), weight, **kwargs)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("kernel", ["causal_conv1d", "causal_conv1d_bwd", "causal_conv1d_step"])
def test_spec_verify_cases_agree_with_the_reference(kernel):
    from seqtune.agreement import check_case

    spec = all_specs()[kernel]
    smallest = {k: min(v) for k, v in spec.space.items()}
    for problem in spec.verify_cases:
        for config in (spec.default_for(problem, INTERPRETER_LIMITS),
                       {**smallest, "num_warps": 1}):
            agreement = check_case(spec, problem, config)
            assert agreement.ok, (problem, config, agreement.detail)


# seqtune.compat.causal_conv1d, against causal-conv1d's semantics written out in float64.
def reference_fn(x, weight, bias, seq_idx, silu):
    """Tap j of token t reads token t - (W - 1) + j when it exists and has t's sequence id;
    tokens with a negative id output zero (causal-conv1d's seq_idx rule)."""
    x, weight = x.double(), weight.double()
    length, width = x.shape[2], weight.shape[1]
    out = torch.zeros_like(x) + (bias.double()[:, None] if bias is not None else 0)
    for j in range(width):
        shift = width - 1 - j
        source = torch.nn.functional.pad(x, (shift, 0))[:, :, :length]
        ids = torch.nn.functional.pad(seq_idx, (shift, 0), value=-1)[:, :length]
        out = out + weight[:, j, None] * source * (ids == seq_idx)[:, None, :]
    out = torch.nn.functional.silu(out) if silu else out
    return out * (seq_idx >= 0)[:, None, :]


def reference_update(tokens, conv_state, weight, bias, silu, cache_seqlens):
    """causal-conv1d's update on a [B, D, state_len] state (one row per batch element)."""
    tokens, conv_state, weight = tokens.double(), conv_state.double(), weight.double()
    (_, channels, length), state_len = tokens.shape, conv_state.shape[2]
    width = weight.shape[1]
    if cache_seqlens is None:
        stream = torch.cat([conv_state, tokens], dim=2)
        new_state = stream[:, :, -state_len:]
    else:
        before = (torch.arange(-(width - 1), 0) + cache_seqlens[:, None].long()) % state_len
        stream = torch.cat([conv_state.gather(2, before[:, None].expand(-1, channels, -1)),
                            tokens], dim=2)
        slots = (torch.arange(length) + cache_seqlens[:, None].long()) % state_len
        new_state = conv_state.scatter(2, slots[:, None].expand(-1, channels, -1), tokens)
    out = torch.nn.functional.conv1d(stream, weight[:, None], bias.double(),
                                     groups=channels)[:, :, -length:]
    return (torch.nn.functional.silu(out) if silu else out), new_state


def test_compat_fn_matches_conv1d_with_states_and_layouts():
    from seqtune.compat.causal_conv1d import causal_conv1d_fn

    x, weight, b, h = make(2, 19, 12, 4, torch.float32, state=True)
    channel_first = x.transpose(1, 2).contiguous().requires_grad_()
    written = torch.empty(2, 12, 3)
    out, final = causal_conv1d_fn(channel_first, weight, b, initial_states=h,
                                  return_final_states=True, final_states_out=written,
                                  activation="silu")
    ref_y, ref_final = reference_conv(x, weight, b, h, None, True)
    assert out.is_contiguous() and out.shape == (2, 12, 19) and final is written
    assert_close(out, ref_y.transpose(1, 2), torch.float32)
    assert torch.equal(final.double(), ref_final)
    out.sum().backward()
    ref_x = x.double().requires_grad_()
    reference_conv(ref_x, weight, b, h, None, True)[0].sum().backward()
    assert_close(channel_first.grad, ref_x.grad.transpose(1, 2), torch.float32, GRAD_TOL)
    channel_last = causal_conv1d_fn(x.transpose(1, 2), weight, b)
    assert channel_last.stride(1) == 1
    assert_close(channel_last, reference_conv(x, weight, b, None, None, False)[0].transpose(1, 2),
                 torch.float32)


def test_compat_fn_seq_idx_keeps_sequences_apart_and_zeroes_padding():
    from seqtune.compat.causal_conv1d import causal_conv1d_fn

    x, weight, b, _ = make(2, 13, 6, 3, torch.bfloat16)
    seq_idx = torch.tensor([[0] * 5 + [1] + [2] * 7, [3] * 4 + [4] * 6 + [-1] * 3],
                           dtype=torch.int32)
    out = causal_conv1d_fn(x.transpose(1, 2), weight, b, seq_idx=seq_idx, activation="swish")
    assert_close(out, reference_fn(x.transpose(1, 2), weight, b, seq_idx, True), torch.bfloat16)
    assert torch.equal(out[1, :, 10:], torch.zeros(6, 3, dtype=torch.bfloat16))
    with pytest.raises(NotImplementedError, match="seq_idx"):
        causal_conv1d_fn(x.transpose(1, 2), weight, b,
                         seq_idx=torch.tensor([[0] * 6 + [1] * 3 + [0] * 4] * 2))
    with pytest.raises(ValueError, match="initial_states must be None"):
        causal_conv1d_fn(x.transpose(1, 2), weight, seq_idx=seq_idx,
                         initial_states=torch.zeros(2, 6, 2, dtype=torch.bfloat16))
    with pytest.raises(NotImplementedError, match="activation"):
        causal_conv1d_fn(x.transpose(1, 2), weight, activation="relu")


@pytest.mark.parametrize("length, extra, circular", [
    (None, 0, False),  # [B, D] x, state_len == W - 1: the step kernel
    (3, 2, False),  # several tokens, a longer state
    (2, 3, True),  # cache_seqlens: a circular buffer
])
def test_compat_update_follows_causal_conv1d(length, extra, circular):
    from seqtune.compat.causal_conv1d import causal_conv1d_update

    B, D, W = 3, 10, 4
    x, weight, b, _ = make(B, length or 1, D, W, torch.float32)
    tokens = x.transpose(1, 2).contiguous()  # [B, D, L]
    state_len = W - 1 + extra
    pool = torch.randn(B + 2, D, state_len)
    indices = torch.tensor([4, -1, 1], dtype=torch.int32)  # element 1 is a padding slot
    cache_seqlens = torch.tensor([5, 0, 13], dtype=torch.int32) if circular else None
    before = pool.clone()
    out = causal_conv1d_update(tokens if length else tokens[:, :, 0], pool, weight, b,
                               activation="silu", cache_seqlens=cache_seqlens,
                               conv_state_indices=indices)
    rows = indices.long().clamp(min=0)
    ref_out, ref_state = reference_update(tokens, before[rows], weight, b, True, cache_seqlens)
    ref_out = ref_out if length else ref_out[:, :, 0]
    assert out.shape == (ref_out.shape if length else (B, D))
    for i, row in enumerate(indices.tolist()):
        if row < 0:
            assert torch.equal(out[i], torch.zeros_like(out[i]))
            continue
        assert_close(out[i], ref_out[i], torch.float32)
        assert torch.equal(pool[row].double(), ref_state[i])
    for row in (0, 2, 3):  # rows owned by nobody
        assert torch.equal(pool[row], before[row])
