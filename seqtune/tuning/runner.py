"""Where candidates run. ``InProcessRunner`` checks and times configs in this process;
``IsolatedRunner`` sends them to a worker process, so a candidate that hangs is abandoned after a
timeout and one that crashes the process (or poisons the CUDA context) costs only itself: the
worker is replaced and the tune goes on with the next candidate.
"""
from __future__ import annotations

import dataclasses
import multiprocessing
import signal
from typing import Any, Callable, Protocol

from seqtune.agreement import check_case, reference_outputs
from seqtune.device import DeviceInfo, telemetry
from seqtune.spec import Config, KernelSpec, Problem
from seqtune.tuning.timing import Timer, Timing


@dataclasses.dataclass
class Candidate:
    """One evaluated config: status "ok" or a failure kind (compile, resources, mismatch,
    runtime, timeout)."""

    config: Config
    status: str
    timing: Timing | None = None
    agreement: Any = None
    error: str = ""
    telemetry: dict[str, Any] = dataclasses.field(default_factory=dict)
    reused: bool = False  # taken from the log of an interrupted tune, not measured again
    fidelity: float = 1.0  # below 1: a cheap timing with fewer repetitions (successive halving)

    @property
    def median(self) -> float:
        return self.timing.median_us if self.timing else float("inf")


# (spec, problem, config) -> None to run the config, or (failure kind, reason) to skip it.
Pruner = Callable[[KernelSpec, Problem, Config], "tuple[str, str] | None"]


class Runner(Protocol):
    def evaluate(self, config: Config, fidelity: float = 1.0) -> Candidate:
        ...

    def retime(self, config: Config, fidelity: float = 1.0) -> Timing:
        ...


def classify_failure(exc: BaseException) -> str:
    """compile / resources / runtime, from the exception a launch raised."""
    import torch
    from triton.compiler.errors import CompilationError
    from triton.runtime.errors import OutOfResources

    if isinstance(exc, (OutOfResources, torch.cuda.OutOfMemoryError)):
        return "resources"
    if isinstance(exc, CompilationError):
        return "compile"
    return "runtime"


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1] if text else ''}"[:300]


class InProcessRunner:
    """Checks each config against the reference with NaN-poisoned outputs, then times it."""

    def __init__(self, spec: KernelSpec, problem: Problem, device: DeviceInfo, timer: Timer,
                 seed: int = 0):
        self.spec, self.problem, self.timer = spec, problem, timer
        self.inputs = spec.make_inputs(problem, device.torch_device, seed)
        self.reference, self.tolerance = reference_outputs(spec, problem, self.inputs,
                                                           device.limits, device.torch_device,
                                                           seed)

    def evaluate(self, config: Config, fidelity: float = 1.0) -> Candidate:
        spec, inputs = self.spec, self.inputs
        try:
            agreement = check_case(spec, self.problem, config, inputs=inputs,
                                   reference=self.reference, tolerance=self.tolerance)
        except Exception as exc:  # any failure of a candidate is recorded; the tune goes on
            return Candidate(config, classify_failure(exc), error=one_line(exc))
        if not agreement.ok:
            return Candidate(config, "mismatch", agreement=agreement, error=agreement.detail)
        try:
            timing = self.retime(config, fidelity)
        except Exception as exc:
            return Candidate(config, classify_failure(exc), agreement=agreement,
                             error=one_line(exc))
        return Candidate(config, "ok", timing, agreement, telemetry=telemetry(),
                         fidelity=fidelity)

    def retime(self, config: Config, fidelity: float = 1.0) -> Timing:
        def run() -> Any:
            return self.spec.run(self.inputs, config)

        if fidelity >= 1.0:
            return self.timer(run, config)
        return self.timer(run, config, fidelity=fidelity)


@dataclasses.dataclass(frozen=True)
class WorkerSetup:
    """What a worker needs to rebuild a runner: everything by name, nothing unpicklable."""

    device: DeviceInfo
    seed: int


class CandidateWorker:
    """A child process that evaluates candidates; replaced when it dies or hangs."""

    def __init__(self, setup: WorkerSetup, timeout_s: float):
        self.setup = setup
        self.timeout_s = timeout_s
        self.process: multiprocessing.Process | None = None
        self.connection = None

    def request(self, message: tuple) -> Any:
        """The worker's answer, or a Candidate-shaped failure when it hangs or dies."""
        if self.process is None or not self.process.is_alive():
            self._start()
        self.connection.send(message)
        if not self.connection.poll(self.timeout_s):
            self.close()
            return ("timeout", f"no result after {self.timeout_s:g} s; candidate abandoned")
        try:
            return self.connection.recv()
        except EOFError:
            self.process.join(timeout=10)  # reap it, so its exit code says how it died
            code = self.process.exitcode
            self.close()
            return ("runtime", f"worker process died ({_describe_exit(code)})")

    def _start(self) -> None:
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe()
        self.process = context.Process(target=_serve, args=(child, self.setup), daemon=True)
        self.process.start()
        child.close()
        self.connection = parent

    def close(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.join()
        self.process = None
        self.connection = None


def _describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            pass
    return f"exit code {code}"


class IsolatedRunner:
    """Evaluates one problem's candidates in a ``CandidateWorker``."""

    def __init__(self, worker: CandidateWorker, spec: KernelSpec, problem: Problem):
        self.worker, self.spec, self.problem = worker, spec, problem

    def evaluate(self, config: Config, fidelity: float = 1.0) -> Candidate:
        answer = self.worker.request(("evaluate", self.spec.name, self.problem, config,
                                      fidelity))
        if isinstance(answer, Candidate):
            if answer.status == "runtime" and self.worker.setup.device.backend != "interpreter":
                self.worker.close()  # a GPU error is sticky: later candidates need a new context
            return answer
        status, reason = answer
        return Candidate(config, status, error=reason)

    def retime(self, config: Config, fidelity: float = 1.0) -> Timing:
        answer = self.worker.request(("retime", self.spec.name, self.problem, config, fidelity))
        if isinstance(answer, Timing):
            return answer
        raise RuntimeError(f"re-timing {config} failed: {answer[1]}")


def _serve(connection, setup: WorkerSetup) -> None:
    """The worker's loop: rebuild runners by kernel name and answer requests until closed."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    from seqtune.registry import get_spec
    from seqtune.tuning.timing import timer_for

    timer = timer_for(setup.device.backend)[0]
    runners: dict[str, InProcessRunner] = {}
    while True:
        try:
            kind, kernel, problem, config, fidelity = connection.recv()
        except EOFError:
            return
        key = repr((kernel, sorted(problem.items())))
        try:
            if key not in runners:
                runners.clear()  # one problem at a time: free the previous inputs
                runners[key] = InProcessRunner(get_spec(kernel), problem, setup.device, timer,
                                               setup.seed)
            runner = runners[key]
            answer = (runner.evaluate(config, fidelity) if kind == "evaluate"
                      else runner.retime(config, fidelity))
        except Exception as exc:
            answer = (classify_failure(exc), one_line(exc))
        connection.send(answer)
