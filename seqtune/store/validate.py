"""Which entries of a profile can be used. The loader, ``merge`` and ``report`` judge by these
rules, so an entry one of them skips the others skip or refuse too.

An entry is usable when it is a mapping whose ``problem`` and ``config`` are mappings keyed by
names; every problem value is a plain value (a string, a bool, an integer or a finite float);
and, for a kernel this installation knows, every problem field is one of the kernel's, size
fields are positive integers, ``dtype`` names a supported dtype, and the config is exactly in
the kernel's space (``KernelSpec.validate_config``). Timings (``time_us``, what ``merge`` and
``report`` read) must have a positive finite ``median``, and the figures beside it be numbers.
"""
from __future__ import annotations

import math
import reprlib
from pathlib import Path
from typing import Any, Iterator, Mapping

from seqtune.spec import HIP_KNOBS, Config, KernelSpec, Problem, dtype_name

NUMBER_FIELDS = ("default_time_us", "speedup_vs_default", "tflops", "gbps", "max_rel_err")


class InvalidEntry(ValueError):
    """An entry that cannot be used; the message says why (without naming the file)."""


def entry_name(path: Path | str, kernel: str, index: int) -> str:
    """``<file>: kernels.<kernel>.entries[<index>]``: where an entry is, for messages."""
    return f"{path}: kernels.{kernel}.entries[{index}]"


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_plain(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, (str, bool, int))


def check_shape(raw: Any) -> None:
    """InvalidEntry unless ``raw`` is a mapping with name-keyed ``problem`` and ``config``
    mappings of plain values (what any kernel's entry must be)."""
    if not isinstance(raw, dict):
        raise InvalidEntry(f"entry without problem/config mappings (the entry is "
                           f"{_kind(raw)})")
    for part in ("problem", "config"):
        mapping = raw.get(part)
        if not isinstance(mapping, dict):
            raise InvalidEntry(f"entry without problem/config mappings ({part} is "
                               f"{_kind(mapping)})")
        for key, value in mapping.items():
            if not isinstance(key, str):
                raise InvalidEntry(f"{part} key {reprlib.repr(key)} is not a name")
            if not _is_plain(value):
                raise InvalidEntry(f"{part} {key}={reprlib.repr(value)} is not a plain value "
                                   "(a string, bool, integer or finite number)")
    try:
        if "dtype" in raw["problem"]:
            dtype_name(raw["problem"]["dtype"])
    except ValueError as exc:
        raise InvalidEntry(str(exc)) from None


def check_timing(raw: dict[str, Any]) -> None:
    """InvalidEntry unless the entry's timing and figures are numbers: ``time_us`` (when
    present) a mapping with a positive finite ``median`` (a median of 0 would win every merge)."""
    if "time_us" in raw:
        timing = raw["time_us"]
        if not isinstance(timing, dict):
            raise InvalidEntry(f"time_us={reprlib.repr(timing)} is not a mapping with a median")
        median = timing.get("median")
        if not (is_number(median) and math.isfinite(median) and median > 0):
            raise InvalidEntry(f"time_us.median={reprlib.repr(median)} is not a positive "
                               "finite number")
        for key in ("p20", "p80"):
            if timing.get(key) is not None and not is_number(timing[key]):
                raise InvalidEntry(f"time_us.{key}={reprlib.repr(timing[key])} is not a number")
    for key in NUMBER_FIELDS:
        if raw.get(key) is not None and not is_number(raw[key]):
            raise InvalidEntry(f"{key}={reprlib.repr(raw[key])} is not a number")
    if raw.get("tried") is not None and not (isinstance(raw["tried"], int)
                                             and not isinstance(raw["tried"], bool)):
        raise InvalidEntry(f"tried={reprlib.repr(raw['tried'])} is not a count")
    failed = raw.get("failed")
    if failed is not None and not (isinstance(failed, dict) and all(
            isinstance(n, int) and not isinstance(n, bool) for n in failed.values())):
        raise InvalidEntry(f"failed={reprlib.repr(failed)} is not a mapping of counts")


class EntryRules:
    """The rules of one kernel's entries (its problem fields known once)."""

    def __init__(self, spec: KernelSpec, backend: str | None = None):
        """``backend``: the profile's device backend; off "hip" an AMD knob is invalid (an
        NVIDIA profile never offers one)."""
        self.spec, self.backend = spec, backend
        problems = [*spec.verify_cases, *(p for ps in spec.presets.values() for p in ps)]
        self.fields = {*spec.size_fields, *spec.problem_defaults, *spec.optional_fields,
                       *(field for problem in problems for field in problem)}

    def usable(self, raw: Any) -> tuple[Problem, Config]:
        """The entry's problem (defaults filled in, dtype by name) and full config, or
        InvalidEntry saying what is wrong."""
        check_shape(raw)
        problem = {**self.spec.problem_defaults, **raw["problem"]}
        unknown = sorted(set(problem) - self.fields)
        if unknown:
            raise InvalidEntry(f"unknown problem field(s) {unknown} of {self.spec.name}; "
                               f"expected some of {sorted(self.fields)}")
        for field in self.spec.size_fields:
            value = problem.get(field)
            if field in problem and not (isinstance(value, int) and not isinstance(value, bool)
                                         and value > 0):
                raise InvalidEntry(f"size {field}={reprlib.repr(value)} is not a positive "
                                   "integer")
        try:
            if "dtype" in problem:
                problem["dtype"] = dtype_name(problem["dtype"])
            config = self.spec.validate_config(raw["config"])
        except ValueError as exc:
            raise InvalidEntry(str(exc)) from None
        amd = [knob for knob in HIP_KNOBS if knob in config]
        if amd and self.backend not in (None, "hip"):
            raise InvalidEntry(f"{amd[0]} is an AMD (HIP) knob, in a {self.backend} profile")
        return problem, config


def invalid_entries(profile: Mapping[str, Any], specs: Mapping[str, KernelSpec],
                    timed: bool = True) -> Iterator[tuple[str, int, str]]:
    """(kernel, index, reason) of every entry of a read profile that is not usable: by the
    kernel's rules where ``specs`` has it, by shape alone otherwise; timings too if ``timed``."""
    for kernel, section in (profile.get("kernels") or {}).items():
        rules = EntryRules(specs[kernel]) if kernel in specs else None
        for index, raw in enumerate(section.get("entries", [])):
            try:
                if rules is not None:
                    rules.usable(raw)
                else:
                    check_shape(raw)
                if timed:
                    check_timing(raw)
            except InvalidEntry as exc:
                yield kernel, index, str(exc)


def _kind(value: Any) -> str:
    return "missing" if value is None else f"{type(value).__name__} {reprlib.repr(value)}"
