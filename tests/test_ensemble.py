"""The deep ensemble: a prediction with a calibrated uncertainty, saved and loaded like any model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from perfgraph.evaluate.metrics import interval_coverage
from perfgraph.evaluate.run import evaluate_models
from perfgraph.models.base import NotFittedError, predict_with_uncertainty
from perfgraph.models.ensemble import EnsembleCostModel, pool_ensembles, variance_scale
from perfgraph.models.gnn import GNNCostModel
from perfgraph.models.registry import load_model
from perfgraph.search.predict import rank_candidates, sample_candidates

from .conftest import USER_PIPELINES, torch_threads

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = {"hidden": 16, "layers": 1, "epochs": 15, "patience": 1000, "lr": 1e-2, "device": "cpu", "progress": False}


@pytest.fixture(scope="module")
def parts(real_samples):
    """Two pipelines to train on, the third to validate on (the ensemble fits its sd scale there)."""
    names = sorted({s.pipeline_name for s in real_samples})
    train = [s for s in real_samples if s.pipeline_name != names[-1]]
    valid = [s for s in real_samples if s.pipeline_name == names[-1]]
    return train, valid


@pytest.fixture(scope="module")
def ensemble(parts):
    with torch_threads(1):
        return EnsembleCostModel(size=3, seed=4, **TINY).fit(*parts)


def test_members_differ_by_seed_and_the_prediction_is_their_geometric_mean(ensemble, real_samples):
    assert [member.seed for member in ensemble.members_] == [4, 5, 6]
    member_logs = np.stack([np.log(member.predict(real_samples)) for member in ensemble.members_])
    predicted, sd = ensemble.predict(real_samples, return_std=True)
    np.testing.assert_allclose(predicted, np.exp(member_logs.mean(axis=0)), rtol=1e-9)
    np.testing.assert_allclose(sd, member_logs.std(axis=0, ddof=1) * ensemble.sigma_scale_, rtol=1e-9)
    assert predicted.shape == sd.shape == (len(real_samples),)
    assert np.all(sd > 0), "members trained from different seeds never agree exactly"
    np.testing.assert_array_equal(ensemble.predict(real_samples), predicted)


def test_the_sd_scale_is_fitted_on_validation_so_errors_there_have_unit_variance(ensemble, parts):
    _, valid = parts
    mean, raw_sd = ensemble.predict_log(valid)
    truth = np.log([s.runtime_ms for s in valid])
    # fit scored validation graphs, this scores the samples (the search path): equal to float32 precision
    assert ensemble.sigma_scale_ == pytest.approx(variance_scale(mean, raw_sd, truth), rel=1e-4)
    z = (truth - mean) / (raw_sd * ensemble.sigma_scale_)
    assert float(np.mean(z**2)) == pytest.approx(1.0, rel=1e-4)


def test_save_then_load_gives_identical_predictions_and_uncertainties(ensemble, real_samples, tmp_path):
    path = tmp_path / "ensemble.pt"
    ensemble.machine_kinds = ("kind-a",)
    ensemble.save(path)
    loaded = load_model(path)
    assert isinstance(loaded, EnsembleCostModel) and loaded.machine_kinds == ("kind-a",)
    assert loaded.get_params() == ensemble.get_params()
    mine, theirs = ensemble.predict(real_samples, return_std=True), loaded.predict(real_samples, return_std=True)
    for a, b in zip(mine, theirs, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_every_model_answers_predict_with_uncertainty(ensemble, real_samples):
    single = GNNCostModel(**TINY).fit(real_samples[:10], [])
    predicted, sd = predict_with_uncertainty(single, real_samples)
    assert sd is None and predicted.shape == (len(real_samples),)
    predicted, sd = predict_with_uncertainty(ensemble, real_samples)
    assert sd is not None and sd.shape == predicted.shape


def test_evaluation_reports_the_calibration_of_the_uncertainty(ensemble, real_samples):
    report, _ = evaluate_models({"ensemble": ensemble}, real_samples, None, reference=None, n_boot=10)
    calibration = report.calibration["ensemble"]
    predicted, sd = ensemble.predict(real_samples, return_std=True)
    measured = np.log([s.runtime_ms for s in real_samples])
    expected = interval_coverage(np.log(predicted), sd, measured)
    assert calibration["within_1sd"] == expected["within_1sd"] <= calibration["within_2sd"] == expected["within_2sd"]
    assert calibration["median_sd_log"] == pytest.approx(float(np.median(sd)), abs=1e-4)
    assert "ensemble uncertainty:" in report.to_table() and "within ±2 sd" in report.to_markdown()
    assert report.to_json_dict()["calibration"]["ensemble"]["within_1sd"] == calibration["within_1sd"]


@pytest.mark.slow
def test_ranked_candidates_carry_the_uncertainty(ensemble):
    candidates, *_ = sample_candidates(f"file:{USER_PIPELINES}:blur", 3, workers=2)
    ranked = rank_candidates(ensemble, candidates)
    assert ranked and all(r.sd_log is not None and r.sd_log > 0 for r in ranked)
    assert all(r.to_json()["sd_log"] == r.sd_log for r in ranked)
    from perfgraph.search.predict import CandidatePredictions

    table = CandidatePredictions("blur", "ensemble", ranked, 0.0, 0.0, len(candidates)).to_table()
    assert "×/÷ sd" in table
    assert f"{math.exp(ranked[0].sd_log):.2f}" in table.splitlines()[2]


def test_an_ensemble_is_refused_before_fit_and_with_bad_arguments():
    with pytest.raises(NotFittedError, match="EnsembleCostModel.predict"):
        EnsembleCostModel(**TINY).predict([])
    with pytest.raises(ValueError, match="size must be at least 2"):
        EnsembleCostModel(size=1)
    with pytest.raises(ValueError, match="member must be one of"):
        EnsembleCostModel(member="xgboost")
    with pytest.raises(ValueError, match="hidden"):
        EnsembleCostModel(hidden=0)


def test_a_pooled_ensemble_keeps_each_members_configuration_through_save_and_load(
    ensemble, parts, tmp_path, monkeypatch
):
    train, valid = parts
    with torch_threads(1):
        no_graph = GNNCostModel(**{**TINY, "layers": 0, "seed": 9}).fit(train, valid)
    no_graph.machine_kinds = ("kind-a",)
    monkeypatch.setattr(ensemble, "machine_kinds", ("kind-a",))
    pooled = pool_ensembles([ensemble, no_graph])
    assert all(mine is not theirs for mine, theirs in zip(pooled.members_, [*ensemble.members_, no_graph], strict=True))
    assert pooled.size == 4 and [(m.layers, m.seed) for m in pooled.members_] == [(1, 4), (1, 5), (1, 6), (0, 9)]
    logs = np.stack([np.log(m.predict(valid)) for m in [*ensemble.members_, no_graph]])
    np.testing.assert_allclose(pooled.predict(valid), np.exp(logs.mean(axis=0)), rtol=1e-9)
    pooled.calibrate_uncertainty(valid)
    truth = np.log([s.runtime_ms for s in valid])
    assert pooled.sigma_scale_ == pytest.approx(variance_scale(logs.mean(axis=0), logs.std(axis=0, ddof=1), truth))
    path = tmp_path / "pooled.pt"
    pooled.save(path)
    loaded = load_model(path)
    assert loaded.get_params() == pooled.get_params() and loaded.machine_kinds == ("kind-a",)
    assert [(m.layers, m.seed) for m in loaded.members_] == [(1, 4), (1, 5), (1, 6), (0, 9)]
    for a, b in zip(pooled.predict(valid, return_std=True), loaded.predict(valid, return_std=True), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    refit = EnsembleCostModel(**loaded.get_params())  # fit() would train the same mix of configurations
    assert [(m.layers, m.seed) for m in refit.members_] == [(1, 4), (1, 5), (1, 6), (0, 9)]


def test_pooling_refuses_models_that_do_not_pool(ensemble, real_samples, monkeypatch):
    from perfgraph.models.xgboost_model import PackSumXGBoost

    with pytest.raises(ValueError, match="model 1 is 'xgboost'; only ensembles"):
        pool_ensembles([ensemble, PackSumXGBoost()])
    with pytest.raises(NotFittedError, match="model 1 .* is neither fitted nor loaded"):
        pool_ensembles([ensemble, EnsembleCostModel(**TINY)])
    with pytest.raises(ValueError, match="members 0 and 3 have the same hyper-parameters and seed"):
        pool_ensembles([ensemble, ensemble])
    other = GNNCostModel(**TINY).fit(real_samples[:10], [])
    other.machine_kinds = ("kind-b",)
    monkeypatch.setattr(ensemble, "machine_kinds", ("kind-a",))
    with pytest.raises(ValueError, match="different machine kinds: kind-a, kind-b"):
        pool_ensembles([ensemble, other])
    with pytest.raises(ValueError, match="member_configs must be one dict per member"):
        EnsembleCostModel(size=2, member_configs=[{"layers": 0}])


def test_a_mixed_ensemble_reads_machines_only_when_every_member_does():
    from perfgraph.models.base import reads_machines

    aware = [{"machine_features": True}, {"machine_features": True, "layers": 0}]
    assert reads_machines(EnsembleCostModel(size=2, member_configs=aware))
    assert not reads_machines(EnsembleCostModel(size=2, member_configs=[aware[0], {"layers": 0}]))
    assert EnsembleCostModel(size=2, member_configs=aware).get_params().get("machine_features") is None


def test_the_cli_trains_an_ensemble_and_evaluate_reports_its_calibration(tiny_db, tmp_path, capsys):
    from perfgraph.cli import main

    out = tmp_path / "ensemble.pt"
    argv = ["train", "--db", str(tiny_db), "--model", "ensemble", "--size", "2", "--epochs", "2"]
    assert main([*argv, "--schedule-edges", "--out", str(out)]) == 0
    model = load_model(out)
    assert isinstance(model, EnsembleCostModel) and model.size == 2
    assert all(member.schedule_edges and member.epochs == 2 for member in model.members_)
    capsys.readouterr()
    assert main(["evaluate", "--db", str(tiny_db), "--models", str(out)]) == 0
    assert "ensemble uncertainty:" in capsys.readouterr().out

    no_graph, pooled = tmp_path / "no_graph.pt", tmp_path / "pooled.pt"
    assert (
        main(
            ["train", "--db", str(tiny_db), "--model", "gnn", "--layers", "0", "--epochs", "2", "--out", str(no_graph)]
        )
        == 0
    )
    assert main(["pool", str(out), str(no_graph), "--db", str(tiny_db), "--out", str(pooled)]) == 0
    model = load_model(pooled)
    assert model.size == 3 and [m.layers for m in model.members_] == [3, 3, 0] and model.sigma_scale_ > 0
    assert json.loads(Path(f"{pooled}.log.json").read_text())["pooled_from"] == [str(out), str(no_graph)]
    capsys.readouterr()
    assert main(["pool", str(out), "--out", str(tmp_path / "one.pt")]) != 0
    assert "pool: give two or more checkpoints" in capsys.readouterr().err
    log = json.loads(Path(f"{no_graph}.log.json").read_text())  # as if trained on another split
    log["split"]["train"].append(log["split"]["valid"][0])
    Path(f"{no_graph}.log.json").write_text(json.dumps(log))
    assert main(["pool", str(out), str(no_graph), "--db", str(tiny_db), "--out", str(tmp_path / "leak.pt")]) != 0
    assert "was trained on 1 of the validation pipelines" in capsys.readouterr().err
    assert not (tmp_path / "leak.pt").exists()


def test_adapting_sets_every_members_epochs_and_replays_nothing_of_the_old_machine(ensemble, parts):
    import copy

    from perfgraph.models.adapt import adapt

    _, new_machine = parts
    adapted = adapt(copy.deepcopy(ensemble), new_machine[:6], epochs=2)
    for before, after in zip(ensemble.members_, adapted.members_, strict=True):
        assert after.update_epochs == 2 and before.update_epochs != 2
        assert len(before.replay_) > 0
        # Only the new machine's samples are in the buffer: the old machine's were dropped before updating.
        assert after.replay_.seen == 6 and len(after.replay_) == 6
    assert [entry.get("phase") for entry in adapted.members_[0].log_[-2:]] == ["update", "update"]
