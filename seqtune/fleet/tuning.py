"""Which way a tune runs: in this process, one worker per local GPU (``--gpus``), or as one rank
of a torch.distributed launch; and the work each of them takes."""
from __future__ import annotations

from typing import Any

from seqtune.errors import UsageError
from seqtune.events import Reporter


def distributed_launch(gpus: str | None, shard: str | None, interpreter_devices: int | None):
    """The torch.distributed launch this tune is part of, with this rank's GPU pinned; None
    outside one. Call it before CUDA initialises."""
    from seqtune.fleet.distributed import launch_env, pin_local_gpu

    try:
        launch = launch_env()
        if launch is not None and (gpus or shard or interpreter_devices):
            raise UsageError("--gpus and --shard do not combine with a torch.distributed launch: "
                             "the launcher starts one rank per GPU and the ranks share the work")
        if launch is not None:
            pin_local_gpu(launch)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return launch


def local_fleet(gpus: str | None, interpreter_devices: int | None, shard: str | None):
    """The devices of ``--gpus`` (or of the hidden ``--interpreter-devices``), or None."""
    from seqtune.fleet.local import interpreter_devices as interpreter_fleet
    from seqtune.fleet.local import local_gpus

    if gpus is None and interpreter_devices is None:
        return None
    if gpus is not None and interpreter_devices is not None:
        raise UsageError("--gpus and --interpreter-devices are exclusive")
    if shard is not None:
        raise UsageError("--shard and --gpus are exclusive: --gpus shares the work itself")
    if interpreter_devices is not None:
        return interpreter_fleet(interpreter_devices)
    try:
        return local_gpus(gpus)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def run_tune_mode(specs, device, options, launch, fleet, reporter: Reporter) -> dict[str, Any]:
    """One process, one process per local device, or one rank of a distributed launch."""
    if launch is not None:
        from seqtune.fleet.distributed import run_distributed

        return run_distributed(specs, device, options, launch, reporter)
    if fleet is not None:
        from seqtune.fleet.local import run_local_fleet

        return run_local_fleet(specs, options, fleet, reporter)
    from seqtune.fleet.shard import shard_work
    from seqtune.tuning.tune import run_tune

    work = shard_work(specs, options.preset, options.max_configs, options.shard)
    return run_tune(work, device, options, reporter)
