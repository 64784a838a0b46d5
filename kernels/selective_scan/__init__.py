"""selective_scan: Mamba's selective state-space scan with input-dependent delta, B and C.

This package shares its name with the op that ``seqtune.kernels`` re-exports, and importing a
subpackage makes the import system bind ``seqtune.kernels.selective_scan`` to the package. So
that ``seqtune.kernels.selective_scan(...)`` calls the op either way, the package is callable.
"""
import sys
import types


class _CallableOpPackage(types.ModuleType):
    def __call__(self, *args, **kwargs):
        from seqtune.kernels.selective_scan.op import selective_scan

        return selective_scan(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableOpPackage
