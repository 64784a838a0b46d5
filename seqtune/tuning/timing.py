"""Timers. A timer is ``timer(run, config) -> Timing``; the tuner never times anything itself, so
tests drive it with a fake timer that maps configs to times. A timer may also take
``fidelity=f`` (0 < f < 1): a cheaper, noisier timing with that share of the repetitions, which
successive halving asks for; it is passed only when below 1, so a two-argument timer still works.

- ``gpu_timer``: ``triton.testing.do_bench`` (CUDA events, L2 flushed between runs, warm-up,
  quantiles).
- ``wall_clock_timer``: ``time.perf_counter`` around whole calls, for the Triton interpreter.
  Those are CPU interpreter timings, not GPU timings, and are labelled so wherever shown.
"""
from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Any, Callable

from seqtune.spec import Config

GPU_LABEL = "gpu-do_bench"
INTERPRETER_LABEL = "interpreter-wall-clock"
INTERPRETER_NOTE = "Triton interpreter wall-clock on the CPU, not GPU timings"


@dataclasses.dataclass(frozen=True)
class Timing:
    """Median and 20th/80th percentiles of one candidate's run time, in microseconds."""

    median_us: float
    p20_us: float
    p80_us: float
    samples: int

    @property
    def spread(self) -> float:
        """Relative width of the middle 60% of samples: this measurement's noise."""
        return (self.p80_us - self.p20_us) / self.median_us if self.median_us > 0 else 0.0

    def as_dict(self) -> dict[str, float]:
        return {"median": round(self.median_us, 3), "p20": round(self.p20_us, 3),
                "p80": round(self.p80_us, 3)}


Timer = Callable[[Callable[[], Any], Config], Timing]


def from_samples(samples_us: list[float]) -> Timing:
    ordered = sorted(samples_us)
    return Timing(statistics.median(ordered), _quantile(ordered, 0.2), _quantile(ordered, 0.8),
                  len(ordered))


def _quantile(ordered: list[float], q: float) -> float:
    if len(ordered) == 1:
        return ordered[0]
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def gpu_timer(run: Callable[[], Any], config: Config, fidelity: float = 1.0) -> Timing:
    """do_bench with 25 ms of warm-up and 100 ms of repetitions, both scaled by ``fidelity``."""
    from triton.testing import do_bench

    median, p20, p80 = do_bench(run, warmup=max(1, round(25 * fidelity)),
                                rep=max(1, round(100 * fidelity)), quantiles=[0.5, 0.2, 0.8])
    # do_bench reports milliseconds; its own sample count is not returned, ~rep/time.
    return Timing(median * 1e3, p20 * 1e3, p80 * 1e3, samples=0)


def wall_clock_timer(run: Callable[[], Any], config: Config, repeats: int = 3,
                     fidelity: float = 1.0) -> Timing:
    """Time ``repeats`` whole calls (scaled by ``fidelity``, at least one) after one warm-up."""
    run()
    samples = []
    for _ in range(max(1, round(repeats * fidelity))):
        start = time.perf_counter()
        run()
        samples.append((time.perf_counter() - start) * 1e6)
    return from_samples(samples)


def timer_for(backend: str) -> tuple[Timer, str]:
    """The timer and its label for a device backend ("cuda", "hip" or "interpreter"):
    ``do_bench`` times AMD GPUs through torch.cuda's HIP events as it does NVIDIA's."""
    return ((wall_clock_timer, INTERPRETER_LABEL) if backend == "interpreter"
            else (gpu_timer, GPU_LABEL))
