"""The five step ops on small odd shapes, one shared description for the step-op tests
(padding slots, preconditions, host reads): B = 3 elements over a pool of N = 5 rows.

A case holds the per-element inputs (first dim B), the fixed ones, a float32 pool and a
``run(inputs, state, state_indices)`` calling the op with the keyword names it takes."""
from __future__ import annotations

import dataclasses
from typing import Callable

import torch
import torch.nn.functional as F

from seqtune.kernels import (causal_conv1d_step, delta_rule_step, linear_attention_step,
                             selective_scan_step, ssd_step)

BATCH, POOL = 3, 5


@dataclasses.dataclass
class StepCase:
    name: str
    batched: dict[str, torch.Tensor]   # one row per batch element
    fixed: dict[str, torch.Tensor]     # weights, shared by every element
    state: torch.Tensor                # [POOL, ...] float32
    run: Callable[..., torch.Tensor]   # run(inputs, state, state_indices) -> output [B, ...]

    def inputs(self) -> dict[str, torch.Tensor]:
        return {**self.batched, **self.fixed}

    def call(self, state=None, state_indices=None, **changes) -> torch.Tensor:
        """The op on this case's inputs (with ``changes``), on ``state`` (default: a copy)."""
        state = self.state.clone() if state is None else state
        return self.run({**self.inputs(), **changes}, state, state_indices)

    def subset(self, keep: torch.Tensor) -> "StepCase":
        """The case on the batch elements ``keep`` only."""
        return dataclasses.replace(self, batched={n: t[keep] for n, t in self.batched.items()})


def _randn(generator, *shape):
    return torch.randn(*shape, generator=generator)


def _delta_rule(g) -> StepCase:
    batched = {"q": F.normalize(_randn(g, BATCH, 1, 16), dim=-1),
               "k": F.normalize(_randn(g, BATCH, 1, 16), dim=-1),
               "v": _randn(g, BATCH, 2, 24), "beta": torch.sigmoid(_randn(g, BATCH, 2)),
               "g": F.logsigmoid(_randn(g, BATCH, 2) + 3)}
    return StepCase("delta_rule_step", batched, {}, _randn(g, POOL, 2, 16, 24),
                    lambda a, state, rows: delta_rule_step(a["q"], a["k"], a["v"], a["beta"],
                                                           a["g"], state=state,
                                                           state_indices=rows))


def _linear_attention(g) -> StepCase:
    batched = {"q": _randn(g, BATCH, 1, 16), "k": _randn(g, BATCH, 1, 16),
               "v": _randn(g, BATCH, 2, 24), "g": F.logsigmoid(_randn(g, BATCH, 2, 16) + 3)}
    return StepCase("linear_attention_step", batched, {}, _randn(g, POOL, 2, 16, 24),
                    lambda a, state, rows: linear_attention_step(
                        a["q"], a["k"], a["v"], a["g"], state=state, state_indices=rows))


def _ssd(g) -> StepCase:
    batched = {"x": _randn(g, BATCH, 2, 16), "dt": _randn(g, BATCH, 2),
               "B": _randn(g, BATCH, 1, 16), "C": _randn(g, BATCH, 1, 16)}
    fixed = {"A": -torch.rand(2, generator=g), "D": _randn(g, 2), "dt_bias": _randn(g, 2)}
    return StepCase("ssd_step", batched, fixed, _randn(g, POOL, 2, 16, 16),
                    lambda a, state, rows: ssd_step(
                        a["x"], a["dt"], a["A"], a["B"], a["C"], state=state, D=a["D"],
                        dt_bias=a["dt_bias"], dt_softplus=True, state_indices=rows))


def _selective_scan(g) -> StepCase:
    batched = {"u": _randn(g, BATCH, 6), "delta": _randn(g, BATCH, 6), "z": _randn(g, BATCH, 6),
               "B": _randn(g, BATCH, 4), "C": _randn(g, BATCH, 4)}
    fixed = {"A": -torch.rand(6, 4, generator=g), "D": _randn(g, 6),
             "delta_bias": _randn(g, 6)}
    return StepCase("selective_scan_step", batched, fixed, _randn(g, POOL, 6, 4),
                    lambda a, state, rows: selective_scan_step(
                        a["u"], a["delta"], a["A"], a["B"], a["C"], state=state, D=a["D"],
                        z=a["z"], delta_bias=a["delta_bias"], delta_softplus=True,
                        state_indices=rows))


def _causal_conv1d(g) -> StepCase:
    fixed = {"weight": _randn(g, 8, 4) / 2, "bias": _randn(g, 8)}
    return StepCase("causal_conv1d_step", {"x": _randn(g, BATCH, 8)}, fixed,
                    _randn(g, POOL, 8, 3),
                    lambda a, state, rows: causal_conv1d_step(
                        a["x"], a["weight"], a["bias"], activation="silu", state=state,
                        state_indices=rows))


BUILDERS = {"delta_rule_step": _delta_rule, "linear_attention_step": _linear_attention,
            "ssd_step": _ssd, "selective_scan_step": _selective_scan,
            "causal_conv1d_step": _causal_conv1d}
NAMES = tuple(BUILDERS)


def step_case(name: str, seed: int = 0) -> StepCase:
    return BUILDERS[name](torch.Generator().manual_seed(seed))
