"""Finds the kernel specs: every folder under ``seqtune.kernels`` with a ``spec.py`` that
defines ``SPECS``. Adding a kernel means adding a folder; nothing here changes.

Kernels from outside seqtune plug in through ``SEQTUNE_KERNEL_MODULES``: comma-separated
importable modules, each defining ``SPECS`` like a kernel folder's ``spec.py``. Importing a
module runs its code, so name only modules you trust. A module that cannot be imported or
defines no usable ``SPECS`` warns once and is skipped (the built-in kernels still load); one that
replaces a built-in kernel's spec warns, naming both.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import importlib
import os
import pkgutil
import warnings
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
    built_in = set(specs)
    for name in filter(None, (n.strip() for n in
                              os.environ.get("SEQTUNE_KERNEL_MODULES", "").split(","))):
        _add_plugin(specs, name, built_in)
    for folder in workload_dirs():
        _add_workloads(specs, folder, built_in)
    return dict(sorted(specs.items()))


# The profile dirs whose recorded workloads this process uses besides the runtime's own; set by
# the tools for --profile-dir and inherited by the tuning workers they spawn.
ENV_WORKLOAD_DIRS = "SEQTUNE_WORKLOAD_DIRS"


def workload_dirs() -> list[Path]:
    """The runtime's profile dir, then those of ``$SEQTUNE_WORKLOAD_DIRS``."""
    from seqtune.store.profile_file import resolve_profile_dir

    extra = [Path(p) for p in os.environ.get(ENV_WORKLOAD_DIRS, "").split(os.pathsep) if p]
    return list(dict.fromkeys([resolve_profile_dir(None), *extra]))


def _add_workloads(specs: dict[str, KernelSpec], folder: Path, built_in: set[str]) -> None:
    """The kernels recorded into a profile dir (``seqtune tune --workload``); a damaged
    workload file warns once and costs only its kernels."""
    from seqtune.workload.spec import folder_specs

    found, problems = folder_specs(folder)
    for problem in problems:
        warnings.warn(f"seqtune: workload skipped: {problem}", RuntimeWarning, stacklevel=4)
    specs.update((name, spec) for name, spec in found.items() if name not in built_in)


def use_workload_dir(folder: Path) -> None:
    """Also know the kernels recorded into ``folder`` (a ``--profile-dir``), in this process
    (read again if the specs were scanned before: the folder may have changed since) and in
    the processes it starts."""
    folder = Path(folder)
    if folder not in workload_dirs():
        known = os.environ.get(ENV_WORKLOAD_DIRS, "")
        os.environ[ENV_WORKLOAD_DIRS] = os.pathsep.join(filter(None, [known, str(folder)]))
    scanned = getattr(all_specs, "cache_info", None)  # absent where all_specs was replaced
    if scanned is not None and scanned().currsize:
        specs = all_specs()
        built_in = {n for n, s in specs.items() if not getattr(s, "digest", "")}
        _add_workloads(specs, folder, built_in)
        source_hash.cache_clear()


def register(spec: KernelSpec) -> bool:
    """Add or replace a kernel spec in this process (a live ``seqtune.autotune`` or frozen
    ``triton.autotune`` kernel); whether its name was unknown before."""
    specs = all_specs()
    new = spec.name not in specs
    specs[spec.name] = spec
    source_hash.cache_clear()
    return new


def _add(specs: dict[str, KernelSpec], module) -> None:
    folder = Path(module.__file__).parent
    for spec in module.SPECS:
        specs[spec.name] = dataclasses.replace(spec, source_dir=folder)


def _add_plugin(specs: dict[str, KernelSpec], name: str, built_in: set[str]) -> None:
    """The specs of one SEQTUNE_KERNEL_MODULES module; a module that fails warns and is
    skipped, since this runs in the launch path of every kernel (all_specs is cached, so each
    warning comes once)."""
    try:
        module = importlib.import_module(name)
        found = list(module.SPECS)
        if not found or not all(isinstance(spec, KernelSpec) for spec in found):
            raise TypeError("SPECS must be a non-empty sequence of KernelSpec")
        folder = Path(module.__file__).parent
    except Exception as exc:  # any error of foreign code: skip the module, keep the rest
        message = str(exc).splitlines()[0] if str(exc) else ""
        warnings.warn(f"seqtune: SEQTUNE_KERNEL_MODULES: cannot use module {name!r} "
                      f"({type(exc).__name__}: {message}); its kernels are skipped",
                      RuntimeWarning, stacklevel=4)
        return
    for spec in found:
        if spec.name in built_in:
            warnings.warn(f"seqtune: SEQTUNE_KERNEL_MODULES module {name!r} replaces the "
                          f"built-in kernel {spec.name!r}", RuntimeWarning, stacklevel=4)
        specs[spec.name] = dataclasses.replace(spec, source_dir=folder)


class UnknownKernelError(ValueError):
    pass


def get_spec(name: str) -> KernelSpec:
    specs = all_specs()
    if name not in specs:
        close = difflib.get_close_matches(name, list(specs), n=3, cutoff=0.6)
        if close:
            raise UnknownKernelError(f"unknown kernel {name!r}; did you mean "
                                     f"{' or '.join(repr(c) for c in close)}? (`seqtune list` "
                                     f"shows all {len(specs)})")
        raise UnknownKernelError(f"unknown kernel {name!r}; known: {', '.join(specs) or 'none'}")
    return specs[name]


@functools.cache
def source_hash(name: str) -> str:
    """A short hash of the kernel folder's Python sources: changes whenever the kernel does."""
    spec = get_spec(name)
    if getattr(spec, "digest", ""):  # a recorded kernel: its own digest of source and configs
        return spec.digest
    folder = spec.source_dir
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*.py")):
        digest.update(path.relative_to(folder).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]
