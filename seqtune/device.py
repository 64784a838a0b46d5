"""Device facts (NVML, torch) and per-measurement telemetry, plus peaks for roofline figures."""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import platform
import re
from typing import Any, Iterator

import torch

from seqtune.spec import INTERPRETER_LIMITS, DeviceLimits

INTERPRETER_KEY = "cpu-interpreter"


@dataclasses.dataclass(frozen=True)
class Peak:
    """Dense tensor-core peak (TFLOP/s) per input dtype and HBM bandwidth (GB/s)."""

    tflops: dict[str, float]
    gbps: float


# Vendor datasheet figures (dense, no sparsity); float32 is TF32 tensor-core math.
# Matched against the lower-cased device name, first hit wins (so "h100 pcie" before "h100").
KNOWN_PEAKS: tuple[tuple[str, Peak], ...] = (
    ("h200", Peak({"bfloat16": 989.0, "float16": 989.0, "float32": 494.0}, 4800.0)),
    ("h100 pcie", Peak({"bfloat16": 756.0, "float16": 756.0, "float32": 378.0}, 2000.0)),
    ("h100", Peak({"bfloat16": 989.0, "float16": 989.0, "float32": 494.0}, 3350.0)),
    ("a100-sxm4-80gb", Peak({"bfloat16": 312.0, "float16": 312.0, "float32": 156.0}, 2039.0)),
    ("a100", Peak({"bfloat16": 312.0, "float16": 312.0, "float32": 156.0}, 1555.0)),
    ("l40s", Peak({"bfloat16": 362.0, "float16": 362.0, "float32": 183.0}, 864.0)),
    ("l4", Peak({"bfloat16": 121.0, "float16": 121.0, "float32": 60.0}, 300.0)),
    ("a10", Peak({"bfloat16": 125.0, "float16": 125.0, "float32": 62.5}, 600.0)),
    ("4090", Peak({"bfloat16": 165.0, "float16": 165.0, "float32": 82.6}, 1008.0)),
    ("3090", Peak({"bfloat16": 71.0, "float16": 71.0, "float32": 35.6}, 936.0)),
)


def device_key(name: str) -> str:
    """``"NVIDIA H100 80GB HBM3"`` -> ``"nvidia-h100-80gb-hbm3"``."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def peak_for(name: str) -> Peak | None:
    lowered = name.lower()
    return next((peak for pattern, peak in KNOWN_PEAKS if pattern in lowered), None)


@dataclasses.dataclass(frozen=True)
class DeviceInfo:
    """The device a tune runs on, as written into the profile's ``device`` mapping."""

    key: str
    name: str
    backend: str  # "cuda" or "interpreter"
    compute_capability: str | None
    sm_count: int
    memory_bytes: int
    shared_memory_per_block: int
    driver: str | None

    @property
    def limits(self) -> DeviceLimits:
        if self.backend == "interpreter":
            return INTERPRETER_LIMITS
        major, minor = (int(x) for x in self.compute_capability.split("."))
        return DeviceLimits(backend="cuda", shared_memory_per_block=self.shared_memory_per_block,
                            sm_count=self.sm_count, compute_capability=(major, minor))

    @property
    def torch_device(self) -> str:
        return "cpu" if self.backend == "interpreter" else "cuda"

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def interpreter_device() -> DeviceInfo:
    return DeviceInfo(key=INTERPRETER_KEY, name=f"Triton interpreter on {platform.machine()} CPU",
                      backend="interpreter", compute_capability=None, sm_count=1,
                      memory_bytes=0,
                      shared_memory_per_block=INTERPRETER_LIMITS.shared_memory_per_block,
                      driver=None)


def has_gpu() -> bool:
    return torch.cuda.is_available()


def detect_device(index: int = 0) -> DeviceInfo:
    """The CUDA device ``index`` (facts from torch, driver from NVML), else the interpreter."""
    if not has_gpu():
        return interpreter_device()
    props = torch.cuda.get_device_properties(index)
    return DeviceInfo(
        key=device_key(props.name),
        name=props.name,
        backend="cuda",
        compute_capability=f"{props.major}.{props.minor}",
        sm_count=props.multi_processor_count,
        memory_bytes=props.total_memory,
        shared_memory_per_block=_shared_memory_optin(props),
        driver=_nvml_driver(),
    )


@functools.cache
def runtime_device() -> tuple[str, DeviceLimits]:
    """(device key, limits) of the device the kernels run on now; cached for the launch path."""
    info = detect_device(torch.cuda.current_device()) if has_gpu() else interpreter_device()
    return info.key, info.limits


def _shared_memory_optin(props: Any) -> int:
    return int(getattr(props, "shared_memory_per_block_optin", 0) or 49152)


@contextlib.contextmanager
def _nvml() -> Iterator[Any]:
    import pynvml

    pynvml.nvmlInit()
    try:
        yield pynvml
    finally:
        pynvml.nvmlShutdown()


def _nvml_driver() -> str | None:
    try:
        with _nvml() as nvml:
            return nvml.nvmlSystemGetDriverVersion()
    except Exception:  # NVML missing or unusable: the driver is then simply unknown
        return None


def telemetry(index: int = 0) -> dict[str, Any]:
    """SM clock (MHz), temperature (C), power (W) and active throttle reasons, now.

    Empty on the interpreter or where NVML cannot be read.
    """
    if not has_gpu():
        return {}
    try:
        with _nvml() as nvml:
            handle = _nvml_handle(nvml, index)
            reasons = nvml.nvmlDeviceGetCurrentClocksEventReasons(handle)
            return {
                "sm_clock_mhz": nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_SM),
                "temperature_c": nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU),
                "power_w": round(nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0, 1),
                "throttle_reasons": _throttle_names(nvml, reasons),
            }
    except Exception:  # telemetry is informative only; a tune must not fail for it
        return {}


def _nvml_handle(nvml: Any, index: int) -> Any:
    """NVML's handle of torch's device ``index``: by UUID, since NVML numbers GPUs physically
    and ignores CUDA_VISIBLE_DEVICES, which torch honours."""
    uuid = str(getattr(torch.cuda.get_device_properties(index), "uuid", "") or "")
    if uuid:
        return nvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith("GPU-") else f"GPU-{uuid}")
    return nvml.nvmlDeviceGetHandleByIndex(index)


def _throttle_names(nvml: Any, mask: int) -> list[str]:
    names = {
        "nvmlClocksEventReasonGpuIdle": "idle",
        "nvmlClocksEventReasonApplicationsClocksSetting": "app_clocks",
        "nvmlClocksEventReasonSwPowerCap": "sw_power_cap",
        "nvmlClocksThrottleReasonHwSlowdown": "hw_slowdown",
        "nvmlClocksEventReasonSwThermalSlowdown": "sw_thermal",
        "nvmlClocksThrottleReasonHwThermalSlowdown": "hw_thermal",
        "nvmlClocksThrottleReasonHwPowerBrakeSlowdown": "hw_power_brake",
    }
    return [label for attr, label in names.items() if mask & getattr(nvml, attr, 0)]
