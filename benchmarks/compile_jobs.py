"""Wall time a tune waits on the compiler, with 1 and with 2 compile processes.

Runs ``seqtune tune KERNEL --preset PRESET --compile-target sm_90 --jobs N`` on the interpreter
with cold caches (a fresh Triton cache and compile cache per run) and prints the seconds the
tune waited on the compiler, the configs it compiled ahead, and the benchmark seconds, as the
tune reports them. Compile time is measured, not asserted.

    python benchmarks/compile_jobs.py [KERNEL] [MAX_CONFIGS] [PRESET]
"""
import json
import os
import subprocess
import sys
import tempfile


def tune(kernel: str, jobs: int, max_configs: str, preset: str) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        env = {**os.environ, "TRITON_INTERPRET": "1", "TRITON_CACHE_DIR": f"{folder}/triton",
               "SEQTUNE_COMPILE_CACHE": f"{folder}/compile"}
        command = [sys.executable, "-m", "seqtune", "tune", kernel, "--preset", preset,
                   "--compile-target", "sm_90", "--jobs", str(jobs), "--no-isolate",
                   "--max-configs", max_configs, "--profile-dir", f"{folder}/profiles", "--json"]
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
        return json.loads(done.stdout)


def main() -> None:
    kernel = sys.argv[1] if len(sys.argv) > 1 else "attention"
    max_configs = sys.argv[2] if len(sys.argv) > 2 else "16"
    preset = sys.argv[3] if len(sys.argv) > 3 else "tiny"
    print(f"seqtune tune {kernel} --preset {preset} --compile-target sm_90 --max-configs "
          f"{max_configs} (interpreter; cold Triton and compile caches; {os.cpu_count()} CPUs)")
    for jobs in (1, 2):
        problems = tune(kernel, jobs, max_configs, preset)["problems"]
        compile_s = sum(p["compile_s"] for p in problems)
        benchmark_s = sum(p["benchmark_s"] for p in problems)
        tried = sum(p["tried"] for p in problems)
        compiled = sum(p["compiled"] for p in problems)
        print(f"--jobs {jobs}: waiting on the compiler {compile_s:6.1f} s, benchmarking "
              f"{benchmark_s:6.1f} s, {tried} candidates measured and {compiled} compiled over "
              f"{len(problems)} problems")


if __name__ == "__main__":
    main()
