"""A :class:`Sample` as a PyG graph: one node per featurization row, one edge per dependency.

Halide's features are counts and byte sizes that span many orders of magnitude, so every value is
log-transformed here (``sign(v) * log1p(|v|)``, which is Halide's own ``log(x + 1)`` for the
non-negative values it produces). Standardising is *not* done here: it depends on the training split
and belongs to :class:`~perfgraph.features.normalization.FeatureNormalizer`, so that one cached set
of graphs serves every split and every model.

Edges go both ways: a stage's cost depends on what it reads (its producers) and on how it is consumed
(its consumers decide where it is computed). ``edge_attr`` holds, per edge, the 9 stored edge
features (the pipeline's, the same for every schedule), a direction flag (0 = producer -> consumer,
1 = consumer -> producer), then the 7 schedule edge features of
:mod:`~perfgraph.schedules.schedule_source` (where the producer is computed and stored relative to
the consumer under this schedule). A network that reads only the pipeline's edges reads the first
:data:`PIPELINE_EDGE_ATTR_DIM` columns.

>>> import numpy as np
>>> from perfgraph.data.records import Sample
>>> s = Sample(1, 2, "zoo:toy", "toy", np.zeros((2, 326), np.float32), np.array([[1], [0]]),
...            np.zeros((1, 9), np.float32), ("out", "f"), runtime_ms=2.0)
>>> g = sample_to_graph(s)
>>> g.num_nodes, g.edge_index.tolist(), g.edge_attr.shape[1]
(2, [[1, 0], [0, 1]], 17)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import torch
from torch_geometric.data import Data

from perfgraph.data.records import Sample
from perfgraph.features.layout import NUM_EDGE_FEATURES, NUM_MACHINE_FEATURES, NUM_SCHEDULE_EDGE_FEATURES

#: The first columns of ``Data.edge_attr``: the stored (pipeline) edge features, then the direction flag.
PIPELINE_EDGE_ATTR_DIM = NUM_EDGE_FEATURES + 1
#: All columns of ``Data.edge_attr``: the pipeline's, then the schedule edge features.
EDGE_ATTR_DIM = PIPELINE_EDGE_ATTR_DIM + NUM_SCHEDULE_EDGE_FEATURES
#: Bump when the graph built from a sample changes (cached graphs of another format are rebuilt).
GRAPH_FORMAT_VERSION = 4


def signed_log1p(values: np.ndarray) -> np.ndarray:
    """``sign(v) * log1p(|v|)`` in float32, with NaN and infinities replaced by finite values first."""
    values = np.nan_to_num(np.asarray(values, dtype=np.float64), nan=0.0, posinf=1e30, neginf=-1e30)
    return (np.sign(values) * np.log1p(np.abs(values))).astype(np.float32)


def sample_to_graph(sample: Sample) -> Data:
    """The graph of one sample: ``x`` (stages, 326), ``edge_index`` (2, 2E), ``edge_attr`` (2E, 17).

    ``y`` is the natural log of the run time in ms (NaN for an unmeasured sample); ``pipeline_id``,
    ``schedule_id``, ``pipeline_name`` and ``family`` travel along so that predictions and splits can
    be traced back to the store. ``machine_x`` (1, 8) holds the machine features (zeros when the
    sample has none) and ``machine_kind`` the kind (``""`` when unknown); only machine-aware models
    read them.
    """
    edge_index, edge_attr = edge_tensors(sample)
    edge_attr = torch.cat([edge_attr, schedule_edge_tensor(sample)], dim=1)
    log_runtime = math.nan if sample.runtime_ms is None else math.log(sample.runtime_ms)
    return Data(
        x=torch.from_numpy(signed_log1p(sample.features)),
        edge_index=edge_index,
        edge_attr=edge_attr,
        y=torch.tensor([log_runtime], dtype=torch.float32),
        pipeline_id=torch.tensor([sample.pipeline_id], dtype=torch.long),
        schedule_id=torch.tensor([sample.schedule_id], dtype=torch.long),
        pipeline_name=sample.pipeline_name,
        family=sample.family,
        machine_x=machine_tensor(sample),
        machine_kind=sample.machine_kind or "",
        num_nodes=sample.num_stages,
    )


def machine_tensor(sample: Sample) -> torch.Tensor:
    """The sample's machine features as a (1, NUM_MACHINE_FEATURES) float32 tensor (zeros if absent)."""
    if sample.machine_features is None:
        return torch.zeros(1, NUM_MACHINE_FEATURES)
    return torch.tensor(np.asarray(sample.machine_features, dtype=np.float32)).reshape(1, NUM_MACHINE_FEATURES)


def edge_tensors(sample: Sample) -> tuple[torch.Tensor, torch.Tensor]:
    """``edge_index`` (2, 2E) and the pipeline part of ``edge_attr`` (2E, 10), log-transformed: both
    directions, flag last.

    They depend on the pipeline only, so a batch of schedules of one pipeline builds them once
    (:mod:`~perfgraph.features.pipeline_batch`).
    """
    forward = torch.from_numpy(np.asarray(sample.edges, dtype=np.int64).reshape(2, -1).copy())
    edge_values = torch.from_numpy(signed_log1p(sample.edge_features).reshape(-1, NUM_EDGE_FEATURES))
    num_edges = forward.shape[1]
    direction = torch.cat([torch.zeros(num_edges, 1), torch.ones(num_edges, 1)])
    edge_index = torch.cat([forward, forward.flip(0)], dim=1)
    return edge_index, torch.cat([torch.cat([edge_values, edge_values]), direction], dim=1)


def as_graphs(items: Iterable[Sample | Data]) -> list[Data]:
    """Graphs for a mix of samples and already-built graphs (from a cached dataset); order kept.

    Models accept both so that a caller holding cached graphs does not rebuild them per model.
    """
    graphs = []
    for position, item in enumerate(items):
        if isinstance(item, Sample):
            graphs.append(sample_to_graph(item))
        elif isinstance(item, Data):
            graphs.append(item)
        else:
            raise TypeError(f"samples[{position}]: expected a Sample or a graph Data, got {type(item).__name__}")
    return graphs


def measured_only(graphs: Sequence[Data], argument: str = "samples") -> list[Data]:
    """``graphs`` unchanged if all carry a measured run time; otherwise a ``ValueError`` naming them."""
    missing = [(int(g.pipeline_id), int(g.schedule_id)) for g in graphs if not torch.isfinite(g.y).all()]
    if missing:
        raise ValueError(
            f"{argument}: {len(missing)} samples have no measured run time, e.g. "
            f"(pipeline_id, schedule_id) {missing[:3]}"
        )
    return list(graphs)


def schedule_edge_tensor(sample: Sample) -> torch.Tensor:
    """The schedule edge features of both directions (2E, 7), in :func:`edge_tensors`' edge order (zeros if absent)."""
    num_edges = int(sample.edges.shape[1])
    values = sample.schedule_edge_features
    if values is None:
        values = np.zeros((num_edges, NUM_SCHEDULE_EDGE_FEATURES), dtype=np.float32)
    forward = torch.as_tensor(np.asarray(values, dtype=np.float32).reshape(num_edges, NUM_SCHEDULE_EDGE_FEATURES))
    return torch.cat([forward, forward])
