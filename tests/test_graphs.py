"""Samples as graphs, their normalisation, and the cached graph dataset."""

from __future__ import annotations

import dataclasses
import math
import shutil

import numpy as np
import pytest
import torch

from perfgraph.data.records import Sample
from perfgraph.features.dataset import StageGraphDataset, content_key
from perfgraph.features.graphs import (
    EDGE_ATTR_DIM,
    PIPELINE_EDGE_ATTR_DIM,
    as_graphs,
    sample_to_graph,
    signed_log1p,
)
from perfgraph.features.layout import FEATURES_PER_STAGE, NUM_EDGE_FEATURES, NUM_SCHEDULE_EDGE_FEATURES
from perfgraph.features.normalization import FeatureNormalizer


def make_sample(
    pipeline_id: int = 0,
    schedule_id: int = 0,
    stages: int = 3,
    runtime_ms: float | None = 2.0,
    seed: int = 0,
    name: str | None = None,
    family: str = "conv2d",
) -> Sample:
    """A chain of stages, output first (as Halide lists them): row i+1 produces row i."""
    rng = np.random.default_rng(seed)
    edges = np.array([range(1, stages), range(stages - 1)], dtype=np.int64).reshape(2, -1)
    magnitudes = 10.0 ** rng.integers(0, 6, (stages, 1))  # counts and bytes span orders of magnitude
    return Sample(
        pipeline_id=pipeline_id,
        schedule_id=schedule_id,
        pipeline_name=name or f"zoo:toy?p={pipeline_id}",
        family=family,
        features=(rng.random((stages, FEATURES_PER_STAGE)) * magnitudes).astype(np.float32),
        edges=edges,
        edge_features=rng.random((stages - 1, NUM_EDGE_FEATURES)).astype(np.float32),
        stage_names=tuple(f"f{i}" for i in range(stages)),
        runtime_ms=runtime_ms,
    )


def test_graph_has_one_node_per_featurization_row():
    sample = make_sample(stages=5)
    graph = sample_to_graph(sample)
    assert graph.num_nodes == 5
    assert graph.x.shape == (5, FEATURES_PER_STAGE)


def test_graph_edges_are_the_sample_edges_followed_by_their_reverses():
    sample = make_sample(stages=4)
    graph = sample_to_graph(sample)
    forward = torch.from_numpy(sample.edges)
    assert torch.equal(graph.edge_index[:, :3], forward)
    assert torch.equal(graph.edge_index[:, 3:], forward.flip(0))


def test_edge_attributes_carry_the_log_features_a_direction_flag_then_the_schedule_edges():
    sample = make_sample(stages=4)
    schedule_edges = np.random.default_rng(0).random((3, NUM_SCHEDULE_EDGE_FEATURES)).astype(np.float32)
    sample = dataclasses.replace(sample, schedule_edge_features=schedule_edges)
    graph = sample_to_graph(sample)
    assert graph.edge_attr.shape == (6, EDGE_ATTR_DIM)
    flag = PIPELINE_EDGE_ATTR_DIM - 1
    assert graph.edge_attr[:, flag].tolist() == [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]
    expected = torch.from_numpy(np.log1p(sample.edge_features))
    assert torch.allclose(graph.edge_attr[:3, :flag], expected)
    assert torch.allclose(graph.edge_attr[3:, :flag], expected)
    # Both directions of an edge carry its schedule features, unchanged (they are in [0, 1] already).
    assert torch.equal(graph.edge_attr[:3, PIPELINE_EDGE_ATTR_DIM:], torch.from_numpy(schedule_edges))
    assert torch.equal(graph.edge_attr[3:, PIPELINE_EDGE_ATTR_DIM:], torch.from_numpy(schedule_edges))


def test_a_sample_without_schedule_edge_features_reads_them_as_zeros():
    graph = sample_to_graph(make_sample(stages=4))
    assert not graph.edge_attr[:, PIPELINE_EDGE_ATTR_DIM:].any()


def test_schedule_edge_features_of_the_wrong_length_are_refused_naming_the_sample():
    sample = make_sample(stages=4)
    with pytest.raises(ValueError, match="schedule_edge_features must have one row per edge"):
        dataclasses.replace(sample, schedule_edge_features=np.zeros((2, NUM_SCHEDULE_EDGE_FEATURES), np.float32))


def test_node_features_are_log1p_of_the_featurization():
    sample = make_sample()
    assert torch.allclose(sample_to_graph(sample).x, torch.from_numpy(np.log1p(sample.features)), rtol=1e-6)


def test_signed_log1p_keeps_the_sign_and_replaces_non_finite_values():
    values = signed_log1p(np.array([-math.e + 1, 0.0, math.nan, math.inf]))
    assert values[0] == pytest.approx(-1.0)
    assert values[1] == 0.0 and values[2] == 0.0
    assert np.isfinite(values).all()


def test_target_is_the_log_run_time_and_ids_travel_with_the_graph():
    graph = sample_to_graph(make_sample(pipeline_id=4, schedule_id=9, runtime_ms=2.5))
    assert graph.y.item() == pytest.approx(math.log(2.5))
    assert (int(graph.pipeline_id), int(graph.schedule_id)) == (4, 9)
    assert graph.pipeline_name == "zoo:toy?p=4" and graph.family == "conv2d"


def test_an_unmeasured_sample_has_a_nan_target():
    assert math.isnan(sample_to_graph(make_sample(runtime_ms=None)).y.item())


def test_a_single_stage_pipeline_has_no_edges():
    graph = sample_to_graph(make_sample(stages=1))
    assert graph.edge_index.shape == (2, 0) and graph.edge_attr.shape == (0, EDGE_ATTR_DIM)


def test_as_graphs_rejects_what_is_neither_sample_nor_graph():
    with pytest.raises(TypeError, match=r"samples\[1\]"):
        as_graphs([make_sample(), "not a sample"])


def test_normalizer_gives_training_features_zero_mean_and_unit_variance():
    train = [sample_to_graph(make_sample(seed=s)) for s in range(3)]
    stacked = torch.cat([g.x for g in FeatureNormalizer().fit(train).transform_all(train)])
    varying = torch.cat([g.x for g in train]).std(dim=0) > 1e-3
    assert torch.allclose(stacked.mean(dim=0), torch.zeros(FEATURES_PER_STAGE), atol=1e-4)
    std = stacked.std(dim=0, unbiased=False)[varying]
    assert torch.allclose(std, torch.ones_like(std), atol=1e-3)


def test_a_feature_constant_in_training_is_centred_not_blown_up():
    graphs = [sample_to_graph(make_sample(seed=s)) for s in range(3)]
    for g in graphs:
        g.x[:, 7] = 3.0
    normalizer = FeatureNormalizer().fit(graphs)
    unseen = graphs[0].__copy__()
    unseen.x = graphs[0].x.clone()
    unseen.x[:, 7] = 5.0
    assert torch.isfinite(normalizer.transform(graphs[0]).x).all()
    assert normalizer.transform(unseen).x[:, 7].tolist() == pytest.approx([2.0] * unseen.num_nodes)


def test_normalizer_does_not_change_the_graph_it_transforms():
    graph = sample_to_graph(make_sample())
    x, edge_attr = graph.x.clone(), graph.edge_attr.clone()
    FeatureNormalizer().fit([graph]).transform(graph)
    assert torch.equal(graph.x, x) and torch.equal(graph.edge_attr, edge_attr)


def test_normalizer_leaves_the_direction_flag_alone():
    graphs = [sample_to_graph(make_sample(seed=s)) for s in range(2)]
    out = FeatureNormalizer().fit(graphs).transform(graphs[0])
    assert torch.equal(out.edge_attr[:, -1], graphs[0].edge_attr[:, -1])


def test_normalizer_state_round_trips_through_plain_tensors(tmp_path):
    graphs = [sample_to_graph(make_sample(seed=s)) for s in range(3)]
    normalizer = FeatureNormalizer().fit(graphs)
    torch.save(normalizer.state_dict(), tmp_path / "norm.pt")
    restored = FeatureNormalizer.from_state_dict(torch.load(tmp_path / "norm.pt", weights_only=True))
    assert torch.equal(restored.transform(graphs[1]).x, normalizer.transform(graphs[1]).x)


def test_normalizer_refuses_an_empty_training_split():
    with pytest.raises(ValueError, match="empty training split"):
        FeatureNormalizer().fit([])


def test_dataset_round_trips_through_its_cache_file(tmp_path):
    samples = [make_sample(p, s, stages=2 + p) for p in range(3) for s in range(2)]
    dataset = StageGraphDataset.from_samples(samples)
    dataset.save(tmp_path / "graphs.pt")
    loaded = StageGraphDataset.load(tmp_path / "graphs.pt")
    assert len(loaded) == len(samples)
    for a, b in zip(dataset, loaded, strict=True):
        for key in ("x", "edge_index", "edge_attr", "y", "pipeline_id", "schedule_id"):
            assert torch.equal(getattr(a, key), getattr(b, key))
        assert (a.pipeline_name, a.family, a.num_nodes) == (b.pipeline_name, b.family, b.num_nodes)


def test_content_key_follows_the_database_bytes(tmp_path):
    db = tmp_path / "a.db"
    db.write_bytes(b"one")
    first = content_key(db)
    db.write_bytes(b"two")
    assert content_key(db) != first
    db.write_bytes(b"one")
    assert content_key(db) == first


def test_dataset_from_store_matches_the_store_and_reuses_its_cache(tiny_db, real_samples, tmp_path):
    db = tmp_path / tiny_db.name
    for part in (tiny_db, tiny_db.with_name(tiny_db.name + "-wal")):
        if part.is_file():
            shutil.copy(part, tmp_path / part.name)
    cache = tmp_path / "cache"
    first = StageGraphDataset.from_store(db, cache)
    assert [int(g.schedule_id) for g in first] == [s.schedule_id for s in real_samples]
    (cached,) = cache.glob("*.pt")
    stamp = cached.stat().st_mtime_ns
    second = StageGraphDataset.from_store(db, cache)
    assert cached.stat().st_mtime_ns == stamp  # served from the cache, not rebuilt
    assert all(torch.equal(a.x, b.x) for a, b in zip(first, second, strict=True))
