"""Using the model: rank never-run candidates (builder only), search with it, re-apply the chosen schedule."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import perfgraph.measure.builder as builder
from perfgraph.data.store import Store
from perfgraph.measure.builder import analyse_stage_graph
from perfgraph.measure.collector import INPUT_SEED
from perfgraph.models.registry import load_model
from perfgraph.paths import MODELS_DIR, RETRAINED_WEIGHTS
from perfgraph.search.predict import predict_candidates
from perfgraph.search.tune import beam_seed, tune, write_schedule_file

from .conftest import FAST_TIMING, USER_PIPELINES

pytestmark = pytest.mark.slow

BLUR = f"file:{USER_PIPELINES}:blur"


@pytest.fixture(scope="module")
def gnn():
    return load_model(MODELS_DIR / "gnn.pt")


def test_predicting_a_pipeline_featurizes_candidates_and_compiles_nothing(gnn, monkeypatch):
    jobs: list[dict] = []
    real_run_job = builder.run_job

    def recording_run_job(job, *args, **kwargs):
        jobs.append(job)
        return real_run_job(job, *args, **kwargs)

    monkeypatch.setattr(builder, "run_job", recording_run_job)
    result = predict_candidates(BLUR, gnn, n=6, workers=2)

    # Only the builder ran: one analysis without a reference output (no compile, no run) and featurize jobs.
    assert {job["kind"] for job in jobs} == {"analyze", "featurize"}
    assert all(job["reference_path"] is None for job in jobs if job["kind"] == "analyze")
    assert 1 <= len(result.candidates) <= 6
    assert len({c.candidate.features_hash for c in result.candidates}) == len(result.candidates)
    predicted = [c.predicted_ms for c in result.candidates]
    assert predicted == sorted(predicted) and all(p > 0 for p in predicted)
    assert [c.rank for c in result.candidates] == list(range(1, len(predicted) + 1))
    for ranked in result.candidates:
        candidate = ranked.candidate
        assert candidate.featurization.shape == (candidate.graph.num_stages, 326)
        assert set(ranked.stage_costs_ms) == set(candidate.graph.stage_names)
        assert sum(ranked.stage_costs_ms.values()) == pytest.approx(ranked.predicted_ms, rel=1e-4)
        assert not candidate.config.random_weights


def test_the_cli_ranks_candidates_as_json(tmp_path):
    command = [sys.executable, "-m", "perfgraph.cli", "predict", "--pipeline", f"{USER_PIPELINES}:blur"]
    finished = subprocess.run(
        [*command, "--candidates", "3", "--json", "--out", str(tmp_path / "sources")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert finished.returncode == 0, finished.stderr
    result = json.loads(finished.stdout)
    assert result["pipeline"] == f"file:{USER_PIPELINES.resolve()}:blur"
    assert result["candidates"][0]["rank"] == 1 and result["model"] == "ensemble"  # the default model
    assert {"predicted_ms", "config", "stage_costs_ms", "schedule_source"} <= set(result["candidates"][0])
    assert all(candidate["sd_log"] > 0 for candidate in result["candidates"])
    assert len(list((tmp_path / "sources").glob("rank-*.schedule.h"))) == len(result["candidates"])


@pytest.fixture(scope="module")
def tuned(tmp_path_factory, gnn):
    db = tmp_path_factory.mktemp("tune") / "tuning.db"
    store = Store(db)
    result = tune(BLUR, gnn, store, n=6, k=2, rounds=1, workers=2, update=False, timing=FAST_TIMING)
    return result, store, db


def test_a_search_benchmarks_the_predicted_best_and_stores_them(tuned):
    result, store, _ = tuned
    assert len(result.measured) == 2
    assert [m.ranked.rank for m in result.measured] == [1, 2]
    assert result.best is not None and result.best.measured_ms > 0
    measured = {round(s.runtime_ms, 9) for s in store.samples()}
    assert round(result.best.measured_ms, 9) in measured  # every benchmark is in the store


def test_the_chosen_schedule_re_applies_to_a_fresh_pipeline_and_matches_the_reference(tuned, tmp_path):
    result, _, db = tuned
    schedule_file = write_schedule_file(result, tmp_path / "schedule.py")
    (reference,) = Path(str(db) + ".refs").glob("*.npz")
    check = f"""
import importlib.util, numpy as np
from perfgraph.measure.inputs import make_buffers
from perfgraph.measure.worker import _compile, _matches, _outputs_as_numpy, _run
from perfgraph.schedules.autoscheduler import benchmark_target
from perfgraph.workloads.base import build_pipeline
spec = importlib.util.spec_from_file_location("chosen", {str(schedule_file)!r})
chosen = importlib.util.module_from_spec(spec); spec.loader.exec_module(chosen)
built = build_pipeline(chosen.PIPELINE)
chosen.apply_schedule(built.pipeline)
callable_, names = _compile(built, benchmark_target())
buffers = make_buffers(built, {INPUT_SEED})
_run(callable_, names, buffers)
reference = np.load({str(reference)!r})
print([_matches(out, reference[f"arr_{{i}}"]) for i, out in enumerate(_outputs_as_numpy(buffers))])
"""
    finished = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    assert finished.stdout.strip() == "[None]"


def test_update_lowers_the_error_on_the_newly_measured_candidates(tuned):
    result, _, _ = tuned
    model = load_model(MODELS_DIR / "gnn.pt")
    samples = [
        replace(m.ranked.candidate.to_sample(schedule_id=i), runtime_ms=m.measured_ms)
        for i, m in enumerate(result.measured)
        if m.measured_ms is not None
    ]
    measured = np.array([s.runtime_ms for s in samples])

    def log_error() -> float:
        return float(np.sqrt(np.mean(np.log(model.predict(samples) / measured) ** 2)))

    before = log_error()
    model.update(samples)
    assert log_error() < before


def test_each_round_updates_the_model_on_that_rounds_measurements_only(tmp_path, monkeypatch):
    """Earlier rounds' samples are already in the model's replay buffer: passing them again as new would
    weigh them twice and put copies in the buffer."""
    model = load_model(MODELS_DIR / "gnn.pt")
    updates: list[list[float]] = []
    real_update = model.update

    def recording_update(samples):
        updates.append([s.runtime_ms for s in samples])
        return real_update(samples)

    monkeypatch.setattr(model, "update", recording_update)
    seen_before = model.replay_.seen
    with Store(tmp_path / "tuning.db") as store:
        result = tune(BLUR, model, store, n=2, k=1, rounds=3, workers=2, timing=FAST_TIMING)
    per_round = [[m.measured_ms for m in result.measured if m.round == r and m.measured_ms] for r in (1, 2, 3)]
    assert updates == per_round[:2]  # after rounds 1 and 2, not after the last
    assert model.replay_.seen - seen_before == len(per_round[0]) + len(per_round[1])  # each sample added once


def test_a_beam_seed_is_benchmarked_whatever_its_rank_and_marked(gnn, tmp_path):
    graph = analyse_stage_graph(BLUR)
    store = Store(tmp_path / "tuning.db")
    seed = beam_seed(graph)
    result = tune(BLUR, gnn, store, n=3, k=1, workers=2, update=False, timing=FAST_TIMING, seeds=[seed], graph=graph)
    seeded = [m for m in result.measured if m.seed]
    assert len(seeded) == 1 and seeded[0].ranked.candidate.config == seed
    assert seeded[0].measured_ms is not None  # Adams2019's own schedule, measured by the same runner
    assert any(m.ranked.rank == 1 for m in result.measured)  # beside the model's top k
    assert result.best.measured_ms <= seeded[0].measured_ms  # so the search is never worse than the beam
    assert "(seed)" in result.to_table()


def test_a_missing_beam_seed_weights_file_is_a_clear_error(tmp_path, capsys):
    from perfgraph.cli import main

    missing = tmp_path / "nope.weights"
    code = main(["schedule", "--pipeline", BLUR.removeprefix("file:"), "--beam-seed", str(missing)])
    assert code == 2
    assert f"--beam-seed {missing}: no such .weights file" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "weights"),
    [([], str(RETRAINED_WEIGHTS.resolve())), (["--beam-seed"], None), (["--beam-seed", "none"], "no seed")],
    ids=["default: retrained", "flag alone: shipped", "none"],
)
def test_schedule_seeds_with_the_retrained_beam_search_unless_told_not(flags, weights, tmp_path, monkeypatch):
    import perfgraph.search.tune as search_tune
    from perfgraph.cli import main
    from perfgraph.search.tune import TuneResult

    seen: list = []

    def fake_tune(uri, model, store, **options):  # type: ignore[no-untyped-def]
        seen.extend(options["seeds"])
        return TuneResult(uri, model.name, [], 0, 0.0, 0.0, 0.0, 0.0)

    monkeypatch.setattr(search_tune, "tune", fake_tune)
    main(["schedule", "--pipeline", BLUR.removeprefix("file:"), "--db", str(tmp_path / "t.db"), *flags])
    if weights == "no seed":
        assert seen == []
    else:
        assert seen == [beam_seed(analyse_stage_graph(BLUR), weights)]  # Adams2019's beam search, as collect runs it
