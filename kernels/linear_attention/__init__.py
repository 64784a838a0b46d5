"""Chunkwise linear attention (no, scalar or per-channel decay) and Mamba-2 SSD on the same
three Triton kernels: ``op.linear_attention`` and ``ssd.ssd``; specs in ``spec.py``."""
