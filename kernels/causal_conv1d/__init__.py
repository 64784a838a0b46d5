"""causal_conv1d: the short depthwise causal convolution (width 2-8, SiLU) that Mamba, Mamba-2,
Gated DeltaNet and KDA layers run before their recurrence and LFM2/LFM3 and Inkling layers run
gated; its backward and decode step."""
from seqtune.kernels.causal_conv1d.op import causal_conv1d
# The step as torch.ops.seqtune.causal_conv1d_step (importing library also registers the op
# that op.causal_conv1d calls).
from seqtune.kernels.causal_conv1d.library import causal_conv1d_step

__all__ = ["causal_conv1d", "causal_conv1d_step"]
