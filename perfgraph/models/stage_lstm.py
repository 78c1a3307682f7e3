"""The non-graph control: an LSTM over a pipeline's stages, ignoring the edges.

Halide lists stages output first, so reversing the featurization order gives (roughly) a topological
order, inputs first -- the sequence a TLP- or Tiramisu-style model reads. The LSTM's output at every
stage is mapped to that stage's log cost with the same head and sum readout as the GNN, so the two
models differ only in how stages exchange information: along the graph, or along the sequence.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from torch_geometric.data import Batch
from torch_geometric.utils import to_dense_batch

from perfgraph.models.stage_network import StageCostNetwork, cost_head


def reversed_stage_order(batch: Batch) -> torch.Tensor:
    """The permutation that reverses the node order inside every graph (it is its own inverse)."""
    graph_start = batch.ptr[batch.batch]
    graph_size = (batch.ptr[1:] - batch.ptr[:-1])[batch.batch]
    position = torch.arange(batch.num_nodes, device=batch.x.device) - graph_start
    return graph_start + graph_size - 1 - position


class StageLSTM(StageCostNetwork):
    """Node encoder, ``layers``-deep LSTM over the stages (inputs first), per-stage cost head."""

    def __init__(
        self,
        hidden: int = 64,
        layers: int = 2,
        bidirectional: bool = False,
        dropout: float = 0.0,
        machine_features: bool = False,
    ) -> None:
        super().__init__(hidden, machine_features)
        self.lstm = nn.LSTM(
            hidden,
            hidden,
            num_layers=layers,
            batch_first=True,
            bidirectional=bidirectional,
            dropout=dropout if layers > 1 else 0.0,
        )
        width = hidden * (2 if bidirectional else 1)
        self.head = cost_head(width, hidden, self.head_outputs)

    def node_heads(self, batch: Batch) -> torch.Tensor:
        order = reversed_stage_order(batch)
        h = self.encode_stages(batch)[order]
        dense, mask = to_dense_batch(h, batch.batch, batch_size=batch.num_graphs)
        lengths = mask.sum(dim=1).cpu()
        packed = pack_padded_sequence(dense, lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.lstm(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=dense.shape[1])
        return self.head(out[mask])[order]

    def shared_node_heads(self, h: torch.Tensor, edge_index: torch.Tensor, edge_attr: torch.Tensor) -> torch.Tensor:
        """Head outputs (S, N, head_outputs) of ``N`` schedules of one pipeline, from the stages ``h`` (S, N, hidden).

        Every sequence has the same ``S`` stages, so nothing is padded or packed; the edges are unused.
        """
        out, _ = self.lstm(h.flip(0).transpose(0, 1))  # (N, S, width), inputs first as node_heads reads
        return self.head(out).transpose(0, 1).flip(0)
