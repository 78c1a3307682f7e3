"""The non-graph neural control: the same features and training loop, an LSTM instead of a GNN.

If the GNN beats this model *trained with the same loss and budget*, the stage graph is what helps,
not the per-stage features or the training loop, which both models share through
:class:`~perfgraph.models.neural.NeuralCostModel`. The defaults are not the same: the GNN defaults to
the ``mse+listnet`` loss (since session 10; the shipped ``models/gnn.pt`` was trained with
``mse+rank``), this model to ``mse`` (so the shipped ``models/gnn.pt`` and ``models/sequence.pt``
differ in their loss); ``benchmarks/compare_models.py`` trains both with one
loss, budget and several seeds.
"""

from __future__ import annotations

from typing import Any

from perfgraph.models.neural import NeuralCostModel, check_positive
from perfgraph.models.stage_lstm import StageLSTM


class SequenceCostModel(NeuralCostModel):
    """Run time as the sum of per-stage costs from an LSTM over the stages in topological order.

    Architecture: ``hidden`` channels, ``layers`` stacked LSTM layers, ``bidirectional``, ``dropout``
    between LSTM layers. Training: the keywords of :class:`~perfgraph.models.gnn.GNNCostModel`, all with
    :class:`~perfgraph.models.neural.NeuralCostModel`'s defaults, so ``loss`` defaults to ``mse`` here
    but to ``mse+listnet`` for the GNN: pass ``loss`` explicitly to compare the two.
    """

    name = "sequence"

    def __init__(
        self,
        hidden: int = 64,
        layers: int = 2,
        bidirectional: bool = False,
        dropout: float = 0.0,
        **training: Any,
    ) -> None:
        check_positive("hidden", hidden)
        check_positive("layers", layers)
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.hidden, self.layers, self.dropout = hidden, layers, dropout
        self.bidirectional = bool(bidirectional)
        super().__init__(**training)

    def build_network(self) -> StageLSTM:
        return StageLSTM(self.hidden, self.layers, self.bidirectional, self.dropout, self.machine_features)
