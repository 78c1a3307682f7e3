"""Splits by pipeline: no pipeline in two parts, deterministic, families held out on request."""

from __future__ import annotations

import random

import numpy as np
import pytest

from perfgraph.data.records import Sample
from perfgraph.features.graphs import sample_to_graph
from perfgraph.features.splits import SplitError, split_samples


def toy(name: str, family: str = "conv2d", schedule_id: int = 0) -> Sample:
    return Sample(
        0,
        schedule_id,
        name,
        family,
        np.zeros((1, 326), np.float32),
        np.zeros((2, 0), np.int64),
        np.zeros((0, 9), np.float32),
        runtime_ms=1.0,
    )


def dataset(pipelines: int = 20, schedules: int = 3) -> list[Sample]:
    families = ["conv2d", "attention", "depthwise", "matmul", "pooling"]
    return [toy(f"zoo:layer?i={p}", families[p % len(families)], s) for p in range(pipelines) for s in range(schedules)]


def names(samples: list) -> set[str]:
    return {s.pipeline_name for s in samples}


@pytest.mark.parametrize("kind", ["fixed", "family"])
def test_no_pipeline_is_in_two_parts(kind):
    parts = split_samples(dataset(), kind)
    assert not names(parts.train) & names(parts.valid)
    assert not names(parts.train) & names(parts.test)
    assert not names(parts.valid) & names(parts.test)


@pytest.mark.parametrize("kind", ["fixed", "family"])
def test_every_sample_lands_in_exactly_one_part(kind):
    samples = dataset()
    parts = split_samples(samples, kind)
    assert len(parts.train) + len(parts.valid) + len(parts.test) == len(samples)
    assert parts.train and parts.valid and parts.test


def test_fixed_split_is_about_70_15_15_of_pipelines():
    parts = split_samples(dataset(pipelines=400), "fixed")
    shares = [len(parts.pipelines(part)) / 400 for part in ("train", "valid", "test")]
    assert shares == pytest.approx([0.70, 0.15, 0.15], abs=0.05)  # each pipeline is placed by its own hash


def test_adding_pipelines_never_moves_a_pipeline_to_another_part():
    small, large = split_samples(dataset(pipelines=60), "fixed"), split_samples(dataset(pipelines=200), "fixed")
    for part in ("train", "valid", "test"):
        assert set(small.pipelines(part)) <= set(large.pipelines(part))


def test_fixed_split_depends_only_on_the_pipelines_not_on_sample_order():
    samples = dataset()
    shuffled = samples[:]
    random.Random(3).shuffle(shuffled)
    a, b = split_samples(samples), split_samples(shuffled)
    for part in ("train", "valid", "test"):
        assert a.pipelines(part) == b.pipelines(part)


def test_family_split_holds_out_exactly_the_named_families():
    parts = split_samples(dataset(), "family", held_out_families=("pooling", "matmul"))
    assert {s.family for s in parts.test} == {"pooling", "matmul"}
    assert not {s.family for s in parts.train + parts.valid} & {"pooling", "matmul"}


def test_family_split_defaults_to_attention_and_depthwise():
    parts = split_samples(dataset(), "family")
    assert {s.family for s in parts.test} == {"attention", "depthwise"}


def test_splits_work_on_graphs_as_well_as_samples():
    graphs = [sample_to_graph(s) for s in dataset()]
    assert split_samples(graphs).pipelines("test") == split_samples(dataset()).pipelines("test")


def test_fixed_split_of_fewer_than_three_pipelines_is_refused():
    with pytest.raises(SplitError, match="at least 3 pipelines"):
        split_samples(dataset(pipelines=2))


def test_family_split_without_the_held_out_families_names_them():
    with pytest.raises(SplitError, match=r"\['attention'\].*families present: \['conv2d'\]"):
        split_samples([toy(f"zoo:c{i}") for i in range(5)], "family", held_out_families=["attention"])


def test_family_split_with_nothing_left_to_train_on_is_refused():
    with pytest.raises(SplitError, match="outside the held-out families"):
        split_samples([toy("zoo:a", "attention"), toy("zoo:b", "conv2d")], "family")


def test_unknown_split_name_is_refused_with_the_choices():
    with pytest.raises(ValueError, match=r"'fixed', 'family'.*'random'"):
        split_samples(dataset(), "random")
