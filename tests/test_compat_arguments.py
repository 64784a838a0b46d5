"""seqtune.compat's argument conventions, as the originals have them: fla's mixed input dtypes,
its DeprecationWarning for ``transpose_state_layout`` and ValueError for an unsupported
``chunk_size``; and a one-line ValueError naming the argument and the shape expected for every
wrong-shaped gate, beta or gate parameter of every compat entry point that takes one."""
from __future__ import annotations

import warnings

import pytest
import torch
from test_compat_fla import make_inputs, reference

from seqtune.compat import fla, mamba_ssm


def test_mixed_input_dtypes_are_cast_as_fla_does():
    """q and k float32, v float16 (fla accepts them): o in v's dtype, matching float64 at
    float16's tolerance, each gradient in its input's dtype."""
    a = make_inputs(torch.float32, batch=1, length=13, seed=21)
    q, k = (a[n].clone().requires_grad_() for n in ("q", "k"))
    v = a["v"].half().requires_grad_()
    out, final = fla.chunk_gated_delta_rule(q, k, v, a["g"], a["beta"], initial_state=a["h0"],
                                            output_final_state=True)
    expected, expected_final = reference(q.detach(), k.detach(), v.detach(), a["beta"],
                                         a["g"], a["h0"])
    assert out.dtype == torch.float16 and final.dtype == torch.float32
    torch.testing.assert_close(out.double(), expected, atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(final.double(), expected_final, atol=1e-3, rtol=1e-3)
    out.float().sum().backward()
    assert (q.grad.dtype, k.grad.dtype, v.grad.dtype) == (torch.float32, torch.float32,
                                                          torch.float16)


def test_mixed_input_dtypes_decode_on_the_step_kernel():
    """One token per sequence (the step kernel), q and k float32, v bfloat16: o in bfloat16,
    equal to the float32 call's output rounded."""
    a = make_inputs(torch.float32, length=1, seed=28)
    out, final = fla.fused_recurrent_gated_delta_rule(
        a["q"], a["k"], a["v"].bfloat16(), a["g"], beta=a["beta"], initial_state=a["h0"],
        output_final_state=True)
    want, want_final = fla.fused_recurrent_gated_delta_rule(
        a["q"], a["k"], a["v"].bfloat16().float(), a["g"], beta=a["beta"],
        initial_state=a["h0"], output_final_state=True)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, want.bfloat16())
    torch.testing.assert_close(final, want_final)


def test_mixed_gate_dtype_is_accepted():
    """A float16 gate beside bfloat16 inputs (neither their dtype nor float32) runs in
    float32: the result equals the one with the same gate values given in float32."""
    a = make_inputs(torch.bfloat16, batch=1, length=9, seed=22)
    gate = a["g"].half()
    out, _ = fla.chunk_simple_gla(a["q"], a["k"], a["v"], gate)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, fla.chunk_simple_gla(a["q"], a["k"], a["v"],
                                                         gate.float())[0])


def test_transpose_state_layout_warns_and_acts_as_state_v_first():
    a = make_inputs(torch.float32, batch=1, length=5, seed=23)
    with pytest.warns(DeprecationWarning, match="transpose_state_layout") as caught:
        out, final = fla.chunk_gated_delta_rule(a["q"], a["k"], a["v"], a["g"], a["beta"],
                                                initial_state=a["h0"].mT,
                                                output_final_state=True,
                                                transpose_state_layout=True)
    assert caught[0].filename == __file__  # points at the caller, as fla's stacklevel=2
    expected, expected_final = reference(a["q"], a["k"], a["v"], a["beta"], a["g"], a["h0"])
    torch.testing.assert_close(out.double(), expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(final.mT.double(), expected_final, atol=1e-4, rtol=1e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # state_v_first itself does not warn
        fla.chunk_gated_delta_rule(a["q"], a["k"], a["v"], a["g"], a["beta"],
                                   state_v_first=True)


@pytest.mark.parametrize("call, chunk_size, accepted", [
    (lambda a, c: fla.chunk_gated_delta_rule(*_qkv(a), a["g"], a["beta"], chunk_size=c), 48,
     (16, 32, 64)),
    (lambda a, c: fla.chunk_delta_rule(*_qkv(a), a["beta"], chunk_size=c), 128, (16, 32, 64)),
    (lambda a, c: fla.chunk_kda(*_qkv(a), a["gk"], a["beta"], chunk_size=c), 16, (32, 64)),
    (lambda a, c: fla.chunk_simple_gla(*_qkv(a), a["g"], chunk_size=c), 48, (16, 128)),
])
def test_unsupported_chunk_size_is_a_value_error(call, chunk_size, accepted):
    """fla's rule per op (gated delta rule and delta rule 16/32/64, KDA 32/64, simple GLA a
    power of 2); the sizes it accepts remain requests that change nothing."""
    a = make_inputs(torch.float32, batch=1, length=5, seed=24)
    with pytest.raises(ValueError, match=f"chunk_size .*{chunk_size}") as raised:
        call(a, chunk_size)
    assert "\n" not in str(raised.value)
    baseline = call(a, None)[0]
    for size in accepted:
        torch.testing.assert_close(call(a, size)[0], baseline)


def _qkv(a):
    return a["q"], a["k"], a["v"]


# B=2, T=5, H=1, HV=2, K=16 (make_inputs): each call gets one gate-like argument of the wrong
# shape; the error names it and the shape fla expects.
_A = make_inputs(torch.float32, length=5)
_STEP, _CHANNEL = _A["g"], _A["gk"]
WRONG_GATES = {
    "fused_recurrent_gated_delta_rule beta as gk": (
        lambda a: fla.fused_recurrent_gated_delta_rule(*_qkv(a), a["g"], a["beta"]),
        "gk must have shape [B, T, HV, K] = (2, 5, 2, 16), got (2, 5, 2)"),
    "fused_recurrent_gated_delta_rule g": (
        lambda a: fla.fused_recurrent_gated_delta_rule(*_qkv(a), g=a["gk"], beta=a["beta"]),
        "g must have shape [B, T, HV] = (2, 5, 2)"),
    "fused_recurrent_gated_delta_rule dt_bias": (
        lambda a: fla.fused_recurrent_gated_delta_rule(
            *_qkv(a), a["g"], beta=a["beta"], use_gate_in_kernel=True, A_log=a["A_log"],
            dt_bias=a["dt_bias"]), "dt_bias must have shape [HV] = (2,)"),
    "chunk_gated_delta_rule g": (
        lambda a: fla.chunk_gated_delta_rule(*_qkv(a), a["g"][:, :4], a["beta"]),
        "g must have shape [B, T, HV] = (2, 5, 2), got (2, 4, 2)"),
    "chunk_gated_delta_rule beta": (
        lambda a: fla.chunk_gated_delta_rule(*_qkv(a), a["g"], a["beta"][..., :1]),
        "beta must have shape [B, T, HV] = (2, 5, 2), got (2, 5, 1)"),
    "chunk_gated_delta_rule A_log": (
        lambda a: fla.chunk_gated_delta_rule(*_qkv(a), a["g"], a["beta"],
                                             use_gate_in_kernel=True, A_log=a["dt_bias"]),
        "A_log must have shape [HV] = (2,), got (32,)"),
    "chunk_kda g": (
        lambda a: fla.chunk_kda(*_qkv(a), a["g"], a["beta"]),
        "g must have shape [B, T, HV, K] = (2, 5, 2, 16), got (2, 5, 2)"),
    "chunk_kda dt_bias": (
        lambda a: fla.chunk_kda(*_qkv(a), a["raw"], a["beta"], use_gate_in_kernel=True,
                                A_log=a["A_log"], dt_bias=a["A_log"]),
        "dt_bias must have shape [HV*K] = (32,), got (2,)"),
    "fused_recurrent_kda beta": (
        lambda a: fla.fused_recurrent_kda(*_qkv(a), a["gk"], a["g"][0]),
        "beta must have shape [B, T, HV] = (2, 5, 2), got (5, 2)"),
    "fused_recurrent_kda A_log": (
        lambda a: fla.fused_recurrent_kda(*_qkv(a), a["raw"], a["beta"], a["beta"],
                                          use_gate_in_kernel=True),
        "A_log must have shape [HV] = (2,)"),
    "chunk_delta_rule beta": (
        lambda a: fla.chunk_delta_rule(*_qkv(a), a["gk"][..., 0, 0]),
        "beta must have shape [B, T, HV] = (2, 5, 2), got (2, 5)"),
    "fused_recurrent_delta_rule beta": (
        lambda a: fla.fused_recurrent_delta_rule(*_qkv(a), a["beta"].mT),
        "beta must have shape [B, T, HV] = (2, 5, 2), got (2, 2, 5)"),
    "chunk_gla g": (
        lambda a: fla.chunk_gla(*_qkv(a), a["g"]),
        "g must have shape [B, T, HV, K] = (2, 5, 2, 16), got (2, 5, 2)"),
    "fused_recurrent_gla gk": (
        lambda a: fla.fused_recurrent_gla(*_qkv(a), a["g"]),
        "gk must have shape [B, T, HV, K]"),
    "chunk_simple_gla g": (
        lambda a: fla.chunk_simple_gla(*_qkv(a), a["gk"]),
        "g must have shape [B, T, HV] = (2, 5, 2), got (2, 5, 2, 16)"),
    "chunk_simple_gla g_gamma": (
        lambda a: fla.chunk_simple_gla(*_qkv(a), g_gamma=a["dt_bias"]),
        "g_gamma must have shape [HV] = (2,), got (32,)"),
    "fused_recurrent_simple_gla g": (
        lambda a: fla.fused_recurrent_simple_gla(*_qkv(a), a["g"][:1]),
        "g must have shape [B, T, HV] = (2, 5, 2), got (1, 5, 2)"),
    "fused_recurrent_simple_gla g_gamma": (
        lambda a: fla.fused_recurrent_simple_gla(*_qkv(a), g_gamma=a["g"]),
        "g_gamma must have shape [HV] = (2,)"),
}


@pytest.mark.parametrize("case", sorted(WRONG_GATES))
def test_wrong_shaped_fla_gate_is_a_one_line_value_error(case):
    call, message = WRONG_GATES[case]
    with pytest.raises(ValueError) as raised:
        call(make_inputs(torch.float32, length=5))
    text = str(raised.value)
    assert message in text and text.startswith(case.split()[0] + ": ") and "\n" not in text


def test_a_gate_that_is_not_a_tensor_is_a_type_error():
    a = make_inputs(torch.float32, length=5)
    with pytest.raises(TypeError, match="chunk_gated_delta_rule: beta must be a torch.Tensor"):
        fla.chunk_gated_delta_rule(*_qkv(a), a["g"], 0.5)


def _ssd_inputs():
    generator = torch.Generator().manual_seed(25)
    batch, length, heads, headdim, state = 1, 7, 2, 16, 16
    return {"x": torch.randn(batch, length, heads, headdim, generator=generator),
            "dt": torch.rand(batch, length, heads, generator=generator),
            "A": -torch.rand(heads, generator=generator),
            "B": torch.randn(batch, length, 1, state, generator=generator),
            "C": torch.randn(batch, length, 1, state, generator=generator)}


def _scan_inputs():
    generator = torch.Generator().manual_seed(26)
    batch, channels, state, length = 2, 4, 8, 5
    return {"u": torch.randn(batch, channels, length, generator=generator),
            "delta": torch.rand(batch, channels, length, generator=generator),
            "A": -torch.rand(channels, state, generator=generator),
            "B": torch.randn(batch, state, length, generator=generator),
            "C": torch.randn(batch, state, length, generator=generator)}


def _ssd(**changed):
    s = {name: changed.pop(name, value) for name, value in _ssd_inputs().items()}
    return mamba_ssm.mamba_chunk_scan_combined(s["x"], s["dt"], s["A"], s["B"], s["C"], 64,
                                               **changed)


def _scan(**changed):
    s = {name: changed.pop(name, value) for name, value in _scan_inputs().items()}
    return mamba_ssm.selective_scan_fn(s["u"], s["delta"], s["A"], s["B"], s["C"], **changed)


def _step(**changed):
    generator = torch.Generator().manual_seed(27)
    inputs = {"state": torch.randn(2, 2, 16, 8, generator=generator),
              "x": torch.randn(2, 2, 16, generator=generator),
              "dt": torch.rand(2, 2, 16, generator=generator),
              "A": -torch.rand(2, 16, 8, generator=generator),
              "B": torch.randn(2, 1, 8, generator=generator),
              "C": torch.randn(2, 1, 8, generator=generator)}
    s = {name: changed.pop(name, value) for name, value in inputs.items()}
    return mamba_ssm.selective_state_update(*s.values(), **changed)


# mamba_ssm's gates: the step dt / delta, its bias, A, D and the z gate.
WRONG_MAMBA_GATES = {
    "mamba_chunk_scan_combined dt": (lambda: _ssd(dt=torch.rand(1, 7, 3)),
                                     "dt must have shape (1, 7, 2), got (1, 7, 3)"),
    "mamba_chunk_scan_combined dt_bias with dt_limit": (
        lambda: _ssd(dt_bias=torch.zeros(5), dt_softplus=True, dt_limit=(0.0, 1.0)),
        "dt_bias must have shape (2,), got (5,)"),
    "mamba_chunk_scan_combined A": (lambda: _ssd(A=-torch.rand(3)),
                                    "A must have shape (2,), got (3,)"),
    "mamba_chunk_scan_combined D": (lambda: _ssd(D=torch.zeros(2, 3)),
                                    "D must have shape (2, 16), got (2, 3)"),
    "mamba_chunk_scan_combined z": (lambda: _ssd(z=torch.zeros(1, 7, 2, 3)),
                                    "z must have shape (1, 7, 2, 16), got (1, 7, 2, 3)"),
    "selective_scan_fn delta": (lambda: _scan(delta=torch.rand(2, 4, 4)),
                                "delta must have shape (2, 4, 5), got (2, 4, 4)"),
    "selective_scan_fn delta_bias": (lambda: _scan(delta_bias=torch.zeros(3)),
                                     "delta_bias must have shape (4,), got (3,)"),
    "selective_scan_fn z": (lambda: _scan(z=torch.zeros(2, 4, 4)),
                            "z must have shape (2, 4, 5), got (2, 4, 4)"),
    "selective_state_update dt": (lambda: _step(dt=torch.rand(2, 2)),
                                  "dt must have 3 dimensions"),
    "selective_state_update dt_bias": (lambda: _step(dt_bias=torch.zeros(2, 3)),
                                       "dt_bias must have shape (2, 16), got (2, 3)"),
}


@pytest.mark.parametrize("case", sorted(WRONG_MAMBA_GATES))
def test_wrong_shaped_mamba_gate_is_a_one_line_value_error(case):
    call, message = WRONG_MAMBA_GATES[case]
    with pytest.raises(ValueError) as raised:
        call()
    assert message in str(raised.value) and "\n" not in str(raised.value)


def test_readme_lists_every_compat_entry_point():
    import importlib
    import inspect
    from pathlib import Path

    import seqtune.compat

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("## Drop-in entry points")[1].split("\n## ")[0]
    for path in sorted(Path(seqtune.compat.__file__).parent.glob("[!_]*.py")):
        module = importlib.import_module(f"seqtune.compat.{path.stem}")
        row = next((line for line in section.splitlines()
                    if line.startswith(f"| `seqtune.compat.{path.stem}` |")), "")
        public = [name for name, f in inspect.getmembers(module, inspect.isfunction)
                  if f.__module__ == module.__name__ and not name.startswith("_")]
        missing = [name for name in public if f"`{name}`" not in row]
        assert public and not missing, f"README lacks {path.stem}: {missing}"
