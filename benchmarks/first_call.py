"""First-call latency of a ``triton.autotune`` kernel, with and without
``seqtune.freeze_triton_autotune``.

The kernel is an RMS norm over ``[T, D]`` rows whose key holds the token count ``T``, as fla's
packed kernels do: plain ``triton.autotune`` benchmarks all its configs at the first call and at
every new ``T``. The script records a program calling it at two lengths (``seqtune record``),
tunes that workload (``seqtune tune --workload``), then times, each in a fresh process, the first
call and the first calls at new lengths: Triton's autotune against the frozen kernel (the
profile's nearest entry, no benchmark).

    python benchmarks/first_call.py [--json]

On a GPU Triton benchmarks with its own ``do_bench``. Without one, everything runs in the Triton
interpreter, whose autotune cannot benchmark on the CPU: it is given a wall-clock ``do_bench``
(one warm-up, three timed runs per config), and all figures are CPU wall-clock of the
interpreter, not GPU timings.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

GPU = torch.cuda.is_available()
D = 128 if GPU else 32
RECORDED = (4096, 16384) if GPU else (64, 256)
NEW = (1000, 3000, 7000, 12000, 20000, 30000) if GPU else (40, 100, 180, 300)
# The interpreter ignores warps and stages: there, only the tiles vary.
CONFIGS = [triton.Config({"BLOCK_T": b}, num_warps=w, num_stages=s)
           for b in (1, 2, 4, 8, 16, 32) for w in ((1, 2, 4, 8) if GPU else (4,))
           for s in ((1, 2) if GPU else (1,))]


def wall_clock_bench(kernel_call, quantiles):
    """The interpreter's stand-in for do_bench: one warm-up, three timed runs (ms)."""
    kernel_call()
    samples = []
    for _ in range(3):
        start = time.perf_counter()
        kernel_call()
        samples.append((time.perf_counter() - start) * 1e3)
    samples.sort()
    return [samples[1], samples[0], samples[2]][:len(quantiles)]


@triton.autotune(configs=CONFIGS, key=["T", "D"], do_bench=None if GPU else wall_clock_bench)
@triton.jit
def rms_norm_kernel(x, w, out, T, eps, D: tl.constexpr, BLOCK_T: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    cols = tl.arange(0, D)
    mask = rows[:, None] < T
    values = tl.load(x + rows[:, None] * D + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    scale = tl.rsqrt(tl.sum(values * values, axis=1) / D + eps)
    result = values * scale[:, None] * tl.load(w + cols).to(tl.float32)[None, :]
    tl.store(out + rows[:, None] * D + cols[None, :], result.to(out.dtype.element_ty), mask=mask)


def rms_norm(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    out = torch.empty_like(x)
    T = x.shape[0]
    rms_norm_kernel[lambda meta: (triton.cdiv(T, meta["BLOCK_T"]),)](x, w, out, T, 1e-6, D=D)
    return out


def inputs(T: int) -> tuple[torch.Tensor, torch.Tensor]:
    device = "cuda" if GPU else "cpu"
    dtype = torch.bfloat16 if GPU else torch.float32
    return torch.randn(T, D, device=device, dtype=dtype), torch.randn(D, device=device,
                                                                       dtype=dtype)


def child(mode: str) -> None:
    """One fresh process: record the recorded lengths, or time first calls (``triton`` or
    ``frozen``) and print them as JSON."""
    from triton.runtime.autotuner import Autotuner

    import first_call  # this file as a module: the kernel `seqtune tune` imports

    if mode == "record":
        for T in RECORDED:
            first_call.rms_norm(*inputs(T))
        return
    if mode == "frozen":
        import seqtune

        seqtune.freeze_triton_autotune()
    benchmarks = []
    bench = Autotuner._bench
    Autotuner._bench = lambda self, *a, **k: benchmarks.append(1) or bench(self, *a, **k)
    times = {}
    for T in (RECORDED[0], *NEW):
        x, w = inputs(T)
        start = time.perf_counter()
        first_call.rms_norm(x, w)
        if GPU:
            torch.cuda.synchronize()
        times[T] = (time.perf_counter() - start) * 1e3
    print(json.dumps({"times_ms": times, "benchmarks": len(benchmarks)}))


def run(args: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(args, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{done.stdout}{done.stderr}")
    return done.stdout


def main() -> None:
    here = Path(__file__).resolve()
    with tempfile.TemporaryDirectory(prefix="seqtune-first-call-") as folder:
        env = {**os.environ, "SEQTUNE_PROFILE_DIR": str(Path(folder) / "profiles"),
               "PYTHONPATH": os.pathsep.join(filter(None, [str(here.parent),
                                                           os.environ.get("PYTHONPATH")]))}
        workload = str(Path(folder) / "W.jsonl")
        seqtune = [sys.executable, "-m", "seqtune"]
        run([*seqtune, "record", "--output", workload, "--", sys.executable, str(here),
             "--child", "record"], env)
        started = time.perf_counter()
        run([*seqtune, "tune", "--workload", workload], env)
        tune_s = time.perf_counter() - started
        results = {mode: json.loads(run([sys.executable, str(here), "--child", mode], env))
                   for mode in ("triton", "frozen")}
    payload = {"device": torch.cuda.get_device_name() if GPU else "Triton interpreter (CPU)",
               "timings": "GPU" if GPU else "CPU wall-clock of the interpreter, not GPU",
               "configs": len(CONFIGS), "recorded_T": RECORDED, "new_T": NEW, "D": D,
               "offline_tune_s": round(tune_s, 1), "results": results}
    if "--json" in sys.argv:
        print(json.dumps(payload, indent=2))
        return
    print(f"{payload['device']}: {len(CONFIGS)} configs, key (T, D={D}); timings: "
          f"{payload['timings']}")
    print(f"offline: recorded T={RECORDED}, `seqtune tune --workload` took {tune_s:.1f} s once")
    print(f"{'':8}{'first call (T=' + str(RECORDED[0]) + ')':>24}{'new T, mean':>14}"
          f"{'new T, max':>13}{'benchmarks':>12}")
    for mode, result in results.items():
        times = list(result["times_ms"].values())
        new = times[1:]
        print(f"{mode:8}{times[0]:>21.1f} ms{sum(new) / len(new):>11.1f} ms{max(new):>10.1f} ms"
              f"{result['benchmarks']:>12}")
    print(f"new T = {NEW}: each is a new autotune key (first call at that length)")


if __name__ == "__main__":
    if "--child" in sys.argv:
        child(sys.argv[sys.argv.index("--child") + 1])
    else:
        main()
