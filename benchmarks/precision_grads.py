"""Gradient error of every chunkwise op against float64, in bf16 and fp16: the backward's
counterpart of ``benchmarks/precision.py`` (whose ops, problems, metrics and fla runs it reuses).

Per op, length and dtype: the spec's inputs (``make_inputs``) as leaves (every float tensor
the op takes: q, k, v, g, beta, the initial state; SSD's x, dt, A, B, C, D, dt_bias), a fixed
random cotangent do (in the dtype) for o and dht (fp32) for the final state, and
loss = sum(o * do) + sum(final * dht) in float64. The truth is float64 autograd through
seqtune's plain-recurrence references (kernels/<op>/reference.py) on float64 copies of the
leaves; seqtune's gradients come from its public op (default forward and backward configs),
fla's from its chunk kernels as precision.py runs them, on the same leaves. Per gradient:
``max`` (max |err| / max |ref|) and ``rms`` (RMS err / RMS ref, fla's get_err_ratio). fla has no
SSD op (precision.py's simple-GLA stand-in is a different computation), so SSD is seqtune only.
Usage:

    TRITON_INTERPRET=1 python benchmarks/precision_grads.py [--lengths 64,1000] [--heads 2]
        [--dim 32] [--ops gla,kda] [--dtypes bfloat16,float16] [--gpu-rounding] [--seed 0]

``--gpu-rounding`` and the bf16 casts rounded to nearest for the whole run are precision.py's
(``patch_tf32_dots``, ``seqtune.interpreter_rounding.gpu_rounding``).
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # precision.py, run from anywhere
from precision import OPS, errors, load_fla, problem, run  # noqa: E402

from seqtune.registry import get_spec  # noqa: E402

SSD_NO_FLA = "fla has no SSD op to differentiate on the same inputs: seqtune's figures only"


def leaf_names(inputs: dict) -> list[str]:
    """Every float tensor input (not cu_seqlens, an integer tensor, nor flags)."""
    return [name for name, value in inputs.items()
            if torch.is_tensor(value) and value.is_floating_point()]


def leaves(inputs: dict, float64: bool = False) -> dict:
    """The inputs with every float tensor a fresh leaf requiring grad (float64 CPU copies for
    the truth: a ``.to`` inside the reference would round the truth's gradient to the dtype)."""
    out = dict(inputs)
    for name in leaf_names(inputs):
        value = inputs[name].detach()
        value = value.to("cpu", torch.float64) if float64 else value.clone()
        out[name] = value.requires_grad_()
    return out


def cotangents(outputs, dtype: torch.dtype, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """do in the dtype (an op's o is), dht in fp32 (its final state is); shapes of ``outputs``."""
    gen = torch.Generator().manual_seed(seed + 1)  # not the inputs' stream
    o, final = outputs
    return (torch.randn(*o.shape, generator=gen).to(dtype),
            torch.randn(*final.shape, generator=gen))


def gradients(run, inputs: dict, do: torch.Tensor, dht: torch.Tensor,
              float64: bool = False) -> dict:
    """name -> d loss / d input (None where the run does not use it) of ``run(inputs)``."""
    tensors = leaves(inputs, float64)
    names = leaf_names(inputs)
    o, final = run(tensors)[:2]
    loss = ((o.double().cpu() * do.double()).sum()
            + (final.double().cpu() * dht.double()).sum())
    grads = torch.autograd.grad(loss, [tensors[n] for n in names], allow_unused=True)
    return dict(zip(names, grads))


def reference_run(spec_name: str):
    """The float64 recurrence, kept differentiable: the delta rule's spec reference detaches its
    inputs, so its module's function is called with ``detach=False``."""
    if spec_name == "delta_rule":
        from seqtune.kernels.delta_rule.reference import delta_rule_reference

        return lambda i: delta_rule_reference(i["q"], i["k"], i["v"], i["beta"], i["g"],
                                              initial_state=i["initial_state"],
                                              cu_seqlens=i["cu_seqlens"], detach=False)
    return get_spec(spec_name).reference


def truth(spec_name: str, inputs: dict, do: torch.Tensor, dht: torch.Tensor) -> dict:
    """Float64 autograd through the reference; every gradient must exist and be finite."""
    grads = gradients(reference_run(spec_name), inputs, do, dht, float64=True)
    for name, grad in grads.items():
        if grad is None or not torch.isfinite(grad).all():
            raise RuntimeError(f"reference gradient of {name} missing or not finite")
    return grads


def seqtune_run(spec_name: str):
    """The public op with the spec's default forward config and its backward spec's default
    (explicit, so no profile on the machine changes what is measured)."""
    spec = get_spec(spec_name)
    config = dict(spec.default_config)
    bwd_config = dict(get_spec(spec_name + "_bwd").default_config)
    if spec_name == "delta_rule":
        from seqtune.kernels.delta_rule.op import delta_rule

        return lambda i: delta_rule(i["q"], i["k"], i["v"], i["beta"], i["g"],
                                    initial_state=i["initial_state"], output_final_state=True,
                                    cu_seqlens=i["cu_seqlens"], config=config,
                                    bwd_config=bwd_config)
    if spec_name == "ssd":
        from seqtune.kernels.linear_attention.ssd import ssd

        op = ssd
    else:
        from seqtune.kernels.linear_attention.op import linear_attention

        op = linear_attention
    return lambda i: op(**i, output_final_state=True, config=config, bwd_config=bwd_config)


def gradient_errors(grads: dict, reference: dict) -> dict:
    """name -> (max, rms) as precision.errors computes them; None where no gradient came."""
    return {name: None if grads.get(name) is None else errors([grads[name]], [ref])[0]
            for name, ref in reference.items()}


def grad_label(name: str) -> str:
    return "dh0" if name == "initial_state" else "d" + name


def row(name: str, figures: dict) -> str:
    cells = [f"{grad_label(n)} none" if f is None
             else f"{grad_label(n)} max {f[0]:.2e} rms {f[1]:.2e}" for n, f in figures.items()]
    return f"{name:12s} " + "  ".join(cells)


def fla_row(run, inputs: dict, do, dht, reference: dict) -> str:
    """fla's chunk row, or one line saying why its forward or backward cannot run here."""
    try:
        return row("fla chunk", gradient_errors(gradients(run, inputs, do, dht), reference))
    except Exception as error:  # noqa: BLE001 - any failure of fla's is reported, not fatal
        return (f"{'fla chunk':12s} cannot run here: {type(error).__name__}: "
                f"{str(error).splitlines()[0][:100] if str(error) else ''}")


def case(label: str, T: int, dtype: str, heads: int, dim: int, seed: int):
    """(spec name, inputs, do, dht, float64 truth's gradients) of one op, length and dtype."""
    spec_name, fields = OPS[label]
    p = problem(spec_name, fields, T, heads, dim, dtype)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    inputs = get_spec(spec_name).make_inputs(p, device, seed)
    with torch.no_grad():  # the outputs' shapes, for the cotangents
        outputs = reference_run(spec_name)(leaves(inputs, float64=True))
    do, dht = cotangents(outputs, getattr(torch, dtype), seed)
    return spec_name, inputs, do, dht, truth(spec_name, inputs, do, dht)


def measure(label: str, T: int, dtype: str, args: argparse.Namespace, fla_ops) -> list[str]:
    """seqtune's row and fla's chunk row (or why not) for one op, length and dtype."""
    spec_name, inputs, do, dht, reference = case(label, T, dtype, args.heads, args.dim,
                                                 args.seed)
    lines = [row("seqtune", gradient_errors(
        gradients(seqtune_run(spec_name), inputs, do, dht), reference))]
    if spec_name == "ssd":
        lines.append(f"{'fla chunk':12s} {SSD_NO_FLA}")
    elif fla_ops is not None:
        lines.append(fla_row(fla_ops[label][1], inputs, do, dht, reference))
    return lines


def report(args: argparse.Namespace) -> None:
    chosen = [label for label in OPS
              if any(label == op or label.split()[0] == op for op in args.ops.split(","))]
    fla_ops, fla_line = load_fla()
    print(f"device {'cuda' if torch.cuda.is_available() else 'cpu'}; gradient errors against "
          f"float64 autograd, max: max |err| / max |ref|, rms: fla's RMS ratio; "
          f"loss = sum(o do) + sum(final dht)")
    print(fla_line.replace("naive = its PyTorch recurrence, ", ""))
    for label in chosen:
        for T in (int(t) for t in args.lengths.split(",")):
            for dtype in args.dtypes.split(","):
                for line in measure(label, T, dtype, args, fla_ops):
                    print(f"{label:26s} T={T:<5d} {dtype:9s} {line}", flush=True)


def main() -> None:
    run(report, __doc__.splitlines()[0], "the inputs' and cotangents' seed")


if __name__ == "__main__":
    main()
