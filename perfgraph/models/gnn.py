"""The graph-neural-network cost model (Singh, Hegarty, Leather, Steiner, MAPS 2022).

>>> model = GNNCostModel(conv="sage", hidden=32, layers=2, epochs=50, device="cpu")  # doctest: +SKIP
>>> model.fit(parts.train, parts.valid).predict(parts.test)    # run times in ms    # doctest: +SKIP
>>> model.stage_costs(parts.test[0])                           # ms per stage       # doctest: +SKIP
>>> model.save("out/gnn.pt"); GNNCostModel.load("out/gnn.pt")                       # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from perfgraph.models.neural import NeuralCostModel, check_positive
from perfgraph.models.stage_gnn import CONVS, StageGNN


class GNNCostModel(NeuralCostModel):
    """Predicts run time as the sum of per-stage costs computed by a GNN over the stage graph.

    Architecture: ``conv`` (one of ``gcn``, ``sage``, ``gatv2``, ``gin``, ``gin-dir``, ``transformer``),
    ``hidden`` channels, ``layers`` residual message-passing layers, ``heads`` attention heads (``gatv2`` and
    ``transformer``), ``dropout``, ``schedule_edges`` (the convolutions also read where each producer is
    computed and stored relative to its consumer under the schedule:
    :mod:`~perfgraph.schedules.schedule_source`; without it, only the pipeline's edge features, the same
    for every schedule), ``cost_terms`` (the head predicts coefficients of Halide's hand-designed
    cost terms and a free term instead of each stage's log cost:
    :mod:`~perfgraph.models.term_readout`), ``global_context`` (every layer adds the graph's mean stage
    state to each stage: a virtual node, :class:`~perfgraph.models.stage_gnn.StageGNN`). Training: the
    keywords of :class:`NeuralCostModel`, with its defaults, except ``loss``, which defaults to
    ``mse+listnet`` here (it beat ``mse+rank`` on every validation metric over 5 seeds:
    ``benchmarks/compare_models.py``, ``benchmarks/RESULTS.md`` session 10):
    ``loss`` (see :func:`~perfgraph.models.losses.make_loss`), ``features`` (``all``, or ``schedule``
    for the 39 schedule features only: :data:`~perfgraph.models.neural.FEATURE_SETS`), Adam ``lr``
    and ``weight_decay``, ``lr_schedule`` (``constant`` or ``plateau``, for ``fit``:
    :data:`~perfgraph.models.training.LR_SCHEDULES`; ``update`` always runs at a constant rate), at most
    ``epochs`` epochs with early stopping after ``patience`` epochs without validation improvement,
    ``batch_size`` graphs per step, ``seed``, ``device`` (``auto``, ``cpu``, ``cuda``).
    ``update`` fine-tunes for ``update_epochs`` at ``lr * update_lr_factor`` on the new samples and as many
    replayed earlier ones (at most ``replay`` kept). ``machine_features`` makes the model machine-aware:
    it reads every sample's machine (:attr:`~perfgraph.data.records.Sample.machine_features`), so one
    model trains on and predicts for several machine kinds. ``progress`` shows a progress bar.
    """

    name = "gnn"

    def __init__(
        self,
        conv: str = "gin",
        hidden: int = 64,
        layers: int = 3,
        heads: int = 4,
        dropout: float = 0.0,
        schedule_edges: bool = False,
        cost_terms: bool = False,
        global_context: bool = False,
        **training: Any,
    ) -> None:
        if conv not in CONVS:
            raise ValueError(f"conv must be one of {sorted(CONVS)}, got {conv!r}")
        check_positive("hidden", hidden)
        check_positive("heads", heads)
        if isinstance(layers, bool) or not isinstance(layers, int) or layers < 0:
            raise ValueError(f"layers must be a non-negative int, got {layers!r}")
        if conv in ("gatv2", "transformer") and hidden % heads:
            raise ValueError(f"hidden ({hidden}) must be divisible by heads ({heads}) for conv {conv!r}")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        if not isinstance(schedule_edges, bool):
            raise ValueError(f"schedule_edges must be True or False, got {schedule_edges!r}")
        if schedule_edges and (layers == 0 or not CONVS[conv]):
            raise ValueError(
                f"schedule_edges needs message passing that reads edge features: conv {conv!r} with "
                f"layers={layers} reads none (use gin, gatv2 or transformer with layers >= 1)"
            )
        self.conv, self.hidden, self.layers, self.heads, self.dropout = conv, hidden, layers, heads, dropout
        if not isinstance(cost_terms, bool):
            raise ValueError(f"cost_terms must be True or False, got {cost_terms!r}")
        self.schedule_edges, self.cost_terms = schedule_edges, cost_terms
        if not isinstance(global_context, bool):
            raise ValueError(f"global_context must be True or False, got {global_context!r}")
        if global_context and layers == 0:
            raise ValueError("global_context is added by every message-passing layer: it needs layers >= 1")
        self.global_context = global_context
        super().__init__(**{"loss": "mse+listnet", **training})

    def build_network(self) -> StageGNN:
        return StageGNN(
            self.conv,
            self.hidden,
            self.layers,
            self.heads,
            self.dropout,
            self.schedule_edges,
            self.machine_features,
            self.cost_terms,
            self.global_context,
        )
