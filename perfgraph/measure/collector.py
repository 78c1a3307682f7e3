"""The collector: analyse pipelines, sample candidate schedules, measure them, commit each result.

Work is a list of independent jobs (one per pipeline analysis, one per candidate), each run in its own
worker process by :func:`perfgraph.measure.runner.run_job`, so the same jobs could be handed to other
machines. Autoscheduling and compiling run on the compile cores, in parallel; benchmarking holds a
file lock and moves to the benchmark cores, so two candidates are never measured at once on them.
Results are committed by this thread only, one transaction per candidate: re-running the same
command resumes where it stopped.
"""

from __future__ import annotations

import base64
import hashlib
import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from perfgraph.data.store import MeasurementRecord, Store, StoreError, algorithm_hash, features_hash
from perfgraph.measure.host import current_machine
from perfgraph.measure.runner import JobResult, Timeouts, run_job
from perfgraph.measure.timing import TimingPolicy
from perfgraph.schedules.autoscheduler import AutoschedulerConfig, benchmark_target, sampling_plan
from perfgraph.schedules.stage_graph import dag_dump_text, parse_dag_dump
from perfgraph.workloads.base import family_of

INPUT_SEED = 20221  # input data is the same for every candidate of a pipeline (and its reference)


@dataclass(frozen=True)
class CollectOptions:
    schedules_per_pipeline: int = 32
    workers: int = 2
    benchmark_cpus: tuple[int, ...] = ()  # default: the last CPU
    timeouts: Timeouts = Timeouts()
    timing: TimingPolicy = TimingPolicy()
    remeasure_fraction: float = 0.05  # share of measured schedules re-measured independently (noise floor)
    show_progress: bool = True


@dataclass
class CollectSummary:
    pipelines: int = 0
    measured: int = 0
    duplicates: int = 0
    remeasured: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0

    def count_failure(self, kind: str) -> None:
        self.failures[kind] = self.failures.get(kind, 0) + 1

    @property
    def samples_per_min(self) -> float:
        return 60.0 * self.measured / self.elapsed_s if self.elapsed_s else 0.0

    def to_json(self) -> dict:
        return {"pipelines": self.pipelines, "measured": self.measured, "duplicates": self.duplicates,
                "remeasured": self.remeasured, "failures": self.failures, "elapsed_s": round(self.elapsed_s, 1),
                "samples_per_min": round(self.samples_per_min, 2)}


@dataclass(frozen=True)
class _Candidate:
    uri: str
    pipeline_id: int
    index: int
    config: AutoschedulerConfig
    repeat_of: int | None = None  # schedule id, for an independent re-measurement


class Collector:
    """Collects measured samples for workload URIs into a :class:`Store`."""

    def __init__(self, store: Store, options: CollectOptions = CollectOptions()) -> None:
        self.store = store
        self.options = options
        cpus = sorted(os.sched_getaffinity(0))
        self.benchmark_cpus = set(options.benchmark_cpus or cpus[-1:])
        self.compile_cpus = set(cpus) - self.benchmark_cpus or set(cpus)
        self.target = str(benchmark_target())
        self.machine_id = store.machine_id(current_machine(self.target))
        self.refs_dir = Path(str(store.path) + ".refs")
        self.lock_path = Path(str(store.path) + ".bench.lock")
        self._hash_lock = threading.Lock()
        self._claimed: dict[int, dict[str, int | None]] = {}  # pipeline id -> hash -> schedule id (None: in flight)
        self._algorithm: dict[int, str] = {}  # pipeline id -> algorithm hash from its analysis
        self.summary = CollectSummary()

    # -- the plan ------------------------------------------------------------------------------

    def collect(self, uris: Sequence[str]) -> CollectSummary:
        started = time.monotonic()
        self._analyse_missing(uris)
        candidates = self._pending_candidates(uris)
        self._run_candidates(candidates, "measuring")
        self._run_candidates(self._pending_remeasurements(uris), "re-measuring")
        self.summary.elapsed_s = time.monotonic() - started
        return self.summary

    def _analyse_missing(self, uris: Sequence[str]) -> None:
        missing = [u for u in uris if self.store.pipeline_by_uri(u) is None]  # failed analyses are retried
        with ThreadPoolExecutor(self.options.workers) as pool, self._bar(len(missing), "analysing") as bar:
            futures = {pool.submit(self._analyse, uri): uri for uri in missing}
            for future in as_completed(futures):
                self._record_analysis(futures[future], future.result())
                bar.update()
        self.summary.pipelines = sum(1 for u in uris if self.store.pipeline_by_uri(u) is not None)

    def _analyse(self, uri: str) -> JobResult:
        job = {"kind": "analyze", "uri": uri, "input_seed": INPUT_SEED, "reference_path": str(self._reference(uri))}
        limits = {"start": self.options.timeouts.analyze_s}
        return run_job(job, limits, self.compile_cpus, env={"HL_DEBUG_AUTOSCHEDULE": "2", "HL_NUM_THREADS": "1"})

    def _record_analysis(self, uri: str, result: JobResult) -> None:
        if not result.ok or "reference_saved" not in result.events:
            kind = result.failure_kind or "crash"
            self.store.add_failure(uri, -1, None, kind, "analyze", result.failure_message or "no reference output",
                                   self.machine_id)
            self.summary.count_failure(kind)
            return
        graph = parse_dag_dump(result.stderr)
        featurization = base64.b64decode(result.events["analyzed"]["featurization"])
        rows = len(featurization) // (4 * 326)
        if rows != graph.num_stages:
            raise RuntimeError(f"{uri}: {rows} featurization rows but {graph.num_stages} stages in the DAG dump")
        identity = hashlib.sha256((uri + "\n" + dag_dump_text(result.stderr)).encode()).hexdigest()
        built = result.events["built"]
        buffers = {"inputs": built["inputs"], "scalars": built["scalars"], "outputs": built["outputs"]}
        try:
            self.store.add_pipeline(uri, identity, family_of(uri), graph, buffers, algorithm_hash(featurization))
        except StoreError as error:
            self.store.add_failure(uri, -1, None, "definition_changed", "analyze", str(error), self.machine_id)
            self.summary.count_failure("definition_changed")

    def _pending_candidates(self, uris: Sequence[str]) -> list[_Candidate]:
        pending = []
        for uri in uris:
            pipeline = self.store.pipeline_by_uri(uri)
            if pipeline is None:
                continue
            done = self.store.done_candidates(uri)
            plan = sampling_plan(self.options.schedules_per_pipeline, pipeline.num_stages)
            # The slow beam search goes last in each pipeline, so random samples arrive early.
            order = list(range(1, len(plan))) + [0]
            pending += [_Candidate(uri, pipeline.pipeline_id, i, plan[i]) for i in order if i not in done]
            self._claimed[pipeline.pipeline_id] = dict(self.store.measured_hashes(pipeline.pipeline_id))
            self._algorithm[pipeline.pipeline_id] = pipeline.algorithm_hash
        return pending

    def _pending_remeasurements(self, uris: Sequence[str]) -> list[_Candidate]:
        """A deterministic share of measured, deterministic schedules gets a second, independent measurement."""
        if self.options.remeasure_fraction <= 0:
            return []
        wanted = set(uris)
        rows = self.store.execute(
            "SELECT p.uri, s.pipeline_id, s.schedule_id, s.candidate_index, s.config FROM schedules s "
            "JOIN pipelines p USING (pipeline_id) WHERE s.duplicate_of IS NULL AND EXISTS (SELECT 1 FROM "
            "measurements m WHERE m.schedule_id = s.schedule_id AND m.is_repeat = 0) AND NOT EXISTS (SELECT 1 "
            "FROM measurements m WHERE m.schedule_id = s.schedule_id AND m.is_repeat = 1)").fetchall()
        import json

        chosen = []
        for uri, pipeline_id, schedule_id, index, config_json in rows:
            config = AutoschedulerConfig.from_json(json.loads(config_json))
            pick = random.Random(f"{uri}#{index}").random() < self.options.remeasure_fraction
            if uri in wanted and pick and not config.random_weights:  # random weights are not reproducible
                chosen.append(_Candidate(uri, pipeline_id, index, config, repeat_of=schedule_id))
        return chosen

    # -- running -------------------------------------------------------------------------------

    def _run_candidates(self, candidates: list[_Candidate], label: str) -> None:
        if not candidates:
            return
        with ThreadPoolExecutor(self.options.workers) as pool, self._bar(len(candidates), label) as bar:
            futures: dict[Future, _Candidate] = {pool.submit(self._measure, c): c for c in candidates}
            started = time.monotonic()
            for future in as_completed(futures):
                self._record(futures[future], *future.result())
                rate = 60 * (self.summary.measured + self.summary.remeasured) / max(time.monotonic() - started, 1e-9)
                bar.set_postfix(failures=sum(self.summary.failures.values()), per_min=f"{rate:.1f}")
                bar.update()

    def _measure(self, candidate: _Candidate) -> tuple[JobResult, int | None]:
        duplicate_of: list[int | None] = [None]

        def on_event(event: dict) -> str | None:
            if event["event"] != "scheduled":
                return None
            digest = features_hash(base64.b64decode(event["featurization"]))
            if candidate.repeat_of is not None:
                return '{"go": true}'
            with self._hash_lock:
                claimed = self._claimed.setdefault(candidate.pipeline_id, {})
                if digest in claimed:
                    duplicate_of[0] = claimed[digest] if claimed[digest] is not None else -1
                    return '{"go": false}'
                claimed[digest] = None
            return '{"go": true}'

        timeouts = self.options.timeouts
        job = {"kind": "measure", "uri": candidate.uri, "config": candidate.config.to_json(), "input_seed": INPUT_SEED,
               "reference_path": str(self._reference(candidate.uri)), "lock_path": str(self.lock_path),
               "benchmark_cpus": sorted(self.benchmark_cpus), "timing": vars(self.options.timing)}
        limits = {"start": 120.0, "compile": timeouts.compile_s, "run": timeouts.run_s,
                  "autoschedule": timeouts.beam_autoschedule_s if candidate.config.beam_size > 1 else timeouts.autoschedule_s}
        result = run_job(job, limits, self.compile_cpus, env={"HL_NUM_THREADS": "1"}, on_event=on_event)
        return result, duplicate_of[0]

    def _record(self, candidate: _Candidate, result: JobResult, duplicate_of: int | None) -> None:
        scheduled = result.events.get("scheduled")
        if candidate.repeat_of is not None:
            measured = result.events.get("measured")
            same = scheduled and self._schedule_hash(candidate.repeat_of) == features_hash(
                base64.b64decode(scheduled["featurization"]))
            if result.ok and measured and same:
                self.store.add_repeat_measurement(candidate.repeat_of, self.machine_id, _measurement(measured))
                self.summary.remeasured += 1
            return
        config = candidate.config.to_json()
        if not result.ok:
            self.store.add_failure(candidate.uri, candidate.index, config, result.failure_kind or "crash",
                                   result.failure_phase, result.failure_message, self.machine_id)
            self.summary.count_failure(result.failure_kind or "crash")
            self._release_claim(candidate, scheduled)
            return
        featurization = base64.b64decode(scheduled["featurization"])  # type: ignore[index]
        if algorithm_hash(featurization) != self._algorithm[candidate.pipeline_id]:
            self.store.add_failure(candidate.uri, candidate.index, config, "definition_changed", "autoschedule",
                                   "the pipeline's features differ from its analysis: the workload code changed",
                                   self.machine_id)
            self.summary.count_failure("definition_changed")
            return
        source, autoschedule_s = scheduled["schedule_source"], scheduled["autoschedule_s"]  # type: ignore[index]
        if duplicate_of is not None:
            if duplicate_of < 0:  # its twin was still in flight: resolve now that it has ended
                duplicate_of = self.store.measured_hashes(candidate.pipeline_id).get(features_hash(featurization))
            if duplicate_of is not None:
                self.store.add_schedule(candidate.pipeline_id, candidate.index, config, featurization, source,
                                        autoschedule_s, self.machine_id, None, duplicate_of=duplicate_of)
                self.summary.duplicates += 1
                return
            self.store.add_failure(candidate.uri, candidate.index, config, "duplicate_of_failed", "dedup",
                                   "same features as a candidate that failed", self.machine_id)
            return
        measured = result.events["measured"]
        schedule_id = self.store.add_schedule(candidate.pipeline_id, candidate.index, config, featurization, source,
                                              autoschedule_s, self.machine_id, _measurement(measured))
        with self._hash_lock:
            self._claimed[candidate.pipeline_id][features_hash(featurization)] = schedule_id
        self.summary.measured += 1

    def _release_claim(self, candidate: _Candidate, scheduled: dict | None) -> None:
        if scheduled is None:
            return
        digest = features_hash(base64.b64decode(scheduled["featurization"]))
        with self._hash_lock:
            if self._claimed.get(candidate.pipeline_id, {}).get(digest, 0) is None:
                del self._claimed[candidate.pipeline_id][digest]

    def _schedule_hash(self, schedule_id: int) -> str:
        return self.store.execute("SELECT features_hash FROM schedules WHERE schedule_id = ?", (schedule_id,)).fetchone()[0]

    def _reference(self, uri: str) -> Path:
        return self.refs_dir / (hashlib.sha256(uri.encode()).hexdigest()[:24] + ".npz")

    def _bar(self, total: int, label: str) -> tqdm:
        return tqdm(total=total, desc=label, unit="job", disable=not self.options.show_progress or total == 0,
                    dynamic_ncols=True)


def _measurement(event: dict) -> MeasurementRecord:
    return MeasurementRecord(runtime_ms=event["min_ms"], median_ms=event["median_ms"], cv=event["cv"],
                             repeats_ms=tuple(event["repeats_ms"]), threads=1, compile_s=event["compile_s"])


ProgressCallback = Callable[[CollectSummary], None]
