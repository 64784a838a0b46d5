"""Chunkwise linear attention (no, scalar or per-channel decay) and Mamba-2 SSD on the same
three Triton kernels: ``op.linear_attention`` and ``ssd.ssd``; specs in ``spec.py``.

This package shares its name with the op ``seqtune.kernels.linear_attention``. Once the package
is imported, Python binds that attribute of ``seqtune.kernels`` to the package (shadowing the
lazy re-export of the op), so the package itself is made callable: calling it calls the op.
"""
import sys
import types


class _OpPackage(types.ModuleType):
    def __call__(self, *args, **kwargs):
        from seqtune.kernels.linear_attention.op import linear_attention

        return linear_attention(*args, **kwargs)


sys.modules[__name__].__class__ = _OpPackage
