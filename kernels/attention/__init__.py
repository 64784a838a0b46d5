"""Attention forward over a whole sequence: softmax (FlashAttention-2 style online softmax) and
sigmoid attention, one tiled Triton kernel. The op is ``seqtune.kernels.attention``."""

# Registers torch.ops.seqtune.attention, which the op in op.py calls.
from seqtune.kernels.attention import library  # noqa: E402,F401
