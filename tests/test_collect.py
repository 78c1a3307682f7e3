"""Collection end to end: real compiles and measurements, failures recorded, resume after kill -9."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from perfgraph.cli import build_parser
from perfgraph.data.store import Store
from perfgraph.measure.collector import INPUT_SEED, CollectOptions, top_up_count
from perfgraph.measure.host import MachineInfo
from perfgraph.measure.runner import JobResult, Timeouts, run_job
from perfgraph.schedules.autoscheduler import AutoschedulerConfig

from .conftest import FAST_TIMING, TINY_SCHEDULES, TINY_WORKLOADS, USER_PIPELINES, collect_tiny

pytestmark = pytest.mark.slow


def test_every_candidate_ends_measured_duplicate_or_failed(tiny_db):
    with Store(tiny_db) as store:
        for uri in TINY_WORKLOADS:
            done = store.done_candidates(uri)
            assert done == set(range(len(done)))
            assert TINY_SCHEDULES <= len(done) <= 3 * TINY_SCHEDULES


def test_duplicates_are_topped_up_until_k_schedules_or_saturation(tiny_db):
    options = CollectOptions()
    with Store(tiny_db) as store:
        for uri in TINY_WORKLOADS:
            pipeline = store.pipeline_by_uri(uri)
            new = store.candidate_outcomes(pipeline.pipeline_id, len(store.done_candidates(uri)))
            saturated = not any(new[-options.saturation_window :])
            assert sum(new) == TINY_SCHEDULES or saturated or len(new) == 3 * TINY_SCHEDULES, (uri, new)
            assert sum(new) <= TINY_SCHEDULES


@pytest.mark.parametrize(
    ("new", "expected"),
    [
        ([True] * 8, 0),  # enough
        ([True] * 5 + [False] * 3, 3),  # three short: one more round of three
        ([True] * 2 + [False] * 6, 0),  # saturated: the last 4 found nothing new
        ([True, False] * 6, 0),  # 12 tried: the cap
        ([True, False] * 5, 2),  # 10 tried, 5 short: capped at 12
    ],
)
def test_top_up_count(new, expected):
    assert top_up_count(new, wanted=8, max_candidates=12, saturation_window=4) == expected


def test_measurements_keep_every_repeat_and_their_summary(tiny_db):
    with Store(tiny_db) as store:
        rows = store.execute("SELECT runtime_ms, median_ms, cv, repeats_ms FROM measurements").fetchall()
    assert rows
    for runtime_ms, median_ms, cv, repeats in rows:
        repeats = json.loads(repeats)
        assert len(repeats) >= 3
        assert runtime_ms == min(repeats)
        assert median_ms == pytest.approx(float(np.median(repeats)))
        assert cv >= 0


def test_machine_and_target_are_recorded(tiny_db):
    with Store(tiny_db) as store:
        (info,) = [json.loads(r[0]) for r in store.execute("SELECT info FROM machines")]
    assert info["halide_version"].startswith("21.")
    assert info["target"].startswith("x86-64-linux")
    assert "avx512" not in info["target"]  # Halide's own training loop leaves AVX-512 out (any CPU: see below)


def test_schedules_with_equal_features_are_measured_once(tiny_db):
    with Store(tiny_db) as store:
        rows = store.execute("SELECT pipeline_id, features_hash FROM schedules WHERE duplicate_of IS NULL").fetchall()
        duplicates = store.execute(
            "SELECT d.features_hash, o.features_hash FROM schedules d JOIN schedules o "
            "ON d.duplicate_of = o.schedule_id"
        ).fetchall()
    assert len(rows) == len(set(rows))
    assert all(a == b for a, b in duplicates)


def test_samples_carry_one_feature_row_per_graph_node(real_samples):
    for sample in real_samples:
        assert sample.features.shape[0] == len(sample.stage_names)
        assert sample.runtime_ms > 0


def test_a_crashing_candidate_is_recorded_and_the_run_goes_on(tmp_path, monkeypatch):
    monkeypatch.setenv("PERFGRAPH_TEST_CRASH_COUNTER", str(tmp_path / "builds"))
    uri = f"file:{USER_PIPELINES}:crashes_when_measured"
    with collect_tiny(tmp_path / "crash.db", [uri], schedules=2, top_up=False) as store:
        failures = store.execute("SELECT candidate_index, kind, message FROM failures").fetchall()
    assert sorted(f[0] for f in failures) == [0, 1]
    assert {f[1] for f in failures} == {"crash"}
    assert all("SIGSEGV" in f[2] for f in failures)


def test_a_candidate_that_cannot_finish_is_a_timeout(tmp_path, monkeypatch):
    monkeypatch.setenv("PERFGRAPH_TEST_HANG_COUNTER", str(tmp_path / "builds"))
    uri = f"file:{USER_PIPELINES}:hangs_when_measured"
    with collect_tiny(tmp_path / "hang.db", [uri], schedules=1, timeouts=Timeouts(run_s=2.0), top_up=False) as store:
        failures = store.execute("SELECT kind, phase FROM failures WHERE candidate_index >= 0").fetchall()
    assert failures == [("timeout", "run")]


def test_an_output_that_differs_from_the_reference_is_a_failure(tmp_path):
    uri = f"file:{USER_PIPELINES}:blur"
    db = tmp_path / "wrong.db"
    collect_tiny(db, [uri], schedules=1, top_up=False).close()
    (reference,) = Path(str(db) + ".refs").glob("*.npz")
    np.savez_compressed(reference, np.load(reference)["arr_0"] + 1.0)  # corrupt the reference output
    with collect_tiny(db, [uri], schedules=2, top_up=False) as store:
        failures = store.execute("SELECT candidate_index, kind FROM failures").fetchall()
    assert failures == [(1, "wrong_output")]


def test_resume_after_kill_9_loses_nothing_committed(tmp_path):
    db = tmp_path / "killed.db"
    command = [
        sys.executable,
        "-m",
        "perfgraph.cli",
        "collect",
        "--db",
        str(db),
        "--pipeline",
        f"{USER_PIPELINES}:blur",
        "--schedules",
        "6",
        "--max-beam",
        "2",
        "--remeasure-fraction",
        "0",
        "--no-top-up",
        "--json",
    ]
    process = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    measured_before: list[int] = []
    while time.monotonic() < deadline and not measured_before:
        time.sleep(0.5)
        if db.exists():
            try:
                with sqlite3.connect(db) as connection:
                    measured_before = [r[0] for r in connection.execute("SELECT schedule_id FROM measurements")]
            except sqlite3.OperationalError:
                pass
    os.killpg(process.pid, signal.SIGKILL)  # the collector and its workers, mid-flight
    process.wait()
    assert measured_before, "nothing was measured before the deadline"

    with sqlite3.connect(db) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finished = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr
    with Store(db) as store:
        assert store.done_candidates(f"file:{USER_PIPELINES}:blur") == set(range(6))
        after = {r[0] for r in store.execute("SELECT schedule_id FROM measurements")}
    assert set(measured_before) <= after


def test_sigint_finishes_the_jobs_in_flight_records_no_false_failure_and_exits_130(tmp_path):
    db = tmp_path / "stopped.db"
    command = [sys.executable, "-m", "perfgraph.cli", "collect", "--db", str(db)]
    command += ["--pipeline", f"{USER_PIPELINES}:blur", "--schedules", "12", "--max-beam", "2", "--json"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.5)
        if not db.exists():
            continue
        with contextlib.suppress(sqlite3.OperationalError), sqlite3.connect(db) as connection:
            if connection.execute("SELECT COUNT(*) FROM measurements").fetchone()[0]:
                break
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=240)
    assert process.returncode == 130, stderr  # a partial collection is not a finished one
    assert json.loads(stdout)["stopped"] is True
    assert "run the same command again to resume" in stderr
    with Store(db) as store:
        assert store.execute("SELECT COUNT(*) FROM failures").fetchone()[0] == 0
        assert 1 <= len(store.done_candidates(f"file:{USER_PIPELINES}:blur")) < 12


def _children(pid: int) -> list[int]:
    """The pids of a process's direct children (the collector's workers)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                children.append(int(stat.parent.name))
    return children


def test_a_second_sigint_kills_the_jobs_in_flight_at_once(tmp_path):
    db = tmp_path / "aborted.db"
    command = [sys.executable, "-m", "perfgraph.cli", "collect", "--db", str(db), "--json"]
    command += ["--pipeline", f"{USER_PIPELINES}:hangs_when_measured", "--schedules", "2", "--max-beam", "2"]
    env = {**os.environ, "PERFGRAPH_TEST_HANG_COUNTER": str(tmp_path / "builds")}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:  # until its candidates are in flight
        time.sleep(0.5)
        with contextlib.suppress(sqlite3.OperationalError), sqlite3.connect(db) as connection:
            if connection.execute("SELECT COUNT(*) FROM pipelines").fetchone()[0]:
                break
    time.sleep(2.0)
    workers = _children(process.pid)
    assert workers, "no candidate was in flight"
    process.send_signal(signal.SIGINT)  # stop: each candidate would run for 2 minutes, to its time limit
    time.sleep(1.0)
    aborted_at = time.monotonic()
    process.send_signal(signal.SIGINT)  # abort
    _, stderr = process.communicate(timeout=60)
    assert time.monotonic() - aborted_at < 20, "the abort waited for the jobs in flight"
    assert process.returncode == 130, stderr
    for pid in workers:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    with Store(db) as store:  # a killed candidate is no failure: it runs again on resume
        assert store.execute("SELECT COUNT(*) FROM failures").fetchone()[0] == 0
        assert store.pipeline_by_uri(f"file:{USER_PIPELINES}:hangs_when_measured") is not None


def test_a_second_collector_on_the_same_store_is_refused(tmp_path):
    db = tmp_path / "shared.db"
    command = [sys.executable, "-m", "perfgraph.cli", "collect", "--db", str(db)]
    command += ["--pipeline", f"{USER_PIPELINES}:blur"]
    first = subprocess.Popen([*command, "--schedules", "8", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and first.poll() is None:  # until the first has analysed the pipeline
        time.sleep(0.5)
        with contextlib.suppress(sqlite3.OperationalError), sqlite3.connect(db) as connection:
            if connection.execute("SELECT COUNT(*) FROM pipelines").fetchone()[0]:
                break
    assert first.poll() is None, "the first collector finished before the second started"
    second = subprocess.run([*command, "--schedules", "2"], capture_output=True, text=True, timeout=240)
    first.send_signal(signal.SIGINT)
    first.communicate(timeout=240)
    assert second.returncode == 2
    assert f"{db}: another collector (pid {first.pid})" in second.stderr
    assert first.returncode in (0, 130)  # 130: stopped early by the SIGINT
    with Store(db) as store:
        assert store.execute("SELECT COUNT(*) FROM failures").fetchone()[0] == 0


def _measure_in_worker(
    db: Path, lock_path: Path, on_phase: Callable[[str], None] | None = None, compile_on_idle: bool = True
) -> JobResult:
    """One measure job for the blur pipeline of ``db`` (already analysed), run like the collector does."""
    (reference,) = Path(str(db) + ".refs").glob("*.npz")
    job = {
        "kind": "measure",
        "uri": f"file:{USER_PIPELINES}:blur",
        "config": AutoschedulerConfig(random_dropout_seed=7).to_json(),
        "input_seed": INPUT_SEED,
        "reference_path": str(reference),
        "lock_path": str(lock_path),
        "benchmark_cpus": [max(os.sched_getaffinity(0))],
        "compile_on_idle_benchmark_cpus": compile_on_idle,
        "timing": vars(FAST_TIMING),
    }

    def on_event(event: dict) -> str | None:
        if event["event"] == "phase" and on_phase is not None:
            on_phase(event["phase"])
        return '{"go": true}' if event["event"] == "scheduled" else None

    return run_job(job, {"start": 120, "compile": 120, "run": 120}, set(os.sched_getaffinity(0)), on_event=on_event)


@pytest.fixture(scope="module")
def analysed_blur_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("blur") / "blur.db"
    collect_tiny(db, [f"file:{USER_PIPELINES}:blur"], schedules=1, top_up=False, remeasure_fraction=0).close()
    return db


def test_a_candidate_compiles_on_the_benchmark_cores_when_nobody_holds_them(analysed_blur_db, tmp_path):
    phases: list[str] = []
    result = _measure_in_worker(analysed_blur_db, tmp_path / "free.lock", phases.append)
    assert result.ok, result.failure_message
    assert phases == ["autoschedule", "compile", "run"]
    assert result.events["measured"]["compiled_on_benchmark_cpus"] is True


def test_without_the_option_a_candidate_compiles_on_the_compile_cores_even_when_the_benchmark_cores_are_free(
    analysed_blur_db, tmp_path
):
    phases: list[str] = []
    result = _measure_in_worker(analysed_blur_db, tmp_path / "free.lock", phases.append, compile_on_idle=False)
    assert result.ok, result.failure_message
    assert phases == ["autoschedule", "compile", "wait", "run"]
    assert result.events["measured"]["compiled_on_benchmark_cpus"] is False


@pytest.mark.parametrize(
    ("flags", "expected"),
    [([], True), (["--compile-on-idle-benchmark-cpus"], True), (["--no-compile-on-idle-benchmark-cpus"], False)],
)
def test_collect_compiles_on_idle_benchmark_cpus_unless_told_not_to(flags, expected):
    args = build_parser().parse_args(["collect", "--random", "1", *flags])
    assert args.compile_on_idle_benchmark_cpus is expected


def test_no_candidate_runs_while_another_holds_the_benchmark_cores(analysed_blur_db, tmp_path):
    lock_path = tmp_path / "held.lock"
    phases: list[tuple[str, float]] = []
    waiting = threading.Event()

    def on_phase(phase: str) -> None:
        phases.append((phase, time.monotonic()))
        if phase == "wait":
            waiting.set()

    results: list[JobResult] = []

    def measure() -> None:
        results.append(_measure_in_worker(analysed_blur_db, lock_path, on_phase))

    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another candidate is being benchmarked
        worker = threading.Thread(target=measure)
        worker.start()
        assert waiting.wait(timeout=240), f"the worker never waited for the lock; phases {phases}"
        time.sleep(1.0)
        released_at = time.monotonic()
    worker.join(timeout=240)
    (result,) = results
    assert result.ok, result.failure_message
    assert [phase for phase, _ in phases] == ["autoschedule", "compile", "wait", "run"]
    assert dict(phases)["run"] >= released_at
    assert result.events["measured"]["compiled_on_benchmark_cpus"] is False


def test_a_new_machine_kind_measures_the_stored_schedules_and_rebuilds_missing_references(tmp_path):
    """A store from another CPU (here: its machine record renamed) on a fresh machine (no references)."""
    import shutil

    uri = f"file:{USER_PIPELINES}:blur"
    db = tmp_path / "other.db"
    collect_tiny(db, [uri], schedules=4, top_up=False, remeasure_fraction=0.0).close()
    with Store(db) as store:
        (machine_id, info), *_ = store.execute("SELECT machine_id, info FROM machines").fetchall()
        other = {**json.loads(info), "cpu_model": "Some Other CPU"}
        store.execute(
            "UPDATE machines SET info = ?, fingerprint = 'other' WHERE machine_id = ?", (json.dumps(other), machine_id)
        )
        deterministic = {
            sid
            for sid, config in store.execute("SELECT schedule_id, config FROM schedules WHERE duplicate_of IS NULL")
            if not json.loads(config)["random_weights"]
        }
        schedules_before = store.counts()["schedules"]
    shutil.rmtree(str(db) + ".refs")  # a store rebuilt from shards has no reference outputs
    with collect_tiny(db, [uri], schedules=4, top_up=False, remeasure_fraction=0.0) as store:
        kinds = store.samples_by_machine_kind()
        here = next(kind for kind in kinds if kind != MachineInfo.from_json(other).kind)
        measured_here = {s.schedule_id for s in store.samples(machine=here)}
        failures = store.execute("SELECT kind, message FROM failures").fetchall()
        assert store.counts()["schedules"] == schedules_before  # the same schedules, measured again
    assert failures == []
    assert measured_here == deterministic and deterministic
    assert list(Path(str(db) + ".refs").glob("*.npz"))  # rebuilt on demand by the first candidate
