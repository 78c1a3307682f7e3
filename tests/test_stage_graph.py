"""The stage graph comes from Halide's own DAG dump and lines up with Halide's featurization rows."""

from __future__ import annotations

import base64
import re

import numpy as np
import pytest

from perfgraph.features.layout import FEATURES_PER_STAGE, NUM_SCHEDULE_FEATURES, SCHEDULE_FEATURE_NAMES
from perfgraph.measure.runner import run_job
from perfgraph.schedules.stage_graph import parse_dag_dump
from perfgraph.workloads.base import zoo_uri

from .conftest import USER_PIPELINES


def analyse(uri: str, tmp_path) -> tuple[np.ndarray, str]:
    """Run the real analysis job; return Halide's featurization rows and the autoscheduler log."""
    job = {"kind": "analyze", "uri": uri, "input_seed": 1, "reference_path": str(tmp_path / "ref.npz")}
    result = run_job(
        job,
        {"start": 120, "autoschedule": 300, "reference": 300},
        {0},
        env={"HL_DEBUG_AUTOSCHEDULE": "2", "HL_NUM_THREADS": "1"},
    )
    assert result.ok, result.failure_message
    rows = np.frombuffer(base64.b64decode(result.events["analyzed"]["featurization"]), np.float32)
    return rows.reshape(-1, FEATURES_PER_STAGE), result.stderr


def printed_schedule_features(log: str) -> dict[str, np.ndarray]:
    """The 'Schedule features for STAGE' blocks Halide prints at HL_DEBUG_AUTOSCHEDULE >= 1."""
    features: dict[str, list[float]] = {}
    current = None
    for line in log.splitlines():
        if m := re.match(r"Schedule features for (\S+)", line):
            current = m.group(1)
            features[current] = []
        elif current and (m := re.match(r"\s+(\w+):\s+(\S+)$", line)) and m.group(1) in SCHEDULE_FEATURE_NAMES:
            features[current].append(float(m.group(2)))
    return {name: np.array(values) for name, values in features.items()}


@pytest.mark.slow
@pytest.mark.parametrize(
    "uri",
    [
        zoo_uri("resnet_basic_block", w=16, h=16, c_in=8, c_out=8, stride=1),
        f"file:{USER_PIPELINES}:conv_relu",
        "random:4",
    ],
)
def test_featurization_rows_equal_graph_nodes(uri, tmp_path):
    rows, log = analyse(uri, tmp_path)
    graph = parse_dag_dump(log)
    printed = printed_schedule_features(log)
    assert graph.num_stages == len(rows)
    assert set(graph.stage_names) == set(printed)
    for row, name in zip(rows, graph.stage_names, strict=True):
        assert len(printed[name]) == NUM_SCHEDULE_FEATURES
        np.testing.assert_allclose(row[:NUM_SCHEDULE_FEATURES], printed[name], rtol=1e-5, err_msg=name)


@pytest.mark.slow
def test_edges_run_from_producer_to_consumer_stage(tmp_path):
    _, log = analyse(f"file:{USER_PIPELINES}:conv_relu", tmp_path)
    graph = parse_dag_dump(log)
    named = {(graph.stage_names[a], graph.stage_names[b]) for a, b in graph.edges}
    # BoundaryConditions.repeat_edge adds two hidden Funcs (lambda_0 reads the input, repeat_edge clamps).
    assert named == {
        ("conv.update(0)", "relu"),  # relu reads conv's final value, i.e. its last stage
        ("repeat_edge", "conv.update(0)"),
        ("lambda_0", "repeat_edge"),
        ("conv", "conv.update(0)"),  # an update reads the stage before it
    }


@pytest.mark.slow
def test_update_stage_comes_before_its_pure_stage(tmp_path):
    _, log = analyse(f"file:{USER_PIPELINES}:conv_relu", tmp_path)
    names = parse_dag_dump(log).stage_names
    assert names.index("conv.update(0)") == names.index("conv") - 1


@pytest.mark.slow
def test_edge_features_mark_pointwise_and_stencil_edges(tmp_path):
    _, log = analyse(f"file:{USER_PIPELINES}:conv_relu", tmp_path)
    graph = parse_dag_dump(log)
    by_pair = {
        (graph.stage_names[a], graph.stage_names[b]): f
        for (a, b), f in zip(graph.edges, graph.edge_features, strict=True)
    }
    pointwise, stencil, same_func = 5, 6, 8  # indices in layout.EDGE_FEATURE_NAMES
    assert by_pair[("conv.update(0)", "relu")][pointwise] == 1.0
    assert by_pair[("repeat_edge", "conv.update(0)")][stencil] == 1.0
    assert by_pair[("conv", "conv.update(0)")][same_func] == 1.0
