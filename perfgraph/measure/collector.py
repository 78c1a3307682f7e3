"""The collector: analyse pipelines, sample candidate schedules, measure them, commit each result.

Work is a list of independent jobs (one per pipeline analysis, one per candidate), each run in its own
worker process by an executor (:mod:`perfgraph.measure.executor`): on this machine by default, or on
the nodes of a Ray cluster (:mod:`perfgraph.measure.ray_executor`, ``collect --ray``). Autoscheduling
and compiling run on the compile cores, in parallel; benchmarking holds a file lock and moves to the
benchmark cores, so two candidates are never measured at once on them.
By default a candidate that finds the lock free before compiling takes it then and compiles on the
benchmark cores, which are otherwise idle while the compile cores are the bottleneck (``worker.measure``).
Results are committed by this thread only, one transaction per candidate: re-running the same
command resumes where it stopped. Each measurement is stored under the machine that made it (a Ray
node reports its own).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import os
import random
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from perfgraph.data.store import (
    MEASUREMENT_PROTOCOLS,
    MeasurementRecord,
    PipelineRecord,
    Store,
    StoreError,
    algorithm_hash,
    features_hash,
)
from perfgraph.features.layout import FEATURES_PER_STAGE
from perfgraph.measure.executor import Executor, LocalExecutor
from perfgraph.measure.host import MachineInfo, current_machine
from perfgraph.measure.runner import INTERRUPTED, JobResult, Timeouts
from perfgraph.measure.timing import TimingPolicy
from perfgraph.measure.worker import lock_if_free
from perfgraph.schedules.autoscheduler import AutoschedulerConfig, benchmark_target, sampling_plan
from perfgraph.schedules.stage_graph import dag_dump_text, parse_dag_dump
from perfgraph.workloads.base import family_of

INPUT_SEED = 20221  # input data is the same for every candidate of a pipeline (and its reference)


@dataclass(frozen=True)
class CollectOptions:
    schedules_per_pipeline: int = 32
    workers: int = 2
    benchmark_cpus: tuple[int, ...] = ()  # default: the last CPU (of each machine that runs jobs)
    # Compile on the benchmark cores while nobody benchmarks there: about 1.5x the samples/min on two
    # cores with no added noise (benchmarks/RESULTS.md); a compile never runs beside a benchmark.
    compile_on_idle_benchmark_cpus: bool = True
    timeouts: Timeouts = Timeouts()
    timing: TimingPolicy = TimingPolicy()
    max_beam_size: int | None = None  # cap on the beam-search candidate's beam (None: by pipeline size)
    remeasure_fraction: float = 0.05  # share of measured schedules re-measured independently (noise floor)
    # Top-up: candidates beyond K are drawn until K distinct schedules are measured, unless the
    # pipeline is saturated (its last ``saturation_window`` candidates found nothing new) or
    # ``max_candidates_factor`` x K candidates were tried. Single-stage layers saturate early.
    top_up: bool = True
    saturation_window: int = 8
    max_candidates_factor: int = 3
    # On a machine kind the store has not measured a pipeline on, its stored deterministic schedules
    # are measured here too: the same schedules on two CPUs (machine-transfer data).
    cross_machine: bool = True
    # Re-measure, under ``timing``'s protocol, the stored schedules whose label on this machine kind was
    # taken under an older one (window-v1, quiet-v2, quiet-v3): the new measurement becomes the label
    # (:func:`~perfgraph.data.store.label_measurements_sql`), the old one is kept.
    upgrade_labels: bool = False
    # With upgrade_labels: nothing else (no new candidates, top-ups or cross-machine measurements).
    upgrade_only: bool = False
    # Each worker's address-space limit in MiB (RLIMIT_AS); None: no limit. A candidate that needs more
    # fails as ``out_of_memory``, for good: None by default, so that no machine's limit drops schedules
    # silently. A normal worker reserves 0.3-1.2 GiB (README, "A memory limit per worker").
    memory_mb: int | None = None
    show_progress: bool = True


@dataclass
class CollectSummary:
    pipelines: int = 0
    measured: int = 0
    duplicates: int = 0
    remeasured: int = 0
    cross_machine: int = 0  # stored schedules measured for the first time on this machine kind
    upgraded: int = 0  # labels re-measured under the current timing protocol (upgrade_labels)
    compiled_on_benchmark_cpus: int = 0  # candidates compiled on the idle benchmark cores
    failures: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0
    stopped: bool = False  # a stop was requested (SIGINT / SIGTERM) before the work ran out

    def count_failure(self, kind: str) -> None:
        self.failures[kind] = self.failures.get(kind, 0) + 1

    @property
    def samples_per_min(self) -> float:
        return 60.0 * self.measured / self.elapsed_s if self.elapsed_s else 0.0

    def to_json(self) -> dict:
        return {
            "pipelines": self.pipelines,
            "measured": self.measured,
            "duplicates": self.duplicates,
            "remeasured": self.remeasured,
            "cross_machine": self.cross_machine,
            "upgraded": self.upgraded,
            "compiled_on_benchmark_cpus": self.compiled_on_benchmark_cpus,
            "failures": self.failures,
            "elapsed_s": round(self.elapsed_s, 1),
            "stopped": self.stopped,
            "samples_per_min": round(self.samples_per_min, 2),
        }


@dataclass(frozen=True)
class MeasuredConfig:
    """What became of one explicitly measured config: its schedule and run time, or why it failed."""

    candidate_index: int
    schedule_id: int | None
    runtime_ms: float | None  # minimum over repeats, on this machine kind (a duplicate: its twin's)
    schedule_source: str | None
    failure: str | None  # "kind: message" when it failed


@dataclass(frozen=True)
class _Analysis:
    uri: str


@dataclass(frozen=True)
class _Candidate:
    uri: str
    pipeline_id: int
    index: int
    config: AutoschedulerConfig
    repeat_of: int | None = None  # schedule id, for an independent re-measurement
    first_on_machine: bool = False  # with repeat_of: that schedule's first measurement on this machine kind
    upgrade: bool = False  # with repeat_of: its label re-measured under the current timing protocol


class Collector:
    """Collects measured samples for workload URIs into a :class:`Store`.

    ``executor`` runs the jobs (default: a :class:`LocalExecutor` on this machine's cores). Cross-machine
    measurements are planned for this machine's kind: on a Ray cluster, run the collector on a node of
    the kind the cluster is made of.
    """

    def __init__(
        self, store: Store, options: CollectOptions = CollectOptions(), executor: Executor | None = None
    ) -> None:
        self.store = store
        self.options = options
        self.executor = executor if executor is not None else LocalExecutor(options.benchmark_cpus)
        self.target = str(benchmark_target())
        machine = current_machine(self.target)
        self.machine = machine
        self.machine_id = store.machine_id(machine)
        self.machine_kind = machine.kind
        self._machine_ids: dict[str, int] = {machine.fingerprint: self.machine_id}  # fingerprint -> store id
        self._cross_queued: set[int] = set()  # schedule ids queued for their first measurement on this machine
        self._upgrade_queued: set[int] = set()  # schedule ids queued for a label upgrade
        self.refs_dir = Path(str(store.path.resolve()) + ".refs")
        self._claims = threading.Condition()
        self._claimed: dict[int, dict[str, int | None]] = {}  # pipeline id -> hash -> schedule id (None: in flight)
        self._algorithm: dict[int, str] = {}  # pipeline id -> algorithm hash from its analysis
        self._stop = threading.Event()
        self._explicit = False  # set by measure_configs
        self.summary = CollectSummary()

    # -- the plan ------------------------------------------------------------------------------

    def collect(self, uris: Sequence[str]) -> CollectSummary:
        """Analyse and measure every workload; each pipeline's analysis runs just before its candidates."""
        started = time.monotonic()
        work: deque[_Analysis | _Candidate] = deque()
        total = 0
        for uri in dict.fromkeys(uris):
            if self.store.pipeline_by_uri(uri) is None:
                work.append(_Analysis(uri))
                total += self.options.schedules_per_pipeline
            else:
                pending = self._pending_candidates(uri)
                work.extend(pending)
                total += max(len(pending), self._estimated_jobs(uri))
        with self._sole_collector(), self._stop_on_signals():
            self._run(work, total=total)
        self.summary.stopped = self._stop.is_set()
        self.summary.pipelines = sum(1 for u in dict.fromkeys(uris) if self.store.pipeline_by_uri(u) is not None)
        self.summary.elapsed_s = time.monotonic() - started
        return self.summary

    def measure_configs(self, uri: str, configs: Sequence[AutoschedulerConfig]) -> list[MeasuredConfig]:
        """Measure explicit ``(uri, config)`` pairs (a search decides which) and store each like ``collect``.

        The pipeline is analysed first when the store does not have it (its reference output is made
        then). Each config gets the next free candidate index; a config whose schedule was already
        measured here is stored as a duplicate and not benchmarked again. Returns one
        :class:`MeasuredConfig` per config, in order. Raises :class:`StoreError` when the pipeline
        cannot be analysed.
        """
        if any(c.random_weights for c in configs):
            raise ValueError("random-weight configs are seeded from the clock and cannot be rebuilt for measurement")
        self._explicit = True
        try:
            if self.store.pipeline_by_uri(uri) is None:
                with self._sole_collector():
                    if not self._record_analysis(uri, self._analyse(_Analysis(uri))):
                        failure = self.store.execute(
                            "SELECT kind, message FROM failures WHERE pipeline_uri = ? AND candidate_index = -1",
                            (uri,),
                        ).fetchone()
                        raise StoreError(f"{uri}: the pipeline could not be analysed: {failure}")
            pipeline = self.store.pipeline_by_uri(uri)
            assert pipeline is not None
            first = max(self.store.done_candidates(uri), default=-1) + 1
            with self._claims:
                self._claimed[pipeline.pipeline_id] = dict(self.store.measured_hashes(pipeline.pipeline_id))
                self._algorithm[pipeline.pipeline_id] = pipeline.algorithm_hash
            work: deque[_Analysis | _Candidate] = deque(
                _Candidate(uri, pipeline.pipeline_id, first + i, config) for i, config in enumerate(configs)
            )
            with self._sole_collector(), self._stop_on_signals():
                self._run(work, total=len(configs))
            indices = range(first, first + len(configs))
            return [MeasuredConfig(i, *self.store.candidate_outcome(uri, i, self.machine_kind)) for i in indices]
        finally:
            self._explicit = False

    def stop(self) -> None:
        """Start no new job; the jobs in flight finish and are recorded. Safe from any thread."""
        self._stop.set()

    def abort(self) -> None:
        """Stop now: start no new job and kill the jobs in flight (they run again on resume). Any thread."""
        self._stop.set()
        self.executor.kill_all()
        with self._claims:  # a candidate waiting for its killed twin waits no more
            self._claims.notify_all()

    @contextlib.contextmanager
    def _sole_collector(self) -> Iterator[None]:
        """Hold ``DB.collect.lock`` while collecting; a second collector on the same store is refused.

        Two collectors on one store would hand out the same candidates of a pipeline (and the second
        would die on the store's uniqueness constraint): :class:`StoreError` says so before any work.
        """
        path = Path(str(self.store.path.resolve()) + ".collect.lock")
        with open(path, "a+") as lock:
            if not lock_if_free(lock):
                lock.seek(0)
                holder = lock.read().strip() or "unknown"
                raise StoreError(
                    f"{self.store.path}: another collector (pid {holder}) is writing to this store; "
                    "wait for it or stop it (Ctrl-C), or collect into another --db"
                )
            lock.truncate(0)
            lock.write(str(os.getpid()))
            lock.flush()
            yield

    @contextlib.contextmanager
    def _stop_on_signals(self) -> Iterator[None]:
        """SIGINT / SIGTERM stop the collection gently; a second one aborts at once.

        The abort kills the workers in flight (a compile or a benchmark can take minutes) and raises
        :class:`KeyboardInterrupt`; their candidates were not committed and run again on resume.
        """
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def on_signal(signum: int, _frame: object) -> None:
            if self._stop.is_set():
                self.abort()
                raise KeyboardInterrupt
            self.stop()
            name = signal.Signals(signum).name
            tqdm.write(f"{name}: finishing the jobs in flight, then stopping (again: abort)", file=sys.stderr)

        previous = {signum: signal.signal(signum, on_signal) for signum in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _estimated_jobs(self, uri: str) -> int:
        if self.options.upgrade_only:
            return 0
        return max(self.options.schedules_per_pipeline - len(self.store.done_candidates(uri)), 0)

    def _pending_candidates(self, uri: str) -> list[_Candidate]:
        """The pipeline's candidates still to run: the first K, or else a top-up round (see CollectOptions)."""
        pipeline = self.store.pipeline_by_uri(uri)
        assert pipeline is not None
        if self.options.upgrade_only:
            return self._label_upgrades(pipeline)
        done = self.store.done_candidates(uri)
        wanted = self.options.schedules_per_pipeline
        # The slow beam search goes last in each pipeline, so random samples arrive early.
        indices = [i for i in [*range(1, wanted), 0] if i not in done]
        if not indices and self.options.top_up:
            first = max(done, default=-1) + 1
            new = self.store.candidate_outcomes(pipeline.pipeline_id, first)
            most = wanted * self.options.max_candidates_factor
            count = top_up_count(new, wanted, most, self.options.saturation_window)
            indices = list(range(first, first + count))
        plan = sampling_plan(max(indices, default=0) + 1, pipeline.num_stages, max_beam_size=self.options.max_beam_size)
        with self._claims:
            self._claimed[pipeline.pipeline_id] = dict(self.store.measured_hashes(pipeline.pipeline_id))
            self._algorithm[pipeline.pipeline_id] = pipeline.algorithm_hash
        fresh = [_Candidate(uri, pipeline.pipeline_id, i, plan[i]) for i in indices]
        return fresh + self._cross_machine(pipeline) + self._label_upgrades(pipeline)

    def _cross_machine(self, pipeline: PipelineRecord) -> list[_Candidate]:
        """Stored schedules of the pipeline measured on other machine kinds only: measure them here too.

        Only deterministic configs can be rebuilt (random weights come from the clock). A schedule
        that failed here, or that Adams2019 does not reproduce here, is recorded and not tried again.
        """
        if not self.options.cross_machine:
            return []
        here = self.store.measured_on(pipeline.pipeline_id, self.machine_kind)
        failed_here = self.store.failed_candidates(pipeline.uri, self.machine_kind)
        wanted = []
        for schedule_id, index, config in self.store.measured_schedules(pipeline.pipeline_id):
            config = AutoschedulerConfig.from_json(config)
            if schedule_id in here or schedule_id in self._cross_queued or index in failed_here:
                continue
            if config.random_weights:
                continue
            self._cross_queued.add(schedule_id)
            wanted.append(
                _Candidate(
                    pipeline.uri, pipeline.pipeline_id, index, config, repeat_of=schedule_id, first_on_machine=True
                )
            )
        return wanted

    def stale_label_pipelines(self) -> list[str]:
        """URIs of the stored pipelines whose labels on this machine kind predate the timing policy's protocol."""
        return self.store.stale_label_pipelines(self.machine_kind, self.options.timing.protocol)

    def _label_upgrades(self, pipeline: PipelineRecord) -> list[_Candidate]:
        """With ``upgrade_labels``: the pipeline's deterministic schedules whose labels here are stale.

        Stale: its label on this machine kind predates the timing policy's protocol
        (:meth:`~perfgraph.data.store.Store.stale_labels`, which leaves out the schedules with random
        weights: they cannot be rebuilt); one whose upgrade failed here (or reached no newer protocol) is
        not tried again.
        """
        if not self.options.upgrade_labels:
            return []
        stale = set(self.store.stale_labels(pipeline.pipeline_id, self.machine_kind, self.options.timing.protocol))
        failed_here = self.store.failed_candidates(pipeline.uri, self.machine_kind)
        wanted = []
        for schedule_id, index, config in self.store.measured_schedules(pipeline.pipeline_id):
            if schedule_id not in stale or schedule_id in self._upgrade_queued or index in failed_here:
                continue
            self._upgrade_queued.add(schedule_id)
            config = AutoschedulerConfig.from_json(config)
            wanted.append(_Candidate(pipeline.uri, pipeline.pipeline_id, index, config, schedule_id, upgrade=True))
        return wanted

    def _wants_repeat(self, candidate: _Candidate) -> bool:
        """A deterministic share of deterministic schedules is measured twice, independently (noise floor)."""
        if candidate.config.random_weights:  # random weights are drawn from the clock: not reproducible
            return False
        return random.Random(f"{candidate.uri}#{candidate.index}").random() < self.options.remeasure_fraction

    # -- running -------------------------------------------------------------------------------

    def _run(self, work: deque[_Analysis | _Candidate], total: int) -> None:
        """Run jobs from the front of ``work``; an analysis puts its pipeline's candidates at the front."""
        with ThreadPoolExecutor(self.options.workers) as pool, self._bar(total) as bar:
            running: dict[Future, _Analysis | _Candidate] = {}
            started = time.monotonic()

            def queue_pending(uri: str) -> list[_Candidate]:
                if self._explicit:  # measure_configs: the caller chose the candidates, no sampling policy
                    return []
                pending = self._pending_candidates(uri)
                work.extendleft(reversed(pending))
                return pending

            while (work and not self._stop.is_set()) or running:
                while work and len(running) < self.options.workers and not self._stop.is_set():
                    job = work.popleft()
                    task = self._analyse if isinstance(job, _Analysis) else self._measure
                    running[pool.submit(task, job)] = job
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    job = running.pop(future)
                    if isinstance(job, _Analysis):
                        if not self._record_analysis(job.uri, future.result()):
                            bar.update(self.options.schedules_per_pipeline)
                        else:
                            queue_pending(job.uri)
                        continue
                    schedule_id = self._record(job, *future.result())
                    if schedule_id is not None and self._wants_repeat(job):
                        work.appendleft(dataclasses.replace(job, repeat_of=schedule_id, first_on_machine=False))
                        bar.total += 1
                    if job.repeat_of is None and not _has_candidates(job.uri, work, running.values()):
                        bar.total += len(queue_pending(job.uri))  # a top-up round, when one is due
                    rate = 60 * self.summary.measured / max(time.monotonic() - started, 1e-9)
                    postfix = {"failures": sum(self.summary.failures.values()), "per_min": f"{rate:.1f}"}
                    if self.options.upgrade_labels:
                        postfix["upgraded"] = self.summary.upgraded
                    bar.set_postfix(postfix)
                    bar.update()

    def _analyse(self, analysis: _Analysis) -> JobResult:
        job = {
            "kind": "analyze",
            "uri": analysis.uri,
            "input_seed": INPUT_SEED,
            "reference_path": str(self._reference(analysis.uri)),
        }
        limits = {
            "start": self.options.timeouts.build_s,
            "autoschedule": self.options.timeouts.analyze_s,
            "reference": self.options.timeouts.analyze_s,
        }
        env = {"HL_DEBUG_AUTOSCHEDULE": "2", "HL_NUM_THREADS": "1"}
        return self.executor.run(job, limits, env=env, memory_mb=self.options.memory_mb)

    def _record_analysis(self, uri: str, result: JobResult) -> bool:
        """Store the pipeline described by an analysis job; ``False`` (and a failure row) if it failed."""
        kind, message = result.failure_kind, result.failure_message
        if kind == INTERRUPTED:  # analysed again on resume
            return False
        if result.ok and "reference_saved" not in result.events:
            kind, message = "crash", "the analysis ended without a reference output"
        if kind is None:
            graph = parse_dag_dump(result.stderr)
            featurization = base64.b64decode(result.events["analyzed"]["featurization"])
            rows = len(featurization) // (4 * FEATURES_PER_STAGE)
            identity = hashlib.sha256((uri + "\n" + dag_dump_text(result.stderr)).encode()).hexdigest()
            built = result.events["built"]
            buffers = {"inputs": built["inputs"], "scalars": built["scalars"], "outputs": built["outputs"]}
            if rows != graph.num_stages:
                kind, message = "graph_mismatch", f"{rows} featurization rows but {graph.num_stages} stages"
            else:
                try:
                    self.store.add_pipeline(
                        uri, identity, family_of(uri), graph, buffers, algorithm_hash(featurization)
                    )
                    return True
                except StoreError as error:
                    kind, message = "definition_changed", str(error)
        self._fail(uri, -1, None, kind, "analyze", message, self._machine_of(result))
        return False

    def _measure(self, candidate: _Candidate) -> tuple[JobResult, int | None]:
        duplicate_of: list[int | None] = [None]
        claimed: list[bytes | None] = [None]  # the featurization this candidate holds the claim on

        def on_event(event: dict) -> str | None:
            if event["event"] != "scheduled" or candidate.repeat_of is not None:
                return '{"go": true}' if event["event"] == "scheduled" else None
            # A job run again from the start (a Ray task retried after its node was lost) asks again.
            self._release(candidate.pipeline_id, claimed[0])
            featurization = base64.b64decode(event["featurization"])
            duplicate_of[0] = self._claim(candidate.pipeline_id, features_hash(featurization))
            claimed[0] = featurization if duplicate_of[0] is None else None
            return '{"go": false}' if duplicate_of[0] is not None else '{"go": true}'

        timeouts = self.options.timeouts
        job = {
            "kind": "measure",
            "uri": candidate.uri,
            "config": candidate.config.to_json(),
            "input_seed": INPUT_SEED,
            "reference_path": str(self._reference(candidate.uri)),
            "compile_on_idle_benchmark_cpus": self.options.compile_on_idle_benchmark_cpus,
            "timing": vars(self.options.timing),
        }
        limits = {
            "start": timeouts.build_s,
            "compile": timeouts.compile_s,
            "run": timeouts.run_s,
            "autoschedule": timeouts.beam_autoschedule_s if candidate.config.beam_size > 1 else timeouts.autoschedule_s,
            "reference": timeouts.analyze_s,  # a missing reference output is rebuilt by the candidate
        }
        # Single-threaded: Halide's pipelines, and NumPy's BLAS in the timing calibration kernel.
        env = {"HL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
        result = self.executor.run(job, limits, env=env, on_event=on_event, memory_mb=self.options.memory_mb)
        if "scheduled" not in result.events:  # a job lost on a Ray cluster after it asked: its twins wait no more
            self._release(candidate.pipeline_id, claimed[0])
        return result, duplicate_of[0]

    def _record(self, candidate: _Candidate, result: JobResult, duplicate_of: int | None) -> int | None:
        """Commit one finished job; returns the new schedule id when a first measurement was stored."""
        scheduled = result.events.get("scheduled")
        machine_id = self._machine_of(result)
        if result.events.get("measured", {}).get("compiled_on_benchmark_cpus"):
            self.summary.compiled_on_benchmark_cpus += 1
        if candidate.repeat_of is not None:
            measured = result.events.get("measured")
            same = scheduled and self._schedule_hash(candidate.repeat_of) == features_hash(
                base64.b64decode(scheduled["featurization"])
            )
            if candidate.first_on_machine:
                return self._record_cross_machine(candidate, result, bool(same))
            if candidate.upgrade:
                return self._record_upgrade(candidate, result, bool(same))
            if result.ok and measured and same:
                self.store.add_repeat_measurement(candidate.repeat_of, machine_id, _measurement(measured))
                self.summary.remeasured += 1
            return None
        config = candidate.config.to_json()
        featurization = base64.b64decode(scheduled["featurization"]) if scheduled is not None else None
        # A candidate that is nobody's duplicate holds the claim on its features hash until it settles.
        claim = featurization if duplicate_of is None else None
        if result.failure_kind == INTERRUPTED:  # not the candidate's doing: it runs again on resume
            self._release(candidate.pipeline_id, claim)
            return None
        if not result.ok:
            self._fail(
                candidate.uri,
                candidate.index,
                config,
                result.failure_kind or "crash",
                result.failure_phase,
                result.failure_message,
                machine_id,
            )
            self._release(candidate.pipeline_id, claim)
            return None
        assert featurization is not None
        if algorithm_hash(featurization) != self._algorithm[candidate.pipeline_id]:
            self._fail(
                candidate.uri,
                candidate.index,
                config,
                "definition_changed",
                "autoschedule",
                "the pipeline's features differ from its analysis: the workload code changed",
                machine_id,
            )
            self._release(candidate.pipeline_id, claim)
            return None
        measurement = _measurement(result.events["measured"]) if duplicate_of is None else None
        schedule_id = self.store.add_schedule(
            candidate.pipeline_id,
            candidate.index,
            config,
            featurization,
            scheduled["schedule_source"],
            scheduled["autoschedule_s"],
            machine_id,
            measurement,
            duplicate_of=duplicate_of,
        )
        if duplicate_of is not None:
            self.summary.duplicates += 1
            return None
        self._settle_claim(candidate.pipeline_id, featurization, schedule_id)
        self.summary.measured += 1
        return schedule_id

    def _record_cross_machine(self, candidate: _Candidate, result: JobResult, same_schedule: bool) -> int | None:
        """A stored schedule's first measurement on this machine kind; its schedule id when measured.

        A job that ran on a node of another kind (a mixed Ray cluster) is that kind's first measurement
        of the schedule, or a re-measurement when the kind already has one.
        """
        rebuilt = self._rebuilt_measurement(candidate, result, same_schedule, self._cross_queued)
        if rebuilt is None:
            return None
        machine_id, measurement = rebuilt
        kind = self.store.machines()[machine_id].kind
        again = kind != self.machine_kind and candidate.repeat_of in self.store.measured_on(candidate.pipeline_id, kind)
        self.store.add_measurement(candidate.repeat_of, machine_id, measurement, is_repeat=again)
        if again:
            self.summary.remeasured += 1
            return None
        self.summary.cross_machine += 1
        self.summary.measured += 1
        return candidate.repeat_of

    def _record_upgrade(self, candidate: _Candidate, result: JobResult, same_schedule: bool) -> None:
        """A stale label re-measured under the current protocol (it becomes the label), or why not.

        Anything but a new label is recorded as a failure of the candidate on this machine kind, so
        that it is not tried again: a failed job, a schedule Adams2019 no longer reproduces, a worker
        that could not reach a newer protocol (its measurement is kept as a re-measurement).
        """
        rebuilt = self._rebuilt_measurement(candidate, result, same_schedule, self._upgrade_queued)
        if rebuilt is None:
            return None
        machine_id, measurement = rebuilt
        kind = self.store.machines()[machine_id].kind
        if kind != self.machine_kind:  # a node of another kind (a mixed Ray cluster): that kind's measurement
            again = candidate.repeat_of in self.store.measured_on(candidate.pipeline_id, kind)
            self.store.add_measurement(candidate.repeat_of, machine_id, measurement, is_repeat=again)
            return None
        label = self.store.label_protocols(kind, candidate.pipeline_id)[candidate.repeat_of]
        self.store.add_repeat_measurement(candidate.repeat_of, machine_id, measurement)
        if MEASUREMENT_PROTOCOLS.index(measurement.protocol) > MEASUREMENT_PROTOCOLS.index(label):
            self.summary.upgraded += 1
            return None
        self.summary.remeasured += 1
        message = f"the worker measured under {measurement.protocol}, not newer than the label's {label}"
        config = candidate.config.to_json()
        self._fail(candidate.uri, candidate.index, config, "protocol_not_reached", "run", message, machine_id)
        return None

    def _rebuilt_measurement(
        self, candidate: _Candidate, result: JobResult, same_schedule: bool, queued: set[int]
    ) -> tuple[int, MeasurementRecord] | None:
        """``(machine id, measurement)`` of a stored schedule rebuilt and measured again, or ``None``.

        ``None`` when the job was interrupted (the schedule leaves ``queued``, to run again on resume),
        failed, or Adams2019 gave another schedule (both recorded as failures of the candidate).
        """
        assert candidate.repeat_of is not None
        if result.failure_kind == INTERRUPTED:
            queued.discard(candidate.repeat_of)
            return None
        config = candidate.config.to_json()
        machine_id = self._machine_of(result)
        if not result.ok:
            kind, phase = result.failure_kind or "crash", result.failure_phase
            self._fail(candidate.uri, candidate.index, config, kind, phase, result.failure_message, machine_id)
            return None
        if not same_schedule:
            message = "Adams2019 gave another schedule on this machine than the stored one (target differs?)"
            self._fail(candidate.uri, candidate.index, config, "not_reproduced", "autoschedule", message, machine_id)
            return None
        return machine_id, _measurement(result.events["measured"])

    def _fail(
        self, uri: str, index: int, config: dict | None, kind: str, phase: str, message: str, machine_id: int
    ) -> None:
        """Record a failed job (``index`` -1: the pipeline's analysis) and count it in the summary."""
        self.store.add_failure(uri, index, config, kind, phase, message, machine_id)
        self.summary.count_failure(kind)

    def _machine_of(self, result: JobResult) -> int:
        """The store id of the machine a job ran on: the node it reports (a Ray task), else this one."""
        if result.machine is None:
            return self.machine_id
        machine = MachineInfo.from_json(result.machine)
        if machine.fingerprint not in self._machine_ids:
            self._machine_ids[machine.fingerprint] = self.store.machine_id(machine)
        return self._machine_ids[machine.fingerprint]

    def _release(self, pipeline_id: int, claimed_featurization: bytes | None) -> None:
        """Give up a claim on a features hash after a failure, so a waiting twin is measured instead."""
        if claimed_featurization is not None:
            self._settle_claim(pipeline_id, claimed_featurization, None)

    def _claim(self, pipeline_id: int, digest: str) -> int | None:
        """Claim a features hash for measuring; returns the measured twin's schedule id if there is one.

        A twin still in flight is waited for: it either gets measured (this one is its duplicate) or
        fails and releases the claim (this one takes it over and is measured).
        """
        with self._claims:
            claimed = self._claimed.setdefault(pipeline_id, {})
            while digest in claimed and claimed[digest] is None and not self.executor.aborted:
                self._claims.wait()
            if digest in claimed:
                return claimed[digest]
            claimed[digest] = None
            return None

    def _settle_claim(self, pipeline_id: int, featurization: bytes, schedule_id: int | None) -> None:
        """Record the outcome of a claimed hash (``None``: it failed) and wake the twins waiting on it."""
        digest = features_hash(featurization)
        with self._claims:
            claimed = self._claimed.setdefault(pipeline_id, {})
            if schedule_id is None:
                if digest in claimed and claimed[digest] is None:
                    del claimed[digest]
            else:
                claimed[digest] = schedule_id
            self._claims.notify_all()

    def _schedule_hash(self, schedule_id: int) -> str:
        return self.store.execute(
            "SELECT features_hash FROM schedules WHERE schedule_id = ?", (schedule_id,)
        ).fetchone()[0]

    def _reference(self, uri: str) -> Path:
        return self.refs_dir / (hashlib.sha256(uri.encode()).hexdigest()[:24] + ".npz")

    def _bar(self, total: int) -> tqdm:
        return tqdm(
            total=total,
            desc="collecting",
            unit="candidate",
            disable=not self.options.show_progress,
            dynamic_ncols=True,
        )


def top_up_count(new_schedule: list[bool], wanted: int, max_candidates: int, saturation_window: int) -> int:
    """How many more candidates to draw for a pipeline whose candidates 0..n-1 have all ended.

    ``new_schedule[i]`` says whether candidate ``i`` gave a newly measured schedule (not a duplicate
    or a failure). Enough to reach ``wanted`` schedules if every one were new, within
    ``max_candidates`` in all; none once the last ``saturation_window`` candidates found nothing new.

    >>> top_up_count([True] * 6 + [False] * 2, wanted=8, max_candidates=24, saturation_window=4)
    2
    >>> top_up_count([True] * 4 + [False] * 4, wanted=8, max_candidates=24, saturation_window=4)
    0
    """
    tried, measured = len(new_schedule), sum(new_schedule)
    recent = new_schedule[-saturation_window:]
    if measured >= wanted or (len(recent) == saturation_window and not any(recent)):
        return 0
    return max(min(wanted - measured, max_candidates - tried), 0)


def _has_candidates(uri: str, *queues: Iterable[_Analysis | _Candidate]) -> bool:
    """Whether any first-measurement candidate of ``uri`` is still queued or running."""
    return any(isinstance(j, _Candidate) and j.uri == uri and j.repeat_of is None for q in queues for j in q)


def _measurement(event: dict) -> MeasurementRecord:
    return MeasurementRecord(
        runtime_ms=event["min_ms"],
        median_ms=event["median_ms"],
        cv=event["cv"],
        repeats_ms=tuple(event["repeats_ms"]),
        threads=1,
        compile_s=event["compile_s"],
        protocol=event["protocol"],
        conditions=event.get("conditions"),
    )
