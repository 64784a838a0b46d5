"""Where a search starts besides the default: configs already tuned for nearby problems.

A tune of a preset tunes related problems one after another, and a new GPU is usually close to
one already profiled, so a good config of the nearest tuned problem is a far better start than a
random one. ``tuned_starts`` returns, for each profile found (this device's first, then those of
devices of the same compute capability, then of the same major version), the config of the entry
nearest to the problem in log2 of the size fields (categorical fields must match). Stale entries
count too: a start is measured like any other config, never trusted.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from seqtune.device import DeviceInfo
from seqtune.loader import problem_distance
from seqtune.spec import Config, KernelSpec, Problem
from seqtune.store.profile_file import ProfileError, read_profile
from seqtune.store.validate import EntryRules, InvalidEntry

MAX_STARTS = 3


def device_similarity(device: DeviceInfo, other: dict[str, Any]) -> int | None:
    """0 for the same device, 1 for the same compute capability, 2 for the same major version;
    None for another backend or architecture family (its configs would not carry over)."""
    if other.get("key") == device.key:
        return 0
    if device.backend == "hip" and other.get("backend") == "hip":  # same gfx: same code
        return 1 if other.get("arch") == device.arch else None
    if other.get("backend") != device.backend or device.backend != "cuda":
        return None
    capability, theirs = device.compute_capability or "", str(other.get("compute_capability"))
    if theirs == capability:
        return 1
    if theirs.partition(".")[0] == capability.partition(".")[0]:
        return 2
    return None


def similar_profiles(folders: list[Path], device: DeviceInfo) -> list[dict[str, Any]]:
    """The readable profiles in ``folders`` of this or a similar device, most similar first
    (the first folder first among equals)."""
    scored = []
    for rank, folder in enumerate(folders):
        for path in sorted(Path(folder).glob("*.yaml")):
            try:
                profile = read_profile(path)
            except ProfileError:
                continue  # the loader warns about it; a start is only a hint
            similarity = device_similarity(device, profile.get("device") or {})
            if similarity is not None:
                scored.append((similarity, rank, str(path), profile))
    return [profile for *_, profile in sorted(scored, key=lambda item: item[:3])]


def tuned_starts(spec: KernelSpec, problem: Problem, device: DeviceInfo,
                 folders: list[Path]) -> list[Config]:
    """Up to ``MAX_STARTS`` configs: per similar profile, its entry of ``spec`` nearest to
    ``problem`` (an entry of the problem itself included: a re-tune starts from its last
    winner)."""
    key = spec.bucket(problem)
    rules = EntryRules(spec)
    starts: list[Config] = []
    for profile in similar_profiles(folders, device):
        entries = ((profile.get("kernels") or {}).get(spec.name) or {}).get("entries") or []
        scored = [pair for entry in entries
                  if (pair := _nearness(spec, rules, entry, key)) is not None]
        if scored:
            config = min(scored, key=lambda pair: pair[0])[1]
            if config not in starts:
                starts.append(config)
        if len(starts) == MAX_STARTS:
            break
    return starts


def _nearness(spec: KernelSpec, rules: EntryRules, entry: Any,
              key: Problem) -> tuple[float, Config] | None:
    """How far a profile entry's problem is from ``key``, with its config; None for an entry
    that does not match or that the loader would not use (it warns about those)."""
    try:
        problem, config = rules.usable(entry)
    except InvalidEntry:
        return None
    distance = problem_distance(spec, spec.bucket(problem), key)
    return None if distance is None else (distance, config)
