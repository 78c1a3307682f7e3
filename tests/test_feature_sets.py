"""The ``features`` hyper-parameter of the neural models: all 326 stage features, or the 39 schedule features."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from perfgraph.features.layout import PIPELINE_SLICE
from perfgraph.models.gnn import GNNCostModel
from perfgraph.models.sequence import SequenceCostModel
from tests.synthetic import synthetic_samples

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def fitted(model_class, features: str):
    params = {"hidden": 16, "layers": 1, "epochs": 3, "device": "cpu", "progress": False, "features": features}
    samples = synthetic_samples(num_pipelines=4, num_schedules=6)
    return model_class(**params).fit(samples, samples)


def with_other_pipeline_features(samples):
    """The same schedules with every pipeline feature replaced by another random value."""
    rng = np.random.default_rng(1)
    changed = []
    for sample in samples:
        features = sample.features.copy()
        features[:, PIPELINE_SLICE] = rng.integers(0, 20, features[:, PIPELINE_SLICE].shape)
        changed.append(dataclasses.replace(sample, features=features))
    return changed


@pytest.mark.parametrize("model_class", [GNNCostModel, SequenceCostModel])
def test_a_schedule_only_model_ignores_the_pipeline_features(model_class):
    model = fitted(model_class, "schedule")
    samples = synthetic_samples(num_pipelines=2, num_schedules=3, seed=5)
    # Equal up to float rounding: changed pipeline features regroup the samples in the batched search path.
    np.testing.assert_allclose(model.predict(with_other_pipeline_features(samples)), model.predict(samples), rtol=1e-5)


def test_a_model_of_all_features_reads_the_pipeline_features():
    model = fitted(GNNCostModel, "all")
    samples = synthetic_samples(num_pipelines=2, num_schedules=3, seed=5)
    assert not np.allclose(model.predict(samples), model.predict(with_other_pipeline_features(samples)), rtol=1e-3)


def test_the_feature_set_is_saved_with_the_checkpoint(tmp_path):
    model = fitted(GNNCostModel, "schedule")
    model.save(tmp_path / "gnn.pt")
    loaded = GNNCostModel.load(tmp_path / "gnn.pt")
    samples = synthetic_samples(num_pipelines=2, num_schedules=3, seed=5)
    assert loaded.features == "schedule"
    np.testing.assert_allclose(loaded.predict(with_other_pipeline_features(samples)), model.predict(samples), rtol=1e-5)


def test_an_unknown_feature_set_is_refused_naming_argument_and_value():
    with pytest.raises(ValueError, match="features.*'pipeline'"):
        GNNCostModel(features="pipeline")
