"""A decode step of every step op captured in a CUDA graph, replayed with new slot assignments
(padding slots included) and checked against eager calls, then timed: eager vs torch.compile
vs graph replay (issue 27).

A server (vLLM, SGLang) captures one graph per batch size and replays it for whichever
sequences hold the batch's slots that step: only the values of ``state_indices`` and of the
inputs change between replays. That works only if a step op reads nothing on the host and
allocates nothing sized by values; this script checks it on a GPU. Usage, on a CUDA GPU:

    python benchmarks/cuda_graph_decode.py [--batch 64] [--pool 256] [--replays 5]
                                           [--iters 200] [--ops delta_rule_step,...]

Per op, each replay draws a new assignment (distinct rows of the pool, about one slot in four
a padding slot, -1) and new inputs, copies them into the captured buffers, replays, and
compares the output and the whole pool with an eager call from the same pool: equal bit for
bit (same kernel, same config), padded output rows zero, rows no slot owns untouched. Then a
table: microseconds per step for eager calls, a ``torch.compile``d step and graph replays
(CUDA events over --iters back-to-back steps: launch overhead included, which is what a graph
removes). Exits 1 if any replay disagrees. Without a GPU it prints one line and exits 0.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Callable

import torch
import torch.nn.functional as F

# (maker, shape) per per-element input; makers draw on the GPU from a seeded generator.
MAKERS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "normal": lambda t: t,
    "unit": lambda t: F.normalize(t, dim=-1),
    "sigmoid": torch.sigmoid,
    "logsigmoid": lambda t: F.logsigmoid(t + 3.0),
}


@dataclasses.dataclass
class Decode:
    """One op's decode step on static buffers: ``run(buffers, state, indices)`` -> output."""

    name: str
    batched: dict[str, tuple[str, tuple[int, ...], torch.dtype]]
    fixed: dict[str, torch.Tensor]
    state: torch.Tensor
    run: Callable[..., torch.Tensor]
    buffers: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)

    def refill(self, generator: torch.Generator) -> None:
        """New values for every per-element input, written into the captured buffers."""
        for name, (maker, shape, dtype) in self.batched.items():
            fresh = MAKERS[maker](torch.randn(shape, device="cuda", generator=generator))
            if name in self.buffers:
                self.buffers[name].copy_(fresh)
            else:
                self.buffers[name] = fresh.to(dtype)

    def step(self, indices: torch.Tensor) -> torch.Tensor:
        return self.run({**self.buffers, **self.fixed}, self.state, indices)


def decodes(batch: int, pool: int, generator: torch.Generator) -> list[Decode]:
    """Decode shapes of the models in benchmarks/models (Qwen3-Next's Gated DeltaNet,
    Mamba2-2.7B's SSD, Mamba-2.8B's selective scan and short convolution), bf16 inputs and
    float32 states (bf16 for the convolution's, as Mamba keeps it)."""
    from seqtune.kernels import (causal_conv1d_step, delta_rule_step, linear_attention_step,
                                 selective_scan_step, ssd_step)

    bf16, fp32 = torch.bfloat16, torch.float32

    def randn(*shape, dtype=fp32):
        return torch.randn(shape, device="cuda", generator=generator).to(dtype)

    H, HV, K, V = 16, 32, 128, 128
    h, p, n, d, conv = 80, 64, 128, 5120, 4
    return [
        Decode("delta_rule_step",
               {"q": ("unit", (batch, H, K), bf16), "k": ("unit", (batch, H, K), bf16),
                "v": ("normal", (batch, HV, V), bf16), "beta": ("sigmoid", (batch, HV), bf16),
                "g": ("logsigmoid", (batch, HV), fp32)}, {}, randn(pool, HV, K, V),
               lambda a, s, i: delta_rule_step(a["q"], a["k"], a["v"], a["beta"], a["g"],
                                               state=s, state_indices=i)),
        Decode("linear_attention_step",
               {"q": ("unit", (batch, H, K), bf16), "k": ("unit", (batch, H, K), bf16),
                "v": ("normal", (batch, HV, V), bf16), "g": ("logsigmoid", (batch, HV), fp32)},
               {}, randn(pool, HV, K, V),
               lambda a, s, i: linear_attention_step(a["q"], a["k"], a["v"], a["g"], state=s,
                                                     state_indices=i)),
        Decode("ssd_step",
               {"x": ("normal", (batch, h, p), bf16), "dt": ("normal", (batch, h), bf16),
                "B": ("normal", (batch, 1, n), bf16), "C": ("normal", (batch, 1, n), bf16)},
               {"A": -torch.rand(h, device="cuda", generator=generator), "D": randn(h),
                "dt_bias": randn(h)}, randn(pool, h, n, p),
               lambda a, s, i: ssd_step(a["x"], a["dt"], a["A"], a["B"], a["C"], state=s,
                                        D=a["D"], dt_bias=a["dt_bias"], dt_softplus=True,
                                        state_indices=i)),
        Decode("selective_scan_step",
               {"u": ("normal", (batch, d), bf16), "delta": ("normal", (batch, d), bf16),
                "z": ("normal", (batch, d), bf16), "B": ("normal", (batch, 16), bf16),
                "C": ("normal", (batch, 16), bf16)},
               {"A": -torch.rand(d, 16, device="cuda", generator=generator), "D": randn(d),
                "delta_bias": randn(d)}, randn(pool, d, 16),
               lambda a, s, i: selective_scan_step(a["u"], a["delta"], a["A"], a["B"], a["C"],
                                                   state=s, D=a["D"], z=a["z"],
                                                   delta_bias=a["delta_bias"],
                                                   delta_softplus=True, state_indices=i)),
        Decode("causal_conv1d_step", {"x": ("normal", (batch, d), bf16)},
               {"weight": randn(d, conv, dtype=bf16) / 2, "bias": randn(d, dtype=bf16)},
               randn(pool, d, conv - 1, dtype=bf16),
               lambda a, s, i: causal_conv1d_step(a["x"], a["weight"], a["bias"],
                                                  activation="silu", state=s,
                                                  state_indices=i)),
    ]


def assignment(batch: int, pool: int, generator: torch.Generator) -> torch.Tensor:
    """Distinct rows of the pool, about one slot in four (at least one) padding, int32."""
    rows = torch.randperm(pool, device="cuda", generator=generator)[:batch]
    padded = torch.rand(batch, device="cuda", generator=generator) < 0.25
    padded[torch.randint(batch, (1,), device="cuda", generator=generator)] = True
    return torch.where(padded, -1, rows).to(torch.int32)


def capture(decode: Decode, indices: torch.Tensor) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
    """The step captured on the static buffers, after warm-up on a side stream (compiling
    the kernel and filling the config cache outside the capture)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            decode.step(indices)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = decode.step(indices)
    return graph, out


def check_replays(decode: Decode, indices: torch.Tensor, graph, out: torch.Tensor,
                  replays: int, generator: torch.Generator) -> list[str]:
    """Replays with new assignments and inputs against eager calls; the failures, if any."""
    failures = []
    batch, pool = indices.shape[0], decode.state.shape[0]
    for replay in range(replays):
        indices.copy_(assignment(batch, pool, generator))
        decode.refill(generator)
        before = decode.state.clone()
        graph.replay()
        replayed, replayed_pool = out.clone(), decode.state.clone()
        decode.state.copy_(before)
        eager = decode.step(indices)
        rows = indices.long()
        unowned = torch.ones(pool, dtype=torch.bool, device="cuda")
        unowned[rows[rows >= 0]] = False  # the checker's own host-side bookkeeping
        problems = {
            "output differs from eager": not torch.equal(replayed, eager),
            "pool differs from eager": not torch.equal(replayed_pool, decode.state),
            "padded output rows not zero": bool(replayed[rows < 0].abs().sum() != 0),
            "rows no slot owns changed": not torch.equal(replayed_pool[unowned],
                                                         before[unowned]),
        }
        failures += [f"{decode.name} replay {replay}: {p}" for p, bad in problems.items() if bad]
    return failures


def per_step_us(fn: Callable[[], object], iters: int) -> float:
    for _ in range(3):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1000 / iters


def compiled_us(decode: Decode, indices: torch.Tensor, iters: int) -> tuple[str, str]:
    """(The table cell, a note): a torch.compile'd step (inductor), or why it could not run."""
    try:
        compiled = torch.compile(lambda: decode.step(indices))
        return f"{per_step_us(compiled, iters):.1f}", ""
    except Exception as error:  # a compile failure is a result here, not a crash
        return "failed", f"  torch.compile: {type(error).__name__}: {str(error)[:80]!r}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--pool", type=int, default=256, help="state pool rows (>= batch)")
    parser.add_argument("--replays", type=int, default=5)
    parser.add_argument("--iters", type=int, default=200)
    parser.add_argument("--ops", default="", help="comma-separated step ops (default: all)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("cuda_graph_decode: no CUDA GPU here; CUDA-graph capture needs one, nothing run")
        return 0
    if not 1 <= args.batch <= args.pool:
        parser.error(f"--batch must be in [1, --pool={args.pool}], got {args.batch}")
    generator = torch.Generator(device="cuda").manual_seed(0)
    every = decodes(args.batch, args.pool, generator)
    wanted = args.ops.split(",") if args.ops else [d.name for d in every]
    unknown = sorted(set(wanted) - {d.name for d in every})
    if unknown:
        parser.error(f"--ops: unknown step ops {unknown}; known: {[d.name for d in every]}")
    chosen = [d for d in every if d.name in wanted]
    print(f"{torch.cuda.get_device_name()}: batch {args.batch}, pool {args.pool}, "
          f"{args.replays} replays per op, us per step over {args.iters} steps")
    print(f"{'op':<24}{'eager':>10}{'compiled':>10}{'graph':>10}  replays")
    failures = []
    for decode in chosen:
        decode.refill(generator)
        indices = assignment(args.batch, args.pool, generator)
        graph, out = capture(decode, indices)
        found = check_replays(decode, indices, graph, out, args.replays, generator)
        failures += found
        eager = per_step_us(lambda: decode.step(indices), args.iters)
        replay = per_step_us(graph.replay, args.iters)
        compiled, note = compiled_us(decode, indices, args.iters)
        print(f"{decode.name:<24}{eager:10.1f}{compiled:>10}{replay:10.1f}  "
              f"{'ok' if not found else 'FAILED'}{note}")
    for failure in failures:
        print(failure)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
