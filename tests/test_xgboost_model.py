"""Specification of the XGBoost baselines: Ansor's pack-sum model and the summed-feature model."""

from __future__ import annotations

import numpy as np
import pytest

from perfgraph.data.records import Sample
from perfgraph.models.checkpoint import CheckpointError
from perfgraph.models.xgboost_model import (
    PackSumXGBoost,
    SummedFeatureXGBoost,
    normalized_throughput,
    pack_sum_square_error,
)

from .synthetic import synthetic_samples


def make_samples(num_pipelines: int = 2, num_schedules: int = 8, seed: int = 0) -> list[Sample]:
    return synthetic_samples(num_pipelines, num_schedules, num_stages=None, seed=seed)


MODELS = {
    "packsum-throughput": lambda: PackSumXGBoost(target="throughput", nthread=1),
    "packsum-log-runtime": lambda: PackSumXGBoost(target="log_runtime", nthread=1),
    "summed": lambda: SummedFeatureXGBoost(nthread=1),
}


def half_loss(row_predictions, labels, weights, pack_ids):
    """Ansor's pack-sum objective: sum over packs of w/2 (sum of the pack's rows - y)^2, w and y per pack."""
    total = 0.0
    for pack in np.unique(pack_ids):
        rows = pack_ids == pack
        total += weights[rows][0] / 2 * (row_predictions[rows].sum() - labels[rows][0]) ** 2
    return total


def test_pack_sum_gradient_matches_finite_differences():
    pack_ids = np.array([0, 0, 0, 1, 1])
    labels = np.array([1.0, 1.0, 1.0, 0.25, 0.25])
    weights = np.array([1.0, 1.0, 1.0, 0.25, 0.25])
    predictions = np.array([0.1, 0.5, 0.2, -0.3, 0.4])
    gradient, _ = pack_sum_square_error(predictions, labels, weights, pack_ids)
    step = 1e-6
    for row in range(len(predictions)):
        up, down = predictions.copy(), predictions.copy()
        up[row] += step
        down[row] -= step
        numeric = (half_loss(up, labels, weights, pack_ids) - half_loss(down, labels, weights, pack_ids)) / (2 * step)
        assert gradient[row] == pytest.approx(numeric, rel=1e-6)


def test_pack_sum_hessian_is_the_diagonal_second_derivative():
    pack_ids = np.array([0, 0, 1])
    labels, weights = np.array([2.0, 2.0, 1.0]), np.array([0.5, 0.5, 1.0])
    predictions = np.array([0.3, 0.1, 0.7])
    _, hessian = pack_sum_square_error(predictions, labels, weights, pack_ids)
    step = 1e-4
    for row in range(len(predictions)):
        up, down = predictions.copy(), predictions.copy()
        up[row] += step
        down[row] -= step
        middle = half_loss(predictions, labels, weights, pack_ids)
        numeric = (
            half_loss(up, labels, weights, pack_ids) - 2 * middle + half_loss(down, labels, weights, pack_ids)
        ) / step**2
        assert hessian[row] == pytest.approx(numeric, rel=1e-4)


def test_normalized_throughput_is_one_for_each_pipelines_fastest_schedule():
    samples = make_samples()
    throughput = normalized_throughput(samples)
    for pipeline_id in (0, 1):
        members = [i for i, s in enumerate(samples) if s.pipeline_id == pipeline_id]
        assert throughput[members].max() == 1.0
        assert (throughput[members] > 0).all()


@pytest.mark.parametrize("target", ["throughput", "log_runtime"])
def test_program_score_is_the_sum_of_its_stage_scores(target):
    samples = make_samples(num_pipelines=3)
    model = PackSumXGBoost(target=target, nthread=1).fit(samples[:16], samples[16:])
    stage_scores = model.predict_stage_scores(samples)
    assert [len(scores) for scores in stage_scores] == [s.num_stages for s in samples]
    np.testing.assert_allclose(model.predict_scores(samples), [scores.sum() for scores in stage_scores])


def test_throughput_model_predicts_faster_for_higher_scores():
    samples = make_samples()
    model = PackSumXGBoost(nthread=1).fit(samples, [])
    order_by_score = np.argsort(-model.predict_scores(samples), kind="stable")
    predicted_ms = model.predict(samples)[order_by_score]
    assert (np.diff(predicted_ms) >= 0).all()


def test_rejects_an_unknown_target():
    with pytest.raises(ValueError, match="target must be one of"):
        PackSumXGBoost(target="runtime")


def test_rejects_a_zero_thread_count():
    with pytest.raises(ValueError, match="nthread must be a positive integer, got 0"):
        SummedFeatureXGBoost(nthread=0)


def test_checkpoint_of_one_model_does_not_load_as_the_other(tmp_path):
    PackSumXGBoost(nthread=1).fit(make_samples(), []).save(tmp_path / "packsum.pt")
    with pytest.raises(CheckpointError, match="'xgboost' checkpoint, expected 'xgboost_sum'"):
        SummedFeatureXGBoost.load(tmp_path / "packsum.pt")


def test_update_retrains_on_old_and_new_samples():
    old, new = make_samples(seed=0), make_samples(seed=1)
    updated = PackSumXGBoost(target="log_runtime", nthread=1).fit(old, [])
    updated.update(new)
    retrained = PackSumXGBoost(target="log_runtime", nthread=1).fit(old + new, [])
    np.testing.assert_allclose(updated.predict(new), retrained.predict(new))


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_save_and_load_give_identical_predictions(tmp_path, real_samples, kind):
    model = MODELS[kind]().fit(real_samples[::2], real_samples[1::2])
    model.save(tmp_path / f"{kind}.pt")
    loaded = type(model).load(tmp_path / f"{kind}.pt")
    np.testing.assert_array_equal(loaded.predict(real_samples), model.predict(real_samples))
    assert loaded.get_params() == model.get_params()


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_predictions_are_positive_finite_milliseconds(real_samples, kind):
    predicted = MODELS[kind]().fit(real_samples[::2], real_samples[1::2]).predict(real_samples)
    assert predicted.shape == (len(real_samples),)
    assert np.isfinite(predicted).all() and (predicted > 0).all()
