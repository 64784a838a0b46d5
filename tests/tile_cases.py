"""Checks shared by the kernels whose configs differ in tile shapes only as far as the
interpreter can tell (num_warps and num_stages do not change what it computes)."""
from seqtune.spec import INTERPRETER_LIMITS, Config, KernelSpec, Problem
from seqtune.agreement import check_case


def distinct_tiles(spec: KernelSpec, problem: Problem, tiles: tuple[str, ...]) -> list[Config]:
    """The valid configs of a problem, one per setting of the ``tiles`` parameters."""
    found: dict[tuple, Config] = {}
    for config in spec.configs():
        if spec.check(config, problem, INTERPRETER_LIMITS) is None:
            found.setdefault(tuple(config[t] for t in tiles), config)
    return list(found.values())


def assert_configs_agree(spec: KernelSpec, problem: Problem, configs: list[Config]) -> None:
    """Every config agrees with the float64 reference on one set of inputs."""
    inputs = spec.make_inputs(problem, "cpu", 0)
    reference = spec.reference(inputs)
    for config in configs:
        agreement = check_case(spec, problem, config, reference=reference, inputs=inputs)
        assert agreement.ok, f"{config}: {agreement.detail}"
