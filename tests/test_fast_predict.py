"""The search path of the neural models: samples of one pipeline scored as one batch, same numbers."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from torch_geometric.data import Batch

from perfgraph.features.graphs import as_graphs, sample_to_graph
from perfgraph.features.layout import PIPELINE_SLICE
from perfgraph.features.pipeline_batch import group_by_pipeline, pipeline_batch
from perfgraph.models.gnn import GNNCostModel
from perfgraph.models.registry import load_model
from perfgraph.models.sequence import SequenceCostModel

SHIPPED_GNN = Path(__file__).resolve().parents[1] / "models" / "gnn.pt"
RTOL = 1e-5  # float32 arithmetic in another order


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def shuffled(samples, seed=0):
    """The samples of all pipelines interleaved, as a caller may pass them."""
    order = np.random.default_rng(seed).permutation(len(samples))
    return [samples[i] for i in order]


def fitted(model_class, real_samples, **params):
    defaults = {"hidden": 16, "layers": 2, "epochs": 3, "lr": 1e-2, "device": "cpu", "progress": False}
    return model_class(**{**defaults, **params}).fit(real_samples, real_samples)


@pytest.mark.parametrize(
    ("conv", "schedule_edges", "cost_terms", "global_context"),
    [
        ("gin", False, False, False),
        ("sage", False, False, False),
        ("gatv2", False, False, False),
        ("gin", True, False, False),
        ("gatv2", True, False, False),
        ("gin", False, True, False),
        ("sage", False, True, False),
        ("gin", False, False, True),
        ("sage", False, False, True),
        ("gin-dir", False, False, False),
        ("gin-dir", True, False, True),
    ],
)
def test_gnn_search_path_equals_the_training_path_on_mixed_pipelines(
    real_samples, conv, schedule_edges, cost_terms, global_context
):
    model = fitted(
        GNNCostModel,
        real_samples,
        conv=conv,
        schedule_edges=schedule_edges,
        cost_terms=cost_terms,
        global_context=global_context,
    )
    samples = shuffled(real_samples)
    assert len({s.pipeline_id for s in samples}) >= 3
    np.testing.assert_allclose(model.predict(samples), model.predict(as_graphs(samples)), rtol=RTOL)


def test_sequence_search_path_equals_the_training_path_on_mixed_pipelines(real_samples):
    model = fitted(SequenceCostModel, real_samples, layers=2)
    samples = shuffled(real_samples)
    np.testing.assert_allclose(model.predict(samples), model.predict(as_graphs(samples)), rtol=RTOL)


def test_the_shipped_gnn_gives_the_same_numbers_on_both_paths(real_samples):
    model = load_model(SHIPPED_GNN)
    samples = shuffled(real_samples, seed=1)
    np.testing.assert_allclose(model.predict(samples), model.predict(as_graphs(samples)), rtol=RTOL)


def test_a_model_reading_only_schedule_features_zeroes_the_same_columns_on_both_paths(real_samples):
    model = fitted(GNNCostModel, real_samples, features="schedule")
    samples = shuffled(real_samples)
    np.testing.assert_allclose(model.predict(samples), model.predict(as_graphs(samples)), rtol=RTOL)


def test_samples_and_graphs_can_be_mixed_in_one_call_order_kept(real_samples):
    model = fitted(GNNCostModel, real_samples)
    samples = shuffled(real_samples)
    mixed = [sample_to_graph(s) if i % 3 == 0 else s for i, s in enumerate(samples)]
    np.testing.assert_allclose(model.predict(mixed), model.predict(as_graphs(samples)), rtol=RTOL)


def test_one_sample_and_many_copies_of_it_predict_alike(real_samples):
    model = fitted(GNNCostModel, real_samples)
    one = model.predict(real_samples[:1])
    np.testing.assert_allclose(model.predict(real_samples[:1] * 3000), np.repeat(one, 3000), rtol=RTOL)


def test_schedule_edges_change_the_prediction_and_only_for_the_model_that_reads_them(real_samples):
    reading, blind = (fitted(GNNCostModel, real_samples, schedule_edges=flag, seed=3) for flag in (True, False))
    samples = [s for s in real_samples if s.schedule_edge_features is not None and s.schedule_edge_features.any()]
    assert samples, "the tiny store's schedules place some producers relative to their consumers"
    cleared = [dataclasses.replace(s, schedule_edge_features=None) for s in samples]
    assert not np.allclose(reading.predict(samples), reading.predict(cleared), rtol=RTOL)
    np.testing.assert_array_equal(blind.predict(samples), blind.predict(cleared))


def test_pipelines_are_grouped_by_content_not_by_ids(real_samples):
    first, other = real_samples[0], next(s for s in real_samples if s.pipeline_id != real_samples[0].pipeline_id)
    renamed = dataclasses.replace(first, pipeline_id=99, pipeline_name="another name")
    altered_features = first.features.copy()
    altered_features[0, PIPELINE_SLICE.start] += 1.0
    altered = dataclasses.replace(first, features=altered_features)
    assert group_by_pipeline([first, other, renamed, altered]) == [[0, 2], [1], [3]]


def test_a_pipeline_batch_is_the_pyg_batch_of_its_graphs(real_samples):
    group = [s for s in real_samples if s.pipeline_id == real_samples[0].pipeline_id][:5]
    ours = pipeline_batch(group).to_batch()
    pyg = Batch.from_data_list([sample_to_graph(s) for s in group])
    for key in ("x", "edge_index", "edge_attr", "batch", "ptr"):
        assert torch.equal(ours[key], pyg[key]), key
