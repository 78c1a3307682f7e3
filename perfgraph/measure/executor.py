"""Where a worker job runs: on this machine (the default), or on a Ray node (:mod:`perfgraph.measure.ray_executor`).

The collector decides which jobs run and records what they give; an executor only runs one job, in
a fresh worker process (:func:`perfgraph.measure.runner.run_job`), on cores it chooses on the machine
where the job lands. That choice, the :class:`Placement`, is per machine: the benchmark cores, the
compile cores and the lock that gives one candidate at a time the benchmark cores, in that machine's
temporary directory, shared by every collector and runner there.

>>> placement = Placement.here(benchmark_cpus=[0])
>>> placement.benchmark_cpus, placement.lock_path.name
((0,), 'perfgraph-benchmark-cpus-0.lock')
>>> sorted(placement.place({"kind": "measure"}))
['benchmark_cpus', 'kind', 'lock_path']
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from perfgraph.measure.runner import JobResult, LiveWorkers, run_job


@dataclass(frozen=True)
class Placement:
    """The cores of one machine a job uses: compile cores, benchmark cores, and the benchmark lock."""

    compile_cpus: frozenset[int]
    benchmark_cpus: tuple[int, ...]
    lock_path: Path

    @classmethod
    def here(cls, benchmark_cpus: Sequence[int] = ()) -> Placement:
        """This process's cores: ``benchmark_cpus`` (default: the last one) benchmark, the others compile."""
        cpus = sorted(os.sched_getaffinity(0))
        benchmark = set(benchmark_cpus or cpus[-1:])
        name = "-".join(map(str, sorted(benchmark)))
        lock_path = Path(tempfile.gettempdir()) / f"perfgraph-benchmark-cpus-{name}.lock"
        return cls(frozenset(set(cpus) - benchmark or cpus), tuple(sorted(benchmark)), lock_path)

    def place(self, job: dict) -> dict:
        """``job`` with this machine's benchmark cores and lock (a measure job benchmarks under them)."""
        return {**job, "lock_path": str(self.lock_path), "benchmark_cpus": list(self.benchmark_cpus)}


class Executor(Protocol):
    """Runs worker jobs somewhere; the collector's one seam between what to run and where."""

    @property
    def aborted(self) -> bool:
        """Whether :meth:`kill_all` was called (a job waiting for its twin waits no more)."""

    def run(
        self,
        job: dict,
        limits: dict[str, float],
        env: dict[str, str] | None = None,
        on_event: Callable[[dict], str | None] | None = None,
        memory_mb: int | None = None,
    ) -> JobResult:
        """Run one job to its end, like :func:`~perfgraph.measure.runner.run_job` without the cores.

        ``on_event`` is called at least with the events the worker waits for a reply to (``scheduled``);
        every event is in the result. Safe to call from several threads at once.
        """

    def kill_all(self) -> int:
        """Kill the jobs in flight and any started later; they end ``interrupted``."""


class LocalExecutor:
    """Runs every job on this machine, as the collector always has (the embedded default)."""

    def __init__(self, benchmark_cpus: Sequence[int] = ()) -> None:
        self.placement = Placement.here(benchmark_cpus)
        self._live = LiveWorkers()

    @property
    def aborted(self) -> bool:
        return self._live.aborted

    def run(
        self,
        job: dict,
        limits: dict[str, float],
        env: dict[str, str] | None = None,
        on_event: Callable[[dict], str | None] | None = None,
        memory_mb: int | None = None,
    ) -> JobResult:
        cpus = set(self.placement.compile_cpus)
        job = self.placement.place(job)
        return run_job(job, limits, cpus, env=env, on_event=on_event, live=self._live, memory_mb=memory_mb)

    def kill_all(self) -> int:
        return self._live.kill_all()
