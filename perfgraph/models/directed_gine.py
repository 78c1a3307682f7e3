"""A direction-aware GIN layer: producers and consumers of a stage are aggregated by separate weights.

The stage graph holds every dependency twice, producer -> consumer and back, with a direction flag in
the last pipeline edge column (:func:`~perfgraph.features.graphs.edge_tensors`). A plain
:class:`~torch_geometric.nn.GINEConv` sums both kinds of neighbour into one vector before its MLP, so
"what I read" and "who reads me" are told apart only by the flag's share of each message. Following
Dir-GNN (Rossi et al., "Edge Directionality Improves Learning on Heterophilic Graphs", LoG 2023),
this layer runs one ``GINEConv`` over the edges from producers and another over the edges from
consumers, and averages them, ``out = (gin_in(x, E_in) + gin_out(x, E_out)) / 2``.

>>> import torch
>>> layer = DirectedGINE(hidden=4, edge_dim=2, direction_column=1)
>>> x = torch.randn(2, 4)
>>> edge_index = torch.tensor([[0, 1], [1, 0]])  # 0 -> 1 and its reverse
>>> edge_attr = torch.tensor([[1.0, 0.0], [1.0, 1.0]])  # column 1: the direction flag
>>> layer(x, edge_index, edge_attr).shape
torch.Size([2, 4])
"""

from __future__ import annotations

import torch
from torch import nn
from torch_geometric.nn import GINEConv

from perfgraph.features.layout import NUM_EDGE_FEATURES


def gin_mlp(hidden: int) -> nn.Module:
    """The MLP every GIN layer applies after its sum: ``hidden`` to ``hidden`` channels."""
    return nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, hidden))


class DirectedGINE(nn.Module):
    """Two GINE convolutions, one per edge direction, told apart by ``edge_attr[:, direction_column]``.

    Inputs: node states (nodes, hidden), ``edge_index`` (2, edges), ``edge_attr`` (edges, edge_dim)
    whose ``direction_column`` (default: the column after the stored edge features, as
    :func:`~perfgraph.features.graphs.edge_tensors` lays them out) is 0 on edges from a producer to its
    consumer and 1 on the reverse. Output (nodes, hidden).
    """

    def __init__(self, hidden: int, edge_dim: int, direction_column: int = NUM_EDGE_FEATURES) -> None:
        super().__init__()
        if not 0 <= direction_column < edge_dim:
            raise ValueError(f"direction_column must index one of the {edge_dim} edge columns, got {direction_column}")
        self.direction_column = direction_column
        self.from_producers = GINEConv(gin_mlp(hidden), train_eps=True, edge_dim=edge_dim)
        self.from_consumers = GINEConv(gin_mlp(hidden), train_eps=True, edge_dim=edge_dim)

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor, edge_attr: torch.Tensor) -> torch.Tensor:
        backward = edge_attr[:, self.direction_column] > 0.5
        forward = ~backward
        inward = self.from_producers(x, edge_index[:, forward], edge_attr[forward])
        outward = self.from_consumers(x, edge_index[:, backward], edge_attr[backward])
        return (inward + outward) / 2
