"""Splitting a tune's work across devices: which (kernel, problem) items each worker tunes.

The split is a pure function of the items, their estimated costs and the number of shards, so
every worker of a fleet computes the same plan on its own and a re-run of shard ``i`` does the
same work as before. Items are placed largest first on the least-loaded shard (ties: the lowest
shard), which keeps the heaviest shard within one item's cost of the lightest; within a shard
items keep the order of the tune (kernels as given, problems in preset order).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence, TypeVar

from seqtune.spec import KernelSpec, Problem

Item = TypeVar("Item")
WorkItem = tuple[KernelSpec, Problem]


def split_into_shards(items: Sequence[Item], count: int, cost: Callable[[Item], float],
                      identity: Callable[[Item], Any]) -> list[list[Item]]:
    """``count`` lists that together hold every item exactly once, balanced by ``cost``.

    ``identity`` gives each item a sortable, unique name; it breaks cost ties, so which shard an
    item lands in does not depend on the order the items came in.
    """
    if count < 1:
        raise ValueError(f"need at least one shard, got {count}")
    costs = [cost(item) for item in items]
    heaviest_first = sorted(range(len(items)), key=lambda i: (-costs[i], identity(items[i])))
    loads = [0.0] * count
    chosen: list[list[int]] = [[] for _ in range(count)]
    for index in heaviest_first:
        lightest = min(range(count), key=lambda shard: (loads[shard], shard))
        chosen[lightest].append(index)
        loads[lightest] += costs[index]
    return [[items[index] for index in sorted(shard)] for shard in chosen]


def work_items(specs: Sequence[KernelSpec], preset: str) -> list[WorkItem]:
    """Every (kernel, problem) a tune of ``preset`` covers, in tuning order."""
    return [(spec, problem) for spec in specs for problem in spec.presets.get(preset, ())]


def estimated_cost(item: WorkItem, max_configs: int | None) -> float:
    """A device-independent proxy of how long an item takes to tune: the configs it may try
    times the work of one launch (FLOPs plus bytes moved). Every rank of a mixed fleet must
    compute the same plan, so nothing here may depend on the local device."""
    spec, problem = item
    configs = spec.space_size if max_configs is None else min(spec.space_size, max_configs)
    return configs * max(spec.flops(problem) + spec.bytes_moved(problem), 1.0)


def item_identity(item: WorkItem) -> tuple[str, tuple]:
    spec, problem = item
    bucket = spec.bucket(problem)
    return spec.name, tuple(sorted((str(k), str(v)) for k, v in bucket.items()))


def shard_work(specs: Sequence[KernelSpec], preset: str, max_configs: int | None,
               shard: tuple[int, int] | None) -> list[WorkItem]:
    """The items of shard ``(index, count)`` of a tune, or all of them when ``shard`` is None."""
    items = work_items(specs, preset)
    if shard is None:
        return items
    index, count = shard
    return split_into_shards(items, count, lambda item: estimated_cost(item, max_configs),
                             item_identity)[index]


def parse_shard(text: str) -> tuple[int, int]:
    """``"2/8"`` -> ``(2, 8)``: shard 2 (counting from 0) of 8; ValueError if malformed."""
    index, slash, count = text.partition("/")
    try:
        parsed = int(index), int(count)
    except ValueError:
        parsed = None
    if not slash or parsed is None or not 0 <= parsed[0] < parsed[1]:
        raise ValueError(f"--shard {text!r}: expected I/N with 0 <= I < N, e.g. 0/4")
    return parsed


def shard_plan(device_names: Sequence[str]) -> list[tuple[int, int]]:
    """Each worker's ``(shard index, shard count)`` among the workers on the same kind of
    device: every device type tunes the whole work once, split over its own devices, so each
    type's profile is complete however the fleet is mixed."""
    seen: dict[str, int] = {}
    plan = []
    for name in device_names:
        plan.append((seen.get(name, 0), device_names.count(name)))
        seen[name] = seen.get(name, 0) + 1
    return plan


def load_balance(shards: Sequence[Sequence[Item]], cost: Callable[[Item], float]) -> list[float]:
    """The summed cost of each shard (for reports and tests of the balance)."""
    return [math.fsum(cost(item) for item in shard) for shard in shards]
