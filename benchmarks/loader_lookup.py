"""Cost of a warm ``seqtune.best_config`` lookup (what a kernel pays per call with config=None).

Tunes nothing: writes a profile with entries for several attention shapes, loads it, warms the
cache, then times many lookups. Prints microseconds per lookup (median of repeats).

    TRITON_INTERPRET=1 python benchmarks/loader_lookup.py
"""
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")

import seqtune  # noqa: E402
from seqtune.device import interpreter_device  # noqa: E402
from seqtune.store.profile_file import profile_path, save_entries  # noqa: E402
from seqtune.registry import source_hash  # noqa: E402

LOOKUPS = 100_000
REPEATS = 7


def main() -> None:
    problem = {"B": 4, "T": 4096, "S": 4096, "Hq": 32, "Hkv": 8, "D": 128, "causal": True,
               "dtype": "bfloat16", "score": "softmax"}
    entries = [{"problem": {**problem, "T": t, "S": t},
                "config": {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 2},
                "time_us": {"median": 1.0, "p20": 1.0, "p80": 1.0}}
               for t in (1024, 2048, 4096, 8192, 16384)]
    with tempfile.TemporaryDirectory() as folder:
        path = profile_path(Path(folder), "bench")
        save_entries(path, interpreter_device().as_dict(), "attention",
                     source_hash("attention"), entries)
        seqtune.load_profile(path)
    query = {**problem, "T": 3000, "S": 3000}
    seqtune.best_config("attention", **query)  # cold: matches and caches
    wall, cpu = [], []
    for _ in range(REPEATS):
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        for _ in range(LOOKUPS):
            seqtune.best_config("attention", **query)
        wall.append((time.perf_counter() - start_wall) / LOOKUPS * 1e6)
        cpu.append((time.process_time() - start_cpu) / LOOKUPS * 1e6)
    # CPU time per lookup is what the lookup costs; wall time adds whatever else the machine
    # was running (shown, so a loaded machine is visible).
    print(f"warm best_config lookup over {REPEATS} x {LOOKUPS}: CPU time median "
          f"{statistics.median(cpu):.2f} us (min {min(cpu):.2f}); wall median "
          f"{statistics.median(wall):.2f} us (min {min(wall):.2f}); load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
