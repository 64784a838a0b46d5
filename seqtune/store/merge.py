"""``seqtune merge``: one profile from several profiles of the same device (the shards of a job
array, tunes from several machines of one type, an old profile and a new one).

Rules, per kernel and problem (bucketed problem key):

- Freshness: an entry is *fresh* when its kernel source hash and Triton version equal those of
  the kernel's most recently tuned entry (latest ``tuned_at``) among all the inputs, else
  *stale*. The merge judges by the inputs, not by what is installed where it runs, so merging
  on a laptop with another Triton changes nothing.
- The best entry wins: the fresh entry with the lowest ``time_us.median``; a stale entry is
  kept only when the problem has no fresh one (the runtime then treats it as stale, as it would
  have in its own file). Equal medians: the earlier file on the command line wins.
- Provenance: every kept entry gets ``origin: {file, device, tuned_at}`` (the file it came
  from, that file's device name, when it was tuned); an entry that already has an ``origin``
  (it went through an earlier merge) keeps it, since that names where it was measured.
- Validity: every input entry is judged as the loader judges it (``seqtune.store.validate``),
  and its timing must have a positive finite median (a median of 0 would win every merge). A
  file with an invalid entry is refused (Failure naming the file and the entry) unless
  ``skip_invalid``, which leaves such entries out (listed in the summary's ``skipped``).
- Devices: all inputs must have the same device key; ``--force`` merges different keys (one GPU
  model reported under two names, say), and the output keeps the first file's device.
- The output (default ``<profile-dir>/<device-key>.yaml``) is merged in when it exists, under
  the same lock as tunes take, and written atomically: a merge never loses entries already
  there, and re-running it changes nothing.
"""
from __future__ import annotations

import copy
import dataclasses
import datetime
import math
from pathlib import Path
from typing import Any, Sequence

from seqtune.errors import Failure
from seqtune.store.profile_file import (
    SCHEMA,
    file_lock,
    profile_path,
    read_profile,
    resolve_profile_dir,
    write_profile_atomic,
)
from seqtune.store.validate import entry_name, invalid_entries


class DeviceMismatch(ValueError):
    """Profiles of different device keys, merged without ``--force``."""


@dataclasses.dataclass
class Offer:
    """One file's entry for one problem, with what the merge judges it by."""

    entry: dict[str, Any]
    version: tuple[str | None, str | None]  # (kernel source hash, Triton version)
    tuned_at: datetime.datetime
    median_us: float
    file_order: int


@dataclasses.dataclass
class MergeSummary:
    """What a merge did, per kernel: entries written, problems offered by several files,
    stale entries kept for want of a fresh one, and how many kept entries each file gave."""

    output: Path
    device_key: str
    entries: dict[str, int]
    contested: dict[str, int]
    stale_kept: dict[str, int]
    kept_from: dict[str, int]
    skipped: list[str] = dataclasses.field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "output": str(self.output)}


def merge_into(files: Sequence[Path], output: Path | None = None,
               profile_dir: Path | None = None, force: bool = False,
               skip_invalid: bool = False) -> MergeSummary:
    """Merge ``files`` (and ``output``, if it exists) into ``output``: see the module rules."""
    inputs = _unique_paths(files)
    skipped: list[str] = []
    loaded = [(path, _valid_profile(path, skip_invalid, skipped)) for path in inputs]
    device = _common_device(loaded, force)
    target = Path(output) if output else profile_path(resolve_profile_dir(profile_dir),
                                                      device["key"])
    target.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(target):
        if target.exists() and target.resolve() not in {p.resolve() for p in inputs}:
            loaded.append((target, _valid_profile(target, skip_invalid, skipped)))
            _common_device(loaded, force)
        merged, summary = merge_profiles(loaded, device)
        write_profile_atomic(target, merged)
    summary.output = target
    summary.skipped = skipped
    return summary


def _valid_profile(path: Path, skip_invalid: bool, skipped: list[str]) -> dict[str, Any]:
    """The profile at ``path``; Failure naming its first invalid entry, or with
    ``skip_invalid`` the profile without its invalid entries (each named in ``skipped``)."""
    from seqtune.registry import all_specs

    profile = read_profile(path)
    invalid = list(invalid_entries(profile, all_specs()))
    if invalid and not skip_invalid:
        kernel, index, reason = invalid[0]
        more = f" (and {len(invalid) - 1} more invalid entries)" if len(invalid) > 1 else ""
        raise Failure(f"{entry_name(path, kernel, index)}: {reason}{more}; fix or remove it, "
                      "or merge with --skip-invalid to leave invalid entries out")
    dropped = {(kernel, index) for kernel, index, _ in invalid}
    for kernel, section in (profile.get("kernels") or {}).items():
        section["entries"] = [entry for index, entry in enumerate(section.get("entries", []))
                              if (kernel, index) not in dropped]
    skipped.extend(f"{entry_name(path, kernel, index)}: {reason}"
                   for kernel, index, reason in invalid)
    return profile


def _unique_paths(files: Sequence[Path]) -> list[Path]:
    seen, unique = set(), []
    for path in map(Path, files):
        if path.resolve() not in seen:
            seen.add(path.resolve())
            unique.append(path)
    return unique


def _common_device(loaded: list[tuple[Path, dict]], force: bool) -> dict[str, Any]:
    """The first profile's device; DeviceMismatch if the keys differ and ``force`` is off."""
    keys = {str(path): (profile.get("device") or {}).get("key") for path, profile in loaded}
    if None in keys.values() and not force:
        missing = next(path for path, key in keys.items() if key is None)
        raise DeviceMismatch(f"{missing} names no device key; --force merges it anyway")
    if len(set(keys.values())) > 1 and not force:
        listed = ", ".join(f"{path}: {key}" for path, key in keys.items())
        raise DeviceMismatch(f"profiles of different devices ({listed}); merge profiles of one "
                             "device, or pass --force to merge them under the first one's")
    device = dict(loaded[0][1].get("device") or {})
    device.setdefault("key", next((k for k in keys.values() if k), "unknown-device"))
    return device


def merge_profiles(loaded: list[tuple[Path, dict]],
                   device: dict[str, Any]) -> tuple[dict[str, Any], MergeSummary]:
    """The merged profile of ``(path, profile)`` pairs (in priority order for ties)."""
    offers = _offers_by_kernel(loaded)
    kernels: dict[str, Any] = {}
    summary = MergeSummary(Path(), device["key"], {}, {}, {}, {})
    newest_per_kernel = []
    for kernel, by_problem in sorted(offers.items()):
        everything = [offer for problem in by_problem.values() for offer in problem]
        newest = max(everything, key=_recency)
        newest_per_kernel.append(newest)
        # In problem order, so the output does not depend on the order of the inputs.
        kept = [_best(by_problem[key], newest.version) for key in sorted(by_problem)]
        kernels[kernel] = {"source_hash": newest.version[0],
                           "entries": [offer.entry for offer in kept]}
        summary.entries[kernel] = len(kept)
        summary.contested[kernel] = sum(len(problem) > 1 for problem in by_problem.values())
        summary.stale_kept[kernel] = sum(offer.version != newest.version for offer in kept)
        for offer in kept:
            source = str(loaded[offer.file_order][0])
            summary.kept_from[source] = summary.kept_from.get(source, 0) + 1
    # The software mapping is the fallback Triton version of entries without their own: take
    # it from the file that holds the most recent entry.
    software_from = loaded[max(newest_per_kernel, key=_recency).file_order if newest_per_kernel
                           else 0][1]
    merged = {"schema": SCHEMA, "device": device,
              "software": dict(software_from.get("software") or {}), "kernels": kernels}
    return merged, summary


def _offers_by_kernel(loaded: list[tuple[Path, dict]]) -> dict[str, dict[tuple, list[Offer]]]:
    """kernel -> problem key -> every file's offer, each entry a copy carrying its origin and
    its own source hash and Triton version (it may land in a section of another version)."""
    offers: dict[str, dict[tuple, list[Offer]]] = {}
    for order, (path, profile) in enumerate(loaded):
        profile_triton = (profile.get("software") or {}).get("triton")
        device_name = (profile.get("device") or {}).get("name")
        for kernel, section in (profile.get("kernels") or {}).items():
            for raw in section.get("entries", []):
                if not (isinstance(raw, dict) and isinstance(raw.get("problem"), dict)):
                    continue
                entry = copy.deepcopy(raw)
                entry.setdefault("source_hash", section.get("source_hash"))
                entry.setdefault("triton", profile_triton)
                entry.setdefault("origin", {"file": str(path), "device": device_name,
                                            "tuned_at": entry.get("tuned_at")})
                key = tuple(sorted((str(k), str(v)) for k, v in entry["problem"].items()))
                offers.setdefault(kernel, {}).setdefault(key, []).append(Offer(
                    entry, (entry["source_hash"], entry["triton"]), _tuned_at(entry),
                    _median(entry), order))
    return offers


def _recency(offer: Offer) -> tuple[datetime.datetime, int]:
    """Later tuned first; at the same time, the earlier file."""
    return offer.tuned_at, -offer.file_order


def _best(offers: list[Offer], fresh: tuple[str | None, str | None]) -> Offer:
    return min(offers, key=lambda offer: (offer.version != fresh, offer.median_us,
                                          offer.file_order))


def _tuned_at(entry: dict[str, Any]) -> datetime.datetime:
    """When the entry was tuned (UTC); entries without a readable time count as oldest."""
    try:
        moment = datetime.datetime.fromisoformat(str(entry.get("tuned_at")))
    except ValueError:
        return datetime.datetime.min.replace(tzinfo=datetime.timezone.utc)
    return moment if moment.tzinfo else moment.replace(tzinfo=datetime.timezone.utc)


def _median(entry: dict[str, Any]) -> float:
    """The entry's median time (µs); an entry without a usable one loses every comparison."""
    try:
        median = float((entry.get("time_us") or {}).get("median"))
    except (AttributeError, TypeError, ValueError):
        return math.inf
    return median if math.isfinite(median) else math.inf
