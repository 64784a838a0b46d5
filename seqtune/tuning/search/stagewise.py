"""Stagewise search: the shared knobs' settings, then one stage's knobs at a time."""
from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterator

from seqtune.spec import Config, smallness, value_distance
from seqtune.tuning.search.exhaustive import Exhaustive
from seqtune.tuning.search.space import Evaluate, SearchSpace


# Repairs tried per shared setting before it is skipped: milliseconds of ``is_candidate``.
FIRST_CANDIDATE_TRIES = 4096


class Stagewise:
    """For each setting of the shared knobs, tune one stage at a time with the other stages held
    at their best so far: the sum of the stage spaces instead of their product. Right when the
    stages are nearly independent once the shared knobs (e.g. the chunk size) are fixed. A
    ``max_evaluations`` below that sum is spread over every setting and stage (``_share``). A
    space without stages is searched exhaustively."""

    name = "stagewise"

    def search(self, space: SearchSpace, evaluate: Evaluate, rng: random.Random) -> None:
        if not space.stages:
            Exhaustive().search(space, evaluate, rng)
            return
        share = self._share(space)
        for current in self._setting_starts(space):
            for stage in space.stages:
                current = self._tune_stage(space, evaluate, current, stage, share, rng)
                if current is None:
                    return

    @classmethod
    def _share(cls, space: SearchSpace) -> float:
        """The share of each stage's options a ``max_evaluations`` budget pays for: spread
        over every setting and stage, so a cut budget still tunes each stage a little rather
        than the first stage of the first setting fully and the rest not at all."""
        if space.max_evaluations is None:
            return 1.0
        return min(1.0, space.max_evaluations / max(cls.planned(space), 1))

    @classmethod
    def planned(cls, space: SearchSpace) -> int:
        """The configs this search will ask about, counted as if each stage kept the start's
        values for the other stages."""
        return sum(len(cls._stage_options(space, current, stage))
                   for current in cls._setting_starts(space) for stage in space.stages)

    @classmethod
    def _setting_starts(cls, space: SearchSpace) -> Iterator[Config]:
        """For every setting of the shared knobs (the start's first), the candidate a search of
        that setting starts from: the start with the setting, or the first candidate that
        has it."""
        start = space.starts[0] if space.starts else next(iter(space.candidates), None)
        if start is None:
            return
        shared = [p for p in space.params if space.stage_of(p) is None]
        first = {p: start[p] for p in shared}
        settings = (dict(zip(shared, values))
                    for values in itertools.product(*(space.params[p] for p in shared)))
        for setting in itertools.chain([first], (s for s in settings if s != first)):
            current = cls._first_candidate(space, {**start, **setting})
            if current is not None:
                yield current

    @classmethod
    def _first_candidate(cls, space: SearchSpace, config: Config) -> Config | None:
        """``config`` if it is a candidate, else a candidate with its shared knobs found by a
        bounded repair (``_repairs``), else None: the setting is skipped. Asks only
        ``is_candidate``; enumerating the stage knobs' product instead took minutes when a
        setting has no candidate at all (a chunk longer than the sequence: 2e8 configs)."""
        tries = itertools.islice(cls._repairs(space, config), FIRST_CANDIDATE_TRIES)
        return next((option for option in tries if space.is_candidate(option)), None)

    @staticmethod
    def _repairs(space: SearchSpace, config: Config) -> Iterator[Config]:
        """``config``; then one stage's knobs at a time (nearest values first); then the stage
        knobs shrunk to their smallest values one after another, warps and stages last (the
        interpreter pins them); then the stage knobs' product, which the caller cuts short."""
        yield config
        free = [p for p in space.params if space.stage_of(p) is not None]
        nearest = {p: sorted(space.params[p], key=lambda v, c=config[p]: value_distance(v, c))
                   for p in free}
        for stage in space.stages:
            params = [p for p in free if space.stage_of(p) == stage]
            for values in itertools.product(*(nearest[p] for p in params)):
                yield {**config, **dict(zip(params, values))}
        shrunk = dict(config)
        launch = [p for p in free if p.endswith(("num_warps", "num_stages"))]
        for param in [p for p in free if p not in launch] + launch:
            shrunk[param] = min(space.params[param], key=smallness)
            yield dict(shrunk)
        for values in itertools.product(*(nearest[p] for p in free)):
            yield {**config, **dict(zip(free, values))}

    @staticmethod
    def _stage_options(space: SearchSpace, current: Config, stage: str) -> list[Config]:
        """The candidates that differ from ``current`` only in the stage's knobs."""
        params = [p for p in space.params if space.stage_of(p) == stage]
        return [option for values in itertools.product(*(space.params[p] for p in params))
                if space.is_candidate(option := {**current, **dict(zip(params, values))})]

    @classmethod
    def _tune_stage(cls, space: SearchSpace, evaluate: Evaluate, current: Config, stage: str,
                    share: float, rng: random.Random) -> Config | None:
        """The best of the stage's options (``current`` and a random ``share`` of the others);
        None once the budget is spent."""
        options = cls._stage_options(space, current, stage)
        if share < 1.0:
            others = [o for o in options if o != current]
            kept = rng.sample(others, min(len(others), max(1, round(share * len(options))) - 1))
            options = [current, *kept]
        space.expect(options)
        best, best_time = current, math.inf
        for option in options:
            elapsed = evaluate(option)
            if elapsed is None:
                return None
            if elapsed < best_time:
                best, best_time = option, elapsed
        return best
