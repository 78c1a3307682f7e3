"""Runs one worker job in its own process, with a separate time limit for each phase.

The worker reports the phase it enters (autoschedule, compile, wait, run); the runner applies that
phase's limit, kills the process group when it is exceeded, and turns every way a job can end into
an :class:`JobResult`: the events received, and a failure kind and message when it did not finish.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from perfgraph.measure.worker import EVENT_PREFIX

FAILURE_KINDS = (
    "workload_error",
    "autoschedule_error",
    "compile_error",
    "run_error",
    "crash",
    "timeout",
    "wrong_output",
)
# A worker stopped from outside (the operator, a shutdown) says nothing about its candidate: the
# collector records no failure and runs the candidate again on resume.
INTERRUPTED = "interrupted"
_EXTERNAL_SIGNALS = (-signal.SIGTERM, -signal.SIGINT, -signal.SIGHUP)
STDERR_TAIL_LINES = 5


@dataclass(frozen=True)
class Timeouts:
    """Seconds allowed per phase; waiting for the benchmark cores is not limited."""

    build_s: float = 120.0  # importing Halide and building the pipeline in a fresh worker
    analyze_s: float = 600.0
    autoschedule_s: float = 180.0
    beam_autoschedule_s: float = 900.0
    compile_s: float = 120.0
    run_s: float = 120.0


@dataclass
class JobResult:
    events: dict[str, dict] = field(default_factory=dict)
    failure_kind: str | None = None
    failure_phase: str = ""
    failure_message: str = ""
    stderr: str = ""

    @property
    def ok(self) -> bool:
        return self.failure_kind is None


_ERROR_KIND_BY_PHASE = {
    "autoschedule": "autoschedule_error",
    "compile": "compile_error",
    "run": "run_error",
    "reference": "reference_error",
    "wait": "run_error",
    "start": "workload_error",
}


class LiveWorkers:
    """The worker processes of one caller's jobs in flight, so that an abort can stop them at once.

    :meth:`kill_all` kills every worker's process group, and any worker started afterwards as soon as
    it starts; their jobs end :data:`INTERRUPTED` (not the candidate's doing: nothing is recorded).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._processes: dict[int, subprocess.Popen] = {}
        self._killed: set[int] = set()
        self.aborted = False

    def add(self, process: subprocess.Popen) -> None:
        with self._lock:
            self._processes[process.pid] = process
            if not self.aborted:
                return
            self._killed.add(process.pid)
        _kill(process)

    def remove(self, process: subprocess.Popen) -> bool:
        """Forget a worker that ended; whether :meth:`kill_all` had killed it."""
        with self._lock:
            self._processes.pop(process.pid, None)
            return process.pid in self._killed

    def kill_all(self) -> int:
        """Kill every live worker's process group now (and any started later); how many there were."""
        with self._lock:
            self.aborted = True
            processes = list(self._processes.values())
            self._killed.update(self._processes)
        for process in processes:
            _kill(process)
        return len(processes)


def run_job(
    job: dict,
    limits: dict[str, float],
    cpus: set[int],
    env: dict[str, str] | None = None,
    on_event: Callable[[dict], str | None] | None = None,
    live: LiveWorkers | None = None,
) -> JobResult:
    """Run ``job`` in a fresh worker pinned to ``cpus``; ``limits`` maps phase -> seconds.

    ``on_event`` sees every event and may return a line to send to the worker (the de-duplication
    reply). The first phase is ``"start"`` (building the pipeline) until the worker names another.
    ``live``, when given, holds the worker while it runs (see :class:`LiveWorkers`).
    """
    result = JobResult()
    killed_by_abort = False
    with tempfile.TemporaryFile(mode="w+") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "perfgraph.measure.worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env={**os.environ, **(env or {})},
            start_new_session=True,
            cwd=tempfile.gettempdir(),  # `python -m` puts the working directory first on sys.path
            preexec_fn=lambda: os.sched_setaffinity(0, cpus),
        )
        if live is not None:
            live.add(process)
        events: queue.Queue[dict | None] = queue.Queue()
        threading.Thread(target=_read_events, args=(process.stdout, events), daemon=True).start()
        assert process.stdin is not None
        process.stdin.write(json.dumps(job) + "\n")
        process.stdin.flush()
        phase = "start"
        deadline = time.monotonic() + limits.get("start", 600.0)
        while True:
            try:
                event = events.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                _kill(process)
                result.failure_kind, result.failure_phase = "timeout", phase
                result.failure_message = f"{phase} exceeded {limits.get(phase, 0):.0f} s"
                break
            if event is None:  # the worker closed stdout: it exited
                break
            result.events[event["event"]] = event
            if event["event"] == "phase":
                phase = event["phase"]
                deadline = time.monotonic() + limits.get(phase, 10**9)
            elif event["event"] in ("error", "workload_error", "wrong_output"):
                result.failure_kind = {"error": _ERROR_KIND_BY_PHASE.get(phase, "crash")}.get(
                    event["event"], event["event"]
                )
                result.failure_phase, result.failure_message = phase, event["message"]
            if on_event is not None and (reply := on_event(event)) is not None:
                try:
                    process.stdin.write(reply + "\n")
                    process.stdin.flush()
                except BrokenPipeError:
                    pass
        returncode = process.wait()
        if live is not None:
            killed_by_abort = live.remove(process)
        stderr.seek(0)
        result.stderr = stderr.read()
    if killed_by_abort:
        result.failure_kind, result.failure_phase = INTERRUPTED, phase
        result.failure_message = "stopped by an abort"
    elif result.failure_kind is None and returncode != 0:
        result.failure_phase = phase
        if returncode in _EXTERNAL_SIGNALS:
            result.failure_kind = INTERRUPTED
        elif phase in ("start", "autoschedule") and returncode == -signal.SIGABRT:
            result.failure_kind = "autoschedule_error"
        else:
            result.failure_kind = "crash"
        result.failure_message = (
            f"worker exited with {_describe_exit(returncode)} during {phase}: {last_words(result.stderr)}"
        )
    return result


def last_words(stderr: str) -> str:
    """What a dying worker said last: the uncaught C++ exception and its message, else the tail of stderr.

    The worker prints an uncaught ``Halide::Error``'s message after libstdc++'s "terminate called ..." line
    (``worker._report_uncaught_cxx_exceptions``); Halide's diagnostics before it (the autoscheduler's
    debug output) are left out.

    >>> last_words("Pass 0 of 5\\nterminate called after throwing an instance of 'Halide::Error'\\n"
    ...            "  what():  Error: unknown keys\\n")
    "terminate called after throwing an instance of 'Halide::Error'\\n  what():  Error: unknown keys"
    >>> last_words("a\\nb\\nc\\nd\\ne\\nf\\n")
    'b\\nc\\nd\\ne\\nf'
    """
    lines = stderr.strip().splitlines()
    dying = [i for i, line in enumerate(lines) if line.startswith("terminate called")]
    if dying:
        return "\n".join(lines[dying[-1] :]).strip()
    return "\n".join(lines[-STDERR_TAIL_LINES:])


def _read_events(stream, events: queue.Queue) -> None:  # type: ignore[no-untyped-def]
    for line in stream:
        if line.startswith(EVENT_PREFIX):
            events.put(json.loads(line[len(EVENT_PREFIX) :]))
    events.put(None)


def _kill(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def _describe_exit(returncode: int) -> str:
    if returncode < 0:
        return f"signal {signal.Signals(-returncode).name}"
    return f"exit code {returncode}"
