"""Every kernel spec honours the contract the tool relies on."""
import itertools
import math

import pytest

from seqtune.tuning.compiler import TARGETS
from seqtune.registry import all_specs
from seqtune.spec import DTYPES, INTERPRETER_LIMITS, next_power_of_2

SPECS = list(all_specs().values())
IDS = [s.name for s in SPECS]


def test_every_kernel_folder_is_found():
    assert set(IDS) >= {"attention", "attention_decode", "linear_attention", "ssd", "delta_rule",
                        "selective_scan", "linear_scan", "prefix_attention"}


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_presets_and_cases_are_well_formed(spec):
    assert set(spec.presets) >= {"tiny", "quick", "default", "full"}
    presets = [p for ps in spec.presets.values() for p in ps]
    fields = {frozenset(set({**spec.problem_defaults, **p}) - set(spec.optional_fields))
              for p in presets}
    assert len(fields) == 1, f"problems of {spec.name} disagree on their fields: {fields}"
    (fields,) = fields
    assert set(spec.size_fields) <= fields
    # verify cases may carry extra inputs (e.g. an explicit sigmoid bias), never fewer fields
    assert all(fields <= set({**spec.problem_defaults, **p}) for p in spec.verify_cases)
    assert {p["dtype"] for p in spec.verify_cases} >= {"float32", "bfloat16"}
    assert set(spec.tolerances) >= set(DTYPES)


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_bucket_keys_round_sizes_up_to_powers_of_two(spec):
    for problem in spec.verify_cases:
        key = spec.bucket(problem)
        for field in spec.size_fields:
            assert key[field] == next_power_of_2(problem[field]) >= problem[field]
        assert spec.bucket(key) == key


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_the_untuned_config_is_valid_everywhere_it_must_run(spec):
    """What runs without tuning (the default, repaired per target where it does not fit) is
    valid for every preset and verify problem on every known target where any config of the
    space is (attention_bwd at head dims over 256 needs more than the 64 KB of shared memory of
    gfx90a/gfx942: none fits there)."""
    problems = [p for ps in spec.presets.values() for p in ps] + list(spec.verify_cases)
    for limits in [INTERPRETER_LIMITS] + [t.limits for t in TARGETS.values()]:
        for problem in problems:
            problem = {**spec.problem_defaults, **problem}
            config = spec.default_for(problem, limits)
            reason = spec.check(config, problem, limits)
            if reason is not None and not _any_config_fits(spec, problem, limits):
                assert spec.name == "attention_bwd" and limits.shared_memory_per_block <= 65536
                continue
            assert reason is None, f"{spec.name} {config} on {problem} ({limits}): {reason}"


def _any_config_fits(spec, problem, limits) -> bool:
    return any(spec.check({**spec.default_config, **dict(zip(spec.space, values))}, problem,
                          limits) is None
               for values in itertools.product(*spec.space.values()))


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_the_default_itself_runs_the_tiny_and_verify_problems(spec):
    for problem in list(spec.presets["tiny"]) + list(spec.verify_cases):
        problem = {**spec.problem_defaults, **problem}
        assert spec.check(dict(spec.default_config), problem, INTERPRETER_LIMITS) is None


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_roofline_counts_are_positive_and_grow_with_length(spec):
    """Counts grow with the sequence length; a decode step has none, so with its batch."""
    for problem in spec.presets["default"]:
        assert spec.flops(problem) > 0 and spec.bytes_moved(problem) > 0
    problem = spec.presets["default"][0]
    length = next((f for f in spec.size_fields if f in ("T", "S", "L")), spec.size_fields[0])
    longer = {**problem, length: max(problem[length], 1) * 2}
    assert spec.bytes_moved(longer) > spec.bytes_moved(problem)
    assert math.isfinite(spec.flops(longer))


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_space_is_consistent(spec):
    if spec.space_size <= 100_000:  # a backward's stagewise space can hold millions
        configs = spec.configs()
        assert spec.space_size == len(configs)
        assert configs[0] == dict(spec.default_config)
    for param in spec.space:
        stage = spec.stage_of(param)
        assert stage is None or stage in spec.stages
