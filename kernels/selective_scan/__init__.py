"""selective_scan: Mamba's selective state-space scan with input-dependent delta, B and C."""

# Registers torch.ops.seqtune.selective_scan, which op.py calls.
from seqtune.kernels.selective_scan import library  # noqa: E402,F401
