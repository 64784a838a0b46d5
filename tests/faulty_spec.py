"""A test kernel whose configs misbehave on purpose: raise, crash the process, or hang.

Loaded by worker processes through SEQTUNE_KERNEL_MODULES=faulty_spec (tests/ on PYTHONPATH),
to prove that a tune survives candidates that kill or stall the process running them.
"""
import dataclasses
import os
import signal
import time

from toy_spec import TOY


def _run(inputs, config):
    behaviour = config["BEHAVIOUR"]
    if behaviour == "crash":
        os.kill(os.getpid(), signal.SIGSEGV)
    if behaviour == "hang":
        time.sleep(3600)
    if behaviour == "raise":
        raise RuntimeError("device-side assert triggered")
    return TOY.run(inputs, {k: v for k, v in config.items() if k != "BEHAVIOUR"})


FAULTY = dataclasses.replace(
    TOY, name="faulty", description="misbehaving test kernel",
    space={**TOY.space, "SKIP_TAIL": (False,), "BLOCK": (32,),
           "BEHAVIOUR": ("fine", "raise", "crash", "hang")},
    default_config={**TOY.default_config, "BEHAVIOUR": "fine"},
    presets={"tiny": [{"N": 64, "dtype": "float32"}]},
    run=_run,
)
SPECS = (FAULTY,)
