"""linear_scan: the diagonal linear recurrence h_t = a_t * h_{t-1} + b_t (RG-LRU, LRU, S5).

This package shares its name with the op that ``seqtune.kernels`` re-exports, and importing a
subpackage makes the import system bind ``seqtune.kernels.linear_scan`` to the package. So that
``seqtune.kernels.linear_scan(a, b)`` calls the op either way, the package is callable.
"""
import sys
import types


class _CallableOpPackage(types.ModuleType):
    def __call__(self, *args, **kwargs):
        from seqtune.kernels.linear_scan.op import linear_scan

        return linear_scan(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableOpPackage
