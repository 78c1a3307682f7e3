"""Run the collector's jobs as Ray tasks on the nodes of a Ray cluster (``perfgraph collect --ray``).

Imported only with ``--ray``: Ray is an optional extra (``pip install 'perfgraph[ray]'``).

What is distributed: the jobs. Each analysis and each candidate (autoschedule, featurize, compile,
benchmark) is one Ray task of one CPU that calls :func:`~perfgraph.measure.runner.run_job` on the node
Ray puts it on: the same fresh worker process, per-phase time limits and kill rules as on one machine.
Its cores are the node's (:class:`~perfgraph.measure.executor.Placement`): the benchmark lock is in the
node's temporary directory, so two runners never benchmark at once on a node's benchmark cores, and a
compile never runs beside a benchmark there. The task returns the node's machine description with the
result, and the collector stores the measurement under that machine.

What is not: the plan, the claims on features hashes, the commits, resume and the failure rules stay
in the collector on the driver, the store's one writer.

Duplicates: after autoscheduling, a candidate's worker waits for the driver's "go" (is this schedule
new?). The question travels from the node to the driver and back through a small actor on the
driver's node (:class:`_Questions`), a round trip of milliseconds, so a duplicate is still never
compiled nor benchmarked. The simpler alternative, measuring every candidate and deciding afterwards,
would spend a compile and a benchmark on each duplicate: most candidates of a small pipeline.

References: a pipeline's reference output is saved by its analysis on whichever node ran it; a
candidate on a node that lacks it (not the driver's node) rebuilds it there, once per node, in the
node's temporary directory (it is deterministic: ``worker.save_reference``).

Lost workers: a Ray worker or node that dies takes its job with it. Nothing was committed for that
job, and Ray runs the task again from the start on a live worker (``max_retries``); the worker process
dies with its Ray worker (``PR_SET_PDEATHSIG``) and frees its cores and the benchmark lock. A job
still lost after the retries ends ``interrupted``: not recorded, it runs again when the same command
is run again.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from perfgraph.measure.executor import Placement
from perfgraph.measure.host import current_machine
from perfgraph.measure.runner import INTERRUPTED, JobResult, run_job

RETRIES = 3  # runs of a job lost with its Ray worker or node, after the first


@contextlib.contextmanager
def on_cluster(address: str | None = None, benchmark_cpus: Sequence[int] = ()) -> Iterator[RayExecutor]:
    """Connect to a Ray cluster for the duration (``address`` as :func:`ray.init` takes it).

    ``None``: the cluster this machine is part of (``ray start``, ``RAY_ADDRESS``), else a new local one;
    ``"auto"``: the running cluster, or an error; ``"HOST:PORT"``: that cluster's head.
    """
    ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
    try:
        executor = RayExecutor(benchmark_cpus)
        try:
            yield executor
        finally:
            executor.close()
    finally:
        ray.shutdown()


class RayExecutor:
    """Runs each job as a Ray task on the connected cluster (see the module's docstring).

    ``benchmark_cpus``: the benchmark cores on every node (default: each node's last core).
    """

    def __init__(self, benchmark_cpus: Sequence[int] = ()) -> None:
        self.benchmark_cpus = tuple(benchmark_cpus)
        self.driver_node = ray.get_runtime_context().get_node_id()
        here = NodeAffinitySchedulingStrategy(self.driver_node, soft=False)
        self._questions = _Questions.options(scheduling_strategy=here).remote()
        self._lock = threading.Lock()
        self._in_flight: set[ray.ObjectRef] = set()
        self._aborted = False

    @property
    def cpus(self) -> int:
        """The cluster's CPUs now (at least 1): as many jobs can run at once."""
        return max(int(ray.cluster_resources().get("CPU", 0)), 1)

    @property
    def aborted(self) -> bool:
        return self._aborted

    def run(
        self,
        job: dict,
        limits: dict[str, float],
        env: dict[str, str] | None = None,
        on_event: Callable[[dict], str | None] | None = None,
        memory_mb: int | None = None,
    ) -> JobResult:
        """Run one job on some node; answer its worker's questions with ``on_event`` meanwhile."""
        key = uuid.uuid4().hex
        with self._lock:
            if self._aborted:
                return _interrupted("stopped by an abort")
            task = _run_on_node.remote(
                job, limits, env or {}, memory_mb, self.benchmark_cpus, self.driver_node, self._questions, key
            )
            self._in_flight.add(task)
        try:
            question = self._questions.next.remote(key)
            while ray.wait([task, question], num_returns=1)[0][0] != task:
                number, event = ray.get(question)
                self._questions.answer.remote(number, on_event(event) if on_event is not None else None)
                question = self._questions.next.remote(key)
            return ray.get(task)
        except ray.exceptions.RayTaskError:  # the task itself raised: a bug, not a lost node
            raise
        except ray.exceptions.RayError as error:  # cancelled by an abort, or lost after every retry
            return _interrupted(f"lost on the Ray cluster: {type(error).__name__}: {str(error)[:300]}")
        finally:
            with self._lock:
                self._in_flight.discard(task)
            self._questions.forget.remote(key)

    def kill_all(self) -> int:
        with self._lock:
            self._aborted = True
            tasks = list(self._in_flight)
        for task in tasks:  # force: kills the Ray worker, whose worker process dies with it
            ray.cancel(task, force=True)
        return len(tasks)

    def close(self) -> None:
        ray.kill(self._questions)


def _interrupted(message: str) -> JobResult:
    return JobResult(failure_kind=INTERRUPTED, failure_message=message)


# -- on the node ---------------------------------------------------------------------------------


@ray.remote(num_cpus=1, max_retries=RETRIES)
def _run_on_node(
    job: dict,
    limits: dict[str, float],
    env: dict[str, str],
    memory_mb: int | None,
    benchmark_cpus: tuple[int, ...],
    driver_node: str,
    questions: ray.actor.ActorHandle,
    key: str,
) -> JobResult:
    """One job on this node's cores; the worker's ``scheduled`` question goes to the driver and back."""
    placement = Placement.here(benchmark_cpus)
    job = placement.place(job)
    if job.get("reference_path") and ray.get_runtime_context().get_node_id() != driver_node:
        job["reference_path"] = str(_node_reference(job["reference_path"]))

    def ask_driver(event: dict) -> str | None:
        if event["event"] != "scheduled":  # the one event a worker waits for a reply to (worker.measure)
            return None
        return ray.get(questions.ask.remote(key, event))

    cpus = set(placement.compile_cpus)
    result = run_job(job, limits, cpus, env=env, on_event=ask_driver, memory_mb=memory_mb, die_with_parent=True)
    result.machine = _node_machine()
    return result


def _node_reference(driver_path: str) -> Path:
    """Where this node keeps a reference output that the driver keeps at ``driver_path``."""
    store = hashlib.sha256(str(Path(driver_path).parent).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / "perfgraph-references" / store / Path(driver_path).name


@functools.cache
def _node_machine() -> dict:
    from perfgraph.schedules.autoscheduler import benchmark_target

    return current_machine(str(benchmark_target())).to_json()


# -- on the driver's node ------------------------------------------------------------------------


@ray.remote(num_cpus=0)
class _Questions:
    """Carries a worker's question from its node to the driver, and the driver's reply back.

    The node's task calls :meth:`ask` and waits; the driver, waiting on :meth:`next` for its job's
    key, answers with :meth:`answer`. A task run again after a lost worker asks again under the same key.
    """

    def __init__(self) -> None:
        self._asked: dict[str, asyncio.Queue] = {}
        self._replies: dict[int, asyncio.Future] = {}
        self._count = 0

    async def ask(self, key: str, event: dict) -> str | None:
        self._count += 1
        number, reply = self._count, asyncio.get_running_loop().create_future()
        self._replies[number] = reply
        self._asked.setdefault(key, asyncio.Queue()).put_nowait((number, event))
        return await reply

    async def next(self, key: str) -> tuple[int, dict] | None:
        return await self._asked.setdefault(key, asyncio.Queue()).get()

    async def answer(self, number: int, reply: str | None) -> None:
        future = self._replies.pop(number, None)
        if future is not None and not future.done():
            future.set_result(reply)

    async def forget(self, key: str) -> None:
        asked = self._asked.pop(key, None)
        if asked is not None:
            asked.put_nowait(None)
