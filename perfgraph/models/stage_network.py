"""What the neural cost models share: a cost per stage, and the pipeline's run time as their sum.

A network predicts a log cost ``z`` for every stage; the stage costs ``exp(z) * scale`` ms are positive
and the pipeline's run time is their sum, computed in log space as ``logsumexp(z) + log(scale)`` so that
it is exact and stable across the five orders of magnitude that run times span. The scale is set from
the training run times before training (:meth:`StageCostNetwork.set_runtime_scale`), so that a fresh
network starts near the right magnitude, and is saved with the weights as a buffer.

A machine-aware network (``machine_features=True``) modulates every encoded stage by the machine
the run time belongs to (:class:`MachineFiLM`), so that one network predicts for several machine kinds.
With ``cost_terms=True`` the head predicts coefficients of Halide's hand-designed cost terms and a
free term, mixed by :class:`~perfgraph.models.term_readout.TermReadout`, instead of the log cost itself.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch_geometric.data import Batch
from torch_geometric.utils import scatter

from perfgraph.features.layout import FEATURES_PER_STAGE, NUM_MACHINE_FEATURES, SCHEDULE_SLICE
from perfgraph.models.term_readout import NUM_OUTPUTS, TermReadout


def stage_encoder(hidden: int) -> nn.Module:
    """The MLP that embeds one stage's 326 normalised features into ``hidden`` channels."""
    return nn.Sequential(nn.Linear(FEATURES_PER_STAGE, hidden), nn.GELU(), nn.Linear(hidden, hidden))


def cost_head(width: int, hidden: int, outputs: int = 1) -> nn.Module:
    """The MLP that maps a stage's ``width``-channel state to its (unscaled) log cost, or ``outputs`` values."""
    return nn.Sequential(nn.LayerNorm(width), nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, outputs))


def graph_logsumexp(values: torch.Tensor, batch: torch.Tensor, num_graphs: int) -> torch.Tensor:
    """``log(sum(exp(values)))`` over the nodes of each graph, without overflow; shape ``(num_graphs,)``."""
    peak = scatter(values.detach(), batch, dim=0, dim_size=num_graphs, reduce="max")
    total = scatter((values - peak[batch]).exp(), batch, dim=0, dim_size=num_graphs, reduce="sum")
    return total.log() + peak


class MachineFiLM(nn.Module):
    """Feature-wise linear modulation by the machine: ``h * (1 + scale(m)) + shift(m)``.

    FiLM (Perez et al., "FiLM: Visual Reasoning with a General Conditioning Layer", AAAI 2018), with
    ``scale`` and ``shift`` linear in the machine features ``m``
    (:meth:`~perfgraph.measure.host.MachineInfo.feature_vector`). Zero-initialised, so a fresh
    network starts machine-blind and learns how much each machine changes every stage's state,
    which lets two machines rank the same schedules differently, not only scale them.

    >>> film = MachineFiLM(4)
    >>> h = torch.ones(3, 4)
    >>> bool((film(h, torch.rand(3, NUM_MACHINE_FEATURES)) == h).all())  # identity until trained
    True
    """

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.linear = nn.Linear(NUM_MACHINE_FEATURES, 2 * hidden)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, h: torch.Tensor, machine_x: torch.Tensor) -> torch.Tensor:
        """``h`` (..., hidden) modulated by ``machine_x`` (..., 8), broadcast against it."""
        scale, shift = self.linear(machine_x).chunk(2, dim=-1)
        return h * (1 + scale) + shift


def output_stage_mask(batch: Batch) -> torch.Tensor:
    """Boolean (num_nodes,): the first node of every graph of ``batch`` (its output stage)."""
    mask = torch.ones_like(batch.batch, dtype=torch.bool)
    mask[1:] = batch.batch[1:] != batch.batch[:-1]
    return mask


class StageCostNetwork(nn.Module):
    """Base class: subclasses implement :meth:`node_heads`; this adds the stage readout and the sum.

    Subclasses encode stages with :meth:`encode_stages`, which applies the machine modulation when
    the network was built with ``machine_features``, and build their head with :attr:`head_outputs`
    outputs per stage: 1 (the log cost), or :data:`~perfgraph.models.term_readout.NUM_OUTPUTS` with
    ``cost_terms``, whose readout needs ``term_readout.fit(normalizer, training_x)`` before training
    (:meth:`~perfgraph.models.neural.NeuralCostModel.fit` does it).
    """

    #: Whether message passing reads each schedule's own edge features (the search path then passes them).
    reads_schedule_edges: bool = False

    def __init__(self, hidden: int = 64, machine_features: bool = False, cost_terms: bool = False) -> None:
        super().__init__()
        self.register_buffer("log_scale", torch.zeros(()))
        self.encoder = stage_encoder(hidden)
        self.machine_film = MachineFiLM(hidden) if machine_features else None
        self.term_readout = TermReadout() if cost_terms else None
        self.head_outputs = NUM_OUTPUTS if cost_terms else 1

    def encode_stages(self, batch: Batch) -> torch.Tensor:
        """Every stage of the batch encoded, (num_nodes, hidden), modulated by its graph's machine if machine-aware."""
        h = self.encoder(batch.x)
        if self.machine_film is not None:
            h = self.machine_film(h, batch.machine_x[batch.batch])
        return h

    def node_heads(self, batch: Batch) -> torch.Tensor:
        """The head's outputs for every stage of the batch, shape ``(num_nodes, head_outputs)``."""
        raise NotImplementedError

    def stage_log_costs_from_heads(
        self, heads: torch.Tensor, schedule_x: torch.Tensor, is_output: torch.Tensor
    ) -> torch.Tensor:
        """Unscaled log costs (...) from head outputs (..., head_outputs) and standardised schedule features (..., 39).

        ``is_output`` (...) marks the output stages; only the ``cost_terms`` readout reads the last two.
        """
        if self.term_readout is None:
            return heads.squeeze(-1)
        return self.term_readout(heads, schedule_x, is_output)

    def node_log_costs(self, batch: Batch) -> torch.Tensor:
        """The unscaled log cost of every stage of the batch, shape ``(num_nodes,)``."""
        return self.stage_log_costs_from_heads(
            self.node_heads(batch), batch.x[:, SCHEDULE_SLICE], output_stage_mask(batch)
        )

    def set_runtime_scale(self, scale_ms: float) -> None:
        if not (scale_ms > 0 and math.isfinite(scale_ms)):
            raise ValueError(f"scale_ms must be positive and finite, got {scale_ms!r}")
        self.log_scale.fill_(math.log(scale_ms))

    def stage_log_costs(self, batch: Batch) -> torch.Tensor:
        """Natural log of every stage's cost in ms, shape ``(num_nodes,)``."""
        return self.node_log_costs(batch) + self.log_scale

    def forward(self, batch: Batch) -> torch.Tensor:
        """Predicted natural-log run time (ms) of every graph in the batch, shape ``(num_graphs,)``."""
        return graph_logsumexp(self.node_log_costs(batch), batch.batch, batch.num_graphs) + self.log_scale
