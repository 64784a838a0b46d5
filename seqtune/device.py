"""Device facts (torch; NVML on NVIDIA, amdsmi on AMD) and per-measurement telemetry, plus peaks
for roofline figures. ROCm builds of torch drive AMD GPUs through ``torch.cuda`` too; they are
told apart by ``torch.version.hip``."""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import platform
import warnings
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
    # AMD Instinct data sheets (dense matrix peaks; float32 is FP32 matrix math, no TF32 on
    # MI350): MI355X 2.5 PFLOP/s bf16, 157.3 TFLOP/s fp32 matrix, 8 TB/s HBM3E; MI325X and
    # MI300X 1307.4 TFLOP/s bf16, 163.4 fp32 matrix, 6 TB/s and 5.3 TB/s; MI250X (OAM) 383
    # TFLOP/s bf16, 95.7 fp32 matrix, 3.2 TB/s. MI250X is two GCDs, each its own device to torch:
    # one device has half of the module's figures.
    ("mi355x", Peak({"bfloat16": 2500.0, "float16": 2500.0, "float32": 157.3}, 8000.0)),
    ("mi325x", Peak({"bfloat16": 1307.4, "float16": 1307.4, "float32": 163.4}, 6000.0)),
    ("mi300x", Peak({"bfloat16": 1307.4, "float16": 1307.4, "float32": 163.4}, 5300.0)),
    ("mi250x", Peak({"bfloat16": 191.5, "float16": 191.5, "float32": 47.9}, 1600.0)),
)


def device_key(name: str) -> str:
    """``"NVIDIA H100 80GB HBM3"`` -> ``"nvidia-h100-80gb-hbm3"``."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def hip_device_key(name: str, arch: str, cus: int) -> str:
    """``("AMD Instinct MI300X", "gfx942", 304)`` -> ``"amd-instinct-mi300x-gfx942-304cu"``:
    the architecture and CU count are in the key because a partitioned MI300X (CPX: 38 CUs) or
    a ROCm that names every GPU alike must not share a full GPU's profile."""
    return device_key(f"{name} {arch} {cus}cu")


def peak_for(name: str) -> Peak | None:
    lowered = name.lower()
    return next((peak for pattern, peak in KNOWN_PEAKS if pattern in lowered), None)


@dataclasses.dataclass(frozen=True)
class DeviceInfo:
    """The device a tune runs on, as written into the profile's ``device`` mapping."""

    key: str
    name: str
    backend: str  # "cuda", "hip" (AMD, ROCm) or "interpreter"
    compute_capability: str | None  # NVIDIA only
    sm_count: int  # CUs on AMD
    memory_bytes: int
    shared_memory_per_block: int
    driver: str | None  # NVIDIA: the driver; AMD: the HIP version torch was built with
    arch: str | None = None  # AMD only: "gfx942"
    warp_size: int = 32

    @property
    def limits(self) -> DeviceLimits:
        if self.backend == "interpreter":
            return INTERPRETER_LIMITS
        if self.backend == "hip":
            return DeviceLimits(backend="hip", shared_memory_per_block=self.shared_memory_per_block,
                                sm_count=self.sm_count, arch=self.arch,
                                warp_size=self.warp_size)
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
    """The GPU ``index`` (facts from torch; the driver from NVML, or on ROCm the HIP version),
    else the interpreter."""
    if not has_gpu():
        return interpreter_device()
    props = torch.cuda.get_device_properties(index)
    if torch.version.hip:
        return _hip_device(props)
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


def _hip_device(props: Any) -> DeviceInfo:
    """An AMD GPU under ROCm: ``gcnArchName`` is e.g. ``"gfx942:sramecc+:xnack-"`` (the
    features after the colon do not change code seqtune cares about)."""
    arch = str(props.gcnArchName).partition(":")[0]
    warp_size = int(getattr(props, "warp_size", 0) or (32 if arch.startswith("gfx1") else 64))
    return DeviceInfo(
        key=hip_device_key(props.name, arch, props.multi_processor_count),
        name=props.name,
        backend="hip",
        compute_capability=None,
        sm_count=props.multi_processor_count,
        memory_bytes=props.total_memory,
        shared_memory_per_block=int(getattr(props, "shared_memory_per_block", 0) or 65536),
        driver=f"hip {torch.version.hip}",
        arch=arch,
        warp_size=warp_size,
    )


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

    Empty on the interpreter or where NVML (amdsmi on AMD) cannot be read.
    """
    if not has_gpu():
        return {}
    if torch.version.hip:
        return _amd_telemetry(index)
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


def _amd_telemetry(index: int) -> dict[str, Any]:
    """The AMD counterpart of NVML's figures, from amdsmi (ROCm's SMI library) when installed;
    without it, empty, and one line says so once."""
    try:
        import amdsmi
    except ImportError:
        _say_once("seqtune: amdsmi is not installed: no clock, temperature or power telemetry "
                  "on this AMD GPU (pip install amdsmi)")
        return {}
    try:
        amdsmi.amdsmi_init()
        try:
            return _amdsmi_readings(amdsmi, _amdsmi_handle(amdsmi, index))
        finally:
            amdsmi.amdsmi_shut_down()
    except Exception:  # telemetry is informative only; a tune must not fail for it
        return {}


def _amdsmi_handle(amdsmi: Any, index: int) -> Any:
    """amdsmi's handle of torch's device ``index``: by UUID where torch has one, since amdsmi
    lists GPUs physically and ignores HIP_VISIBLE_DEVICES, which torch honours."""
    handles = amdsmi.amdsmi_get_processor_handles()
    uuid = str(getattr(torch.cuda.get_device_properties(index), "uuid", "") or "")
    matching = [h for h in handles if uuid and amdsmi.amdsmi_get_gpu_device_uuid(h) == uuid]
    return matching[0] if matching else handles[index]


def _amdsmi_readings(amdsmi: Any, handle: Any) -> dict[str, Any]:
    """GFX clock, hotspot temperature and socket power (MI300 and later report the current
    power, MI200 and Radeon the average; the other is "N/A")."""
    clock = amdsmi.amdsmi_get_clock_info(handle, amdsmi.AmdSmiClkType.GFX)
    power = amdsmi.amdsmi_get_power_info(handle)
    temperature = amdsmi.amdsmi_get_temp_metric(handle, amdsmi.AmdSmiTemperatureType.HOTSPOT,
                                                amdsmi.AmdSmiTemperatureMetric.CURRENT)
    watts = next((power[k] for k in ("current_socket_power", "average_socket_power")
                  if isinstance(power.get(k), (int, float))), None)
    return {"sm_clock_mhz": clock.get("clk"), "temperature_c": temperature,
            "power_w": None if watts is None else float(watts), "throttle_reasons": []}


@functools.cache
def _say_once(message: str) -> None:
    warnings.warn(message, RuntimeWarning, stacklevel=3)
