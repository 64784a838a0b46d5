"""Profile files: one YAML per device, ``<profile-dir>/<device-key>.yaml``, schema
``seqtune-profile/1``. Writes are locked, merged with what is on disk, and atomic; reads take
only regular files of bounded size and refuse YAML anchors and deep nesting
(``seqtune.store.safe_read``)."""
from __future__ import annotations

import contextlib
import errno
import os
import platform
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

import yaml

from seqtune.errors import Failure, UsageError
from seqtune.store.safe_read import UnsafeFile, load_yaml, read_regular_file

SCHEMA = "seqtune-profile/1"
ENV_PROFILE_DIR = "SEQTUNE_PROFILE_DIR"


class ProfileError(ValueError):
    """A profile file that cannot be read or trusted; the message names the file and the problem."""


def user_profile_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_cache_dir("seqtune"))


def resolve_profile_dir(explicit: str | os.PathLike | None = None) -> Path:
    """``--profile-dir``, else ``$SEQTUNE_PROFILE_DIR``, else the user cache dir. An empty
    ``explicit`` is a UsageError: it would mean the current directory."""
    if explicit is not None:
        if not str(explicit).strip():
            raise UsageError("the profile dir must not be empty (name a folder, e.g. "
                             "--profile-dir ./profiles)")
        return Path(explicit)
    if os.environ.get(ENV_PROFILE_DIR):
        return Path(os.environ[ENV_PROFILE_DIR])
    return user_profile_dir()


def shipped_profile_dir() -> Path:
    import seqtune.profiles

    return Path(seqtune.profiles.__file__).parent


def profile_path(profile_dir: Path, device_key: str) -> Path:
    return Path(profile_dir) / f"{device_key}.yaml"


def software_versions() -> dict[str, str | None]:
    from importlib.metadata import version

    import torch
    import triton

    versions = {"seqtune": version("seqtune"), "triton": triton.__version__,
                "torch": torch.__version__, "cuda": torch.version.cuda,
                "python": platform.python_version()}
    return {k: None if v is None else str(v) for k, v in versions.items()}


def read_profile(path: Path) -> dict[str, Any]:
    """The parsed profile, or ProfileError naming the file and what is wrong with it."""
    path = Path(path)
    try:
        text = read_regular_file(path).decode("utf-8")
    except FileNotFoundError:
        raise ProfileError(f"{path}: no such profile") from None
    except UnsafeFile as exc:
        raise ProfileError(f"{path}: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ProfileError(f"{path}: cannot read profile: {exc}") from None
    try:
        data = load_yaml(text)
    except UnsafeFile as exc:
        raise ProfileError(f"{path}: {exc}") from None
    except (yaml.YAMLError, ValueError) as exc:  # ValueError: e.g. an int of 10,000 digits
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ProfileError(f"{path}: not valid YAML ({detail})") from None
    if not isinstance(data, dict):
        raise ProfileError(f"{path}: expected a mapping at the top, got {type(data).__name__}")
    if data.get("schema") != SCHEMA:
        raise ProfileError(f"{path}: schema is {data.get('schema')!r}, expected {SCHEMA!r}")
    for field in ("device", "software"):
        if not isinstance(data.get(field, {}), dict):
            raise ProfileError(f"{path}: '{field}' must be a mapping, "
                               f"got {type(data[field]).__name__}")
    kernels = data.get("kernels", {})
    if not isinstance(kernels, dict):
        raise ProfileError(f"{path}: 'kernels' must be a mapping, got {type(kernels).__name__}")
    for name, section in kernels.items():
        if not isinstance(name, str):
            raise ProfileError(f"{path}: kernel names must be strings, got {name!r}")
        if not isinstance(section, dict) or not isinstance(section.get("entries", []), list):
            raise ProfileError(f"{path}: kernels.{name} must be a mapping with a list 'entries'")
    return data


def _proc_umask() -> int | None:
    """The process's umask now, from /proc (Linux), read without changing it; None elsewhere."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _umask_by_setting() -> int:
    # os.umask can only be read by setting it, and in that moment another thread's files would
    # get the temporary mask: done once, at import, and only where /proc cannot tell.
    current = os.umask(0o022)
    os.umask(current)
    return current


_UMASK_AT_IMPORT = _proc_umask()
if _UMASK_AT_IMPORT is None:
    _UMASK_AT_IMPORT = _umask_by_setting()


def _process_umask() -> int:
    current = _proc_umask()
    return _UMASK_AT_IMPORT if current is None else current


class _NoAliasDumper(yaml.SafeDumper):
    """Writes an object seen twice in full each time: the reader refuses anchors and aliases."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def write_profile_atomic(path: Path, profile: dict[str, Any]) -> None:
    """Write to a temp file beside ``path``, fsync, then rename over it: never half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_process_umask())  # mkstemp's 0600 would hide a shared profile
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            yaml.dump(profile, handle, Dumper=_NoAliasDumper, sort_keys=False,
                      default_flow_style=None, width=100)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on ``<path>.lock`` (flock, as filelock takes it) held for the block.
    The lock file is opened without following a symlink: one planted there is refused with
    Failure instead of truncating or creating whatever it points to."""
    import fcntl

    lock = Path(str(path) + ".lock")
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise Failure(f"{lock}: is a symbolic link; seqtune does not follow links for its "
                          "lock files (remove it)") from None
        raise
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def merge_entries(existing: list[dict], new: Iterable[dict]) -> list[dict]:
    """Existing entries with the new ones replacing those of the same problem."""
    merged = {_problem_key(e["problem"]): e for e in existing if isinstance(e, dict)
              and isinstance(e.get("problem"), dict)}
    for entry in new:
        merged[_problem_key(entry["problem"])] = entry
    return list(merged.values())


def _problem_key(problem: dict) -> tuple:
    return tuple(sorted((str(k), str(v)) for k, v in problem.items()))


def save_entries(path: Path, device: dict[str, Any], kernel: str, source_hash: str,
                 entries: list[dict]) -> dict[str, Any]:
    """Merge one kernel's entries into the profile at ``path`` under a lock; returns the profile.

    Every other kernel and every other problem of this kernel is kept. An unreadable existing
    file is not silently replaced: ProfileError.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(path):
        profile = read_profile(path) if path.exists() else {"schema": SCHEMA}
        profile["device"] = device
        profile["software"] = software_versions()
        kernels = profile.setdefault("kernels", {})
        section = kernels.setdefault(kernel, {"entries": []})
        if section.get("source_hash") != source_hash:
            # Entries from older code keep their own hash so they stay recognisably stale.
            for entry in section.get("entries", []):
                entry.setdefault("source_hash", section.get("source_hash"))
        section["source_hash"] = source_hash
        section["entries"] = merge_entries(section.get("entries", []), entries)
        profile["kernels"] = dict(sorted(kernels.items()))
        write_profile_atomic(path, profile)
    return profile
