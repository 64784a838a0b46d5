"""linear_scan: the diagonal linear recurrence h_t = a_t * h_{t-1} + b_t (RG-LRU, LRU, S5)."""

# Registers torch.ops.seqtune.linear_scan, which the op in op.py calls.
from seqtune.kernels.linear_scan import library  # noqa: E402,F401
