"""AMD GPUs (ROCm): amdgcn resources of a real gfx942 build, per-architecture fit, the AMD-only
config knobs, device keys and profiles on a simulated ROCm device (HIP version and arch faked).
"""
import json
import os
import subprocess
import sys
import textwrap
import types
import warnings
from pathlib import Path

import pytest
import torch
import triton

import seqtune
import seqtune.device
from seqtune.analysis.report import percent_of_peak
from seqtune.device import DeviceInfo, detect_device, peak_for, telemetry
from seqtune.registry import source_hash
from seqtune.spec import INTERPRETER_LIMITS, backend_knobs
from seqtune.store.profile_file import profile_path, save_entries
from seqtune.tuning.amdgcn import CDNA3, CDNA4, RDNA3, AmdgcnUsage, hip_fit_reasons, parse_amdgcn
from seqtune.tuning.compiler import TARGETS, target_named
from seqtune.tuning.tuner import candidate_order

ENV = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
TESTS = Path(__file__).parent
PROBLEM = {"N": 64, "dtype": "float32"}
MI300X_PROPS = types.SimpleNamespace(name="AMD Instinct MI300X",
                                     gcnArchName="gfx942:sramecc+:xnack-",
                                     multi_processor_count=304, total_memory=192 << 30,
                                     shared_memory_per_block=65536, warp_size=64)


def test_gfx942_build_reports_amdgcn_resources_and_takes_the_amd_knobs(tmp_path):
    """A tiny kernel built twice for gfx942 (seconds of CPU): VGPRs, SGPRs, no spills, wave64;
    waves_per_eu reaches the compiler (it caps the occupancy); an NVIDIA target refuses it."""
    script = textwrap.dedent(f"""
        import json, sys
        sys.path.insert(0, {str(TESTS)!r})
        from pathlib import Path
        from toy_spec import TOY
        from seqtune.tuning.compiler import TARGETS, check_config
        base = {{"BLOCK": 64, "SKIP_TAIL": False, "num_warps": 2}}
        runs = [(base, "gfx942"), ({{**base, "waves_per_eu": 2}}, "gfx942"),
                ({{**base, "waves_per_eu": 2}}, "sm_90"), ({{**base, "kpack": 2}}, "gfx950")]
        print(json.dumps([check_config(TOY, {PROBLEM!r}, config, TARGETS[target],
                                       Path({str(tmp_path)!r})).as_dict()
                          for config, target in runs]))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=ENV, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    plain, capped, on_nvidia, gone = json.loads(done.stdout.strip().splitlines()[-1])
    launch = plain["launches"][0]
    assert plain["fits"] and not plain["spills"]
    assert launch["threads"] == 2 * 64 and launch["registers"] > 0 and launch["sgprs"] > 0
    assert launch["vgpr_spills"] == 0 and launch["spill_bytes"] == 0
    assert launch["shared_bytes"] == 0 and launch["agprs"] == 0
    assert plain["occupancy"] == 8  # a few VGPRs: the SIMD's maximum
    assert capped["occupancy"] == 2 and capped["config"]["waves_per_eu"] == 2
    assert not on_nvidia["fits"] and "AMD (HIP) compile option" in on_nvidia["reasons"][0]
    assert not gone["fits"] and "kpack" in gone["reasons"][0]


ASM = """
; TotalNumSgprs: 21
; Occupancy: 5
amdhsa.kernels:
  - .agpr_count:     4
    .private_segment_fixed_size: 96
    .sgpr_count:     21
    .sgpr_spill_count: 1
    .vgpr_count:     100
    .vgpr_spill_count: 3
    .wavefront_size: 64
"""


def test_amdgcn_parsing_reads_every_field_and_names_a_missing_one():
    assert parse_amdgcn(ASM) == AmdgcnUsage(vgprs=100, agprs=4, sgprs=21, vgpr_spills=3,
                                            sgpr_spills=1, scratch_bytes=96, occupancy=5)
    rdna = ASM.replace(".agpr_count:     4", "")  # RDNA has no AGPRs
    assert parse_amdgcn(rdna).agprs == 0
    with pytest.raises(RuntimeError, match="vgpr_spills"):
        parse_amdgcn(ASM.replace(".vgpr_spill_count", ".other"))


def test_lds_and_vgpr_limits_per_architecture():
    usage = AmdgcnUsage(128, 0, 30, 0, 0, 0, 4)
    big_lds = 100 * 1024  # over gfx942's 64 KiB, under gfx950's 160 KiB
    assert "LDS 102400 B > 65536 B" in hip_fit_reasons("k", usage, big_lds, 4, CDNA3, "gfx942")[0]
    assert hip_fit_reasons("k", usage, big_lds, 4, CDNA4, "gfx950") == []
    # 16 waves of 256 VGPRs: 4 waves on each SIMD need 1024 VGPRs of its 512
    wide = AmdgcnUsage(256, 128, 30, 0, 0, 0, 2)
    assert "4 waves x 256 VGPRs per SIMD > 512" in hip_fit_reasons("k", wide, 0, 16, CDNA3,
                                                                   "gfx942")[0]
    assert "VGPRs > 256 per wave" in hip_fit_reasons("k", AmdgcnUsage(300, 0, 9, 0, 0, 0, 1), 0,
                                                     1, RDNA3, "gfx1100")[0]


def test_targets_carry_wave_size_and_lds():
    assert target_named("GFX942").limits.warp_size == 64
    assert target_named("gfx1100").limits.warp_size == 32
    assert target_named("gfx950").shared_memory_per_block == 160 * 1024
    assert target_named("gfx90a").shared_memory_per_block == 64 * 1024
    with pytest.raises(ValueError, match="unknown target 'gfx9999'"):
        target_named("gfx9999")


def test_amd_knobs_exist_only_for_hip_targets(toy_registry):
    assert backend_knobs(TARGETS["sm_90"].limits) == backend_knobs(INTERPRETER_LIMITS) == {}
    assert set(backend_knobs(TARGETS["gfx942"].limits)) == {"waves_per_eu", "matrix_instr_nonkdim",
                                                            "kpack"}
    assert set(backend_knobs(TARGETS["gfx950"].limits)) == {"waves_per_eu",
                                                            "matrix_instr_nonkdim"}
    assert set(backend_knobs(TARGETS["gfx1100"].limits)) == {"waves_per_eu"}
    spec = toy_registry
    amd = spec.configs(TARGETS["gfx942"].limits)
    assert len(amd) == spec.space_size * 4 * 2 * 2 and all("kpack" in c for c in amd)
    assert spec.default_for(PROBLEM, TARGETS["gfx942"].limits) == {
        **spec.default_config, "waves_per_eu": 0, "matrix_instr_nonkdim": 16, "kpack": 1}
    for limits in (TARGETS["sm_90"].limits, INTERPRETER_LIMITS):
        assert spec.default_for(PROBLEM, limits) == dict(spec.default_config)
        assert all(c.keys() == spec.space.keys() for c in spec.configs(limits))
        assert "AMD (HIP)" in spec.check({**spec.default_config, "waves_per_eu": 1}, PROBLEM,
                                         limits)


def test_tuner_candidates_have_amd_knobs_only_on_an_amd_gpu(toy_registry):
    hip = _device(backend="hip", arch="gfx942", warp_size=64)
    cuda = _device(backend="cuda", compute_capability="9.0")
    assert all(c["matrix_instr_nonkdim"] in (16, 32)
               for c in candidate_order(toy_registry, PROBLEM, hip))
    assert not any("waves_per_eu" in c for c in candidate_order(toy_registry, PROBLEM, cuda))


@pytest.fixture
def rocm(monkeypatch):
    """torch as a ROCm build with an MI300X (HIP version and arch faked)."""
    monkeypatch.setattr(torch.version, "hip", "6.4.43482")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index=0: MI300X_PROPS)
    return MI300X_PROPS


def test_rocm_device_key_comes_from_name_arch_and_cus(rocm):
    info = detect_device()
    assert info.key == "amd-instinct-mi300x-gfx942-304cu"
    assert (info.backend, info.arch, info.warp_size, info.sm_count) == ("hip", "gfx942", 64, 304)
    assert info.driver == "hip 6.4.43482" and info.compute_capability is None
    assert info.limits == TARGETS["gfx942"].limits.__class__(
        backend="hip", shared_memory_per_block=65536, sm_count=304, arch="gfx942", warp_size=64)
    partition = types.SimpleNamespace(**{**vars(rocm), "multi_processor_count": 38})
    torch.cuda.get_device_properties = lambda index=0: partition  # undone by monkeypatch
    assert detect_device().key == "amd-instinct-mi300x-gfx942-38cu"


def test_rocm_telemetry_without_amdsmi_is_empty_with_one_warning(rocm, monkeypatch):
    monkeypatch.setitem(sys.modules, "amdsmi", None)  # not installed
    seqtune.device._say_once.cache_clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert telemetry() == {} and telemetry() == {}
    assert [str(w.message) for w in caught] == [
        "seqtune: amdsmi is not installed: no clock, temperature or power telemetry on this "
        "AMD GPU (pip install amdsmi)"]


def test_amd_peaks_are_known():
    assert peak_for("AMD Instinct MI300X").gbps == 5300.0
    assert peak_for("AMD Instinct MI325X").tflops["bfloat16"] == 1307.4
    assert peak_for("AMD Instinct MI355X").gbps == 8000.0
    assert peak_for("AMD Instinct MI250X").tflops["bfloat16"] == 383.0 / 2  # one GCD
    entry = {"problem": {"dtype": "bfloat16"}, "tflops": 653.7, "gbps": 100.0}
    assert percent_of_peak(entry, "AMD Instinct MI300X") == pytest.approx(50.0)


TUNED = {"BLOCK": 64, "SKIP_TAIL": False, "num_warps": 2, "waves_per_eu": 2,
         "matrix_instr_nonkdim": 32, "kpack": 2}


def _device(**fields) -> DeviceInfo:
    base = dict(key="dev", name="dev", backend="hip", compute_capability=None, sm_count=304,
                memory_bytes=1, shared_memory_per_block=65536, driver=None)
    return DeviceInfo(**{**base, **fields})


def _profile(folder: Path, device: DeviceInfo, config: dict) -> Path:
    path = profile_path(folder, device.key)
    save_entries(path, device.as_dict(), "toy_scale", source_hash("toy_scale"),
                 [{"problem": {"N": 64, "dtype": "float32"}, "config": config,
                   "time_us": {"median": 1.0, "p20": 0.9, "p80": 1.1},
                   "triton": triton.__version__}])
    return path


def _runtime(monkeypatch, device: DeviceInfo) -> None:
    monkeypatch.setattr(seqtune.device, "runtime_device", lambda: (device.key, device.limits))


MI300X = _device(key="amd-instinct-mi300x-gfx942-304cu", name="AMD Instinct MI300X",
                 driver="hip 6.4.43482", arch="gfx942", warp_size=64)
MI355X = _device(key="amd-instinct-mi355x-gfx950-256cu", name="AMD Instinct MI355X",
                 sm_count=256, shared_memory_per_block=163840, arch="gfx950", warp_size=64)
H100 = _device(key="nvidia-h100-80gb-hbm3", name="NVIDIA H100 80GB HBM3", backend="cuda",
               compute_capability="9.0", sm_count=132, shared_memory_per_block=232448)


def test_mi300x_profile_is_found_on_mi300x(tmp_path, toy_registry, monkeypatch):
    _profile(tmp_path / "profiles", MI300X, TUNED)
    _runtime(monkeypatch, MI300X)
    assert seqtune.best_config("toy_scale", N=64, dtype="float32") == TUNED


def test_mi300x_profile_is_refused_where_its_knobs_do_not_apply(tmp_path, toy_registry,
                                                               monkeypatch):
    path = _profile(tmp_path, MI300X, TUNED)
    _runtime(monkeypatch, MI355X)  # gfx950 has no kpack: the entry is invalid there
    seqtune.load_profile(path)
    assert seqtune.best_config("toy_scale", N=64, dtype="float32") == {
        **toy_registry.default_config, "waves_per_eu": 0, "matrix_instr_nonkdim": 16}
    _runtime(monkeypatch, H100)
    seqtune.load_profile(path)
    assert seqtune.best_config("toy_scale", N=64, dtype="float32") == toy_registry.default_config


def test_an_nvidia_profile_offering_an_amd_knob_is_skipped_with_a_warning(tmp_path,
                                                                         toy_registry):
    path = _profile(tmp_path, H100, TUNED)
    with pytest.warns(RuntimeWarning, match="waves_per_eu is an AMD .HIP. knob, in a cuda"):
        seqtune.load_profile(path)


def test_rocm_telemetry_reads_amdsmi_for_torchs_device(rocm, monkeypatch):
    """The GPU torch sees as 0 is amdsmi's second (by UUID); MI300X reports current power."""
    monkeypatch.setattr(rocm, "uuid", "gpu-b", raising=False)
    calls = []
    fake = types.SimpleNamespace(
        amdsmi_init=lambda: calls.append("init"), amdsmi_shut_down=lambda: calls.append("down"),
        amdsmi_get_processor_handles=lambda: ["a", "b"],
        amdsmi_get_gpu_device_uuid=lambda h: f"gpu-{h}",
        AmdSmiClkType=types.SimpleNamespace(GFX="gfx"),
        AmdSmiTemperatureType=types.SimpleNamespace(HOTSPOT="hot"),
        AmdSmiTemperatureMetric=types.SimpleNamespace(CURRENT="now"),
        amdsmi_get_clock_info=lambda h, kind: {"clk": {"a": 100, "b": 2100}[h]},
        amdsmi_get_power_info=lambda h: {"current_socket_power": 550,
                                         "average_socket_power": "N/A"},
        amdsmi_get_temp_metric=lambda h, kind, metric: {"a": 30, "b": 71}[h])
    monkeypatch.setitem(sys.modules, "amdsmi", fake)
    assert telemetry() == {"sm_clock_mhz": 2100, "temperature_c": 71, "power_w": 550.0,
                           "throttle_reasons": []}
    assert calls == ["init", "down"]


def test_an_ops_launches_carry_its_configs_amd_knobs_on_an_amd_gpu(monkeypatch):
    """What a kernel launches with on ROCm: the tuned AMD knobs reach Triton with each launch;
    off AMD the same config is a one-line error naming the knob."""
    from seqtune.launch import capture_launches
    from seqtune.registry import get_spec

    spec = get_spec("causal_conv1d_step")
    problem = spec.presets["tiny"][0]
    inputs = spec.make_inputs(problem, "cpu", 0)
    config = {**spec.default_config, "waves_per_eu": 2, "matrix_instr_nonkdim": 32, "kpack": 2}
    _runtime(monkeypatch, MI300X)
    with capture_launches() as launches:
        spec.run(inputs, config)
    assert launches and all(launch.kwargs["waves_per_eu"] == 2 and launch.kwargs["kpack"] == 2
                            for launch in launches)
    _runtime(monkeypatch, H100)
    with pytest.raises(ValueError, match="waves_per_eu is an AMD .HIP. compile option"):
        spec.run(inputs, config)


def test_a_compile_error_ending_in_a_source_caret_reports_its_cause():
    from seqtune.tuning.compiler import _last_line

    try:
        try:
            raise ValueError("input_precision must be one of ('ieee',). Got tf32x3")
        except ValueError as cause:
            raise RuntimeError("at 3:11:\n    return tl.dot(a, b)\n           ^") from cause
    except RuntimeError as exc:
        assert _last_line(exc) == "ValueError: input_precision must be one of ('ieee',). Got tf32x3"
