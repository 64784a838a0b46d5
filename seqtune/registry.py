"""Finds the kernel specs: every folder under ``seqtune.kernels`` with a ``spec.py`` that
defines ``SPECS``. Adding a kernel means adding a folder; nothing here changes.

Kernels from outside seqtune plug in through ``SEQTUNE_KERNEL_MODULES``: comma-separated
importable modules, each defining ``SPECS`` like a kernel folder's ``spec.py``.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib
import os
import pkgutil
from pathlib import Path

from seqtune.spec import KernelSpec


@functools.cache
def all_specs() -> dict[str, KernelSpec]:
    """Kernel name -> spec, for every kernel folder, in name order."""
    import seqtune.kernels as kernels_pkg

    specs: dict[str, KernelSpec] = {}
    for info in pkgutil.iter_modules(kernels_pkg.__path__):
        if not info.ispkg:
            continue
        try:
            module = importlib.import_module(f"seqtune.kernels.{info.name}.spec")
        except ModuleNotFoundError as exc:
            if exc.name == f"seqtune.kernels.{info.name}.spec":
                continue
            raise
        _add(specs, module)
    for name in filter(None, os.environ.get("SEQTUNE_KERNEL_MODULES", "").split(",")):
        _add(specs, importlib.import_module(name.strip()))
    return dict(sorted(specs.items()))


def _add(specs: dict[str, KernelSpec], module) -> None:
    folder = Path(module.__file__).parent
    for spec in module.SPECS:
        specs[spec.name] = dataclasses.replace(spec, source_dir=folder)


class UnknownKernelError(ValueError):
    pass


def get_spec(name: str) -> KernelSpec:
    specs = all_specs()
    if name not in specs:
        raise UnknownKernelError(f"unknown kernel {name!r}; known: {', '.join(specs) or 'none'}")
    return specs[name]


@functools.cache
def source_hash(name: str) -> str:
    """A short hash of the kernel folder's Python sources: changes whenever the kernel does."""
    folder = get_spec(name).source_dir
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*.py")):
        digest.update(path.relative_to(folder).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]
