"""Runs one worker job in its own process, with a separate time limit for each phase and a memory limit.

The worker reports the phase it enters (autoschedule, compile, wait, run); the runner applies that
phase's limit, kills the process group when it is exceeded, and turns every way a job can end into
an :class:`JobResult`: the events received, and a failure kind and message when it did not finish.
An optional memory limit caps each worker's address space (``RLIMIT_AS``), so that one candidate
that allocates without bound fails alone, as ``out_of_memory``, instead of the machine swapping.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import queue
import re
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from perfgraph.measure.worker import ADDR_NO_RANDOMIZE, EVENT_PREFIX

FAILURE_KINDS = (
    "workload_error",
    "autoschedule_error",
    "compile_error",
    "run_error",
    "crash",
    "timeout",
    "out_of_memory",
    "wrong_output",
)
# A worker stopped from outside (the operator, a shutdown) says nothing about its candidate: the
# collector records no failure and runs the candidate again on resume.
INTERRUPTED = "interrupted"
_EXTERNAL_SIGNALS = (-signal.SIGTERM, -signal.SIGINT, -signal.SIGHUP)
STDERR_TAIL_LINES = 5
_PR_SET_PDEATHSIG = 1  # prctl option (linux/prctl.h)
#: A fixed-layout worker's environment is padded so that its argv, environment and pointers to them
#: fill a multiple of this many bytes: the initial stack, below them, then starts at one page offset.
LAYOUT_PAD_BYTES = 4096
LAYOUT_PAD_VARIABLE = "PERFGRAPH_LAYOUT_PAD"


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
    # The MachineInfo JSON of the machine the job ran on, when an executor ran it elsewhere (a Ray node);
    # None: the caller's own machine.
    machine: dict | None = None

    @property
    def ok(self) -> bool:
        return self.failure_kind is None


# How a worker that could not allocate says so: Python's MemoryError (the worker reports it as an error
# event), an ENOMEM OSError, an uncaught std::bad_alloc, LLVM's "out of memory" abort, Halide's runtime
# ("Out of memory (halide_malloc returned nullptr)"), OpenBLAS ("Memory allocation still failed").
_OUT_OF_MEMORY = re.compile(
    r"MemoryError|std::bad_alloc|out of memory|Cannot allocate memory|memory allocation\b.*\bfailed", re.IGNORECASE
)
# Under an address-space limit only (elsewhere they have other causes: a noexec mount, say): a shared library
# that cannot be mapped when importing, JIT code memory that cannot be mapped (Halide then reports that
# "mprotect failed").
_OUT_OF_ADDRESS_SPACE = re.compile(r"failed to map segment|mprotect failed", re.IGNORECASE)

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
    memory_mb: int | None = None,
    die_with_parent: bool = False,
) -> JobResult:
    """Run ``job`` in a fresh worker pinned to ``cpus``; ``limits`` maps phase -> seconds.

    ``on_event`` sees every event and may return a line to send to the worker (the de-duplication
    reply). The first phase is ``"start"`` (building the pipeline) until the worker names another.
    ``live``, when given, holds the worker while it runs (see :class:`LiveWorkers`). ``memory_mb``,
    when given, caps the worker's address space (``RLIMIT_AS``, MiB); a worker that cannot allocate
    (or, with a limit, is killed by SIGKILL that the runner did not send) ends ``"out_of_memory"``.
    ``die_with_parent`` has the kernel kill the worker when the calling thread's process dies (Linux
    ``PR_SET_PDEATHSIG``): a Ray worker killed mid-job leaves no worker behind on its benchmark cores.
    """
    result = JobResult()
    killed_by_abort = False
    # Looked up here: the child between fork and exec must not load anything (another thread may hold the lock).
    prctl = ctypes.CDLL(None).prctl if die_with_parent else None
    fixed_layout = job.get("kind") == "measure" and bool(job.get("timing", {}).get("fixed_layout"))
    personality = ctypes.CDLL(None).personality if fixed_layout else None
    argv = [sys.executable, "-m", "perfgraph.measure.worker"]
    worker_env = {**os.environ, **(env or {})}
    if fixed_layout:
        worker_env = fixed_layout_environment(argv, worker_env, int(job["timing"].get("layout_offset", 0)))
    with tempfile.TemporaryFile(mode="w+") as stderr:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=worker_env,
            start_new_session=True,
            cwd=tempfile.gettempdir(),  # `python -m` puts the working directory first on sys.path
            preexec_fn=lambda: _limit_worker(cpus, memory_mb, prctl, personality),
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
                if event["event"] != "wrong_output" and _could_not_allocate(event["message"], memory_mb):
                    result.failure_kind = "out_of_memory"
                    result.failure_message = _out_of_memory_message(memory_mb, phase, event["message"])
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
        words = last_words(result.stderr)
        result.failure_message = f"worker exited with {_describe_exit(returncode)} during {phase}: {words}"
        if returncode in _EXTERNAL_SIGNALS:
            result.failure_kind = INTERRUPTED
        elif _could_not_allocate(words, memory_mb) or (memory_mb is not None and returncode == -signal.SIGKILL):
            # Nobody here sent that SIGKILL (a timeout or an abort is decided above): the kernel's OOM killer.
            result.failure_kind = "out_of_memory"
            detail = f"it exited with {_describe_exit(returncode)}: {words}"
            result.failure_message = _out_of_memory_message(memory_mb, phase, detail)
        elif phase in ("start", "autoschedule") and returncode == -signal.SIGABRT:
            result.failure_kind = "autoschedule_error"
        else:
            result.failure_kind = "crash"
    return result


def fixed_layout_environment(argv: list[str], env: dict[str, str], offset: int = 0) -> dict[str, str]:
    """``env`` for a worker whose memory layout is the same on every run (the ``quiet-v3`` protocol).

    Adds ``PYTHONHASHSEED=0`` (so that the interpreter allocates in the same order) and pads with
    :data:`LAYOUT_PAD_VARIABLE` so that the strings of ``argv`` and the environment, the executable's
    name and the pointers to them fill ``offset`` bytes more than a multiple of :data:`LAYOUT_PAD_BYTES`:
    the initial stack pointer, below them, then sits at the same page offset whatever the caller's
    environment holds. Another ``offset`` gives another, equally fixed, layout
    (``TimingPolicy.layout_offset``; ``benchmarks/noise_layout.py`` measures how much that moves run times).

    >>> env = fixed_layout_environment(["python", "-m", "w"], {"PATH": "/bin", "HOME": "/root"})
    >>> env["PYTHONHASHSEED"], len(env[LAYOUT_PAD_VARIABLE]) < LAYOUT_PAD_BYTES
    ('0', True)
    >>> longer = fixed_layout_environment(["python", "-m", "w"], {"PATH": "/bin:/usr/bin", "HOME": "/root"})
    >>> len(env[LAYOUT_PAD_VARIABLE]) - len(longer[LAYOUT_PAD_VARIABLE])
    9
    """
    env = {key: value for key, value in env.items() if key != LAYOUT_PAD_VARIABLE}
    env["PYTHONHASHSEED"] = "0"
    env[LAYOUT_PAD_VARIABLE] = ""
    strings = sum(len(os.fsencode(arg)) + 1 for arg in [argv[0], *argv])  # the kernel also stores the exec path
    strings += sum(len(os.fsencode(key)) + len(os.fsencode(value)) + 2 for key, value in env.items())
    pointers = 8 * (len(argv) + 1 + len(env) + 1)
    env[LAYOUT_PAD_VARIABLE] = "x" * ((offset - strings - pointers) % LAYOUT_PAD_BYTES)
    return env


def _limit_worker(
    cpus: set[int],
    memory_mb: int | None,
    prctl: Callable[..., int] | None = None,
    personality: Callable[..., int] | None = None,
) -> None:
    """In the new worker, before it runs Python: pin it to ``cpus``, cap its address space, tie it to its parent.

    With ``personality`` (libc's), the worker also runs without address-space layout randomisation;
    where a sandbox forbids that, it runs randomised and its measurement says so (``fixed_layout``).
    """
    if prctl is not None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if personality is not None:
        current = personality(-1)  # 0xffffffff: query
        if current != -1:
            personality(current | ADDR_NO_RANDOMIZE)
    os.sched_setaffinity(0, cpus)
    if memory_mb is not None:
        limit = memory_mb * 2**20
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _could_not_allocate(text: str, memory_mb: int | None) -> bool:
    """Whether a worker's error says it ran out of memory (of address space, under ``memory_mb``).

    >>> _could_not_allocate("HalideError: Error: Out of memory (halide_malloc returned nullptr)", None)
    True
    >>> _could_not_allocate("ImportError: libHalide.so: failed to map segment from shared object", None)
    False
    >>> _could_not_allocate("ImportError: libHalide.so: failed to map segment from shared object", 256)
    True
    """
    return bool(_OUT_OF_MEMORY.search(text) or (memory_mb is not None and _OUT_OF_ADDRESS_SPACE.search(text)))


def _out_of_memory_message(memory_mb: int | None, phase: str, detail: str) -> str:
    """Why an ``out_of_memory`` job failed, naming the limit and the phase.

    ``detail`` is cut to its last 2000 characters: the store keeps a message's last 4000, the limit stays in.

    >>> _out_of_memory_message(2048, "compile", "MemoryError: Unable to allocate 8.00 GiB")
    'worker exceeded its memory limit of 2048 MiB in phase compile: MemoryError: Unable to allocate 8.00 GiB'
    """
    what = "ran out of memory" if memory_mb is None else f"exceeded its memory limit of {memory_mb} MiB"
    return f"worker {what} in phase {phase}: {detail[-2000:]}"


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
