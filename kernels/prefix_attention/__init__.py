"""prefix_attention: attention as an RNN (Aaren), every prefix's softmax attention by a scan.

This package shares its name with the op that ``seqtune.kernels`` re-exports, and importing a
subpackage makes the import system bind ``seqtune.kernels.prefix_attention`` to the package. So
that ``seqtune.kernels.prefix_attention(...)`` calls the op either way, the package is callable.
"""
import sys
import types


class _CallableOpPackage(types.ModuleType):
    def __call__(self, *args, **kwargs):
        from seqtune.kernels.prefix_attention.op import prefix_attention

        return prefix_attention(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableOpPackage
