"""The builder: turn (pipeline URI, autoscheduler config) pairs into featurized candidates, compiling nothing.

TVM MetaSchedule splits tuning into a *builder* and a *runner*; perfgraph does the same. The builder
builds the pipeline, runs Halide's Adams2019 autoscheduler for each config and keeps Halide's
featurization and schedule source: what a cost model needs to rank candidates without running them.
The runner (:mod:`perfgraph.measure.collector`) compiles, benchmarks and checks the chosen ones.

Every job runs in a fresh worker process (:mod:`perfgraph.measure.worker`), because Adams2019 can abort
its process: a config that kills its worker is recorded as a failure and the rest go on in a new one.
"""

from __future__ import annotations

import base64
import hashlib
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from perfgraph.data.records import Sample
from perfgraph.features.layout import FEATURES_PER_STAGE
from perfgraph.measure.host import MachineInfo
from perfgraph.measure.runner import INTERRUPTED, Timeouts, run_job
from perfgraph.schedules.autoscheduler import AutoschedulerConfig
from perfgraph.schedules.schedule_source import schedule_edge_features
from perfgraph.schedules.stage_graph import StageGraph, StageGraphError, parse_dag_dump


class BuildError(RuntimeError):
    """The pipeline itself could not be built or analysed; the message names the URI and the reason."""


@dataclass(frozen=True)
class Candidate:
    """One featurized schedule of a pipeline: no database ids, no run time.

    ``featurization`` has shape ``(graph.num_stages, 326)``, one Halide featurization row per stage in
    the order of ``graph.stage_names``.
    """

    pipeline_uri: str
    config: AutoschedulerConfig
    schedule_source: str
    featurization: np.ndarray
    graph: StageGraph
    autoschedule_s: float

    @property
    def features_hash(self) -> str:
        """sha256 of the float32 featurization bytes, as the store keys schedules (duplicates share it)."""
        return hashlib.sha256(np.ascontiguousarray(self.featurization, dtype=np.float32).tobytes()).hexdigest()

    def to_sample(
        self, schedule_id: int = 0, pipeline_id: int = 0, family: str = "user", machine: MachineInfo | None = None
    ) -> Sample:
        """The candidate as an unmeasured :class:`Sample` (``runtime_ms=None``) for a cost model.

        ``machine``: the machine the run time is asked for (its kind and
        :meth:`~perfgraph.measure.host.MachineInfo.feature_vector`, which machine-aware models read).
        """
        edges = self.graph.edge_array()
        return Sample(
            pipeline_id=pipeline_id,
            schedule_id=schedule_id,
            pipeline_name=self.pipeline_uri,
            family=family,
            features=self.featurization,
            edges=edges,
            edge_features=self.graph.edge_feature_array(),
            stage_names=self.graph.stage_names,
            schedule_edge_features=schedule_edge_features(self.schedule_source, self.graph.stage_names, edges),
            machine_kind=None if machine is None else machine.kind,
            machine_features=None if machine is None else machine.feature_vector(),
        )


@dataclass(frozen=True)
class BuildFailure:
    config: AutoschedulerConfig
    message: str


DEFAULT_TIMEOUTS = Timeouts()


def analyse_stage_graph(
    uri: str, timeouts: Timeouts = DEFAULT_TIMEOUTS, cpus: set[int] | None = None, memory_mb: int | None = None
) -> StageGraph:
    """The pipeline's stage graph from Adams2019's DAG dump (one cheap autoschedule, no compile, no run).

    ``memory_mb`` caps the worker's address space (MiB; ``None``: no limit), as ``collect --memory-mb``.
    Raises :class:`BuildError` naming the URI when the pipeline cannot be built or analysed (its reason
    ``out_of_memory`` when it needed more than ``memory_mb``).
    """
    job = {"kind": "analyze", "uri": uri, "input_seed": 0, "reference_path": None}
    limits = {"start": timeouts.build_s, "autoschedule": timeouts.analyze_s}
    env = {"HL_DEBUG_AUTOSCHEDULE": "2", "HL_NUM_THREADS": "1"}
    result = run_job(job, limits, cpus or _builder_cpus(), env=env, memory_mb=memory_mb)
    if not result.ok:
        raise BuildError(f"{uri}: the pipeline could not be analysed ({result.failure_kind}): {result.failure_message}")
    try:
        graph = parse_dag_dump(result.stderr)
    except StageGraphError as error:
        raise BuildError(f"{uri}: {error}") from error
    rows = len(base64.b64decode(result.events["analyzed"]["featurization"])) // (4 * FEATURES_PER_STAGE)
    if rows != graph.num_stages:
        raise BuildError(f"{uri}: {rows} featurization rows but {graph.num_stages} stages in Halide's DAG dump")
    return graph


def build_candidates(
    uri: str,
    configs: Sequence[AutoschedulerConfig],
    graph: StageGraph,
    workers: int = 2,
    timeouts: Timeouts = DEFAULT_TIMEOUTS,
    on_candidate: Callable[[], None] | None = None,
    memory_mb: int | None = None,
) -> tuple[list[Candidate | None], list[BuildFailure]]:
    """Featurize ``configs`` in ``workers`` worker processes; nothing is compiled or run.

    Returns one entry per config, in order (``None`` where it failed), and the failures with their
    reasons. ``on_candidate`` is called once per config that ended (a progress bar's ``update``).
    ``memory_mb`` caps each worker's address space (MiB; ``None``: no limit): a config whose search needs
    more fails alone, as ``out_of_memory``, and the others go on in a new worker.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    results: list[Candidate | None] = [None] * len(configs)
    failures: list[BuildFailure] = []
    lock = threading.Lock()

    def run_chunk(positions: list[int]) -> None:
        pending = list(positions)
        while pending:
            done: set[int] = set()

            def on_event(event: dict, chunk: list[int] = pending, done: set[int] = done) -> None:
                if event["event"] not in ("scheduled", "unscheduled"):
                    return None
                position = chunk[event["position"]]
                done.add(position)
                with lock:
                    if event["event"] == "scheduled":
                        rows = np.frombuffer(base64.b64decode(event["featurization"]), dtype=np.float32)
                        results[position] = Candidate(
                            uri,
                            configs[position],
                            event["schedule_source"],
                            rows.reshape(-1, FEATURES_PER_STAGE).copy(),
                            graph,
                            event["autoschedule_s"],
                        )
                    else:
                        failures.append(BuildFailure(configs[position], event["message"]))
                if on_candidate is not None:
                    on_candidate()
                return None

            job = {"kind": "featurize", "uri": uri, "configs": [configs[p].to_json() for p in pending]}
            limits = {"start": timeouts.build_s, "autoschedule": timeouts.autoschedule_s}
            outcome = run_job(
                job, limits, _builder_cpus(), env={"HL_NUM_THREADS": "1"}, on_event=on_event, memory_mb=memory_mb
            )
            remaining = [p for p in pending if p not in done]
            if outcome.ok or not remaining:
                return
            if outcome.failure_kind == INTERRUPTED:  # the operator stopped us (Ctrl-C): stop, do not retry
                raise KeyboardInterrupt
            if outcome.failure_phase == "start":  # the pipeline itself does not build: no config can succeed
                raise BuildError(f"{uri}: {outcome.failure_message}")
            failed, pending = remaining[0], remaining[1:]  # the config in flight killed its worker
            with lock:
                failures.append(BuildFailure(configs[failed], f"{outcome.failure_kind}: {outcome.failure_message}"))
            if on_candidate is not None:
                on_candidate()

    chunks = [list(range(i, len(configs), workers)) for i in range(min(workers, len(configs)))]
    with ThreadPoolExecutor(max(len(chunks), 1)) as pool:
        for future in [pool.submit(run_chunk, chunk) for chunk in chunks]:
            future.result()
    return results, failures


def _builder_cpus() -> set[int]:
    """Every CPU but the last, which the runner keeps for benchmarks (``collect`` and ``schedule``)."""
    cpus = sorted(os.sched_getaffinity(0))
    return set(cpus[:-1] or cpus)
