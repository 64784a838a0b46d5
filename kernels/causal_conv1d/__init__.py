"""causal_conv1d: the short depthwise causal convolution (width 2-4, SiLU) that Mamba, Mamba-2,
Gated DeltaNet and KDA layers run before their recurrence; its backward and decode step."""
from seqtune.kernels.causal_conv1d.op import causal_conv1d
from seqtune.kernels.causal_conv1d.step import causal_conv1d_step

# Registers torch.ops.seqtune.causal_conv1d, which op.py calls.
from seqtune.kernels.causal_conv1d import library  # noqa: E402,F401

__all__ = ["causal_conv1d", "causal_conv1d_step"]
