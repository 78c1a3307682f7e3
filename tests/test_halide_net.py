"""Specification of the PyTorch re-implementation of Halide's Adams2019 cost model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from perfgraph.data.records import Sample
from perfgraph.features.layout import NUM_SCHEDULE_FEATURES, SCHEDULE_FEATURE_NAMES
from perfgraph.models.base import NotFittedError
from perfgraph.models.halide_net import HalideCostModel
from perfgraph.models.halide_terms import halide_throughput_loss, log_mse_loss, stage_costs

from .synthetic import synthetic_samples

torch.set_num_threads(1)


def make_samples(num_pipelines: int = 2, num_schedules: int = 6, num_stages: int = 3, seed: int = 0) -> list[Sample]:
    return synthetic_samples(num_pipelines, num_schedules, num_stages, seed)


def quick_model(loss: str = "halide", **overrides) -> HalideCostModel:
    params = {"loss": loss, "lr": 1e-2, "epochs": 30, "patience": 30, "seed": 0} | overrides
    return HalideCostModel(**params)


def test_prediction_is_the_sum_of_the_stage_costs():
    samples = make_samples()
    model = quick_model(epochs=3).fit(samples, [])
    raw = model.predict_halide_units(samples)
    summed = [costs.sum() for costs in model.predict_stage_costs(samples)]
    np.testing.assert_allclose(raw, summed, rtol=1e-12)


def test_predicted_milliseconds_are_network_output_times_the_calibrated_scale():
    samples = make_samples()
    model = quick_model(epochs=3).fit(samples, [])
    np.testing.assert_allclose(model.predict(samples), model.predict_halide_units(samples) * np.exp(model.log_scale_))


def test_output_stage_pays_its_own_store_coefficient():
    # Halide prices bytes stored by stage 0 (the output) with relu1(20), other serial stages with relu1(21).
    features = torch.zeros(1, 2, NUM_SCHEDULE_FEATURES)
    features[..., SCHEDULE_FEATURE_NAMES.index("num_realizations")] = 1
    features[..., SCHEDULE_FEATURE_NAMES.index("bytes_at_realization")] = 1e9
    coefficients = torch.zeros(1, 2, 32)
    coefficients[..., 20] = 1.0
    costs = stage_costs(features, coefficients, num_cores=1)
    assert costs[0, 0] > 0 and costs[0, 1] == 0


def test_halide_loss_vanishes_when_predictions_equal_run_times():
    runtimes = torch.tensor([1.0, 2.0, 4.0])
    assert halide_throughput_loss(runtimes, runtimes, torch.zeros(3)) == 0


def test_halide_loss_weighs_errors_on_the_fastest_schedule_most():
    runtimes = torch.tensor([1.0, 4.0])
    error_on_fast = halide_throughput_loss(torch.tensor([2.0, 4.0]), runtimes, torch.zeros(2))
    error_on_slow = halide_throughput_loss(torch.tensor([1.0, 8.0]), runtimes, torch.zeros(2))
    assert error_on_fast > error_on_slow


def test_log_mse_loss_is_scale_free():
    runtimes = torch.tensor([1.0, 4.0])
    assert torch.isclose(
        log_mse_loss(2 * runtimes, runtimes, torch.zeros(2)),
        log_mse_loss(2000 * runtimes, 1000 * runtimes, torch.zeros(2)),
    )


def test_rejects_an_unknown_loss():
    with pytest.raises(ValueError, match="loss must be one of"):
        HalideCostModel(loss="mae")


def test_rejects_one_pipeline_id_with_different_stage_counts():
    mixed = make_samples(num_pipelines=1, num_stages=3) + make_samples(num_pipelines=1, num_stages=4, seed=1)
    with pytest.raises(ValueError, match="pipeline_id 0"):
        quick_model().fit(mixed, [])


def test_predict_before_fit_raises():
    with pytest.raises(NotFittedError, match="not fitted"):
        HalideCostModel().predict(make_samples())


@pytest.mark.parametrize("loss", ["halide", "mse_log"])
def test_save_and_load_give_identical_predictions(tmp_path, loss):
    samples = make_samples()
    model = quick_model(loss, epochs=5).fit(samples[:8], samples[8:])
    model.save(tmp_path / "halide.pt")
    loaded = HalideCostModel.load(tmp_path / "halide.pt")
    np.testing.assert_array_equal(loaded.predict(samples), model.predict(samples))
    assert loaded.get_params() == model.get_params()


@pytest.mark.parametrize("loss", ["halide", "mse_log"])
def test_training_loss_falls_on_real_samples(real_samples, loss):
    model = quick_model(loss).fit(real_samples, [])
    losses = [train for _, train, _ in model.history_]
    assert losses[-1] < losses[0]


def test_stage_costs_are_non_negative_on_real_samples(real_samples):
    model = quick_model().fit(real_samples, [])
    assert all((costs >= 0).all() for costs in model.predict_stage_costs(real_samples))


def test_early_stopping_keeps_the_epoch_with_the_best_validation_loss(real_samples):
    model = quick_model("mse_log", epochs=40, patience=5).fit(real_samples[::2], real_samples[1::2])
    valid_losses = [valid for _, _, valid in model.history_]
    best_epoch = valid_losses.index(min(valid_losses))
    kept = quick_model("mse_log", epochs=best_epoch + 1).fit(real_samples[::2], real_samples[1::2])
    np.testing.assert_allclose(model.predict(real_samples), kept.predict(real_samples), rtol=1e-5)


def test_update_fits_the_new_samples_better():
    old, new = make_samples(seed=0), make_samples(seed=1)
    model = quick_model("mse_log").fit(old, [])
    runtimes = np.array([s.runtime_ms for s in new])

    def log_error() -> float:
        return float(np.mean((np.log(model.predict(new)) - np.log(runtimes)) ** 2))

    before = log_error()
    model.update(new)
    assert log_error() < before
