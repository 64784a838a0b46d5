"""Chunkwise linear attention (no, scalar or per-channel decay) and Mamba-2 SSD on the same
three Triton kernels: ``op.linear_attention`` and ``ssd.ssd``; specs in ``spec.py``."""

# Registers torch.ops.seqtune.linear_attention and .ssd, which op.py and ssd.py call.
from seqtune.kernels.linear_attention import library  # noqa: E402,F401
