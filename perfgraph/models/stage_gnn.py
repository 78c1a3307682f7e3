"""The graph network: node encoder, residual message-passing layers, per-stage cost head.

Following Singh et al. (MAPS 2022), each stage's 326 Halide features are embedded by an MLP, refined
by ``layers`` rounds of message passing along the stage graph (both directions: a stage's cost
depends on its producers and on its consumers), and mapped to a per-stage log cost; the pipeline's
run time is the sum of stage costs (:class:`~perfgraph.models.stage_network.StageCostNetwork`).

Every layer is pre-normalised and residual, ``h = h + act(conv(LayerNorm(h)))``, so deeper stacks
start as the identity and do not over-smooth small graphs. LayerNorm rather than BatchNorm: batches
hold few, very different pipelines, and prediction must not depend on what else is in the batch.
"""

from __future__ import annotations

import torch
from torch import nn
from torch_geometric.data import Batch
from torch_geometric.nn import GATv2Conv, GCNConv, GINEConv, SAGEConv, TransformerConv

from perfgraph.features.graphs import EDGE_ATTR_DIM
from perfgraph.models.stage_network import StageCostNetwork, cost_head, stage_encoder

#: Convolution types, and whether each reads edge features.
CONVS: dict[str, bool] = {"gcn": False, "sage": False, "gatv2": True, "gin": True, "transformer": True}


def make_conv(kind: str, hidden: int, heads: int = 4) -> nn.Module:
    """A PyG convolution mapping ``hidden`` to ``hidden`` channels; attention types use ``heads`` heads."""
    if kind not in CONVS:
        raise ValueError(f"conv must be one of {sorted(CONVS)}, got {kind!r}")
    if kind in ("gatv2", "transformer") and hidden % heads:
        raise ValueError(f"hidden ({hidden}) must be divisible by heads ({heads}) for conv {kind!r}")
    if kind == "gcn":
        return GCNConv(hidden, hidden)
    if kind == "sage":
        return SAGEConv(hidden, hidden)
    if kind == "gatv2":
        return GATv2Conv(hidden, hidden // heads, heads=heads, edge_dim=EDGE_ATTR_DIM)
    if kind == "gin":
        mlp = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        return GINEConv(mlp, train_eps=True, edge_dim=EDGE_ATTR_DIM)
    return TransformerConv(hidden, hidden // heads, heads=heads, edge_dim=EDGE_ATTR_DIM)


class StageGNN(StageCostNetwork):
    """``conv`` in :data:`CONVS`; ``hidden`` channels; ``layers`` message-passing rounds (0 = no graph)."""

    def __init__(
        self, conv: str = "gatv2", hidden: int = 64, layers: int = 3, heads: int = 4, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.uses_edge_attr = CONVS.get(conv, False)
        self.encoder = stage_encoder(hidden)
        self.convs = nn.ModuleList(make_conv(conv, hidden, heads) for _ in range(layers))
        self.norms = nn.ModuleList(nn.LayerNorm(hidden) for _ in range(layers))
        self.dropout = nn.Dropout(dropout)
        self.head = cost_head(hidden, hidden)
        if conv not in CONVS:  # make_conv raised already unless layers == 0
            raise ValueError(f"conv must be one of {sorted(CONVS)}, got {conv!r}")

    def node_log_costs(self, batch: Batch) -> torch.Tensor:
        h = self.encoder(batch.x)
        for conv, norm in zip(self.convs, self.norms, strict=True):
            edge_args = (batch.edge_attr,) if self.uses_edge_attr else ()
            z = conv(norm(h), batch.edge_index, *edge_args)
            h = h + self.dropout(nn.functional.gelu(z))
        return self.head(h).squeeze(-1)
