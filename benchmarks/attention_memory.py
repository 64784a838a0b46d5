"""Peak GPU memory of one attention training step (forward + backward), seqtune against
PyTorch SDPA's math backend, at long sequence lengths (issue 18).

seqtune's forward saves q, k, v, O and the row log-sum-exp only (O(T) extra), so its peak grows
linearly in T; the math backend materialises the T x S scores and probabilities for the
backward. Usage, on a CUDA GPU:

    python benchmarks/attention_memory.py [--lengths 4096,8192,16384] [--heads 16] [--dim 128]

Prints one row per length: peak allocated MiB of each and their ratio (torch.cuda
max_memory_allocated over the step, inputs included). Without a GPU it says so and exits 2.
"""
from __future__ import annotations

import argparse
import sys

import torch


def peak_mib(step) -> float:
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**20


def training_step(attend, length: int, heads: int, dim: int):
    def step() -> None:
        q, k, v = (torch.randn(1, length, heads, dim, device="cuda", dtype=torch.bfloat16,
                               requires_grad=True) for _ in range(3))
        attend(q, k, v).float().square().mean().backward()
    return step


def seqtune_attention(q, k, v):
    from seqtune.kernels import attention

    return attention(q, k, v, causal=True)


def sdpa_math(q, k, v):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.MATH):
        out = torch.nn.functional.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
    return out.transpose(1, 2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", default="4096,8192,16384")
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--dim", type=int, default=128)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("attention_memory: needs a CUDA GPU (peak memory is torch.cuda's)", file=sys.stderr)
        return 2
    print(f"{torch.cuda.get_device_name()}, B=1 H={args.heads} D={args.dim} bf16, causal, "
          "forward + backward")
    print(f"{'T':>7} {'seqtune MiB':>12} {'SDPA math MiB':>14} {'ratio':>7}")
    for length in (int(n) for n in args.lengths.split(",")):
        ours = peak_mib(training_step(seqtune_attention, length, args.heads, args.dim))
        try:
            theirs = f"{peak_mib(training_step(sdpa_math, length, args.heads, args.dim)):14.0f}"
            ratio = f"{float(theirs) / ours:7.1f}"
        except torch.cuda.OutOfMemoryError:
            theirs, ratio = f"{'out of memory':>14}", f"{'-':>7}"
        print(f"{length:>7} {ours:12.0f} {theirs} {ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
