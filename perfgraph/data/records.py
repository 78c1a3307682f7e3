"""Immutable records that flow from measurement into the models.

A :class:`Sample` is what every cost model consumes: one schedule of one pipeline, with Halide's
per-stage featurization, the stage graph and (when measured) its run time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from perfgraph.features.layout import (
    FEATURES_PER_STAGE,
    NUM_EDGE_FEATURES,
    NUM_MACHINE_FEATURES,
    NUM_SCHEDULE_EDGE_FEATURES,
)


@dataclass(frozen=True)
class Sample:
    """One (pipeline, schedule) pair as the models see it.

    ``features`` holds one Halide featurization row per stage (shape ``(n_stages, 326)``);
    ``edges`` holds producer -> consumer pairs of row indices (shape ``(2, n_edges)``) and
    ``edge_features`` one row per edge (shape ``(n_edges, NUM_EDGE_FEATURES)``).
    ``runtime_ms`` is the measured minimum run time, or ``None`` for an unmeasured candidate.
    ``schedule_edge_features`` (shape ``(n_edges, k)``) says where each producer is computed and
    stored relative to its consumer under this schedule
    (:func:`~perfgraph.schedules.schedule_source.schedule_edge_features`); ``None`` reads as zeros.
    ``machine_kind`` names the machine kind the run time belongs to (or is asked for) and
    ``machine_features`` (shape ``(NUM_MACHINE_FEATURES,)``) describes that machine
    (:meth:`~perfgraph.measure.host.MachineInfo.feature_vector`); give both or neither. Only
    machine-aware models read them.
    """

    pipeline_id: int
    schedule_id: int
    pipeline_name: str
    family: str
    features: np.ndarray
    edges: np.ndarray
    edge_features: np.ndarray
    stage_names: tuple[str, ...] = field(default=())
    runtime_ms: float | None = None
    schedule_edge_features: np.ndarray | None = None
    machine_kind: str | None = None
    machine_features: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.features.ndim != 2 or self.features.shape[1] != FEATURES_PER_STAGE:
            raise ValueError(
                f"Sample {self.pipeline_id}/{self.schedule_id}: features must have shape (n, "
                f"{FEATURES_PER_STAGE}), got {self.features.shape}"
            )
        if self.edges.ndim != 2 or self.edges.shape[0] != 2:
            raise ValueError(f"Sample {self.pipeline_id}/{self.schedule_id}: edges must be (2, E)")
        if not np.issubdtype(self.edges.dtype, np.integer):
            raise ValueError(
                f"Sample {self.pipeline_id}/{self.schedule_id}: edges must be integer indices, not {self.edges.dtype}"
            )
        if self.edge_features.shape != (self.edges.shape[1], NUM_EDGE_FEATURES):
            raise ValueError(
                f"Sample {self.pipeline_id}/{self.schedule_id}: edge_features must be "
                f"({self.edges.shape[1]}, {NUM_EDGE_FEATURES}), got {self.edge_features.shape}"
            )
        schedule_edges = self.schedule_edge_features
        expected = (self.edges.shape[1], NUM_SCHEDULE_EDGE_FEATURES)
        if schedule_edges is not None and schedule_edges.shape != expected:
            raise ValueError(
                f"Sample {self.pipeline_id}/{self.schedule_id}: schedule_edge_features must have one row per "
                f"edge and {NUM_SCHEDULE_EDGE_FEATURES} columns, {expected}, got shape {schedule_edges.shape}"
            )
        machine = self.machine_features
        if (machine is None) != (not self.machine_kind):
            raise ValueError(
                f"Sample {self.pipeline_id}/{self.schedule_id}: give machine_kind and machine_features together "
                f"(got machine_kind={self.machine_kind!r} and {'no ' if machine is None else ''}machine_features)"
            )
        if machine is not None and np.shape(machine) != (NUM_MACHINE_FEATURES,):
            raise ValueError(
                f"Sample {self.pipeline_id}/{self.schedule_id}: machine_features must have shape "
                f"({NUM_MACHINE_FEATURES},), got {np.shape(machine)}"
            )
        if self.edges.size and (self.edges.min() < 0 or self.edges.max() >= self.num_stages):
            raise ValueError(f"Sample {self.pipeline_id}/{self.schedule_id}: edge index out of range")

    @property
    def num_stages(self) -> int:
        return int(self.features.shape[0])
