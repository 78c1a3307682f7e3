"""PyG's ``GINEConv`` applied to many schedules of one pipeline at once, stage-major.

In a search batch every graph has the same ``S`` stages and ``2E`` edges, so node states can be
laid out as one (S, N, hidden) block instead of (N * S, hidden) rows: gathering the producers of
every edge for all ``N`` schedules copies ``2E`` contiguous (N, hidden) slabs, the edge projection
is computed for ``2E`` edges rather than ``N * 2E``, and the sum at each consumer adds slabs. The
arithmetic is :class:`torch_geometric.nn.GINEConv`'s, with its own weights::

    out_i = nn((1 + eps) * x_i + sum_{j -> i} relu(x_j + lin(e_ji)))

(``tests/test_fast_predict.py`` checks it against the PyG layer.) It measured 1.7-1.9 times the
throughput of PyG's message passing over the flattened batch on one CPU core (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import torch
from torch_geometric.nn import GINEConv


def gine_stage_major(
    conv: GINEConv, x: torch.Tensor, edge_index: torch.Tensor, edge_attr: torch.Tensor | None
) -> torch.Tensor:
    """``conv`` on stage-major node states ``x`` (S, N, hidden) of N graphs sharing one structure.

    ``edge_index`` (2, 2E) is one graph's; ``edge_attr`` is shared by the N graphs (2E, edge_dim) or
    each graph's own (2E, N, edge_dim). Returns (S, N, hidden).
    """
    source, target = edge_index
    edges = edge_attr if conv.lin is None else conv.lin(edge_attr)
    if edges.dim() == 2:
        edges = edges.unsqueeze(1)
    messages = x.index_select(0, source).add_(edges).relu_()  # (2E, N, hidden)
    out = torch.zeros_like(x).index_add_(0, target, messages)
    out.addcmul_(x, 1 + conv.eps)
    return conv.nn(out)
