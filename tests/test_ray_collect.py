"""collect --ray: the collector's jobs as Ray tasks on a local Ray cluster; one writer, node machines recorded."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import pickle
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from perfgraph.cli import build_parser
from perfgraph.data.store import Store
from perfgraph.measure.collector import CollectOptions, Collector, top_up_count
from perfgraph.measure.host import MachineInfo, current_machine
from perfgraph.measure.runner import JobResult
from perfgraph.schedules.autoscheduler import AutoschedulerConfig, benchmark_target

from .conftest import FAST_TIMING, TINY_WORKLOADS, USER_PIPELINES

needs_ray = pytest.mark.skipif(
    importlib.util.find_spec("ray") is None, reason="Ray is not installed: pip install 'perfgraph[ray]' (make does)"
)
BLUR = TINY_WORKLOADS[2]


def test_the_embedded_collector_and_the_cli_do_not_import_ray():
    code = "import sys, perfgraph.cli, perfgraph.measure.collector; print('ray' in sys.modules)"
    imported = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert imported.stdout.strip() == "False"


def test_collect_takes_a_bare_ray_flag_or_an_address():
    parser = build_parser()
    assert parser.parse_args(["collect", "--zoo", "conv2d"]).ray is None
    assert parser.parse_args(["collect", "--zoo", "conv2d", "--ray"]).ray == ""
    assert parser.parse_args(["collect", "--ray", "10.0.0.1:6379", "--zoo", "conv2d"]).ray == "10.0.0.1:6379"


def test_a_job_result_travels_with_the_machine_that_ran_it():
    machine = MachineInfo("Some CPU", 2, "x86-64-linux-avx2", "21.0.0", "node-b", "Linux 6")
    result = JobResult(events={"measured": {"min_ms": 1.5}}, stderr="...", machine=machine.to_json())
    assert pickle.loads(pickle.dumps(result)) == result
    assert MachineInfo.from_json(result.machine) == machine


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray cluster of 2 CPUs for the module (starting one takes 5-20 s)."""
    if importlib.util.find_spec("ray") is None:
        pytest.skip("Ray is not installed")
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


def _collect_on_ray(db: Path, uris: list[str], **options) -> Store:
    from perfgraph.measure.ray_executor import RayExecutor

    store = Store(db)
    defaults = {"workers": 2, "max_beam_size": 2, "remeasure_fraction": 0.25, "show_progress": False}
    executor = RayExecutor()
    try:
        Collector(store, CollectOptions(**{**defaults, "timing": FAST_TIMING, **options}), executor).collect(uris)
    finally:
        executor.close()
    return store


@needs_ray
@pytest.mark.slow
def test_collect_on_ray_stores_every_candidate_by_the_same_rules_under_the_nodes_machine(tmp_path, ray_cluster):
    uris = [BLUR, f"file:{USER_PIPELINES}:conv_relu"]
    wanted = 4
    with _collect_on_ray(tmp_path / "ray.db", uris, schedules_per_pipeline=wanted) as store:
        for uri in uris:
            pipeline = store.pipeline_by_uri(uri)
            done = store.done_candidates(uri)
            assert done == set(range(len(done))) and len(done) >= wanted
            new = store.candidate_outcomes(pipeline.pipeline_id, len(done))
            assert top_up_count(new, wanted, 3 * wanted, CollectOptions().saturation_window) == 0, new
        machines = {machine_id: info for machine_id, info in store.machines().items()}
        measured_on = {r[0] for r in store.execute("SELECT machine_id FROM measurements")}
        unmeasured = store.execute(
            "SELECT COUNT(*) FROM schedules s WHERE duplicate_of IS NULL AND NOT EXISTS "
            "(SELECT 1 FROM measurements m WHERE m.schedule_id = s.schedule_id AND m.is_repeat = 0)"
        ).fetchone()[0]
        hashes = store.execute("SELECT pipeline_id, features_hash FROM schedules WHERE duplicate_of IS NULL").fetchall()
        assert store.execute("SELECT COUNT(*) FROM failures").fetchone()[0] == 0
    assert unmeasured == 0
    assert len(hashes) == len(set(hashes))  # a schedule measured once: the driver still decides duplicates
    node = current_machine(str(benchmark_target()))  # the one node of this cluster is this machine
    assert {machines[m].fingerprint for m in measured_on} == {node.fingerprint}
    assert all(machines[m].hostname == node.hostname and machines[m].isa_flags for m in measured_on)


@needs_ray
@pytest.mark.slow
def test_on_ray_a_schedule_asked_for_twice_at_once_is_benchmarked_once_and_stored_as_a_duplicate(tmp_path, ray_cluster):
    from perfgraph.measure.ray_executor import RayExecutor

    config = AutoschedulerConfig(beam_size=1, random_dropout=1, random_dropout_seed=1, disable_subtiling=True)
    executor = RayExecutor()
    options = CollectOptions(workers=2, remeasure_fraction=0.0, show_progress=False, timing=FAST_TIMING)
    with Store(tmp_path / "twice.db") as store:
        first, second = Collector(store, options, executor).measure_configs(BLUR, [config, config])
        rows = store.execute("SELECT COUNT(*), COUNT(duplicate_of) FROM schedules").fetchone()
        measurements = store.execute("SELECT COUNT(*) FROM measurements").fetchone()[0]
    executor.close()
    assert first.failure is None and second.failure is None
    assert rows == (2, 1) and measurements == 1  # the second waited for its twin, then was not compiled
    assert first.runtime_ms == second.runtime_ms


def _ray_workers_running_a_job() -> list[int]:
    """Pids of Ray worker processes whose job's worker process is running (``ray::_run_on_node``)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            if b"perfgraph.measure.worker" not in cmdline.read_bytes():
                continue
            parent = int((cmdline.parent / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if Path(f"/proc/{parent}/cmdline").read_bytes().startswith(b"ray::"):
                found.append(parent)
    return found


@needs_ray
@pytest.mark.slow
def test_a_ray_worker_killed_mid_job_is_run_again_and_nothing_committed_is_lost(tmp_path, ray_cluster):
    db = tmp_path / "killed.db"
    errors: list[BaseException] = []

    def collect() -> None:
        try:
            _collect_on_ray(db, [BLUR], schedules_per_pipeline=4, top_up=False, remeasure_fraction=0.0).close()
        except BaseException as error:
            errors.append(error)

    collecting = threading.Thread(target=collect)
    collecting.start()
    deadline = time.monotonic() + 150
    committed: list[int] = []
    killed = None
    while time.monotonic() < deadline and collecting.is_alive() and killed is None:
        time.sleep(0.2)
        with contextlib.suppress(sqlite3.OperationalError), sqlite3.connect(db) as connection:
            committed = [r[0] for r in connection.execute("SELECT schedule_id FROM schedules")]
        if committed and (workers := _ray_workers_running_a_job()):
            killed = workers[0]
            os.kill(killed, signal.SIGKILL)
    collecting.join(timeout=240)
    assert killed is not None, "no Ray worker was running a job after the first commit"
    assert not collecting.is_alive() and not errors, errors
    with Store(db) as store:
        assert store.done_candidates(BLUR) == set(range(4))  # the killed worker's candidate too
        assert {r[0] for r in store.execute("SELECT schedule_id FROM schedules")} >= set(committed)
        assert store.execute("SELECT kind, message FROM failures").fetchall() == []
        assert json.loads(store.execute("SELECT info FROM machines").fetchone()[0])["hostname"]
