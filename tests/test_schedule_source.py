"""Schedule edge features read from the schedule source Adams2019 writes."""

from __future__ import annotations

import re

import numpy as np
import pytest

from perfgraph.features.layout import SCHEDULE_EDGE_FEATURE_NAMES
from perfgraph.schedules.schedule_source import (
    parse_schedule_source,
    resolve_func_names,
    schedule_edge_features,
)
from perfgraph.search.predict import sample_candidates

from .conftest import USER_PIPELINES

# As Adams2019 writes it (a depthwise convolution with an update stage; a padded input at its loop x).
SOURCE = """\
Func dwconv = pipeline.get_func(3);
Func dwconv_pad = pipeline.get_func(1);
Func relu = pipeline.get_func(2);
Var c(dwconv.update(0).get_schedule().dims()[4].var);
Var x(dwconv.update(0).get_schedule().dims()[2].var);
Var xi("xi");
RVar dwconv_r_x(dwconv.update(0).get_schedule().dims()[0].var);
dwconv.update(0)
    .split(x, x, xi, 32, TailStrategy::GuardWithIf)
    .vectorize(xi)
    .reorder({xi, dwconv_r_x, x, y, c});
dwconv_pad
    .store_in(MemoryType::Stack)
    .split(x, x, xi, 8, TailStrategy::ShiftInwards)
    .compute_at(dwconv, x)
    .reorder({xi, x, y, c});
dwconv
    .compute_root()
    .reorder({xi, x, y, c});
"""
STAGES = ("dwconv", "dwconv.update(0)", "relu", "dwconv_pad")
COLUMN = {name: i for i, name in enumerate(SCHEDULE_EDGE_FEATURE_NAMES)}


def test_blocks_of_a_func_and_its_update_stages_are_read_together():
    schedules = parse_schedule_source(SOURCE)
    assert set(schedules) == {"dwconv", "dwconv_pad"}  # relu has no block: it is inlined
    assert schedules["dwconv"].compute_root and not schedules["dwconv"].inlined
    assert schedules["dwconv"].loops["dwconv.update(0)"] == ("xi", "dwconv_r_x", "x", "y", "c")
    assert schedules["dwconv_pad"].compute_at == ("dwconv", "x") and schedules["dwconv_pad"].on_stack


def test_each_edge_says_where_its_producer_is_computed():
    # relu -> dwconv_pad (inlined producer), dwconv_pad -> dwconv.update(0), dwconv -> dwconv.update(0).
    edges = np.array([[2, 3, 0], [3, 1, 1]])
    features = schedule_edge_features(SOURCE, STAGES, edges)
    assert features.shape == (3, len(SCHEDULE_EDGE_FEATURE_NAMES)) and features.dtype == np.float32
    inlined, at_consumer, same_func = features
    assert inlined[COLUMN["inlined"]] == 1 and inlined.sum() == 1
    assert at_consumer[COLUMN["compute_at_consumer"]] == 1 and at_consumer[COLUMN["store_on_stack"]] == 1
    # x is the 3rd of the update's 5 loops from the outside: depth 3/5.
    assert at_consumer[COLUMN["compute_depth"]] == np.float32(3 / 5)
    assert not same_func.any(), "a Func's pure stage feeding its update is not a placement"


def test_real_schedules_place_every_producer_exactly_once(real_samples):
    placements = [COLUMN[name] for name in ("inlined", "compute_root", "compute_at_consumer", "compute_at_other")]
    seen = np.zeros(len(SCHEDULE_EDGE_FEATURE_NAMES))
    for sample in real_samples:
        features = sample.schedule_edge_features
        assert features is not None and features.shape == (sample.edges.shape[1], len(SCHEDULE_EDGE_FEATURE_NAMES))
        funcs = [name.split(".update(", 1)[0] for name in sample.stage_names]
        for (producer, consumer), row in zip(sample.edges.T, features, strict=True):
            expected = 0 if funcs[producer] == funcs[consumer] else 1
            assert row[placements].sum() == expected, (sample.pipeline_name, sample.stage_names[producer])
            assert (row[COLUMN["compute_depth"]] > 0) == (row[COLUMN["compute_at_consumer"]] == 1)
            assert 0 <= row[COLUMN["compute_depth"]] <= 1
        seen += features.sum(axis=0)
    # Across the tiny store's schedules, producers are both computed at the root and inside a consumer.
    assert seen[COLUMN["compute_root"]] > 0 and seen[COLUMN["compute_at_consumer"]] > 0


def test_an_empty_or_foreign_source_gives_zeros_unknown_not_inlined():
    edges = np.array([[1], [0]])
    assert not schedule_edge_features("", ("a", "b"), edges).any()
    assert not schedule_edge_features("// a comment\nsomething else;\n", ("a", "b"), edges).any()
    assert not schedule_edge_features(SOURCE, ("a", "b"), edges).any(), "another pipeline's source"


def test_names_uniquified_by_a_rebuild_in_the_same_process_are_matched():
    # The second build of a pipeline in one process names every Func f$1, which the source writes f_1.
    rebuilt = re.sub(r"\b(dwconv|dwconv_pad|relu)\b", r"\1_1", SOURCE)
    assert "dwconv_pad_1\n" in rebuilt and ".compute_at(dwconv_1, x)" in rebuilt
    edges = np.array([[2, 3, 0], [3, 1, 1]])
    np.testing.assert_array_equal(
        schedule_edge_features(rebuilt, STAGES, edges), schedule_edge_features(SOURCE, STAGES, edges)
    )
    # A stage whose own name carries a $ (a Func named twice in one build) is matched through its C++ spelling.
    dollar = tuple(name.replace("dwconv_pad", "dwconv_pad$1") for name in STAGES)
    renamed = SOURCE.replace("dwconv_pad", "dwconv_pad_1")
    np.testing.assert_array_equal(
        schedule_edge_features(renamed, dollar, edges), schedule_edge_features(SOURCE, STAGES, edges)
    )


@pytest.mark.slow
def test_candidates_featurized_one_after_another_in_one_worker_resolve_every_scheduled_func():
    candidates, *_ = sample_candidates(f"file:{USER_PIPELINES}:blur", 3, workers=1)
    assert len(candidates) >= 2, "a worker that builds the pipeline twice is the case under test"
    for candidate in candidates:
        parsed = parse_schedule_source(candidate.schedule_source)
        assert set(resolve_func_names(parsed, candidate.graph.stage_names)) == set(parsed), candidate.schedule_source
        sample = candidate.to_sample()
        placements = sample.schedule_edge_features[
            :, [COLUMN[n] for n in ("inlined", "compute_root", "compute_at_consumer", "compute_at_other")]
        ]
        assert (placements.sum(axis=1) == 1).all()
