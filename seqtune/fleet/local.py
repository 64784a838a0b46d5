"""Tuning on every local GPU at once (``seqtune tune --gpus``): one worker process per device,
each tuning its shard of the (kernel, problem) work and merging its entries into the shared
profile dir as it goes. ``save_entries`` locks, merges and writes atomically, so concurrent
workers are safe, and GPUs of the same name share a device key and so one profile.

Each worker sees only its own GPU: ``CUDA_VISIBLE_DEVICES`` is set in the worker before CUDA
initialises there. Everything a tune does assumes the current device is device 0: the facts of
``detect_device(0)``, tensors made on ``"cuda"``, Triton launches, and the candidate worker
process each tune spawns (which inherits the variable). Under the mask that is true without
touching any of them, and no code path can open a context on, or leave memory on, another
worker's GPU; ``torch.cuda.set_device`` would have to be honoured by every one of those call
sites and by every child process.

The same machinery runs N Triton-interpreter "devices" as N processes (``interpreter_devices``,
the hidden ``--interpreter-devices`` flag), so it is tested on machines without a GPU.
"""
from __future__ import annotations

import dataclasses
import multiprocessing
import multiprocessing.connection
import os
import time
import uuid
from typing import TYPE_CHECKING, Any, Sequence

from seqtune.events import SILENT, Reporter
from seqtune.fleet.shard import shard_plan, shard_work
from seqtune.spec import KernelSpec

if TYPE_CHECKING:  # seqtune.tuning.tune imports the tuner stack: a worker loads it after its GPU mask
    from seqtune.tuning.tune import TuneOptions


@dataclasses.dataclass(frozen=True)
class LocalDevice:
    """One device of a local fleet.

    ``name`` groups devices into types (one profile, one split of the work per type);
    ``visible`` is the ``CUDA_VISIBLE_DEVICES`` value that shows the worker only this device,
    None for an interpreter device.
    """

    label: str
    name: str
    visible: str | None


def local_gpus(selection: str) -> list[LocalDevice]:
    """``"all"`` or ``"0,2"`` -> those local CUDA devices; ValueError if there are none or an
    index is unknown. Indices count the GPUs this process sees (after any mask it inherited)."""
    import torch

    if not torch.cuda.is_available():
        raise ValueError("--gpus needs CUDA GPUs and this machine has none visible; without "
                         "one, `seqtune tune` tunes in the Triton interpreter")
    count = torch.cuda.device_count()
    indices = list(range(count)) if selection.strip() == "all" else _gpu_indices(selection, count)
    inherited = _visible_entries()
    return [LocalDevice(f"gpu {index}", torch.cuda.get_device_name(index),
                        inherited[index] if inherited else str(index)) for index in indices]


def _gpu_indices(selection: str, count: int) -> list[int]:
    try:
        indices = [int(part) for part in selection.split(",")]
    except ValueError:
        raise ValueError(f"--gpus {selection!r}: expected 'all' or GPU indices such as 0,1")
    unknown = [index for index in indices if not 0 <= index < count]
    if unknown:
        raise ValueError(f"--gpus {selection!r}: there is no GPU {unknown[0]}; "
                         f"this machine has {count} (0 to {count - 1})")
    if len(set(indices)) != len(indices):
        raise ValueError(f"--gpus {selection!r}: a GPU is listed twice")
    return indices


def _visible_entries() -> list[str] | None:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return None if visible is None else [e.strip() for e in visible.split(",") if e.strip()]


def interpreter_devices(count: int) -> list[LocalDevice]:
    """``count`` Triton-interpreter "devices": the process-per-device machinery without a GPU."""
    return [LocalDevice(f"interpreter {index}", "interpreter", None) for index in range(count)]


def fleet_options(options: TuneOptions, shard: tuple[int, int], run_id: str,
                  workers_on_this_machine: int) -> TuneOptions:
    """One worker's options: its shard, the fleet's run id, and its part of the compile jobs
    (``--jobs`` counts processes per machine, not per worker)."""
    return dataclasses.replace(options, shard=shard, run_id=run_id,
                               jobs=max(1, options.jobs // max(1, workers_on_this_machine)))


def run_local_fleet(specs: Sequence[KernelSpec], options: TuneOptions,
                    devices: Sequence[LocalDevice], reporter: Reporter) -> dict[str, Any]:
    """Tune on every device at once, one process each, and summarise the fleet's results.

    A worker that fails or dies costs only its own shard: the others finish, their entries are
    in the profile, and the failure is listed under ``errors``.
    """
    run_id = options.run_id or uuid.uuid4().hex[:12]
    plan = shard_plan([device.name for device in devices])
    context = multiprocessing.get_context("spawn")
    started = time.monotonic()
    total = len(shard_work(specs, options.preset, options.max_configs, None))
    workers = []
    try:
        for device, shard in zip(devices, plan):
            worker_options = fleet_options(options, shard, run_id, len(devices))
            count = len(shard_work(specs, options.preset, options.max_configs, shard))
            receiver, sender = context.Pipe(duplex=False)
            process = context.Process(target=_tune_shard, name=f"seqtune {device.label}",
                                      args=(sender, device, [s.name for s in specs],
                                            worker_options))
            process.start()
            sender.close()
            workers.append((device, shard, process, receiver))
            reporter.message(f"{device.label} ({device.name}): shard {shard[0] + 1} of {shard[1]}, "
                          f"{count} of {total} problems")
        outcomes = _collect(workers, reporter, started)
    except BaseException:
        _stop(workers)
        raise
    return _fleet_results(run_id, workers, outcomes, reporter)


def _collect(workers: list, reporter: Reporter, started: float) -> dict[str, tuple[str, Any]]:
    """Each worker's ("done", run_tune result) or ("error", one line), as they finish."""
    from seqtune.tuning.runner import _describe_exit

    pending = {receiver: (device, process) for device, _, process, receiver in workers}
    outcomes: dict[str, tuple[str, Any]] = {}
    while pending:
        for receiver in multiprocessing.connection.wait(list(pending)):
            device, process = pending.pop(receiver)
            try:
                outcomes[device.label] = receiver.recv()
            except EOFError:
                process.join(timeout=10)
                outcomes[device.label] = ("error", "worker process died "
                                                   f"({_describe_exit(process.exitcode)})")
            process.join()
            state = outcomes[device.label][0]
            reporter.message(f"{device.label}: {'done' if state == 'done' else 'FAILED'} after "
                          f"{time.monotonic() - started:.0f} s")
    return outcomes


def _stop(workers: list) -> None:
    """Give interrupted workers a moment to close their candidate workers, then end them."""
    for _, _, process, _ in workers:
        process.join(timeout=10)
        if process.is_alive():
            process.terminate()
            process.join()


def _tune_shard(sender, device: LocalDevice, kernel_names: list[str],
                options: TuneOptions) -> None:
    """A fleet worker: tune one shard on one device and send back the result or the error."""
    if device.visible is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = device.visible  # before CUDA initialises here
    from seqtune.device import detect_device
    from seqtune.registry import get_spec
    from seqtune.tuning.runner import one_line
    from seqtune.tuning.tune import run_tune

    try:
        info = detect_device(0)
        if device.visible is not None and info.backend == "interpreter":
            raise RuntimeError(f"CUDA_VISIBLE_DEVICES={device.visible} shows no usable GPU")
        specs = [get_spec(name) for name in kernel_names]
        work = shard_work(specs, options.preset, options.max_configs, options.shard)
        result = run_tune(work, info, options, SILENT)  # many workers' bars would garble
        sender.send(("done", result))
    except KeyboardInterrupt:
        return  # Ctrl-C reached the whole process group; the parent reports it
    except Exception as exc:  # a worker's failure is reported by the parent, in one line
        sender.send(("error", one_line(exc)))


def _fleet_results(run_id: str, workers: list, outcomes: dict[str, tuple[str, Any]],
                   reporter: Reporter) -> dict[str, Any]:
    rows, tunes, errors = [], [], []
    for device, shard, process, _ in workers:
        state, payload = outcomes[device.label]
        row = {"device": device.label, "name": device.name, "shard": list(shard),
               "pid": process.pid}
        if state == "done":
            tunes.append((device.label, payload))
            row.update(profile=payload["profile"], problems=len(payload["problems"]))
        else:
            errors.append(f"{device.label}: {payload}")
            row.update(error=payload)
        rows.append(row)
    results = combine_tunes(tunes)
    for error in errors:
        reporter.message(error, error=True)
    return {"mode": "local", "run_id": run_id, "workers": rows, **results, "errors": errors}


def combine_tunes(tunes: Sequence[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """The problems of several workers' ``run_tune`` results, each labelled with its worker,
    and one summary per profile (device type): its path, tuning log, timer and problems."""
    summaries: dict[str, dict[str, Any]] = {}
    for worker, result in tunes:
        summary = summaries.setdefault(result["profile"], {
            "profile": result["profile"], "log": result["log"], "timer": result["timer"],
            "problems": []})
        summary["problems"].extend({**problem, "worker": worker} for problem in result["problems"])
    return {"profiles": list(summaries), "logs": sorted({s["log"] for s in summaries.values()}),
            "summaries": list(summaries.values()),
            "problems": [p for s in summaries.values() for p in s["problems"]]}
