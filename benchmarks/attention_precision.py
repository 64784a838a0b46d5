"""Error of attention's forward and backward against float64, in bf16 and fp16 (issue 28).

Causal softmax attention, GQA (Hq=4, Hkv=2), D=64, at T = S = 64 and 1000 (``--lengths``):
per output (o, dq, dk, dv) the largest absolute error over the largest reference magnitude
(``max``) and the RMS error over the RMS reference (``rms``), for seqtune's kernels (default
configs) and for PyTorch's own attention in the same dtype (``scaled_dot_product_attention``'s
math path: the floor that flash-attn's tests compare against; they require at most twice its
error). Usage:

    TRITON_INTERPRET=1 python benchmarks/attention_precision.py [--lengths 64,1000]

On a CPU the kernels run in the Triton interpreter, whose float32 -> bfloat16 casts round to
nearest even inside seqtune's launches as a GPU's do (``seqtune.interpreter_rounding``).
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from seqtune.kernels import attention

OUTPUTS = ("o", "dq", "dk", "dv")


def pytorch_attention(q, k, v):
    """PyTorch's causal attention in the inputs' dtype, layout [B, T, H, D] (GQA expanded)."""
    group = q.shape[2] // k.shape[2]
    q, k, v = (x.transpose(1, 2) for x in (q, k.repeat_interleave(group, 2),
                                           v.repeat_interleave(group, 2)))
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2)


def seqtune_attention(q, k, v):
    return attention(q, k, v, causal=True)


def outputs_and_grads(op, inputs, do, dtype):
    leaves = [x.to(dtype).requires_grad_() for x in inputs]
    out = op(*leaves)
    out.backward(do.to(dtype))
    return [out.detach()] + [x.grad for x in leaves]


def figures(got, truth) -> str:
    parts = []
    for name, out, ref in zip(OUTPUTS, got, truth):
        diff = out.double() - ref
        parts.append(f"{name} max {(diff.abs().max() / ref.abs().max()).item():.2e} "
                     f"rms {(diff.square().mean().sqrt() / ref.square().mean().sqrt()).item():.2e}")
    return "  ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="64,1000")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"device {device}; causal softmax attention, Hq=4 Hkv=2 D=64; errors against float64 "
          "(max |err| / max |ref|; rms ratio)")
    for length in (int(t) for t in args.lengths.split(",")):
        g = torch.Generator(device=device).manual_seed(0)
        q, do = (torch.randn(1, length, 4, 64, generator=g, device=device) for _ in range(2))
        k, v = (torch.randn(1, length, 2, 64, generator=g, device=device) for _ in range(2))
        truth = [x.double() for x in outputs_and_grads(pytorch_attention, (q, k, v), do,
                                                       torch.float64)]
        for dtype in (torch.bfloat16, torch.float16):
            for name, op in (("seqtune", seqtune_attention), ("pytorch", pytorch_attention)):
                got = outputs_and_grads(op, (q, k, v), do, dtype)
                print(f"T={length:<5d} {str(dtype)[6:]:9s} {name:8s} {figures(got, truth)}",
                      flush=True)


if __name__ == "__main__":
    main()
