"""What ``collect --ray`` adds per job, and what the one writer spends per sample: the inputs of its scaling.

Three figures, on a local Ray cluster of this machine:

- per job: the same trivial worker job (a fresh ``python -m perfgraph.measure.worker`` that fails at once)
  run by the embedded executor and by the Ray executor; the difference is Ray's overhead per job;
- per duplicate question: a Ray task's round trip to the driver and back (``scheduled`` -> "go");
- per sample on the driver: one committed schedule with its measurement in a scratch store (the single
  writer's work; plus the claim, which is a dictionary lookup).

Usage (pin it where it may run)::

    taskset -c 0 python benchmarks/ray_overhead.py --jobs 20 --questions 200 --commits 500
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import ray

from perfgraph.data.store import MeasurementRecord, Store
from perfgraph.measure.executor import LocalExecutor
from perfgraph.measure.host import MachineInfo
from perfgraph.measure.ray_executor import RayExecutor, _Questions

TRIVIAL_JOB = {"kind": "none"}  # the worker imports Halide, then reports an unknown job kind


def per_job_s(executor, jobs: int) -> list[float]:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(jobs):
        started = time.perf_counter()
        result = executor.run(TRIVIAL_JOB, {"start": 60})
        times.append(time.perf_counter() - started)
        assert result.failure_kind is not None
    return times


@ray.remote(num_cpus=1)
def _ask(questions, key: str, count: int) -> float:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    for _ in range(count):
        ray.get(questions.ask.remote(key, {"event": "scheduled"}))
    return (time.perf_counter() - started) / count


def question_round_trip_s(count: int) -> float:
    questions = _Questions.remote()
    task = _ask.remote(questions, "k", count)
    for _ in range(count):
        number, _event = ray.get(questions.next.remote("k"))
        questions.answer.remote(number, '{"go": true}')
    return ray.get(task)


def per_commit_s(commits: int) -> float:
    """Seconds per committed sample: a schedule and its measurement, one transaction, as ``Collector._record``."""
    with tempfile.TemporaryDirectory() as folder, Store(Path(folder) / "scratch.db") as store:
        machine = store.machine_id(MachineInfo("cpu", 2, "x86-64-linux", "21.0.0", "host", "Linux"))
        pipeline = store.execute(
            "INSERT INTO pipelines (uri, identity, family, num_stages, graph, buffers, algorithm_hash) "
            "VALUES ('scratch', 'scratch', 'scratch', 1, '{}', '{}', '')"
        ).lastrowid
        measurement = MeasurementRecord(1.0, 1.0, 0.01, (1.0,) * 20, 1, 1.0, "quiet-v2", {"steal_ms": 0.0})
        started = time.perf_counter()
        for index in range(commits):
            featurization = index.to_bytes(4, "little") * (326 * 8)  # an 8-stage pipeline's features
            store.add_schedule(pipeline, index, {}, featurization, "source" * 200, 0.1, machine, measurement)
        return (time.perf_counter() - started) / commits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--questions", type=int, default=200)
    parser.add_argument("--commits", type=int, default=500)
    args = parser.parse_args()
    local = per_job_s(LocalExecutor(), args.jobs)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    executor = RayExecutor()
    per_job_s(executor, 2)  # warm-up: Ray starts its worker processes
    on_ray = per_job_s(executor, args.jobs)
    figures = {
        "job_embedded_s": statistics.median(local),
        "job_ray_s": statistics.median(on_ray),
        "ray_overhead_per_job_s": statistics.median(on_ray) - statistics.median(local),
        "question_round_trip_s": question_round_trip_s(args.questions),
        "commit_per_sample_s": per_commit_s(args.commits),
    }
    executor.close()
    ray.shutdown()
    print(json.dumps({k: round(v, 4) for k, v in figures.items()}))


if __name__ == "__main__":
    main()
