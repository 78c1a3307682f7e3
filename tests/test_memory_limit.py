"""A per-worker memory limit: a candidate that needs more fails as ``out_of_memory``, for good; the others are
measured under the same limit, and nothing collected is lost."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import perfgraph.measure.builder as builder
import perfgraph.search.predict as search_predict
import perfgraph.search.tune as search_tune
from perfgraph.cli import build_parser, main
from perfgraph.data.stats import dataset_stats
from perfgraph.data.store import Store
from perfgraph.measure.builder import BuildError
from perfgraph.measure.collector import INPUT_SEED
from perfgraph.measure.executor import LocalExecutor
from perfgraph.measure.runner import run_job
from perfgraph.models.registry import load_model
from perfgraph.paths import MODELS_DIR
from perfgraph.search.predict import CandidatePredictions, predict_candidates
from perfgraph.search.tune import TuneResult, tune

from .conftest import FAST_TIMING, USER_PIPELINES, collect_tiny

# Well above a normal worker's peak address space here (0.3-0.8 GiB), well below the 0.3 GiB a worker
# holds before its run plus the 1.5 GiB that ``allocates_too_much_when_measured`` then asks for.
LIMIT_MB = 1536
HUNGRY = f"file:{USER_PIPELINES}:allocates_too_much_when_measured"
BLUR = f"file:{USER_PIPELINES}:blur"


@pytest.fixture(scope="module")
def limited_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """A store collected under ``LIMIT_MB``: one candidate of the hungry pipeline, one of the blur."""
    folder = tmp_path_factory.mktemp("memory")
    counter = folder / "builds"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PERFGRAPH_TEST_MEMORY_COUNTER", str(counter))
        collect_tiny(
            folder / "limited.db", [HUNGRY, BLUR], schedules=1, top_up=False, remeasure_fraction=0, memory_mb=LIMIT_MB
        ).close()
    yield folder / "limited.db", counter


@pytest.mark.slow
def test_a_candidate_that_allocates_past_the_limit_fails_out_of_memory_naming_it(limited_db):
    db, _ = limited_db
    with Store(db) as store:
        failures = store.execute("SELECT pipeline_uri, candidate_index, kind, phase, message FROM failures").fetchall()
    assert [f[:4] for f in failures] == [(HUNGRY, 0, "out_of_memory", "run")]
    message = failures[0][4]
    assert f"worker exceeded its memory limit of {LIMIT_MB} MiB in phase run" in message
    assert "Out of memory" in message  # Halide's own word for it


@pytest.mark.slow
def test_a_normal_candidate_is_measured_under_the_same_limit(limited_db):
    db, _ = limited_db
    with Store(db) as store:
        measured = store.execute(
            "SELECT p.uri FROM measurements m JOIN schedules s USING (schedule_id) JOIN pipelines p USING (pipeline_id)"
        ).fetchall()
    assert measured == [(BLUR,)]


@pytest.mark.slow
def test_an_out_of_memory_candidate_is_not_tried_again_and_nothing_collected_is_lost(limited_db, monkeypatch):
    db, counter = limited_db
    monkeypatch.setenv("PERFGRAPH_TEST_MEMORY_COUNTER", str(counter))
    with Store(db) as store:
        before = store.counts(), store.execute("SELECT * FROM failures").fetchall()
    with collect_tiny(db, [HUNGRY, BLUR], schedules=1, top_up=False, remeasure_fraction=0, memory_mb=LIMIT_MB) as store:
        after = store.counts(), store.execute("SELECT * FROM failures").fetchall()
        stats = dataset_stats(store)
    assert after == before
    assert stats.failures_by_kind == {"out_of_memory": 1}


@pytest.mark.slow
def test_a_limit_too_small_to_start_a_worker_is_out_of_memory_not_a_crash(tmp_path):
    job = {"kind": "analyze", "uri": BLUR, "input_seed": INPUT_SEED, "reference_path": str(tmp_path / "ref.npz")}
    result = run_job(job, {"start": 60, "autoschedule": 60, "reference": 60}, os.sched_getaffinity(0), memory_mb=200)
    assert (result.failure_kind, result.failure_phase) == ("out_of_memory", "start")
    assert "memory limit of 200 MiB" in result.failure_message


@pytest.mark.slow
def test_predict_caps_its_autoscheduler_workers_too_and_too_small_a_cap_is_a_build_error():
    with pytest.raises(BuildError, match=r"out_of_memory\).*memory limit of 200 MiB") as raised:
        predict_candidates(BLUR, load_model(MODELS_DIR / "ensemble.pt"), n=1, memory_mb=200)
    assert BLUR in str(raised.value)


@pytest.mark.slow
def test_every_worker_of_a_search_gets_the_limit(tmp_path, monkeypatch):
    """The analysis, every featurization and the benchmarks of ``predict`` and ``schedule``."""
    limits: list[tuple[str, int | None]] = []

    def recording(run: Callable) -> Callable:
        def run_recorded(*args, **kwargs):  # type: ignore[no-untyped-def]
            job = next(a for a in args if isinstance(a, dict))
            limits.append((job["kind"], kwargs.get("memory_mb")))
            return run(*args, **kwargs)

        return run_recorded

    monkeypatch.setattr(builder, "run_job", recording(builder.run_job))
    monkeypatch.setattr(LocalExecutor, "run", recording(LocalExecutor.run))
    model = load_model(MODELS_DIR / "ensemble.pt")
    predict_candidates(BLUR, model, n=2, memory_mb=LIMIT_MB)
    assert {kind for kind, _ in limits} == {"analyze", "featurize"}
    assert {limit for _, limit in limits} == {LIMIT_MB}
    limits.clear()
    with Store(tmp_path / "tuning.db") as store:
        result = tune(BLUR, model, store, n=2, k=1, timing=FAST_TIMING, memory_mb=LIMIT_MB)
    assert result.best is not None  # measured under the limit
    assert {"analyze", "featurize", "measure"} <= {kind for kind, _ in limits}
    assert {limit for _, limit in limits} == {LIMIT_MB}


def test_the_command_line_passes_the_limit_to_predict_and_schedule(tmp_path, monkeypatch):
    passed: dict[str, int | None] = {}

    def fake_predict(uri, model, **options):  # type: ignore[no-untyped-def]
        passed["predict"] = options["memory_mb"]
        return CandidatePredictions(uri, model.name, [], 0.0, 0.0, 0)

    def fake_tune(uri, model, store, **options):  # type: ignore[no-untyped-def]
        passed["schedule"] = options["memory_mb"]
        return TuneResult(uri, model.name, [], 0, 0.0, 0.0, 0.0, 0.0)

    monkeypatch.setattr(search_predict, "predict_candidates", fake_predict)
    monkeypatch.setattr(search_tune, "tune", fake_tune)
    pipeline = ["--pipeline", f"{USER_PIPELINES}:blur", "--memory-mb", "4096"]
    main(["predict", *pipeline])
    main(["schedule", *pipeline, "--db", str(tmp_path / "t.db"), "--out", str(tmp_path / "s.py")])
    assert passed == {"predict": 4096, "schedule": 4096}


WORKER_COMMANDS = (
    ["collect", "--random", "1"],
    ["predict", "--pipeline", "random:1"],
    ["schedule", "--pipeline", "random:1"],
)


@pytest.mark.parametrize("command", WORKER_COMMANDS, ids=lambda command: command[0])
def test_no_memory_limit_unless_asked(command):
    assert build_parser().parse_args(command).memory_mb is None
    assert build_parser().parse_args([*command, "--memory-mb", "4096"]).memory_mb == 4096


@pytest.mark.parametrize("command", WORKER_COMMANDS, ids=lambda command: command[0])
@pytest.mark.parametrize("value", ["100", "-1", "lots"])
def test_a_memory_limit_no_worker_can_start_under_is_refused_naming_the_option(command, value, tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        build_parser().parse_args([*command, "--memory-mb", value, "--db", str(tmp_path / "s.db")])
    assert stopped.value.code == 2
    error = capsys.readouterr().err
    assert "argument --memory-mb" in error and "Traceback" not in error, error
    assert "must be >= 512" in error or "expected an integer" in error
    assert not any(tmp_path.iterdir())


def test_an_output_buffer_past_the_limit_is_a_memory_error_not_a_crash():
    """Outputs are allocated by NumPy: ``hl.Buffer(type, extents)`` would not check its allocation (SIGSEGV)."""
    script = f"""
import resource
from perfgraph.measure.inputs import make_buffers
from perfgraph.workloads.base import build_pipeline
built = build_pipeline({f"file:{USER_PIPELINES}:big_output"!r})
resource.setrlimit(resource.RLIMIT_AS, ({LIMIT_MB} << 20, {LIMIT_MB} << 20))
try:
    make_buffers(built, {INPUT_SEED})
except MemoryError:
    print("MemoryError")
"""
    finished = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert finished.stdout.strip() == "MemoryError"
