"""The graph network: node encoder, residual message-passing layers, per-stage cost head.

Following Singh et al. (MAPS 2022), each stage's 326 Halide features are embedded by an MLP, refined
by ``layers`` rounds of message passing along the stage graph (both directions: a stage's cost
depends on its producers and on its consumers), and mapped to a per-stage log cost; the pipeline's
run time is the sum of stage costs (:class:`~perfgraph.models.stage_network.StageCostNetwork`).

Every layer is pre-normalised and residual, ``h = h + act(conv(LayerNorm(h)))``, so deeper stacks
start as the identity and do not over-smooth small graphs. With ``global_context`` every layer also
adds a summary of the whole graph to each stage, ``h = h + mlp(mean(h))`` (``mlp``: LayerNorm, Linear,
GELU, Linear), so that a stage's cost can depend on the schedule of stages it has no short path to: a
simplified, stateless virtual node joined to every stage (after Gilmer et al., "Neural Message Passing
for Quantum Chemistry", ICML 2017, and the virtual-node GIN of the OGB baselines, Hu et al., NeurIPS
2020, which keep the virtual node's state from layer to layer). LayerNorm rather than BatchNorm: batches
hold few, very different pipelines, and prediction must not depend on what else is in the batch.
"""

from __future__ import annotations

import torch
from torch import nn
from torch_geometric.data import Batch
from torch_geometric.nn import GATv2Conv, GCNConv, GINEConv, SAGEConv, TransformerConv
from torch_geometric.utils import scatter

from perfgraph.features.graphs import EDGE_ATTR_DIM, PIPELINE_EDGE_ATTR_DIM
from perfgraph.features.pipeline_batch import batched_edge_index
from perfgraph.models.directed_gine import DirectedGINE, gin_mlp
from perfgraph.models.shared_gine import gine_stage_major
from perfgraph.models.stage_network import StageCostNetwork, cost_head

#: Convolution types, and whether each reads edge features.
#: ``gin-dir`` is GIN with separate weights for producers and consumers (:mod:`~perfgraph.models.directed_gine`).
CONVS: dict[str, bool] = {"gcn": False, "sage": False, "gatv2": True, "gin": True, "gin-dir": True, "transformer": True}


def make_conv(kind: str, hidden: int, heads: int = 4, edge_dim: int = PIPELINE_EDGE_ATTR_DIM) -> nn.Module:
    """A PyG convolution mapping ``hidden`` to ``hidden`` channels; attention types use ``heads`` heads.

    ``edge_dim``: how many ``edge_attr`` columns the convolutions that read edge features read.
    """
    if kind not in CONVS:
        raise ValueError(f"conv must be one of {sorted(CONVS)}, got {kind!r}")
    if kind in ("gatv2", "transformer") and hidden % heads:
        raise ValueError(f"hidden ({hidden}) must be divisible by heads ({heads}) for conv {kind!r}")
    if kind == "gcn":
        return GCNConv(hidden, hidden)
    if kind == "sage":
        return SAGEConv(hidden, hidden)
    if kind == "gatv2":
        return GATv2Conv(hidden, hidden // heads, heads=heads, edge_dim=edge_dim)
    if kind == "gin":
        return GINEConv(gin_mlp(hidden), train_eps=True, edge_dim=edge_dim)
    if kind == "gin-dir":
        return DirectedGINE(hidden, edge_dim)
    return TransformerConv(hidden, hidden // heads, heads=heads, edge_dim=edge_dim)


def global_context_mlp(hidden: int) -> nn.Module:
    """The virtual node's update: a graph's mean stage state (..., hidden) to what every stage adds (..., hidden)."""
    return nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, hidden))


class StageGNN(StageCostNetwork):
    """``conv`` in :data:`CONVS`; ``hidden`` channels; ``layers`` message-passing rounds (0 = no graph).

    With ``schedule_edges`` the convolutions read all :data:`~perfgraph.features.graphs.EDGE_ATTR_DIM`
    edge columns (the schedule edge features too), else the first ``PIPELINE_EDGE_ATTR_DIM``.
    ``dropout`` applies to the encoded stages and to every layer's update (so it regularises the
    network without message passing too); it is off at inference.
    With ``machine_features`` every encoded stage is modulated by its sample's machine
    (:class:`~perfgraph.models.stage_network.MachineFiLM`); with ``cost_terms`` the head mixes
    Halide's cost terms (:class:`~perfgraph.models.term_readout.TermReadout`). With ``global_context``
    every layer adds the graph's mean stage state, through an MLP, to every stage (a virtual node).
    """

    def __init__(
        self,
        conv: str = "gatv2",
        hidden: int = 64,
        layers: int = 3,
        heads: int = 4,
        dropout: float = 0.0,
        schedule_edges: bool = False,
        machine_features: bool = False,
        cost_terms: bool = False,
        global_context: bool = False,
    ) -> None:
        super().__init__(hidden, machine_features, cost_terms)
        self.uses_edge_attr = CONVS.get(conv, False)
        self.reads_schedule_edges = schedule_edges and self.uses_edge_attr and layers > 0
        self.edge_dim = EDGE_ATTR_DIM if schedule_edges else PIPELINE_EDGE_ATTR_DIM
        self.convs = nn.ModuleList(make_conv(conv, hidden, heads, self.edge_dim) for _ in range(layers))
        self.norms = nn.ModuleList(nn.LayerNorm(hidden) for _ in range(layers))
        self.contexts = nn.ModuleList(global_context_mlp(hidden) for _ in range(layers if global_context else 0))
        self.dropout = nn.Dropout(dropout)
        self.head = cost_head(hidden, hidden, self.head_outputs)
        if conv not in CONVS:  # make_conv raised already unless layers == 0
            raise ValueError(f"conv must be one of {sorted(CONVS)}, got {conv!r}")

    def node_heads(self, batch: Batch) -> torch.Tensor:
        h = self.dropout(self.encode_stages(batch))
        return self.refine(h, batch.edge_index, batch.edge_attr[:, : self.edge_dim], batch.batch, batch.num_graphs)

    def refine(
        self, h: torch.Tensor, edge_index: torch.Tensor, edge_attr: torch.Tensor, graph: torch.Tensor, num_graphs: int
    ) -> torch.Tensor:
        """Message passing and cost head: encoded stages ``h`` (nodes, hidden) to head outputs (nodes, head_outputs).

        ``graph`` (nodes,) is every stage's graph in the batch, of ``num_graphs``: the global context pools by it.
        """
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms, strict=True)):
            edge_args = (edge_attr,) if self.uses_edge_attr else ()
            z = conv(norm(h), edge_index, *edge_args)
            h = h + self.dropout(nn.functional.gelu(z))
            if self.contexts:
                pooled = scatter(h, graph, dim=0, dim_size=num_graphs, reduce="mean")
                h = h + self.dropout(self.contexts[i](pooled))[graph]
        return self.head(h)

    def shared_node_heads(self, h: torch.Tensor, edge_index: torch.Tensor, edge_attr: torch.Tensor) -> torch.Tensor:
        """Head outputs (S, N, head_outputs) of ``N`` schedules of one pipeline, from the stages ``h`` (S, N, hidden).

        ``edge_index`` (2, 2E) is the pipeline's, shared by all ``N``; ``edge_attr`` is either shared too
        (2E, 10) or, for a network that :attr:`reads_schedule_edges`, every schedule's (2E, N, 17). ``gin``
        layers run stage-major (:func:`~perfgraph.models.shared_gine.gine_stage_major`); other
        convolutions get the flattened batch, its edges offset once, vectorised. Inference only.
        """
        if all(isinstance(conv, GINEConv) for conv in self.convs):
            for i, (conv, norm) in enumerate(zip(self.convs, self.norms, strict=True)):
                h = h + self.dropout(nn.functional.gelu(gine_stage_major(conv, norm(h), edge_index, edge_attr)))
                if self.contexts:
                    h = h + self.dropout(self.contexts[i](h.mean(dim=0)))
            return self.head(h)
        s, n, hidden = h.shape
        if edge_attr.dim() == 3:
            edge_attr = edge_attr.transpose(0, 1).reshape(-1, edge_attr.shape[-1])  # graph-major
        elif self.uses_edge_attr:
            edge_attr = edge_attr.repeat(n, 1)
        flat = h.transpose(0, 1).reshape(n * s, hidden)  # graph-major, as a PyG batch
        graph = torch.arange(n, device=h.device).repeat_interleave(s)
        heads = self.refine(flat, batched_edge_index(edge_index, n, s), edge_attr, graph, n)
        return heads.view(n, s, -1).transpose(0, 1)
