"""seqtune: autotuning and profiling of the Triton kernels of sequence models.

Runtime use (cheap: imports only the loader)::

    import seqtune
    config = seqtune.best_config("attention", B=4, T=4096, S=4096, Hq=32, Hkv=8, D=128,
                                 causal=True, dtype="bfloat16")

The library API behind the CLI (``seqtune.tune``, ``verify``, ``report``, ``bench``, ``check``,
``merge``, ``replay``, ``info``, ``list_kernels``) is loaded on first use from ``seqtune.api``: each
returns data and prints nothing.

Any Triton kernel, tuned offline: ``seqtune.autotune`` (a drop-in for ``triton.autotune`` that
never benchmarks at run time) and ``seqtune.freeze_triton_autotune()`` (or
``SEQTUNE_FREEZE_AUTOTUNE=1|strict``) for other libraries' ``triton.autotune`` kernels.
"""
import os as _os

__version__ = "0.1.0"

_LOADER = ("best_config", "load_profile")
_API = ("tune", "verify", "report", "bench", "check", "merge", "replay", "info", "list_kernels",
        "record")
_OFFLINE = ("autotune", "freeze_triton_autotune")

__all__ = ["__version__", *_LOADER, *_API, *_OFFLINE]

# Only when asked: freezing imports Triton and torch, which a plain `import seqtune` does not.
if _os.environ.get("SEQTUNE_FREEZE_AUTOTUNE", "").strip() not in ("", "0"):
    from seqtune.offline import freeze_from_env as _freeze_from_env

    _freeze_from_env()


def __getattr__(name: str):
    # Everything loads on first use: the loader (and torch with it) when model code asks for a
    # config, the tuner, search and analysis stacks when a tool function is called. Importing
    # the package itself is free, so `seqtune --help` starts without torch or Triton.
    if name in _LOADER:
        from seqtune import loader

        return getattr(loader, name)
    if name in _API:
        from seqtune import api

        return getattr(api, name)
    if name in _OFFLINE:
        from seqtune import offline

        return getattr(offline, name)
    raise AttributeError(f"module 'seqtune' has no attribute {name!r}")
