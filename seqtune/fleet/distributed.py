"""Tuning under ``torchrun`` or any launcher that sets the torch.distributed environment
(RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT and LOCAL_RANK), on one node or many.

Each rank tunes its shard (split among the ranks on the same device type, so every type's
profile is complete) into a rank-local scratch profile dir. Rank 0 then gathers every rank's
entries and tuning-log lines and merges them into ``<profile-dir>/<device-key>.yaml`` (one per
device type, merged with what is on disk) and ``logs/<device-key>.jsonl``; the other ranks write
nothing to the profile dir, which therefore need only exist on rank 0's node.

The process group uses NCCL on CUDA and gloo on the CPU. Its timeout must outlast the slowest
shard (the gather waits for it): ``--budget-s`` plus an hour, else two days. A rank that dies is
the launcher's to detect (torchrun then ends every rank); a rank whose tune raises still joins
the gather, with its error, so the others never wait for it.
"""
from __future__ import annotations

import dataclasses
import datetime
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from seqtune.events import SILENT, Reporter
from seqtune.spec import KernelSpec

if TYPE_CHECKING:  # seqtune.tuning.tune loads the tuner stack; a rank loads it after its GPU mask
    from seqtune.device import DeviceInfo
    from seqtune.tuning.tune import TuneOptions

REQUIRED_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclasses.dataclass(frozen=True)
class LaunchEnv:
    """This process's place in a distributed launch."""

    rank: int
    world_size: int
    local_rank: int | None  # None: the launcher did not say; the GPU mask is left alone
    local_world_size: int


def launch_env(environ: Mapping[str, str] = os.environ) -> LaunchEnv | None:
    """The launch this process is part of, None if not launched for torch.distributed;
    ValueError if the variables are there but make no sense."""
    if not all(environ.get(name) for name in REQUIRED_ENV):
        return None
    try:
        launch = LaunchEnv(int(environ["RANK"]), int(environ["WORLD_SIZE"]),
                           int(environ["LOCAL_RANK"]) if environ.get("LOCAL_RANK") else None,
                           int(environ.get("LOCAL_WORLD_SIZE") or 1))
    except ValueError:
        raise ValueError("torch.distributed environment: RANK, WORLD_SIZE, LOCAL_RANK and "
                         "LOCAL_WORLD_SIZE must be integers") from None
    if not 0 <= launch.rank < launch.world_size:
        raise ValueError(f"torch.distributed environment: RANK={launch.rank} is not in "
                         f"0..WORLD_SIZE-1 (WORLD_SIZE={launch.world_size})")
    return launch


def pin_local_gpu(launch: LaunchEnv, environ: dict = os.environ) -> None:
    """Show this rank only GPU ``LOCAL_RANK`` (see ``seqtune.fleet.local`` for why a mask rather
    than ``torch.cuda.set_device``). Must run before CUDA initialises in this process. A mask of
    one device (or none) set by the launcher is kept: it already chose this rank's GPU."""
    if launch.local_rank is None:
        return
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        environ["CUDA_VISIBLE_DEVICES"] = str(launch.local_rank)
        return
    entries = [entry.strip() for entry in visible.split(",") if entry.strip()]
    if len(entries) <= 1:
        return
    if launch.local_rank >= len(entries):
        raise ValueError(f"LOCAL_RANK={launch.local_rank} but CUDA_VISIBLE_DEVICES={visible} "
                         f"lists {len(entries)} GPUs: start at most one rank per GPU")
    environ["CUDA_VISIBLE_DEVICES"] = entries[launch.local_rank]


def collective_timeout(options: TuneOptions) -> datetime.timedelta:
    """Long enough for the slowest rank's shard: the gather waits for it."""
    if options.budget_s is not None:
        return datetime.timedelta(seconds=options.budget_s + 3600)
    return datetime.timedelta(days=2)


def run_distributed(specs: Sequence[KernelSpec], device: DeviceInfo, options: TuneOptions,
                    launch: LaunchEnv, reporter: Reporter) -> dict[str, Any]:
    """Tune this rank's shard; rank 0 gathers all ranks' entries and writes the profiles.

    Every rank returns the fleet's ``errors`` (so all exit alike); rank 0 also returns every
    rank's problems and the profiles it wrote, the others only their own problems.
    """
    import torch
    import torch.distributed as dist

    backend = "gloo" if device.backend == "interpreter" else "nccl"  # RCCL on ROCm
    if backend == "nccl":
        torch.cuda.set_device(0)  # the one GPU this rank sees
    dist.init_process_group(backend, timeout=collective_timeout(options))
    try:
        run_id = _broadcast_from_rank0(options.run_id or uuid.uuid4().hex[:12])
        keys: list[Any] = [None] * launch.world_size
        dist.all_gather_object(keys, device.key)
        from seqtune.fleet.local import fleet_options
        from seqtune.fleet.shard import shard_plan

        shard = shard_plan(keys)[launch.rank]
        rank_options = fleet_options(options, shard, run_id, launch.local_world_size)
        payload = _tune_rank(specs, device, rank_options, launch, reporter)
        gathered: list[Any] | None = [None] * launch.world_size if launch.rank == 0 else None
        dist.gather_object(payload, gathered, dst=0)
        results = _write_gathered(gathered, options, reporter) if launch.rank == 0 else {}
        errors = _broadcast_from_rank0(results.get("errors"))
    finally:
        dist.destroy_process_group()
    if launch.rank != 0:
        results = {"problems": payload["problems"]}
    return {"mode": "torch.distributed", "backend": backend, "rank": launch.rank,
            "world_size": launch.world_size, "run_id": run_id, **results, "errors": errors}


def _broadcast_from_rank0(value: Any) -> Any:
    import torch.distributed as dist

    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def _tune_rank(specs: Sequence[KernelSpec], device: DeviceInfo, options: TuneOptions,
               launch: LaunchEnv, reporter: Reporter) -> dict[str, Any]:
    """Tune the shard into a scratch dir; what it measured (even if the tune failed part-way)
    as a picklable payload: the scratch profile, this run's log lines, the problems, the error."""
    from seqtune.fleet.shard import shard_work
    from seqtune.store.journal import log_path, read_log
    from seqtune.store.profile_file import profile_path, read_profile, resolve_profile_dir
    from seqtune.tuning.runner import one_line
    from seqtune.tuning.tune import run_tune

    who = f"rank {launch.rank} of {launch.world_size}"
    work = shard_work(specs, options.preset, options.max_configs, options.shard)
    count = len(work)
    total = len(shard_work(specs, options.preset, options.max_configs, None))
    reporter.message(f"{who} ({device.name}): tuning {count} of {total} problems")
    scratch = Path(tempfile.mkdtemp(prefix=f"seqtune-rank{launch.rank}-"))
    started = time.monotonic()
    payload: dict[str, Any] = {"rank": launch.rank, "device_key": device.key, "problems": [],
                               "error": None}
    try:
        if options.resume:
            _copy_log_for_resume(resolve_profile_dir(options.profile_dir), scratch, device.key)
        try:
            result = run_tune(work, device,
                              dataclasses.replace(options, profile_dir=scratch),
                              SILENT)  # its paths are scratch paths: rank 0 reports
            payload["timer"] = result["timer"]
            payload["problems"] = [{**p, "worker": f"rank {launch.rank}"}
                                   for p in result["problems"]]
        except Exception as exc:  # reported by rank 0; this rank still joins the gather
            payload["error"] = f"rank {launch.rank}: {one_line(exc)}"
            reporter.message(payload["error"], error=True)
        scratch_profile = profile_path(scratch, device.key)
        payload["profile"] = read_profile(scratch_profile) if scratch_profile.exists() else None
        scratch_log = log_path(scratch, device.key)
        payload["log"] = ([r for r in read_log(scratch_log) if r.get("run") == options.run_id]
                          if scratch_log.exists() else [])
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    reporter.message(f"{who}: tuned in {time.monotonic() - started:.0f} s")
    return payload


def _copy_log_for_resume(profile_dir: Path, scratch: Path, device_key: str) -> None:
    """``--resume`` reads the real tuning log, where this node can see it (a shared
    filesystem, or rank 0's node); a rank that cannot see it tunes its shard afresh."""
    from seqtune.store.journal import log_path

    source = log_path(profile_dir, device_key)
    if source.exists():
        target = log_path(scratch, device_key)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)


def _write_gathered(payloads: list[dict[str, Any]], options: TuneOptions,
                    reporter: Reporter) -> dict[str, Any]:
    """Rank 0: merge every rank's entries into the profile dir, append their log lines, and
    print one summary per device type."""
    from seqtune.fleet.local import combine_tunes
    from seqtune.store.journal import log_path
    from seqtune.store.profile_file import profile_path, resolve_profile_dir, save_entries

    folder = resolve_profile_dir(options.profile_dir)
    tunes = []
    for payload in payloads:
        key = payload["device_key"]
        path = profile_path(folder, key)
        profile = payload.get("profile") or {}
        for kernel, section in profile.get("kernels", {}).items():
            save_entries(path, profile["device"], kernel, section.get("source_hash"),
                         section.get("entries", []))
        _append_log_lines(log_path(folder, key), payload["log"])
        tunes.append((f"rank {payload['rank']}",
                      {"profile": str(path), "log": str(log_path(folder, key)),
                       "timer": payload.get("timer", ""), "problems": payload["problems"]}))
    results = combine_tunes(tunes)
    results["errors"] = [p["error"] for p in payloads if p.get("error")]
    for error in results["errors"]:
        reporter.message(error, error=True)
    return results


def _append_log_lines(path: Path, records: list[dict[str, Any]]) -> None:
    """Append the records as JSON lines in one O_APPEND write, so a tune writing the same log
    at the same time never interleaves inside a line."""
    import json

    if not records:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(json.dumps(record, default=str) + "\n" for record in records).encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
