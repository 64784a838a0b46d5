"""prefix_attention: attention as an RNN (Aaren), every prefix's softmax attention by a scan."""

# Registers torch.ops.seqtune.prefix_attention, which the op in op.py calls.
from seqtune.kernels.prefix_attention import library  # noqa: E402,F401
