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
from seqtune.profile import profile_path, save_entries  # noqa: E402
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
    per_lookup = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        for _ in range(LOOKUPS):
            seqtune.best_config("attention", **query)
        per_lookup.append((time.perf_counter() - start) / LOOKUPS * 1e6)
    print(f"warm best_config lookup: median {statistics.median(per_lookup):.2f} us "
          f"(min {min(per_lookup):.2f}, max {max(per_lookup):.2f}) over {REPEATS} x {LOOKUPS}")


if __name__ == "__main__":
    main()
