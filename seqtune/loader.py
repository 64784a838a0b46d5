"""The runtime loader: the tuned config for a problem, with no tuning at run time.

``best_config(kernel, **problem)`` matches categorical fields (dtype, causal, ...) exactly and
size fields (batch, heads, lengths) by the nearest entry in log2, skips any entry whose config is
invalid for the actual problem on this device, and otherwise returns the kernel's default.
Nothing in the launch path raises for a missing, stale or malformed profile: it warns once and
falls back. Lookups are cached, so a warm one costs a dictionary hit.

``SEQTUNE_LOG=1`` logs which config was chosen and why (once per distinct problem).
``SEQTUNE_STALE=use|warn|ignore`` (default ``warn``): what to do with entries tuned by another
Triton version or an older kernel source: use them silently, use them and warn once, or ignore
them.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Mapping

from seqtune.spec import Config, KernelSpec, Problem, dtype_name
from seqtune.store.profile_file import (
    ENV_PROFILE_DIR,
    ProfileError,
    profile_path,
    read_profile,
    resolve_profile_dir,
    shipped_profile_dir,
)
from seqtune.store.validate import EntryRules, InvalidEntry, entry_name

log = logging.getLogger("seqtune")
_warned: set[str] = set()


def warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def _log_enabled() -> bool:
    return os.environ.get("SEQTUNE_LOG", "") not in ("", "0")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at each record (a redirected or captured stderr
    too), not to the stream that was current when logging was first enabled."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def log_choice(message: str) -> None:
    if _log_enabled():
        # SEQTUNE_LOG=1 is authoritative: the handler and the level are (re)set here, since
        # other code (a test's log capture, an application) may reset the logger's level.
        if not any(isinstance(h, _StderrHandler) for h in log.handlers):
            handler = _StderrHandler()
            handler.setFormatter(logging.Formatter("seqtune: %(message)s"))
            log.addHandler(handler)
        if not log.isEnabledFor(logging.INFO):
            log.setLevel(logging.INFO)
        log.info(message)


@dataclasses.dataclass
class Entry:
    problem: Problem
    config: Config
    stale_reason: str | None
    origin: str


class Profile:
    """Entries of one or more profile files, merged, ready for matching."""

    def __init__(self, entries: dict[str, list[Entry]], sources: list[Path]):
        self.entries = entries
        self.sources = sources
        self._cache: dict[tuple, Config] = {}

    def best_config(self, kernel: str, problem: Mapping[str, Any]) -> Config:
        # Keyed in the caller's field order (no sort: this is the launch path's hot line); the
        # same problem spelled in another order only costs one more cache entry.
        cache_key = (kernel, *problem.items())
        cached = self._cache.get(cache_key)
        if cached is None:
            cached = self._cache[cache_key] = self._match(kernel, dict(problem))
        return dict(cached)

    def tuned_config(self, kernel: str, problem: Mapping[str, Any]) -> Config | None:
        """The config of the nearest usable entry, or None (then the caller logs its own
        fallback: ``seqtune.freeze_triton_autotune``, ``seqtune.autotune``)."""
        cache_key = ("tuned", kernel, *problem.items())
        if cache_key not in self._cache:
            from seqtune.device import runtime_device
            from seqtune.registry import get_spec

            spec = get_spec(kernel)
            self._cache[cache_key] = self._tuned(spec, _normalise(spec, dict(problem)),
                                                 runtime_device()[1])
        cached = self._cache[cache_key]
        return None if cached is None else dict(cached)

    def _match(self, kernel: str, problem: Problem) -> Config:
        from seqtune.device import runtime_device
        from seqtune.registry import get_spec

        spec = get_spec(kernel)
        problem = _normalise(spec, problem)
        limits = runtime_device()[1]
        tuned = self._tuned(spec, problem, limits)
        if tuned is not None:
            return tuned
        config = spec.default_for(problem, limits)
        why = "the default" if config == spec.default_config else "nearest valid to the default"
        if _log_enabled():
            log_choice(f"{kernel} {problem}: {why} {config} (no usable tuned entry"
                       f"{self._mismatch(spec, problem)})")
        return config

    def _tuned(self, spec: KernelSpec, problem: Problem, limits: Any) -> Config | None:
        kernel = spec.name
        for entry, distance in self._candidates(spec, problem):
            try:
                reason = spec.check(entry.config, problem, limits)
            except Exception as exc:  # a check that cannot judge this problem does not vouch
                reason = f"check raised {type(exc).__name__}: {exc}"
            if reason is None:
                log_choice(f"{kernel} {problem}: tuned config {entry.config} from "
                           f"{entry.origin} (entry {entry.problem}, log2 distance {distance:g})")
                return dict(entry.config)
            log_choice(f"{kernel}: entry {entry.problem} skipped, invalid here: {reason}")
        return None

    def _mismatch(self, spec: KernelSpec, problem: Problem) -> str:
        """``": entries differ in D (64, here 128)"``: the categorical fields (matched exactly,
        unlike sizes) that kept this kernel's entries from matching, for the log."""
        entries = self.entries.get(spec.name, [])
        if not entries:
            return ": the profile has no entry of this kernel"
        fields: dict[str, set] = {}
        for entry in entries:
            for field, value in problem.items():
                if field not in spec.size_fields and entry.problem.get(field) != value:
                    fields.setdefault(field, set()).add(repr(entry.problem.get(field)))
        words = [f"{field} ({', '.join(sorted(values))}; here {problem[field]!r})"
                 for field, values in fields.items()]
        return f": entries differ in {', '.join(words)}, which must match exactly" if words else ""

    def _candidates(self, spec: KernelSpec, problem: Problem) -> list[tuple[Entry, float]]:
        """Usable entries with the same categorical fields, nearest in log2 first."""
        policy = os.environ.get("SEQTUNE_STALE", "warn")
        scored = []
        for entry in self.entries.get(spec.name, []):
            distance = problem_distance(spec, entry.problem, problem)
            if distance is None:
                continue
            if entry.stale_reason:
                if policy == "ignore":
                    continue
                if policy != "use":
                    warn_once(f"seqtune: using stale entries of {spec.name} from "
                              f"{entry.origin} ({entry.stale_reason}); re-run `seqtune tune "
                              f"{spec.name}` or set SEQTUNE_STALE=use|ignore")
            scored.append((entry, distance))
        scored.sort(key=lambda pair: pair[1])
        return scored


def _normalise(spec: KernelSpec, problem: Problem) -> Problem:
    for field, value in spec.problem_defaults.items():
        problem.setdefault(field, value)
    if "dtype" in problem:
        problem["dtype"] = dtype_name(problem["dtype"])
    return problem


def problem_distance(spec: KernelSpec, entry: Problem, problem: Problem) -> float | None:
    """Sum of |log2| differences over size fields; None if a categorical field differs."""
    if set(entry) != set(problem):
        return None
    total = 0.0
    for field, value in problem.items():
        if field in spec.size_fields:
            try:
                total += abs(math.log2(max(int(entry[field]), 1)) - math.log2(max(value, 1)))
            except (TypeError, ValueError):
                return None
        elif entry[field] != value:
            return None
    return total


def _entries_from(path: Path, current_triton: str) -> dict[str, list[Entry]]:
    """The usable entries of one file by kernel; each kernel's unusable ones are skipped with one
    warning naming the file, the first of them and why, and how many there were."""
    from seqtune.registry import all_specs, source_hash

    data = read_profile(path)
    triton_version = (data.get("software") or {}).get("triton")
    found: dict[str, list[Entry]] = {}
    specs = all_specs()
    for kernel, section in data.get("kernels", {}).items():
        if kernel not in specs:
            warn_once(f"seqtune: {path}: unknown kernel {kernel!r} ignored")
            continue
        rules = EntryRules(specs[kernel], (data.get("device") or {}).get("backend"))
        current_hash = source_hash(kernel)
        invalid: list[str] = []
        for index, raw in enumerate(section.get("entries", [])):
            try:
                problem, config = rules.usable(raw)
            except InvalidEntry as exc:
                invalid.append(f"{entry_name(path, kernel, index)} ignored: {exc}")
                continue
            stale = stale_reason(raw, section, triton_version, current_triton, current_hash)
            found.setdefault(kernel, []).append(Entry(problem, config, stale, str(path)))
        if invalid:
            more = f" (and {len(invalid) - 1} more invalid entries)" if len(invalid) > 1 else ""
            warn_once(f"seqtune: {invalid[0]}{more}")
    return found


def stale_reason(raw: dict, section: dict, profile_triton: str | None, current_triton: str,
                 current_hash: str) -> str | None:
    """Why an entry was tuned by other code than is running now, or None (also for an entry that
    is no mapping: whether it is usable is for ``seqtune.store.validate`` to say)."""
    if not isinstance(raw, dict) or not isinstance(section, dict):
        return None
    if raw.get("source_hash", section.get("source_hash")) != current_hash:
        return "kernel source changed since tuning"
    tuned_with = raw.get("triton", profile_triton)
    if tuned_with != current_triton:
        return f"tuned with triton {tuned_with}, running {current_triton}"
    return None


def load_profile(path: str | os.PathLike | None = None) -> Profile:
    """Load the profile the runtime uses and make it active for ``best_config``.

    ``path=None``: ``<device-key>.yaml`` of this device from the profile dir
    (``$SEQTUNE_PROFILE_DIR`` or the user cache dir), then the shipped ``profiles/``. A file that
    cannot be read warns once and contributes nothing.
    """
    global _active
    _active = read_profiles(None if path is None else [Path(path)])
    return _active


def read_profiles(paths: list[Path] | None = None, profile_dir: Path | None = None) -> Profile:
    """The entries of ``paths`` (None: this device's profile in ``profile_dir``, else the
    runtime's profile dir, then the shipped one, where they exist) as a Profile, without
    making it active. A file that cannot be read warns once and contributes nothing."""
    import triton

    if paths is None:
        from seqtune.device import runtime_device

        key = runtime_device()[0]
        folders = (resolve_profile_dir(profile_dir), shipped_profile_dir())
        if (profile_dir or os.environ.get(ENV_PROFILE_DIR)) and not folders[0].is_dir():
            log_choice(f"profile dir {folders[0]} does not exist (mistyped "
                        f"--profile-dir or ${ENV_PROFILE_DIR}?): no tuned configs from it")
        paths = [p for p in (profile_path(d, key) for d in folders) if os.path.exists(p)]
    entries: dict[str, list[Entry]] = {}
    for file in paths:
        try:
            found = _entries_from(file, triton.__version__)
        except ProfileError as exc:
            warn_once(f"seqtune: {exc}; using default configs")
            continue
        except Exception as exc:  # the launch path never raises because of a profile
            warn_once(f"seqtune: {file}: cannot use profile ({type(exc).__name__}: {exc}); "
                      "using default configs")
            continue
        for kernel, items in found.items():
            entries.setdefault(kernel, []).extend(items)
    return Profile(entries, paths)


_active: Profile | None = None


def reread_profile() -> None:
    """Read the active profile's files again, if one is active: a kernel registered since
    (``seqtune.autotune``) gets the entries that were skipped as unknown."""
    global _active
    if _active is not None:
        _active = read_profiles(list(_active.sources))


def active_profile() -> Profile:
    return _active if _active is not None else load_profile()


def best_config(kernel: str, **problem: Any) -> Config:
    """The tuned config for ``kernel`` on ``problem`` (keys as in the profile's ``problem``;
    dtype as a name or a torch.dtype), or the kernel's default."""
    return (_active or load_profile()).best_config(kernel, problem)


def config_for(kernel: str, problem: Problem, config: Mapping[str, Any] | None) -> Config:
    """What a kernel launches with: ``config`` completed from the default and checked against
    the problem (ValueError naming the bad knob), or the loader's choice when ``config`` is None."""
    if config is None:
        return best_config(kernel, **problem)
    from seqtune.device import runtime_device
    from seqtune.registry import get_spec

    spec = get_spec(kernel)
    full = spec.validate_config(config)
    problem = _normalise(spec, dict(problem))
    reason = spec.check(full, problem, runtime_device()[1])
    if reason is not None:
        raise ValueError(f"{kernel}: config {config} cannot run {problem}: {reason}")
    return full
