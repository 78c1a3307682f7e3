"""Specification of the bridge to Halide's own trainer, and of our re-implementation's fidelity to it.

The fidelity tests give the real ``adams2019_retrain_cost_model`` the weights of our freshly
initialised network: with learning rate 0 it only evaluates them, so its printed loss and
correct-ordering rates must equal what our PyTorch network, loss and metric compute.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from perfgraph.data.export import sample_bytes
from perfgraph.data.records import Sample
from perfgraph.models.halide_net import AdamsNetwork, HalideCostModel, pipeline_groups
from perfgraph.models.halide_terms import coefficient_regularizer, halide_throughput_loss
from perfgraph.models.halide_trainer import (
    correct_ordering_rate,
    is_halide_validation_pipeline,
    parse_retrain_output,
    read_halide_weights,
    run_halide_retrain,
    write_halide_weights,
)

from .synthetic import synthetic_samples

torch.set_num_threads(1)


def make_samples(num_pipelines: int, num_schedules: int = 8, num_stages: int = 3, seed: int = 0) -> list[Sample]:
    return synthetic_samples(num_pipelines, num_schedules, num_stages, seed, runtime="uniform")


def write_sample_files(samples: list[Sample], directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for s in samples:
        path = directory / f"p{s.pipeline_id}_s{s.schedule_id}.sample"
        path.write_bytes(
            sample_bytes(s.features.astype(np.float32).tobytes(), s.runtime_ms, s.pipeline_id, s.schedule_id)
        )
        paths.append(path)
    return paths


def initial_weights() -> dict[str, np.ndarray]:
    network = AdamsNetwork(num_cores=1, generator=torch.Generator().manual_seed(3))
    return {name: value.detach().numpy().copy() for name, value in network.state_dict().items()}


@pytest.fixture(scope="module")
def evaluation_by_halide(tmp_path_factory):
    """Halide's trainer evaluating our initial weights (rate 0) on 20 pipelines, so that some are held out."""
    directory = tmp_path_factory.mktemp("halide_eval")
    samples = make_samples(num_pipelines=20)
    weights = initial_weights()
    write_halide_weights(directory / "initial.weights", weights)
    result = run_halide_retrain(
        write_sample_files(samples, directory / "samples"),
        epochs=1,
        workdir=directory / "work",
        lr=0.0,
        initial_weights=directory / "initial.weights",
    )
    model = HalideCostModel(num_cores=1).load_halide_weights(weights)
    return result, samples, model


def test_correct_ordering_counts_only_schedules_clearly_slower_than_the_fastest():
    measured = [1.0, 1.2, 2.0, 3.0]  # 1.2 is within 30% of the fastest: not counted
    predicted = [5.0, 1.0, 6.0, 4.0]  # 2.0 predicted slower than the fastest, 3.0 predicted faster
    assert correct_ordering_rate(predicted, measured, [0, 0, 0, 0]) == 0.5


def test_correct_ordering_pools_pairs_over_pipelines():
    measured = [1.0, 2.0, 1.0, 2.0, 3.0, 4.0]
    predicted = [1.0, 0.5, 1.0, 2.0, 3.0, 4.0]  # pipeline 0: 0 of 1 right, pipeline 1: 3 of 3 right
    assert correct_ordering_rate(predicted, measured, [0, 0, 1, 1, 1, 1]) == 0.75


def test_correct_ordering_is_nan_without_clearly_slower_schedules():
    assert math.isnan(correct_ordering_rate([1.0, 2.0], [1.0, 1.1], [0, 0]))


def test_weights_file_round_trips(tmp_path):
    weights = initial_weights()
    write_halide_weights(tmp_path / "w.weights", weights)
    loaded = read_halide_weights(tmp_path / "w.weights")
    assert all(np.array_equal(loaded[name], weights[name]) for name in weights)


def test_parses_epoch_lines_including_nan_validation_rates(tmp_path):
    stdout = (
        "Distinct pipelines: 3\nLoss: 12.5000  Rate: 0.7115 -nan  Worst: 3.2 a.sample\nLoss: 11.0000  Rate: 0.7 -nan \n"
    )
    result = parse_retrain_output(stdout, tmp_path / "w.weights", tmp_path / "log")
    assert result.losses == (12.5, 11.0) and result.train_correct_ordering == (0.7115, 0.7)
    assert all(math.isnan(rate) for rate in result.valid_correct_ordering)


def test_rejects_files_that_are_not_samples(tmp_path):
    (tmp_path / "a.txt").write_text("")
    with pytest.raises(ValueError, match="must end in .sample"):
        run_halide_retrain([tmp_path / "a.txt"], epochs=1, workdir=tmp_path)


def test_real_trainer_reports_a_correct_ordering_rate_in_the_unit_interval(tmp_path):
    paths = write_sample_files(make_samples(num_pipelines=3, num_schedules=9), tmp_path / "samples")
    result = run_halide_retrain(paths, epochs=2, workdir=tmp_path / "work")
    assert len(result.losses) == 2 and result.distinct_pipelines == 3
    assert all(0.0 <= rate <= 1.0 for rate in result.train_correct_ordering)
    assert set(read_halide_weights(result.weights_path)) == set(initial_weights())


def test_halide_holds_out_the_pipelines_we_predict(evaluation_by_halide):
    result, samples, model = evaluation_by_halide
    held_out = [s for s in samples if is_halide_validation_pipeline(s.features)]
    assert held_out, "the fixture needs at least one held-out pipeline"
    predicted = model.predict_halide_units(held_out)
    ours = correct_ordering_rate(predicted, [s.runtime_ms for s in held_out], [s.pipeline_id for s in held_out])
    assert ours == pytest.approx(result.valid_correct_ordering[0], abs=1e-4)


def test_our_network_orders_training_pipelines_as_halide_does(evaluation_by_halide):
    result, samples, model = evaluation_by_halide
    kept = [s for s in samples if not is_halide_validation_pipeline(s.features)]
    predicted = model.predict_halide_units(kept)
    ours = correct_ordering_rate(predicted, [s.runtime_ms for s in kept], [s.pipeline_id for s in kept])
    assert ours == pytest.approx(result.train_correct_ordering[0], abs=1e-4)


def test_our_loss_equals_halides_loss(evaluation_by_halide):
    result, samples, model = evaluation_by_halide
    kept = [s for s in samples if not is_halide_validation_pipeline(s.features)]
    with torch.no_grad():
        losses = []
        for batch in pipeline_groups(kept):
            out = model.network_(batch.schedule, batch.pipeline)
            regularizer = coefficient_regularizer(out.pre_activation)
            losses.append(float(halide_throughput_loss(out.prediction, batch.runtime_ms, regularizer)))
    assert np.mean(losses) == pytest.approx(result.losses[0], rel=1e-4)


def test_our_adam_steps_match_halides(tmp_path):
    samples = make_samples(num_pipelines=1, num_schedules=10)
    weights = initial_weights()
    write_halide_weights(tmp_path / "initial.weights", weights)
    result = run_halide_retrain(
        write_sample_files(samples, tmp_path / "samples"),
        epochs=3,
        workdir=tmp_path / "work",
        lr=1e-3,
        initial_weights=tmp_path / "initial.weights",
    )
    model = HalideCostModel(lr=1e-3, update_epochs=3, min_schedules_per_pipeline=8)
    model.load_halide_weights(weights).update(samples)
    trained_by_halide = read_halide_weights(result.weights_path)
    for name, value in model.network_.state_dict().items():
        np.testing.assert_allclose(value.numpy(), trained_by_halide[name], atol=1e-6, err_msg=name)
