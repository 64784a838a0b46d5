"""AMD GPU targets: what Triton's HIP backend reports of a compiled kernel, and whether it fits.

The amdgcn assembly Triton emits ends with the code object's metadata (``.amdgpu_metadata``)
and LLVM's resource comments: VGPRs (arch and accumulation registers together, on CDNA one
unified file), AGPRs, SGPRs, VGPR/SGPR spill counts, scratch bytes per lane (the private
segment: spills and stack) and the compiler's occupancy (waves per SIMD). Triton's LDS is
allocated dynamically, so it is ``metadata.shared``, not the code object's group segment.
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Any


@dataclasses.dataclass(frozen=True)
class HipArch:
    """What one AMD architecture gives a workgroup (CDNA: AMD's Instinct ISA guides; RDNA3: the
    RDNA3 ISA guide)."""

    lds_per_cu: int  # bytes; also the most one workgroup may allocate
    warp_size: int  # wave64 on Instinct, wave32 on Radeon
    vgprs_per_lane: int  # the register file of one SIMD, per lane (CDNA: VGPRs and AGPRs)
    max_vgprs_per_wave: int  # what one wave may allocate
    simds_per_cu: int
    max_waves_per_simd: int
    granule: int  # VGPR allocation granule


CDNA2 = HipArch(65536, 64, 512, 512, 4, 8, 8)
CDNA3 = CDNA2
CDNA4 = dataclasses.replace(CDNA3, lds_per_cu=163840)  # MI350: 160 KiB LDS per CU
RDNA3 = HipArch(65536, 32, 1536, 256, 2, 16, 24)  # wave32: 1536 VGPRs per lane per SIMD


@dataclasses.dataclass
class AmdgcnUsage:
    """One compiled kernel's resources, read from its amdgcn assembly."""

    vgprs: int  # total per lane, AGPRs included
    agprs: int
    sgprs: int
    vgpr_spills: int
    sgpr_spills: int
    scratch_bytes: int  # per lane
    occupancy: int  # waves per SIMD the compiler's register use allows


_FIELDS = {"vgprs": r"\.vgpr_count:\s+(\d+)", "agprs": r"\.agpr_count:\s+(\d+)",
           "sgprs": r"\.sgpr_count:\s+(\d+)", "vgpr_spills": r"\.vgpr_spill_count:\s+(\d+)",
           "sgpr_spills": r"\.sgpr_spill_count:\s+(\d+)",
           "scratch_bytes": r"\.private_segment_fixed_size:\s+(\d+)",
           "occupancy": r";\s*Occupancy:\s+(\d+)"}
_OPTIONAL = {"agprs"}  # RDNA has no AGPRs, and its metadata no agpr_count


def parse_amdgcn(assembly: str) -> AmdgcnUsage:
    """The resources of the one kernel in Triton's amdgcn assembly; a RuntimeError naming the
    missing field if the assembly lacks one (a Triton/LLVM that reports them otherwise)."""
    values = {}
    for field, pattern in _FIELDS.items():
        match = re.search(pattern, assembly)
        if match is None and field not in _OPTIONAL:
            raise RuntimeError(f"cannot read {field} from the amdgcn assembly "
                               f"(pattern {pattern!r})")
        values[field] = int(match.group(1)) if match else 0
    return AmdgcnUsage(**values)


def waves_per_simd(usage: AmdgcnUsage, shared_bytes: int, waves: int, arch: HipArch) -> int:
    """Occupancy: the compiler's (registers), bounded by the LDS the workgroups share."""
    if not shared_bytes:
        return usage.occupancy
    workgroups = arch.lds_per_cu // shared_bytes
    by_lds = workgroups * waves // arch.simds_per_cu
    return max(0, min(usage.occupancy, by_lds, arch.max_waves_per_simd))


def hip_fit_reasons(kernel: str, usage: AmdgcnUsage, shared_bytes: int, waves: int,
                    arch: HipArch, target: str) -> list[str]:
    """Why a workgroup of ``waves`` waves cannot run on ``arch``: LDS over the limit, more
    registers than a wave may have, or more than the SIMDs hold for all its waves."""
    reasons = []
    if shared_bytes > arch.lds_per_cu:
        reasons.append(f"{kernel}: LDS {shared_bytes} B > {arch.lds_per_cu} B on {target}")
    if usage.vgprs > arch.max_vgprs_per_wave:
        reasons.append(f"{kernel}: {usage.vgprs} VGPRs > {arch.max_vgprs_per_wave} per wave "
                       f"on {target}")
    allocated = math.ceil(max(usage.vgprs, 1) / arch.granule) * arch.granule
    per_simd = math.ceil(waves / arch.simds_per_cu)
    if allocated * per_simd > arch.vgprs_per_lane:
        reasons.append(f"{kernel}: {per_simd} waves x {allocated} VGPRs per SIMD > "
                       f"{arch.vgprs_per_lane} on {target}")
    return reasons


def usage_fields(usage: AmdgcnUsage, shared_bytes: int, waves: int,
                 arch: HipArch) -> dict[str, Any]:
    """The AMD-only fields of a launch's resources."""
    return {"agprs": usage.agprs, "sgprs": usage.sgprs, "vgpr_spills": usage.vgpr_spills,
            "sgpr_spills": usage.sgpr_spills,
            "occupancy": waves_per_simd(usage, shared_bytes, waves, arch)}
