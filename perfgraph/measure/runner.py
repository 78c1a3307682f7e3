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


def run_job(
    job: dict,
    limits: dict[str, float],
    cpus: set[int],
    env: dict[str, str] | None = None,
    on_event: Callable[[dict], str | None] | None = None,
) -> JobResult:
    """Run ``job`` in a fresh worker pinned to ``cpus``; ``limits`` maps phase -> seconds.

    ``on_event`` sees every event and may return a line to send to the worker (the de-duplication
    reply). The first phase is ``"start"`` (building the pipeline) until the worker names another.
    """
    result = JobResult()
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
        stderr.seek(0)
        result.stderr = stderr.read()
    if result.failure_kind is None and returncode != 0:
        result.failure_phase = phase
        if returncode in _EXTERNAL_SIGNALS:
            result.failure_kind = INTERRUPTED
        elif phase in ("start", "autoschedule") and returncode == -signal.SIGABRT:
            result.failure_kind = "autoschedule_error"
        else:
            result.failure_kind = "crash"
        tail = "\n".join(result.stderr.strip().splitlines()[-5:])
        result.failure_message = f"worker exited with {_describe_exit(returncode)} during {phase}: {tail}"
    return result


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
