"""seqtune: autotuning and profiling of the Triton kernels of sequence models.

Runtime use (cheap: imports only the loader)::

    import seqtune
    config = seqtune.best_config("attention", B=4, T=4096, S=4096, Hq=32, Hkv=8, D=128,
                                 causal=True, dtype="bfloat16")

The library API behind the CLI (``seqtune.tune``, ``verify``, ``report``, ``bench``, ``check``,
``merge``, ``replay``, ``info``, ``kernels``) is loaded on first use from ``seqtune.api``: each
returns data and prints nothing.
"""
__version__ = "0.1.0"

from seqtune.loader import best_config, load_profile  # noqa: E402

_API = ("tune", "verify", "report", "bench", "check", "merge", "replay", "info", "kernels")

__all__ = ["best_config", "load_profile", "__version__", *_API]


def __getattr__(name: str):
    # The tuner, search and CLI stacks load only when a tool function is first used, so that
    # `import seqtune` in model code stays a loader import.
    if name in _API:
        from seqtune import api

        return getattr(api, name)
    raise AttributeError(f"module 'seqtune' has no attribute {name!r}")
