"""``seqtune bench`` on the CPU (interpreter timings) and the kernels' baselines against their
float64 references."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import triton
from typer.testing import CliRunner

import seqtune.registry
from seqtune.analysis.bench import bench_problems, parse_lengths
from seqtune.cli.render_bench import SPARK_LEVELS, chart_lines
from seqtune.cli import app, main
from seqtune.device import interpreter_device
from seqtune.store.profile_file import profile_path, save_entries
from seqtune.registry import all_specs, get_spec
from seqtune.spec import DTYPES
from seqtune.tuning.timing import Timing
from seqtune.agreement import compare, tolerance_for

runner = CliRunner()
NOT_INSTALLED = "flash-linear-attention (the fla package) is not installed"


def invoke(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def run_main(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    """``seqtune ARGS`` through the real entry point: (exit code, stderr)."""
    monkeypatch.setattr("sys.argv", ["seqtune", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    return exit_info.value.code, capsys.readouterr().err


def _missing_fla(inputs):
    raise RuntimeError(NOT_INSTALLED)


@pytest.fixture
def toy_with_baselines(monkeypatch):
    """The registry holding only the toy kernel, with one working and one missing baseline."""
    from toy_spec import TOY

    baselines = {"plain": lambda inputs: (inputs["x"] * inputs["alpha"],),
                 "missing": _missing_fla}
    spec = dataclasses.replace(TOY, source_dir=Path(__file__).parent, baselines=baselines)
    monkeypatch.setattr(seqtune.registry, "all_specs", lambda: {spec.name: spec})
    seqtune.registry.source_hash.cache_clear()
    yield spec
    seqtune.registry.source_hash.cache_clear()


# ----------------------------------------------------------------------------- --lengths

def test_parse_lengths_accepts_k_suffixes_sorts_and_drops_repeats():
    assert parse_lengths("1k,2k,512") == (512, 1024, 2048)
    assert parse_lengths(" 32K , 64,1024,1k") == (64, 1024, 32768)


@pytest.mark.parametrize("text", ["", "0", "-1", "1m", "abc", "1.5k", "1k,,2k", "k"])
def test_parse_lengths_rejects_bad_items(text):
    with pytest.raises(ValueError, match="is not a positive length"):
        parse_lengths(text)


@pytest.mark.parametrize("args, message", [
    (["--lengths", "1k,x"], "'x' is not a positive length"),
    (["--lengths", "0"], "'0' is not a positive length"),
    (["--preset", "default"], "needs a CUDA GPU"),
    (["--preset", "huge"], "unknown preset 'huge'"),
    (["nope"], "unknown kernel 'nope'"),
])
def test_bad_bench_usage_is_one_line_and_exit_2(args, message, toy_with_baselines,
                                                  monkeypatch, capsys):
    code, stderr = run_main(monkeypatch, capsys, "bench", *args)
    assert code == 2
    assert message in stderr and "Traceback" not in stderr
    assert len(stderr.strip().splitlines()) == 1


def test_lengths_replace_every_length_field_and_keep_the_rest():
    attention = get_spec("attention")
    problems = bench_problems(attention, "tiny", (128, 256))
    tiny = attention.presets["tiny"]
    assert len(problems) == 2 * len(tiny)
    for problem in problems:
        assert problem["T"] == problem["S"] in (128, 256)
    assert [{k: v for k, v in p.items() if k not in "TS"} for p in problems[:2]] == \
        [{k: v for k, v in tiny[0].items() if k not in "TS"}] * 2
    decode = bench_problems(get_spec("attention_decode"), "tiny", (1024,))
    assert [p["S"] for p in decode] == [1024, 1024]
    assert [p["B"] for p in decode] == [p["B"] for p in get_spec("attention_decode").presets["tiny"]]
    scan = bench_problems(get_spec("selective_scan"), "tiny", (4096,))
    assert {p["L"] for p in scan} == {4096}


def test_lengths_drop_problems_that_become_the_same():
    linear_scan = get_spec("linear_scan")
    once = bench_problems(linear_scan, "tiny", (64,))
    assert len(once) == len({json.dumps(p, sort_keys=True) for p in once})


# --------------------------------------------------------------------------- the command

def test_bench_json_on_cheap_kernels_labels_interpreter_timings_and_has_baselines():
    result = invoke("bench", "attention_decode", "linear_scan", "--preset", "tiny", "--json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert result.stdout == json.dumps(payload, indent=2, sort_keys=True) + "\n"
    assert payload["schema"] == "seqtune-bench/1"
    assert payload["timer"] == "interpreter-wall-clock" and payload["gpu_timings"] is False
    assert "not GPU timings" in payload["timing_note"]
    assert payload["command"] == "seqtune bench attention_decode linear_scan --preset tiny"
    kernels = [r["kernel"] for r in payload["results"]]
    assert kernels == ["attention_decode"] * 2 + ["linear_scan"] * 2
    for record in payload["results"]:
        names = [i["name"] for i in record["implementations"]]
        baselines = sorted(get_spec(record["kernel"]).baselines)
        assert names == ["tuned", "default", *baselines]
        assert "torch" in baselines
        for impl in record["implementations"]:
            assert impl["status"] == "ok", impl
            assert impl["time_us"]["median"] > 0 and impl["tflops"] > 0 and impl["gbps"] > 0
            assert impl["percent_of_peak"] is None  # no peak for a CPU
            assert set(impl["vs_baselines"]) == set(baselines)
    decode = payload["results"][0]["implementations"]
    assert {i["name"] for i in decode} >= {"torch_sdpa", "torch"}


def test_bench_table_and_chart_on_the_cpu():
    result = invoke("bench", "linear_scan", "--lengths", "32,64")
    assert result.exit_code == 0, result.output
    assert "not GPU timings" in result.stdout
    assert "vs" in result.stdout and "time against length" in result.stdout
    assert "lengths 32, 64" in result.stdout
    assert "~length^" not in result.stdout  # two noisy points fit no growth exponent


def test_an_unavailable_baseline_is_reported_not_raised(toy_with_baselines):
    result = invoke("bench", "toy_scale", "--json")
    assert result.exit_code == 0, result.output
    for record in json.loads(result.stdout)["results"]:
        by_name = {i["name"]: i for i in record["implementations"]}
        assert by_name["missing"]["status"] == "unavailable"
        assert by_name["missing"]["reason"] == f"RuntimeError: {NOT_INSTALLED}"
        assert by_name["missing"]["time_us"] is None
        assert by_name["plain"]["status"] == "ok"
        assert set(by_name["tuned"]["vs_baselines"]) == {"plain"}
    table = invoke("bench", "toy_scale")
    assert table.exit_code == 0
    # the reason once, below the table (whole in --json)
    assert "missing unavailable (2 problems): RuntimeError: flash-linear-attention" \
        in table.stdout


def test_a_failing_seqtune_config_exits_1_with_one_line(toy_with_baselines, monkeypatch,
                                                        capsys):
    def broken_run(inputs, config):
        raise RuntimeError("kernel exploded")

    monkeypatch.setattr(seqtune.registry, "all_specs", lambda: {
        "toy_scale": dataclasses.replace(toy_with_baselines, run=broken_run)})
    code, stderr = run_main(monkeypatch, capsys, "bench", "toy_scale", "--json")
    assert code == 1
    assert "RuntimeError: kernel exploded" in stderr and "Traceback" not in stderr


def test_inputs_that_cannot_be_built_fail_that_problem_only(toy_with_baselines, monkeypatch,
                                                            capsys):
    def inputs_or_oom(problem, device, seed):
        if problem["N"] > 64:
            raise MemoryError("out of memory allocating x")
        return toy_with_baselines.make_inputs(problem, device, seed)

    monkeypatch.setattr(seqtune.registry, "all_specs", lambda: {
        "toy_scale": dataclasses.replace(toy_with_baselines, make_inputs=inputs_or_oom)})
    result = invoke("bench", "toy_scale", "--json")
    assert result.exit_code == 1
    first, second = json.loads(result.stdout)["results"]
    assert {i["status"] for i in first["implementations"]} == {"ok", "unavailable"}
    assert [i["status"] for i in second["implementations"]] == \
        ["failed", "failed", "unavailable", "unavailable"]
    assert {i["reason"] for i in second["implementations"]} == \
        {"inputs: MemoryError: out of memory allocating x"}


def test_tuned_is_the_loaders_choice_from_the_profile_dir(toy_with_baselines, tmp_path):
    spec = toy_with_baselines
    problem = spec.presets["tiny"][0]
    tuned = {"BLOCK": 16, "SKIP_TAIL": False, "num_warps": 2}
    path = profile_path(tmp_path, interpreter_device().key)
    save_entries(path, interpreter_device().as_dict(), spec.name,
                 seqtune.registry.source_hash(spec.name),
                 [{"problem": spec.bucket(problem), "config": tuned, "triton": triton.__version__,
                   "source_hash": seqtune.registry.source_hash(spec.name)}])
    result = invoke("bench", "toy_scale", "--profile-dir", str(tmp_path), "--json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["profile"] == str(path)
    first = {i["name"]: i for i in payload["results"][0]["implementations"]}
    assert first["tuned"]["config"] == tuned and first["default"]["config"] != tuned


def test_json_is_identical_across_runs_with_the_same_timings(toy_with_baselines, monkeypatch):
    def fixed_timer(run, config):
        run()
        return Timing(10.0, 9.0, 11.0, 3)

    monkeypatch.setattr("seqtune.tuning.timing.timer_for", lambda backend: (fixed_timer, "fixed"))
    first = invoke("bench", "toy_scale", "--json").stdout
    assert invoke("bench", "toy_scale", "--json").stdout == first


def test_chart_shows_quadratic_and_linear_growth():
    def record(kernel, length, micros):
        return {"kernel": kernel, "problem": {"B": 1, "T": length}, "length": length,
                "implementations": [{"name": "tuned", "status": "ok",
                                     "time_us": {"median": micros}}]}

    lengths = (1024, 2048, 4096, 8192)
    results = ([record("attention", n, 1e-4 * n * n) for n in lengths]
               + [record("linear_scan", n, 0.01 * n) for n in lengths])
    lines = chart_lines({"results": results})
    attention_line, scan_line = lines[1], lines[3]
    assert attention_line.endswith("~length^2.00") and scan_line.endswith("~length^1.00")
    assert "lengths 1k, 2k, 4k, 8k" in lines[0]
    # One log scale for every line: over the same lengths attention climbs far more levels.
    attention_levels = [SPARK_LEVELS.index(c) for c in attention_line.split()[1]]
    scan_levels = [SPARK_LEVELS.index(c) for c in scan_line.split()[1]]
    assert attention_levels == sorted(attention_levels) and attention_levels[-1] == 7
    assert scan_levels == sorted(scan_levels) and scan_levels[0] == 0
    assert attention_levels[-1] - attention_levels[0] > 2 * (scan_levels[-1] - scan_levels[0])


# ----------------------------------------------------------------------- the baselines

# Three chunks of up to 64 steps (the last one partial), so the chunked baselines carry state
# across chunks; the verify cases fit in one or two.
GATES_AND_DTYPES = (("none", "float32"), ("scalar", "bfloat16"), ("channel", "float32"))
MULTI_CHUNK_CASES = {
    "linear_attention": [{"B": 1, "T": 130, "H": 2, "K": 32, "V": 24, "gate": gate,
                          "initial_state": True, "dtype": dtype}
                         for gate, dtype in GATES_AND_DTYPES],
    "delta_rule": [{"B": 1, "T": 130, "H": 1, "K": 32, "V": 16, "gate": gate,
                    "initial_state": True, "dtype": dtype} for gate, dtype in GATES_AND_DTYPES],
    "ssd": [{"b": 1, "T": 130, "h": 4, "g": 2, "n": 32, "p": 16, "has_D": True,
             "initial_state": True, "dtype": "bfloat16"}],
}
TORCH_BASELINES = [(kernel, name) for kernel, spec in all_specs().items()
                   for name in sorted(spec.baselines) if name.startswith("torch")]


def test_every_kernel_has_a_plain_torch_baseline_and_the_expected_others():
    for kernel, spec in all_specs().items():
        assert "torch" in spec.baselines, kernel
    for kernel in ("attention", "attention_decode"):
        assert "torch_sdpa" in get_spec(kernel).baselines
    for kernel in ("linear_attention", "ssd", "delta_rule"):
        assert "fla_chunk" in get_spec(kernel).baselines


@pytest.mark.parametrize("kernel, name", TORCH_BASELINES)
def test_torch_baseline_agrees_with_the_float64_reference(kernel, name):
    spec = get_spec(kernel)
    baseline = spec.baselines[name]
    checked = 0
    for case in [*spec.verify_cases, *MULTI_CHUNK_CASES.get(kernel, [])]:
        case = {**spec.problem_defaults, **case}  # the extra cases predate newer fields
        inputs = spec.make_inputs(case, "cpu", 3)
        try:
            outputs = baseline(inputs)
        except ValueError as exc:  # a case the baseline does not compute (SDPA: sigmoid),
            assert "\n" not in str(exc)  # refused in one line saying why
            continue
        agreement = compare(outputs, spec.reference(inputs), tolerance_for(spec, case))
        assert agreement.ok, f"{case}: {agreement.detail}"
        assert outputs[0].dtype == DTYPES[case["dtype"]]  # computed in the op's dtype
        checked += 1
    assert checked >= 2


@pytest.mark.parametrize("kernel", ["linear_attention", "ssd", "delta_rule"])
def test_fla_baselines_are_unavailable_on_the_cpu_with_one_line(kernel):
    spec = get_spec(kernel)
    inputs = spec.make_inputs(spec.presets["tiny"][0], "cpu", 0)
    with pytest.raises(RuntimeError, match="not installed|needs CUDA tensors") as info:
        spec.baselines["fla_chunk"](inputs)
    assert "\n" not in str(info.value)
