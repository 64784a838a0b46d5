"""Output error of every chunkwise op against float64, in bf16 and fp16 (issue 28).

For linear attention (no, scalar and per-channel decay), Mamba-2 SSD and the delta rule
(DeltaNet, Gated DeltaNet, KDA), at T = 64 and 1000 (``--lengths``): the spec's inputs
(``make_inputs``) in the dtype, the op's default config, and per output (o and the final state)
the largest absolute error over the largest reference magnitude (``max``) and fla's test metric,
the RMS error over the RMS reference (``rms``). Where fla is installed (it stays optional), fla's
figures follow on the same inputs against the same float64 truth: its naive PyTorch recurrence
(fla/ops/<op>/naive.py, fed the inputs in the dtype, o rounded to the dtype as an op returns it)
and its chunk kernel (run in the Triton interpreter on a CPU). fla has no SSD op: its
chunk_simple_gla stands in, fed Mamba-2's q = C, k = B, v = dt x, g = A dt, scale 1, plus D x.
Usage:

    TRITON_INTERPRET=1 python benchmarks/precision.py [--lengths 64,1000] [--heads 2] [--dim 32]
        [--ops ssd,gla,kda] [--dtypes bfloat16,float16] [--gpu-rounding] [--seed 0]

On a CPU the kernels run in the Triton interpreter (exact fp32 dots for bf16 operands under
the interpreter: the dot operands are still rounded to bf16 first, as on the GPU). Two of the
interpreter's roundings are not a GPU's: fp32 -> bf16 casts truncate (a GPU rounds to nearest
even; fp16 casts do round to nearest), and fp32 dots are exact where a GPU rounds "tf32" dots'
operands (Triton's default, fla's fp32 dots, e.g. chunk_gla's intra-chunk A) to 10 bits. The
casts round as a GPU's for the whole run, seqtune's kernels and fla's alike
(``seqtune.interpreter_rounding``: seqtune's launches do so anyway); ``--gpu-rounding`` also
rounds tf32 dots' operands (``patch_tf32_dots``).
"""
from __future__ import annotations

import argparse
import builtins
import importlib.util
import os
import sys

import torch
import torch.nn.functional as F

from seqtune.interpreter_rounding import gpu_rounding
from seqtune.registry import get_spec

OPS = {  # label -> (spec, problem fields besides the sizes and dtype)
    "linear_attention": ("linear_attention", {"gate": "none"}),
    "retention (scalar decay)": ("linear_attention", {"gate": "scalar"}),
    "gla (per-channel decay)": ("linear_attention", {"gate": "channel"}),
    "ssd": ("ssd", {}),
    "delta_rule": ("delta_rule", {"gate": "none"}),
    "gated_delta_rule": ("delta_rule", {"gate": "scalar"}),
    "kda": ("delta_rule", {"gate": "channel"}),
}


def problem(spec_name: str, fields: dict, T: int, heads: int, dim: int, dtype: str) -> dict:
    if spec_name == "ssd":
        return {"b": 1, "T": T, "h": heads, "g": 1, "n": dim, "p": dim, "has_D": True,
                "initial_state": True, "dtype": dtype, "N": 1, "varlen": False}
    return {"B": 1, "T": T, "H": heads, "K": dim, "V": dim, "initial_state": True,
            "dtype": dtype, "N": 1, "varlen": False, "GV": 1, **fields}


def errors(outputs, reference) -> list[tuple[float, float]]:
    """(max abs error / max |ref|, RMS error / RMS ref) per output."""
    figures = []
    for out, ref in zip(outputs, reference):
        diff = out.double().cpu() - ref.double().cpu()
        figures.append(((diff.abs().max() / ref.abs().max()).item(),
                        (diff.square().mean().sqrt() / ref.square().mean().sqrt()).item()))
    return figures


class _Counter(int):
    """A loop counter with triton's ``.to``: fla casts ``range`` counters (``i_t.to(tl.int64)``),
    which the interpreter leaves plain Python ints."""

    def to(self, *args, **kwargs) -> "_Counter":
        return self


def _counters(*args: int):
    return (_Counter(i) for i in builtins.range(*args))


def _patch_bf16_arithmetic(builder) -> None:
    """The interpreter keeps bf16 as raw uint16 bits and its dots and float arithmetic work on
    those bits (fla multiplies and dots bf16 tiles as loaded, and negates them in its backward,
    e.g. ``-b_dw``; seqtune widens them first): widen bf16 operands to fp32 and round elementwise
    and unary (negation, exp, ...) results back to bf16, as a GPU computes them."""
    import triton.language as tl

    def widen(self, x):
        return self.cast_impl(x, tl.float32) if x.dtype.scalar == tl.bfloat16 else x

    unary = builder.unary_op

    def unary_op(self, arg, op):  # np.negative on the raw bits would negate an integer
        if arg.dtype.scalar != tl.bfloat16:
            return unary(self, arg, op)
        return self.cast_impl(unary(self, widen(self, arg), op), tl.bfloat16)

    builder.unary_op = unary_op

    dot = builder.create_dot
    builder.create_dot = lambda self, a, b, d, *rest: dot(self, widen(self, a), widen(self, b),
                                                           d, *rest)
    for name in ("create_fadd", "create_fmul", "create_fdiv", "create_fsub"):
        def elementwise(self, lhs, rhs, op=getattr(builder, name)):
            if lhs.dtype.scalar != tl.bfloat16:
                return op(self, lhs, rhs)
            return self.cast_impl(op(self, widen(self, lhs), widen(self, rhs)), tl.bfloat16)
        setattr(builder, name, elementwise)


def _patch_bf16_reductions() -> None:
    """The interpreter sums (``tl.sum``, ``tl.cumsum``) bf16 tiles as their raw uint16 bits too
    (fla's backward sums bf16 products, e.g. ``tl.sum(b_h * b_dh)``): sum their fp32 values and
    round the result to bf16 once (a GPU rounds along its reduction tree: at most a few bf16
    units apart)."""
    import numpy as np
    import triton.language as tl
    from triton.runtime.interpreter import ReduceOps, ScanOps, TensorHandle

    def wide(x):
        bits = np.ascontiguousarray(x.handle.data).view(np.int16)
        values = torch.from_numpy(bits).view(torch.bfloat16).float().numpy()
        return tl.core.tensor(TensorHandle(values, tl.float32),
                              tl.block_type(tl.float32, list(values.shape)))

    def narrow(ops, x):
        values = torch.from_numpy(np.array(x.handle.data, dtype=np.float32))
        bits = values.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
        return ops.to_tensor(bits if x.type.is_block() else bits.item(), tl.bfloat16)

    def in_fp32(reduce, listed):
        def run(self, x):
            if x.dtype.scalar != tl.bfloat16:
                return reduce(self, x)
            out = reduce(self, wide(x))
            return [narrow(self, out[0])] if listed else narrow(self, out)
        return run

    ReduceOps.sum = in_fp32(ReduceOps.sum, listed=False)
    ScanOps.cumsum = in_fp32(ScanOps.cumsum, listed=True)


def _tf32(data):
    """fp32 values rounded to tf32's 10-bit mantissa, to nearest with ties away from zero (the
    GPU's cvt.rna.tf32.f32): add half a tf32 unit to the magnitude's bits, drop the 13 low."""
    import numpy as np

    bits = np.ascontiguousarray(data, dtype=np.float32).view(np.uint32)
    return ((bits + np.uint32(0x1000)) & np.uint32(0xFFFFE000)).view(np.float32)


def patch_tf32_dots() -> None:
    """Make the interpreter round tf32 dots' operands to 10 mantissa bits, as a GPU does
    (``--gpu-rounding``; Triton's default precision for fp32 dots and what fla's fp32 dots get;
    the interpreter computes them exactly). Applies to every kernel of the process; seqtune's
    own dots ask for "ieee" and are left exact."""
    import triton.language as tl
    from triton.runtime.interpreter import InterpreterBuilder, TensorHandle

    dot = InterpreterBuilder.create_dot

    def create_dot(self, a, b, d, input_precision, *rest):
        if getattr(input_precision, "name", str(input_precision)) == "TF32":
            a = TensorHandle(_tf32(a.data), a.dtype.scalar) if a.dtype.scalar == tl.float32 else a
            b = TensorHandle(_tf32(b.data), b.dtype.scalar) if b.dtype.scalar == tl.float32 else b
        return dot(self, a, b, d, input_precision, *rest)

    InterpreterBuilder.create_dot = create_dot


def _patch_fla_for_interpreter() -> None:
    """Let fla's kernels run in the Triton interpreter: its autotuner times configs through a GPU
    driver (there is none: every config ties and the first is taken), its loop counters need
    ``.to`` (``_Counter``) and its bf16 arithmetic and sums need widening
    (``_patch_bf16_arithmetic``, ``_patch_bf16_reductions``)."""
    import triton.runtime.autotuner as autotuner
    from triton.runtime.interpreter import InterpreterBuilder

    autotuner.Autotuner._bench = lambda self, *args, config, **kwargs: [0.0, 0.0, 0.0]
    _patch_bf16_arithmetic(InterpreterBuilder)
    _patch_bf16_reductions()
    for name, module in list(sys.modules.items()):
        if name.startswith("fla.ops") and module is not None:
            vars(module)["range"] = _counters


def _ssd_as_simple_gla(inputs: dict) -> dict:
    """Mamba-2 SSD as fla's scalar-decay linear attention: q = C, k = B (one per head),
    v = dt x (rounded to the dtype, as fla takes v), g = A dt, scale 1; ``x``/``D`` for D x."""
    x, dtype = inputs["x"], inputs["x"].dtype
    dt = F.softplus(inputs["dt"] + inputs["dt_bias"])
    per_group = x.shape[2] // inputs["B"].shape[2]
    return {"q": inputs["C"].repeat_interleave(per_group, dim=2),
            "k": inputs["B"].repeat_interleave(per_group, dim=2),
            "v": (x.float() * dt[..., None]).to(dtype), "g": dt * inputs["A"], "scale": 1.0,
            "initial_state": inputs["initial_state"], "x": x, "D": inputs["D"]}


def _with_skip(call):
    """An SSD run of fla: ``call`` on the simple-GLA form, then Mamba-2's D x skip."""
    def run(inputs: dict):
        s = _ssd_as_simple_gla(inputs)
        o, state = call(s["q"], s["k"], s["v"], s["g"], scale=1.0,
                        initial_state=s["initial_state"], output_final_state=True)
        return o.float() + s["D"][:, None] * s["x"].float(), state
    return run


def _fla_ops() -> dict:
    """label -> (fla's naive run, fla's chunk run), each taking the spec's inputs and giving
    (o, final state); fla's layouts are seqtune's ([B, T, H, K], states [B, H, K, V])."""
    from fla.ops.delta_rule import chunk_delta_rule
    from fla.ops.delta_rule.naive import delta_rule_recurrence
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule
    from fla.ops.gated_delta_rule.naive import naive_recurrent_gated_delta_rule
    from fla.ops.gla import chunk_gla
    from fla.ops.gla.naive import naive_recurrent_gla
    from fla.ops.kda import chunk_kda
    from fla.ops.kda.naive import naive_recurrent_kda
    from fla.ops.linear_attn import chunk_linear_attn
    from fla.ops.linear_attn.naive import naive_recurrent_linear_attn
    from fla.ops.simple_gla import chunk_simple_gla
    from fla.ops.simple_gla.naive import naive_recurrent_simple_gla

    def head_major(q, k, v, beta, **kw):  # fla's naive delta rule takes [B, H, T, K]
        o, state = delta_rule_recurrence(*(t.transpose(1, 2) for t in (q, k, v, beta)), **kw)
        return o.transpose(1, 2), state

    def simple_gla(q, k, v, g, **kw):
        return chunk_simple_gla(q, k, v, g=g, **kw)

    final = {"output_final_state": True}
    return {
        "linear_attention": (
            lambda i: naive_recurrent_linear_attn(i["q"], i["k"], i["v"], **final,
                                                  initial_state=i["initial_state"]),
            lambda i: chunk_linear_attn(i["q"], i["k"], i["v"], normalize=False, **final,
                                        initial_state=i["initial_state"])),
        "retention (scalar decay)": (
            lambda i: naive_recurrent_simple_gla(i["q"], i["k"], i["v"], i["g"], **final,
                                                 initial_state=i["initial_state"]),
            lambda i: simple_gla(i["q"], i["k"], i["v"], i["g"], **final,
                                 initial_state=i["initial_state"])),
        "gla (per-channel decay)": (
            lambda i: naive_recurrent_gla(i["q"], i["k"], i["v"], i["g"], **final,
                                          initial_state=i["initial_state"]),
            lambda i: chunk_gla(i["q"], i["k"], i["v"], g=i["g"], **final,
                                initial_state=i["initial_state"])),
        "ssd": (_with_skip(naive_recurrent_simple_gla), _with_skip(simple_gla)),
        "delta_rule": (
            lambda i: head_major(i["q"], i["k"], i["v"], i["beta"], **final,
                                 initial_state=i["initial_state"]),
            lambda i: chunk_delta_rule(i["q"], i["k"], i["v"], i["beta"], **final,
                                       initial_state=i["initial_state"])),
        "gated_delta_rule": (
            lambda i: naive_recurrent_gated_delta_rule(i["q"], i["k"], i["v"], i["beta"],
                                                       i["g"], **final,
                                                       initial_state=i["initial_state"]),
            lambda i: chunk_gated_delta_rule(i["q"], i["k"], i["v"], i["g"], i["beta"],
                                             **final, initial_state=i["initial_state"])),
        "kda": (
            lambda i: naive_recurrent_kda(i["q"], i["k"], i["v"], i["g"], i["beta"], **final,
                                          initial_state=i["initial_state"]),
            lambda i: chunk_kda(i["q"], i["k"], i["v"], i["g"], i["beta"], **final,
                                initial_state=i["initial_state"])),
    }


def load_fla() -> tuple[dict | None, str]:
    """fla's runs per op (None without fla) and a line saying what is compared."""
    if importlib.util.find_spec("fla") is None:
        return None, "fla not installed: seqtune's figures only"
    try:
        ops = _fla_ops()
    except ImportError as error:
        return None, f"fla installed but not importable ({error}): seqtune's figures only"
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") == "1":
        _patch_fla_for_interpreter()
    import fla

    return ops, (f"fla {getattr(fla, '__version__', '?')}: naive = its PyTorch recurrence, "
                 f"chunk = its chunk kernel")


def row(name: str, outputs, reference, dtype: torch.dtype) -> str:
    """One implementation's figures; o is rounded to the dtype, as the ops return it."""
    o, state = outputs[0], outputs[1]
    figures = errors((o.to(dtype), state), reference)
    return f"{name:12s} " + "  ".join(f"{n} max {m:.2e} rms {r:.2e}"
                                      for n, (m, r) in zip(("o", "state"), figures))


def fla_rows(runs, inputs: dict, reference, dtype: torch.dtype) -> list[str]:
    """fla's naive and chunk rows; a run that cannot go here is one line saying why."""
    lines = []
    for name, run in zip(("fla naive", "fla chunk"), runs):
        try:
            lines.append(row(name, run(inputs), reference, dtype))
        except Exception as error:  # noqa: BLE001 - any failure of fla's is reported, not fatal
            lines.append(f"{name:12s} cannot run here: {type(error).__name__}: "
                         f"{str(error).splitlines()[0][:100]}")
    return lines


def main() -> None:
    run(report, __doc__.splitlines()[0], "the spec's input seed")


def run(report_of, description: str, seed_help: str) -> None:
    """Parse this script's options (precision_grads.py takes the same) and call ``report_of``
    with them, every kernel's fp32 -> bf16 casts rounded as a GPU rounds them."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--lengths", default="64,1000")
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--ops", default=",".join(OPS),
                        help="comma-separated labels or their first words (e.g. ssd,kda)")
    parser.add_argument("--dtypes", default="bfloat16,float16")
    parser.add_argument("--seed", type=int, default=0, help=seed_help)
    parser.add_argument("--gpu-rounding", action="store_true",
                        help="interpreter only: also round tf32 dot operands to 10 bits, as a "
                             "GPU does (patch_tf32_dots)")
    args = parser.parse_args()
    if args.gpu_rounding:
        patch_tf32_dots()
    with gpu_rounding():  # every kernel's fp32 -> bf16 casts, fla's too, as a GPU rounds them
        report_of(args)


def report(args: argparse.Namespace) -> None:
    chosen = [label for label in OPS
              if any(label == op or label.split()[0] == op for op in args.ops.split(","))]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    fla_ops, fla_line = load_fla()
    print(f"device {device}; errors against float64, max: max |err| / max |ref|, rms: fla's "
          f"RMS ratio; outputs o, final state")
    print(fla_line)
    for label in chosen:
        spec_name, fields = OPS[label]
        spec = get_spec(spec_name)
        for T in (int(t) for t in args.lengths.split(",")):
            for dtype in args.dtypes.split(","):
                p = problem(spec_name, fields, T, args.heads, args.dim, dtype)
                inputs = spec.make_inputs(p, device, args.seed)
                reference = spec.reference(inputs)
                torch_dtype = getattr(torch, dtype)
                lines = [row("seqtune", spec.run(inputs, dict(spec.default_config)), reference,
                             torch_dtype)]
                if fla_ops is not None:
                    lines += fla_rows(fla_ops[label], inputs, reference, torch_dtype)
                for line in lines:
                    print(f"{label:26s} T={T:<5d} {dtype:9s} {line}", flush=True)


if __name__ == "__main__":
    main()
