"""Wall time spent compiling during a tune, with 1 and with 2 compile processes.

Runs ``seqtune tune KERNEL --preset tiny --compile-target sm_90 --jobs N`` on the interpreter
with cold caches (a fresh Triton cache and compile cache per run) and prints the compile and
benchmark seconds the tune reports. Compile time is measured, not asserted.

    python benchmarks/compile_jobs.py [KERNEL] [MAX_CONFIGS]
"""
import json
import os
import subprocess
import sys
import tempfile


def tune(kernel: str, jobs: int, max_configs: str) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        env = {**os.environ, "TRITON_INTERPRET": "1", "TRITON_CACHE_DIR": f"{folder}/triton",
               "SEQTUNE_COMPILE_CACHE": f"{folder}/compile"}
        command = [sys.executable, "-m", "seqtune", "tune", kernel, "--preset", "tiny",
                   "--compile-target", "sm_90", "--jobs", str(jobs), "--no-isolate",
                   "--max-configs", max_configs, "--profile-dir", f"{folder}/profiles", "--json"]
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
        return json.loads(done.stdout)


def main() -> None:
    kernel = sys.argv[1] if len(sys.argv) > 1 else "attention"
    max_configs = sys.argv[2] if len(sys.argv) > 2 else "16"
    print(f"seqtune tune {kernel} --preset tiny --compile-target sm_90 --max-configs "
          f"{max_configs} (interpreter; cold Triton and compile caches; {os.cpu_count()} CPUs)")
    for jobs in (1, 2):
        problems = tune(kernel, jobs, max_configs)["problems"]
        compile_s = sum(p["compile_s"] for p in problems)
        benchmark_s = sum(p["benchmark_s"] for p in problems)
        tried = sum(p["tried"] for p in problems)
        print(f"--jobs {jobs}: compiling {compile_s:7.1f} s, benchmarking {benchmark_s:7.1f} s, "
              f"{tried} candidates over {len(problems)} problems")


if __name__ == "__main__":
    main()
