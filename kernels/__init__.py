"""seqtune's Triton kernels, one folder each: the op, its float64 reference, its config space
and shape buckets (``spec.py``). Installed as ``seqtune.kernels``.

The ops are bound here explicitly: most share their folder's name, and importing a folder
(e.g. by the registry) would otherwise make ``seqtune.kernels.attention`` the folder, not the op.
Every op runs as a ``torch.ops.seqtune.<name>`` custom op (each folder's ``library.py``); the
step ops are bound from there.
"""
from seqtune.kernels.attention.op import attention
from seqtune.kernels.attention_decode.op import attention_decode
from seqtune.kernels.causal_conv1d import causal_conv1d, causal_conv1d_step
from seqtune.kernels.delta_rule.op import delta_rule
from seqtune.kernels.delta_rule.library import delta_rule_step
from seqtune.kernels.linear_attention.op import linear_attention
from seqtune.kernels.linear_attention.ssd import ssd
from seqtune.kernels.linear_attention.library import linear_attention_step, ssd_step
from seqtune.kernels.linear_scan.op import linear_scan
from seqtune.kernels.prefix_attention.op import prefix_attention
from seqtune.kernels.selective_scan.op import selective_scan
from seqtune.kernels.selective_scan.library import selective_scan_step

__all__ = ["attention", "attention_decode", "delta_rule", "linear_attention", "ssd",
           "delta_rule_step",
           "linear_attention_step", "ssd_step",
           "selective_scan_step",
           "linear_scan", "prefix_attention", "selective_scan", "causal_conv1d",
           "causal_conv1d_step"]
