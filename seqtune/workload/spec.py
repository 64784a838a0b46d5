"""A recorded kernel as a ``KernelSpec``: its configs are the space, its recorded calls the
problems, and the reference is the default config's output on the same inputs (or the
``reference`` function of ``seqtune.autotune``), so tune, verify, report and merge need nothing
else. Workload files (JSON lines of ``seqtune record``) live in ``<profile-dir>/workloads/``,
one per kernel, so the tools of that profile dir know the kernel.

The kernel's outputs are the tensor arguments the default config changes (found by comparing
before and after). As under ``triton.autotune``, every run starts from the same state:
``restore_value`` arguments are restored and ``reset_to_zero`` ones zeroed before each launch;
during correctness checks the other outputs are poisoned (NaN) first, so a config that leaves
part of an output unwritten fails instead of passing on an earlier config's values.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch

from seqtune.launch import capturing, launch, poisoned_outputs, poisoning
from seqtune.spec import (Config, DeviceLimits, KernelSpec, Problem, Tolerance,
                          next_power_of_2)
from seqtune.workload.calls import autotuner_of, kernel_name

# Against the default config's output, where only the summation order differs: a few units in
# the last place of a 16-bit output; float32 as loose as TF32 (tl.dot's default precision for
# float32 on NVIDIA GPUs) makes it, as attention's float32 tolerance is. A config that leaves
# outputs unwritten or indexes wrongly misses by far more (or by NaN).
TOLERANCES = {"float32": Tolerance(1e-2, 1e-2), "float16": Tolerance(4e-3, 4e-3),
              "bfloat16": Tolerance(3e-2, 3e-2)}
PRESET = "workload"
WORKLOAD_DIR = "workloads"


@dataclasses.dataclass(frozen=True)
class WorkloadSpec(KernelSpec):
    """A ``KernelSpec`` whose space is a kernel's list of configs and whose sizes may have
    explicit buckets (a size rounds up to the first bucket at or above it, else the last)."""

    buckets: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    digest: str = ""
    kernel_configs: tuple = ()

    def bucket(self, problem: Problem) -> Problem:
        key = dict(problem)
        for field in self.size_fields:
            value, edges = int(key[field]), self.buckets.get(field)
            key[field] = (next((e for e in edges if e >= value), edges[-1]) if edges
                          else next_power_of_2(value))
        return key

    def configs(self, limits: Any = None) -> list[Config]:
        """The recorded ``triton.Config`` list, default first: each carries its own compile
        options, so a backend adds no knobs (``limits`` is the base signature's, unused)."""
        default = dict(self.default_config)
        return [default] + [dict(c) for c in self.kernel_configs if c != default]

    @property
    def space_size(self) -> int:
        return len(self.kernel_configs)


class _Calls:
    """The recorded calls of one kernel, and how to run them."""

    def __init__(self, records: list[dict[str, Any]], buckets: Mapping[str, Any],
                 size_fields: tuple[str, ...]):
        self.records = records
        self.configs = [dict(c) for c in records[0]["configs"]] if records else []
        self.size_fields, self.buckets = size_fields, buckets
        self.by_problem = {_problem_key(r["problem"]): r for r in records}

    def record_for(self, problem: Problem) -> dict[str, Any]:
        """The recorded call of ``problem``, else the nearest one with the same categorical
        fields (compiling needs only those)."""
        record = self.by_problem.get(_problem_key(problem))
        if record is not None:
            return record
        alike = [r for r in self.records if set(r["problem"]) == set(problem) and all(
            r["problem"][k] == v for k, v in problem.items() if k not in self.size_fields)]
        if not alike:
            name = self.records[0]["kernel"] if self.records else "this kernel"
            raise ValueError(f"{name}: no recorded call matches {problem}")
        return min(alike, key=lambda r: sum(abs(r["problem"][k] - problem[k])
                                            for k in self.size_fields))

    def check(self, config: Config, problem: Problem, limits: DeviceLimits) -> str | None:
        if config not in self.configs:
            return "not one of the kernel's configs"
        index = self.configs.index(config)
        record = self.by_problem.get(_problem_key(problem))
        if record is None:
            return None
        if index not in record["allowed"]:
            return "pruned by the kernel's prune_configs_by for this call"
        if record["grids"][index] is None:
            return "its launch grid cannot be formed for this call"
        return None

    def make_inputs(self, problem: Problem, device: str, seed: int) -> dict[str, Any]:
        from seqtune.workload.calls import rebuild_args

        record = self.record_for(problem)
        args = rebuild_args(record, device, seed)
        pristine = {n: t.clone() for n, t in args.items() if isinstance(t, torch.Tensor)}
        return {"record": record, "args": args, "pristine": pristine, "outputs": None}

    def run(self, inputs: dict[str, Any], config: Config) -> tuple[torch.Tensor, ...]:
        if capturing():  # compile-ahead records the launch; nothing runs
            self._launch(inputs, config)
            return ()
        names = self.outputs(inputs)
        self._prepare(inputs, poison=poisoning())
        self._launch(inputs, config)
        return tuple(inputs["args"][n] for n in names)

    def reference(self, inputs: dict[str, Any]) -> tuple[torch.Tensor, ...]:
        """The user's ``reference`` on a copy of the inputs, else the default config."""
        record, names = inputs["record"], self.outputs(inputs)
        function = getattr(load_kernel(record), "seqtune_reference", None)
        if function is None:
            with poisoned_outputs():
                outputs = self.run(inputs, self.configs[record["default"]])
            return tuple(o.detach().clone() for o in outputs)
        copies = {n: v.clone() if isinstance(v, torch.Tensor) else v
                  for n, v in {**inputs["args"], **inputs["pristine"]}.items()}
        for name in record["reset_to_zero"]:
            copies[name].zero_()
        function(**copies)
        return tuple(copies[n].detach().clone() for n in names)

    def outputs(self, inputs: dict[str, Any]) -> list[str]:
        """The tensor arguments the ``reference`` writes, else the default config (found once
        per inputs)."""
        if inputs["outputs"] is None:
            args, record = inputs["args"], inputs["record"]
            self._prepare(inputs, poison=False)
            before = {n: t.clone() for n, t in args.items() if isinstance(t, torch.Tensor)}
            function = getattr(load_kernel(record), "seqtune_reference", None)
            if function is not None:
                function(**args)
            else:
                self._launch(inputs, self.configs[record["default"]])
            written = [n for n, t in before.items() if _changed(t, args[n])]
            for name, value in inputs["pristine"].items():
                args[name].copy_(value)
            if not written:
                writer = "reference" if function is not None else "default config"
                raise ValueError(f"{record['kernel']}: the {writer} wrote no tensor argument, "
                                 "so there is no output to check configs by")
            inputs["outputs"] = written
        return inputs["outputs"]

    def _prepare(self, inputs: dict[str, Any], poison: bool) -> None:
        """The state every launch starts from (see the module docstring)."""
        record, args = inputs["record"], inputs["args"]
        for name in record["restore_value"]:
            args[name].copy_(inputs["pristine"][name])
        for name in record["reset_to_zero"]:
            args[name].zero_()
        if poison and inputs["outputs"]:
            for name in inputs["outputs"]:
                if name not in record["restore_value"] and name not in record["reset_to_zero"]:
                    _poison(args[name])

    def _launch(self, inputs: dict[str, Any], config: Config) -> None:
        from triton.runtime.autotuner import Heuristics

        record = inputs["record"]
        index = self.configs.index(dict(config))
        autotuner = load_kernel(record)
        chosen = autotuner.configs[index]
        kwargs = {**inputs["args"], **record["options"], **chosen.all_kwargs()}
        if chosen.pre_hook is not None:
            chosen.pre_hook(kwargs)
        kernel = autotuner.fn
        while isinstance(kernel, Heuristics):  # as Heuristics.run would, all by keyword
            for name, rule in kernel.values.items():
                kwargs[name] = rule(kwargs)
            kernel = kernel.fn
        launch(kernel, record["grids"][index], **kwargs)

    def bytes_moved(self, problem: Problem) -> float:
        record = self.record_for(problem)
        total = 0
        for item in record["args"].values():
            if "tensor" in item:
                tensor = item["tensor"]
                numel = 1
                for n in tensor["shape"]:
                    numel *= n
                total += numel * torch.empty((), dtype=getattr(torch, tensor["dtype"])).itemsize
        return float(total)


def _changed(before: torch.Tensor, after: torch.Tensor) -> bool:
    if before.is_floating_point():
        both_nan = torch.isnan(before) & torch.isnan(after)
        return bool(((before != after) & ~both_nan).any())
    return not torch.equal(before, after)


def _poison(tensor: torch.Tensor) -> None:
    if tensor.is_floating_point():
        tensor.fill_(float("nan"))
    elif tensor.dtype != torch.bool:
        tensor.fill_(torch.iinfo(tensor.dtype).min)


def _problem_key(problem: Mapping[str, Any]) -> str:
    return json.dumps(problem, sort_keys=True)


def spec_from_records(records: list[dict[str, Any]]) -> WorkloadSpec:
    """The spec of one kernel from its recorded calls (of its latest source, when the records
    span edits of it)."""
    latest = records[-1]
    records = [r for r in records if r["digest"] == latest["digest"]]
    sizes = tuple(f for f in latest["size_fields"]
                  if all(f in r["size_fields"] for r in records))
    buckets = {k: None if v is None else tuple(v) for k, v in latest["buckets"].items()}
    calls = _Calls(records, buckets, sizes)
    return _build(latest, calls, records)


def live_spec(record: dict[str, Any]) -> WorkloadSpec:
    """The spec of a kernel from one call's record, for the runtime's profile lookups: its
    configs, fields and buckets, with that call as its one recorded problem."""
    return spec_from_records([record])


def _build(latest: dict[str, Any], calls: _Calls, records: list[dict]) -> WorkloadSpec:
    configs = calls.configs
    space: dict[str, tuple] = {}
    for config in configs:
        for knob, value in config.items():
            if value not in space.setdefault(knob, ()):
                space[knob] += (value,)
    problems = list({_problem_key(r["problem"]): dict(r["problem"]) for r in records}.values())
    spec_shell = WorkloadSpec("", "", "", {}, {}, calls.size_fields, {}, (), calls.check,
                              calls.make_inputs, calls.run, calls.reference, TOLERANCES,
                              _zero, calls.bytes_moved, buckets=calls.buckets)
    per_bucket = list({_problem_key(spec_shell.bucket(p)): p for p in reversed(problems)}
                      .values())[::-1]
    fields = (*latest["key"], *(f"{a}.dtype" for a in latest["args"]), "dtype")
    return dataclasses.replace(
        spec_shell, name=latest["kernel"], family="workload",
        description=f"{latest['module']}.{latest['qualname']} (recorded workload, "
                    f"{len(configs)} configs)",
        space=space, default_config=dict(configs[latest["default"]]),
        presets={PRESET: per_bucket}, verify_cases=problems,
        optional_fields=tuple(dict.fromkeys(fields)), digest=latest["digest"],
        kernel_configs=tuple(configs))


def _zero(problem: Problem) -> float:
    """A recorded kernel's FLOPs are unknown: TFLOP/s and % of peak are not claimed for it."""
    return 0.0


_kernels: dict[tuple[str, str, str], Any] = {}


def load_kernel(record: Mapping[str, Any]) -> Any:
    """The live autotuned kernel of a record: its module imported (its folder put on the path
    when needed), the autotuner found by its qualified name. ValueError saying why not."""
    module_name, qualname = record["module"], record["qualname"]
    key = (module_name, qualname, record["kernel"])  # one function may be two kernels
    if key not in _kernels:
        if module_name == "__main__":
            raise ValueError(f"{record['kernel']} is defined in a script (__main__); move it "
                             "into an importable module to tune it")
        module = _import(module_name, record.get("file"))
        found: Any = module
        for part in qualname.split("."):
            found = getattr(found, part, None)
        autotuner = autotuner_of(found)
        if autotuner is None or kernel_name(autotuner) != record["kernel"]:
            # another name for it (seqtune.autotune's name=, a second decoration of one
            # function): the module's autotuned kernel of that name
            named = (autotuner_of(v) for v in vars(module).values())
            autotuner = next((a for a in named if a is not None
                              and kernel_name(a) == record["kernel"]), None)
        if autotuner is None or len(autotuner.configs) != len(record["configs"]):
            raise ValueError(f"{record['kernel']}: {module_name}.{qualname} is no longer the "
                             "recorded autotuned kernel (re-record the workload)")
        _kernels[key] = autotuner
    return _kernels[key]


def _import(module_name: str, file: str | None) -> Any:
    try:
        return importlib.import_module(module_name)
    except ImportError:
        if not file:
            raise
    root = Path(file).resolve().parent
    for _ in module_name.split(".")[1:]:
        root = root.parent
    sys.path.insert(0, str(root))
    return importlib.import_module(module_name)


def read_workload(path: Path) -> list[dict[str, Any]]:
    """The records of a workload file; ValueError naming the file and line of a bad one."""
    from seqtune.store.safe_read import read_regular_file

    records = []
    text = read_regular_file(Path(path)).decode()
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{number}: not a JSON record ({exc})") from None
        problem = _record_problem(record)
        if problem:
            raise ValueError(f"{path}:{number}: not a seqtune record ({problem})")
        records.append(record)
    return records


RECORD_FIELDS = {"kernel": str, "module": str, "qualname": str, "digest": str, "key": list,
                 "buckets": dict, "size_fields": list, "configs": list, "default": int,
                 "problem": dict, "args": dict, "options": dict, "grids": list,
                 "allowed": list, "restore_value": list, "reset_to_zero": list}


def _record_problem(record: Any) -> str | None:
    """What makes ``record`` no record of ``seqtune record``, or None."""
    if not isinstance(record, dict):
        return f"a {type(record).__name__}, not a mapping"
    for field, kind in RECORD_FIELDS.items():
        if not isinstance(record.get(field), kind):
            return f"{field} is {type(record.get(field)).__name__}, not {kind.__name__}"
    configs = record["configs"]
    if not configs or not all(isinstance(c, dict) for c in configs):
        return "configs is not a non-empty list of mappings"
    if len(record["grids"]) != len(configs) or not 0 <= record["default"] < len(configs):
        return "grids or default do not match the configs"
    return None


def by_kernel(records: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        grouped.setdefault(record["kernel"], []).append(record)
    return grouped


def workload_file(folder: Path, kernel: str) -> Path:
    return Path(folder) / WORKLOAD_DIR / f"{kernel.replace(os.sep, '_')}.jsonl"


def save_workload(folder: Path, kernel: str, records: list[dict[str, Any]]) -> Path:
    """Merge a kernel's records into ``<folder>/workloads/<kernel>.jsonl``, the latest call
    per problem (the runtime reads this file: packed batches recorded at every step, each with
    its own offsets, would otherwise grow it without bound), replacing the file atomically."""
    path = workload_file(folder, kernel)
    path.parent.mkdir(parents=True, exist_ok=True)
    known = read_workload(path) if path.is_file() else []
    merged = {_problem_key(r["problem"]): r for r in [*known, *records]}
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=".workload-")
    with os.fdopen(handle, "w") as out:
        out.writelines(json.dumps(r) + "\n" for r in merged.values())
    os.replace(temp, path)
    return path


def folder_specs(folder: Path) -> tuple[dict[str, WorkloadSpec], list[str]]:
    """The specs of the workload files of a profile dir, and a reason per unusable file."""
    specs, problems = {}, []
    try:
        paths = sorted((Path(folder) / WORKLOAD_DIR).glob("*.jsonl"))
    except OSError as exc:  # an unreadable folder: no recorded kernels from it
        return {}, [f"{folder}: {exc}"]
    for path in paths:
        try:
            for name, records in by_kernel(read_workload(path)).items():
                specs[name] = spec_from_records(records)
        except Exception as exc:  # a damaged file costs only its kernels
            problems.append(f"{path}: {type(exc).__name__}: {exc}")
    return specs, problems
