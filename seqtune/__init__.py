"""seqtune: autotuning and profiling of the Triton kernels of sequence models.

Runtime use::

    import seqtune
    config = seqtune.best_config("attention", B=4, T=4096, S=4096, Hq=32, Hkv=8, D=128,
                                 causal=True, dtype="bfloat16")
"""
__version__ = "0.1.0"

from seqtune.loader import best_config, load_profile  # noqa: E402

__all__ = ["best_config", "load_profile", "__version__"]
