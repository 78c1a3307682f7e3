"""Per-feature standardisation of stage graphs, fitted on the training split only.

Graphs from :func:`~perfgraph.features.graphs.sample_to_graph` hold log-transformed features; this
centres and scales each node feature and each stored edge feature (the direction flag is left alone).
Statistics come from the training split only, so validation and test pipelines are seen exactly as
an unseen pipeline would be. A feature that is constant on the training split is centred but not
scaled (its deviations stay on the natural-log scale), and every standardised value is clipped, so
an unseen op type cannot blow up the network's input.

The normaliser is stored in checkpoints as plain tensors (:meth:`state_dict`).

>>> import torch
>>> from torch_geometric.data import Data
>>> g = Data(x=torch.tensor([[0.0] * 325 + [1.0], [2.0] * 325 + [1.0]]), edge_attr=torch.zeros(0, 10))
>>> norm = FeatureNormalizer().fit([g])
>>> norm.transform(g).x[:, 0].tolist(), norm.transform(g).x[:, -1].tolist()
([-1.0, 1.0], [0.0, 0.0])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch_geometric.data import Data

from perfgraph.features.layout import FEATURES_PER_STAGE, NUM_EDGE_FEATURES


class FeatureNormalizer:
    """Standardises ``Data.x`` and the first ``NUM_EDGE_FEATURES`` columns of ``Data.edge_attr``.

    ``min_std``: a feature whose training standard deviation is below this counts as constant and is
    not scaled. ``clip``: standardised values are clipped to ``[-clip, clip]``.
    """

    def __init__(self, min_std: float = 1e-3, clip: float = 20.0) -> None:
        if not min_std > 0:
            raise ValueError(f"min_std must be positive, got {min_std!r}")
        if not clip > 0:
            raise ValueError(f"clip must be positive, got {clip!r}")
        self.min_std = float(min_std)
        self.clip = float(clip)
        self.node_mean: torch.Tensor | None = None
        self.node_std: torch.Tensor | None = None
        self.edge_mean: torch.Tensor | None = None
        self.edge_std: torch.Tensor | None = None

    @property
    def is_fitted(self) -> bool:
        return self.node_mean is not None

    def fit(self, graphs: Sequence[Data]) -> FeatureNormalizer:
        """Learn mean and standard deviation per feature over all stages (and edges) of ``graphs``."""
        if len(graphs) == 0:
            raise ValueError("graphs: cannot fit a FeatureNormalizer on an empty training split")
        x = torch.cat([g.x for g in graphs]).double()
        if x.shape[1] != FEATURES_PER_STAGE:
            raise ValueError(f"graphs: node features must have {FEATURES_PER_STAGE} columns, got {x.shape[1]}")
        self.node_mean, self.node_std = self._moments(x)
        edges = torch.cat([g.edge_attr[:, :NUM_EDGE_FEATURES] for g in graphs]).double()
        if edges.shape[0] == 0:  # no edges at all in training: identity on edges
            self.edge_mean = torch.zeros(NUM_EDGE_FEATURES)
            self.edge_std = torch.ones(NUM_EDGE_FEATURES)
        else:
            self.edge_mean, self.edge_std = self._moments(edges)
        return self

    def _moments(self, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = values.mean(dim=0)
        std = values.std(dim=0, unbiased=False) if values.shape[0] > 1 else torch.zeros_like(mean)
        std = torch.where(std < self.min_std, torch.ones_like(std), std)
        return mean.float(), std.float()

    def transform(self, graph: Data) -> Data:
        """A shallow copy of ``graph`` with standardised ``x`` and ``edge_attr``; ``graph`` is unchanged."""
        self._require_fitted("transform")
        out = graph.__copy__()  # shallow: the other tensors are shared, not copied
        out.x = self.standardize_nodes(graph.x)
        out.edge_attr = self.standardize_edges(graph.edge_attr)
        return out

    def standardize_nodes(self, x: torch.Tensor, columns: slice = slice(0, FEATURES_PER_STAGE)) -> torch.Tensor:
        """Log-transformed node features ``x`` (..., k) holding the feature ``columns``, standardised.

        Column-wise, so standardising the schedule and the pipeline columns apart (as the batched
        search path does) gives bit-for-bit what :meth:`transform` gives for whole rows.
        """
        self._require_fitted("standardize_nodes")
        return ((x - self.node_mean[columns]) / self.node_std[columns]).clamp(-self.clip, self.clip)

    def standardize_edges(self, edge_attr: torch.Tensor) -> torch.Tensor:
        """A copy of ``edge_attr`` (E, 10 or 17) with the stored edge features standardised (not the rest)."""
        self._require_fitted("standardize_edges")
        edge_attr = edge_attr.clone()
        edge_attr[:, :NUM_EDGE_FEATURES] = ((edge_attr[:, :NUM_EDGE_FEATURES] - self.edge_mean) / self.edge_std).clamp(
            -self.clip, self.clip
        )
        return edge_attr

    def _require_fitted(self, method: str) -> None:
        if not self.is_fitted:
            raise RuntimeError(f"FeatureNormalizer.{method} called before fit (or load)")

    def transform_all(self, graphs: Sequence[Data]) -> list[Data]:
        return [self.transform(g) for g in graphs]

    def state_dict(self) -> dict[str, torch.Tensor | float]:
        """Plain tensors and floats, loadable with ``torch.load(weights_only=True)``."""
        if not self.is_fitted:
            raise RuntimeError("FeatureNormalizer.state_dict called before fit")
        return {
            "node_mean": self.node_mean.clone(),
            "node_std": self.node_std.clone(),
            "edge_mean": self.edge_mean.clone(),
            "edge_std": self.edge_std.clone(),
            "min_std": self.min_std,
            "clip": self.clip,
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor | float]) -> FeatureNormalizer:
        normalizer = cls(min_std=float(state["min_std"]), clip=float(state["clip"]))
        for key in ("node_mean", "node_std", "edge_mean", "edge_std"):
            setattr(normalizer, key, torch.as_tensor(state[key], dtype=torch.float32).clone())
        if normalizer.node_mean.shape != (FEATURES_PER_STAGE,):
            raise ValueError(
                f"normaliser state: node_mean has shape {tuple(normalizer.node_mean.shape)}, "
                f"expected ({FEATURES_PER_STAGE},)"
            )
        return normalizer
