"""Attention forward over a whole sequence: softmax (FlashAttention-2 style online softmax) and
sigmoid attention, one tiled Triton kernel. The op is ``seqtune.kernels.attention``."""
