"""Many schedules of one pipeline as one batch: what a schedule search asks a cost model to score.

A search scores thousands of candidate schedules of *one* pipeline. Of a stage's 326 features only
the 39 schedule features depend on the schedule; the 287 pipeline features, the edges and the edge
features are computed by Halide from the algorithm alone (the store checks it on every candidate, see
:func:`~perfgraph.data.store.algorithm_hash`). So a :class:`PipelineBatch` holds the varying part once
per schedule and the shared part once per pipeline, and a network can encode the shared part once
(:mod:`perfgraph.models.shared_inference`) instead of once per schedule. Its tensors are those of
:func:`~perfgraph.features.graphs.sample_to_graph`, column for column, so nothing changes but the
layout.

Which samples share a pipeline is decided by content, not by ids: samples are grouped when their
pipeline columns, edges, edge features and machine features are equal byte for byte.

>>> import numpy as np
>>> from perfgraph.data.records import Sample
>>> def toy(schedule_id, pipeline_value):
...     features = np.full((2, 326), pipeline_value, np.float32)
...     features[:, :39] = schedule_id
...     return Sample(0, schedule_id, "toy", "toy", features, np.array([[1], [0]]), np.zeros((1, 9), np.float32))
>>> samples = [toy(1, 5.0), toy(2, 7.0), toy(3, 5.0)]
>>> group_by_pipeline(samples)
[[0, 2], [1]]
>>> batch = pipeline_batch([samples[0], samples[2]])
>>> tuple(batch.schedule_x.shape), tuple(batch.pipeline_x.shape), tuple(batch.edge_index.shape)
((2, 2, 39), (2, 287), (2, 2))
>>> tuple(batch.edge_attr.shape), tuple(batch.schedule_edge_attr.shape)
((2, 10), (2, 2, 7))
>>> batch.to_batch().x.shape, batch.to_batch().edge_attr.shape  # the PyG batch of the two graphs
(torch.Size([4, 326]), torch.Size([4, 17]))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch
from torch_geometric.data import Batch

from perfgraph.data.records import Sample
from perfgraph.features.graphs import EDGE_ATTR_DIM, edge_tensors, machine_tensor, schedule_edge_tensor, signed_log1p
from perfgraph.features.layout import PIPELINE_SLICE, SCHEDULE_SLICE


@dataclass(frozen=True)
class PipelineBatch:
    """``N`` schedules of one pipeline of ``S`` stages and ``E`` edges, log-transformed like a graph's ``x``.

    ``schedule_x`` (S, N, 39): the schedule features of every stage of every schedule, stage-major,
    so that gathering a stage's producers for all ``N`` schedules copies contiguous blocks;
    ``schedule_edge_attr`` (2E, N, 7), the schedule edge features, edge-major likewise. Shared by
    all ``N``: ``pipeline_x`` (S, 287), the pipeline features; ``edge_index`` (2, 2E) and ``edge_attr``
    (2E, 10), the pipeline part of the edge features; both directions as in
    :func:`~perfgraph.features.graphs.sample_to_graph`; ``machine_x`` (8,), the machine features
    (the samples of a batch share their machine too).
    """

    schedule_x: torch.Tensor
    pipeline_x: torch.Tensor
    edge_index: torch.Tensor
    edge_attr: torch.Tensor
    schedule_edge_attr: torch.Tensor
    machine_x: torch.Tensor

    @property
    def num_graphs(self) -> int:
        return int(self.schedule_x.shape[1])

    @property
    def num_stages(self) -> int:
        return int(self.schedule_x.shape[0])

    def to(self, device: torch.device | str) -> PipelineBatch:
        """The same batch with every tensor on ``device``."""
        return PipelineBatch(*(getattr(self, field.name).to(device) for field in fields(self)))

    def full_edge_attr(self) -> torch.Tensor:
        """Every schedule's whole ``edge_attr``, edge-major: (2E, N, 17), pipeline part first."""
        shared = self.edge_attr.unsqueeze(1).expand(-1, self.num_graphs, -1)
        return torch.cat([shared, self.schedule_edge_attr], dim=-1)

    def to_batch(self) -> Batch:
        """The PyG batch of all ``N`` graphs (``x``, ``edge_index``, ``edge_attr``, ``batch``, ``ptr``).

        Equal to ``Batch.from_data_list`` of the samples' graphs in those fields, built with one
        vectorised offset of the shared edges instead of a collation per graph.
        """
        n, s = self.num_graphs, self.num_stages
        x = torch.cat([self.schedule_x, self.pipeline_x.unsqueeze(1).expand(-1, n, -1)], dim=-1)
        x = x.transpose(0, 1).reshape(n * s, -1)
        return Batch(
            x=x,
            edge_index=batched_edge_index(self.edge_index, n, s),
            edge_attr=self.full_edge_attr().transpose(0, 1).reshape(-1, EDGE_ATTR_DIM),
            machine_x=self.machine_x.unsqueeze(0).expand(n, -1),
            batch=torch.arange(n, device=x.device).repeat_interleave(s),
            ptr=torch.arange(0, (n + 1) * s, s, device=x.device),
        )


def batched_edge_index(edge_index: torch.Tensor, num_graphs: int, num_stages: int) -> torch.Tensor:
    """``edge_index`` (2, M) of one graph repeated for ``num_graphs`` graphs of ``num_stages`` nodes: (2, N*M).

    Graph ``i``'s copy comes ``i``-th and its node indices are offset by ``i * num_stages``, as in a
    PyG ``Batch``.

    >>> batched_edge_index(torch.tensor([[1], [0]]), 3, 2).tolist()
    [[1, 3, 5], [0, 2, 4]]
    """
    offsets = torch.arange(num_graphs, device=edge_index.device) * num_stages
    return (edge_index.unsqueeze(1) + offsets.view(1, -1, 1)).reshape(2, -1)


def group_by_pipeline(samples: Sequence[Sample]) -> list[list[int]]:
    """Positions of ``samples`` grouped by equal pipeline columns, edges, edge features and machine features.

    Groups come in the order of their first sample, positions ascending inside each group. Equality
    is byte for byte, so two pipelines never share a group however their ids or names were set.
    """
    # Bytes are compared, never hashed: a comparison stops at the first difference, a hash reads all.
    buckets: dict[tuple[int, int], list[tuple[tuple[bytes, ...], list[int]]]] = {}
    groups: list[list[int]] = []
    for position, sample in enumerate(samples):
        content = _pipeline_bytes(sample)
        bucket = buckets.setdefault((sample.num_stages, int(sample.edges.shape[1])), [])
        for reference, members in bucket:
            if reference == content:
                members.append(position)
                break
        else:
            groups.append([position])
            bucket.append((content, groups[-1]))
    return groups


def _pipeline_bytes(sample: Sample) -> tuple[bytes, bytes, bytes, bytes]:
    return (
        sample.features[:, PIPELINE_SLICE].tobytes(),
        np.asarray(sample.edges, dtype=np.int64).tobytes(),
        sample.edge_features.tobytes(),
        b"" if sample.machine_features is None else np.asarray(sample.machine_features, np.float32).tobytes(),
    )


def pipeline_batch(samples: Sequence[Sample]) -> PipelineBatch:
    """The batch of ``samples``, which must share their pipeline (one group of :func:`group_by_pipeline`).

    The shared tensors are built from the first sample; pass a group, not an arbitrary list.
    """
    if not samples:
        raise ValueError("samples: a pipeline batch needs at least one sample")
    first = samples[0]
    schedule_part = np.stack([sample.features[:, SCHEDULE_SLICE] for sample in samples], axis=1)
    edge_index, edge_attr = edge_tensors(first)
    return PipelineBatch(
        schedule_x=torch.from_numpy(signed_log1p(schedule_part)),
        pipeline_x=torch.from_numpy(signed_log1p(first.features[:, PIPELINE_SLICE])),
        edge_index=edge_index,
        edge_attr=edge_attr,
        schedule_edge_attr=torch.stack([schedule_edge_tensor(sample) for sample in samples], dim=1),
        machine_x=machine_tensor(first)[0],
    )
