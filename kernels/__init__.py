"""seqtune's Triton kernels, one folder each: the op, its float64 reference, its config space
and shape buckets (``spec.py``). Installed as ``seqtune.kernels``.

The ops are imported lazily, so ``import seqtune.kernels`` stays cheap.
"""
import importlib

_OPS = {
    "attention": "attention.op",
    "attention_decode": "attention_decode.op",
    "linear_attention": "linear_attention.op",
    "ssd": "linear_attention.ssd",
    "delta_rule": "delta_rule.op",
    "selective_scan": "selective_scan.op",
    "linear_scan": "linear_scan.op",
    "prefix_attention": "prefix_attention.op",
}
__all__ = list(_OPS)


def __getattr__(name):
    if name not in _OPS:
        raise AttributeError(f"module 'seqtune.kernels' has no attribute {name!r}")
    return getattr(importlib.import_module(f"seqtune.kernels.{_OPS[name]}"), name)
