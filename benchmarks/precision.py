"""Output error of every chunkwise op against float64, in bf16 and fp16 (issue 28).

For linear attention (no, scalar and per-channel decay), Mamba-2 SSD and the delta rule
(DeltaNet, Gated DeltaNet, KDA), at T = 64 and 1000 (``--lengths``): the spec's inputs
(``make_inputs``) in the dtype, the op's default config, and per output (o and the final state)
the largest absolute error over the largest reference magnitude (``max``) and fla's test metric,
the RMS error over the RMS reference (``rms``). fla's figures beside them are not computed yet
(fla is not installed where this was written): the script says whether fla is installed. Usage:

    TRITON_INTERPRET=1 python benchmarks/precision.py [--lengths 64,1000] [--heads 2] [--dim 32]

On a CPU the kernels run in the Triton interpreter (exact fp32 dots for bf16 operands under
the interpreter: the dot operands are still rounded to bf16 first, as on the GPU).
"""
from __future__ import annotations

import argparse
import importlib.util

import torch

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="64,1000")
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--dim", type=int, default=32)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    fla = importlib.util.find_spec("fla") is not None
    print(f"device {device}; errors against float64, max: max |err| / max |ref|, rms: fla's "
          f"RMS ratio; outputs o, final state")
    print("fla installed, but its figures are not computed by this script yet" if fla
          else "fla not installed")
    for label, (spec_name, fields) in OPS.items():
        spec = get_spec(spec_name)
        for T in (int(t) for t in args.lengths.split(",")):
            for dtype in ("bfloat16", "float16"):
                p = problem(spec_name, fields, T, args.heads, args.dim, dtype)
                inputs = spec.make_inputs(p, device, 0)
                figures = errors(spec.run(inputs, dict(spec.default_config)),
                                 spec.reference(inputs))
                text = "  ".join(f"{name} max {m:.2e} rms {r:.2e}"
                                 for name, (m, r) in zip(("o", "state"), figures))
                print(f"{label:26s} T={T:<5d} {dtype:9s} {text}", flush=True)


if __name__ == "__main__":
    main()
