"""A stage's cost as a learned mix of Halide's hand-designed cost terms (the ``cost_terms`` head).

Halide's Adams2019 network predicts only coefficients; a stage's run time is their dot product with
hand-designed terms (vectors computed, lines loaded, bytes stored, parallel tasks, working set:
:func:`~perfgraph.models.halide_terms.cost_terms`). This readout lets a stage network do the same in
log space, keeping a free term beside them:

    log cost = logsumexp(z_0, z_k + log T_k - offset_k for every term k with T_k > 0)

where ``z`` (…, :data:`NUM_OUTPUTS`) is the network's per-stage head output and ``T_k`` the raw terms
of the stage under its schedule. ``exp(z_k)`` is the (positive) coefficient of term ``k``; ``offset_k``
centres each term's log on the training stages, so that a fresh network starts near the run-time
scale. The terms are computed from the standardised schedule features the network already reads, by
undoing the standardisation and the log transform (:meth:`TermReadout.raw_schedule_features`), so
the training and the search paths need nothing more than they pass today.

>>> import torch
>>> readout = TermReadout()
>>> z = torch.zeros(2, NUM_OUTPUTS)
>>> readout(z, torch.zeros(2, 39), torch.tensor([True, False])).shape
torch.Size([2])
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from perfgraph.features.layout import SCHEDULE_SLICE
from perfgraph.features.normalization import FeatureNormalizer
from perfgraph.models.halide_terms import NUM_COEFFICIENTS, UNUSED_COEFFICIENTS, cost_terms

#: The terms the readout mixes: every one Halide's formula reads.
USED_TERMS = tuple(k for k in range(NUM_COEFFICIENTS) if k not in UNUSED_COEFFICIENTS)
#: Head outputs the readout needs: the free term, then one log coefficient per used term.
NUM_OUTPUTS = 1 + len(USED_TERMS)
#: Benchmarks run on one thread (``HL_NUM_THREADS=1``), so parallel tasks fill one core.
NUM_CORES = 1


class TermReadout(nn.Module):
    """Per-stage log cost from head outputs ``z`` and the stage's standardised schedule features.

    Call :meth:`fit` once, before training, with the fitted normaliser and the training stages; its
    statistics are buffers, saved with the network's weights.
    """

    def __init__(self) -> None:
        super().__init__()
        num_schedule = SCHEDULE_SLICE.stop - SCHEDULE_SLICE.start
        self.register_buffer("schedule_mean", torch.zeros(num_schedule))
        self.register_buffer("schedule_std", torch.ones(num_schedule))
        self.register_buffer("term_offset", torch.zeros(len(USED_TERMS)))

    @torch.no_grad()
    def fit(self, normalizer: FeatureNormalizer, raw_stage_x: Sequence[torch.Tensor]) -> TermReadout:
        """Take the normaliser's schedule statistics; centre each term's log on ``raw_stage_x``.

        ``raw_stage_x``: the log-transformed (not standardised) features of training graphs, each
        (stages, 326) with the output stage first.
        """
        self.schedule_mean.copy_(normalizer.node_mean[SCHEDULE_SLICE])
        self.schedule_std.copy_(normalizer.node_std[SCHEDULE_SLICE])
        x = torch.cat([stages[:, SCHEDULE_SLICE] for stages in raw_stage_x]).double()
        is_output = torch.zeros(x.shape[0], dtype=torch.bool)
        is_output[torch.tensor([0] + [len(stages) for stages in raw_stage_x[:-1]]).cumsum(0)] = True
        log_terms, has = self._log_terms(_raw_values(x), is_output)
        log_sum = torch.where(has, log_terms, torch.zeros_like(log_terms)).sum(dim=0)
        count = has.sum(dim=0)
        mean = torch.where(count > 0, log_sum / count.clamp(min=1), torch.zeros_like(log_sum))
        self.term_offset.copy_((mean + math.log(NUM_OUTPUTS)).float())
        return self

    def raw_schedule_features(self, schedule_x: torch.Tensor) -> torch.Tensor:
        """Standardised schedule features (..., 39) back to Halide's raw values (float64).

        Values within float32 rounding of an integer are snapped to it: the terms test counts exactly
        (``inlined_calls == 0``, ``inner_parallelism > 1``), and a serial stage whose parallelism came
        back as 1.0000000038 would be costed as a parallel one.
        """
        return _raw_values(schedule_x.double() * self.schedule_std.double() + self.schedule_mean.double())

    def forward(self, z: torch.Tensor, schedule_x: torch.Tensor, is_output: torch.Tensor) -> torch.Tensor:
        """Log cost (...) of every stage: ``z`` (..., NUM_OUTPUTS), ``schedule_x`` (..., 39) standardised.

        ``is_output`` (...) marks each pipeline's output stage (Halide costs its stores apart).
        """
        with torch.no_grad():
            log_terms, has = self._log_terms(self.raw_schedule_features(schedule_x), is_output)
            shifted = torch.where(has, log_terms - self.term_offset.double(), torch.full_like(log_terms, -math.inf))
        parts = torch.cat([z[..., :1], z[..., 1:] + shifted.to(z.dtype)], dim=-1)
        return torch.logsumexp(parts, dim=-1)

    @staticmethod
    def _log_terms(raw: torch.Tensor, is_output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Log of the used terms (..., len(USED_TERMS)) and where they are positive."""
        terms = cost_terms(raw, NUM_CORES, is_output=is_output)[..., list(USED_TERMS)]
        has = terms > 0
        return torch.log(torch.where(has, terms, torch.ones_like(terms))), has


#: Relative distance to an integer within which a recovered raw value is taken to be that integer:
#: float32 standardised features carry about 1e-7 relative error in log space.
SNAP_TOLERANCE = 1e-5


def _raw_values(log_values: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`~perfgraph.features.graphs.signed_log1p`, snapped to integers within :data:`SNAP_TOLERANCE`."""
    raw = torch.sign(log_values) * torch.expm1(log_values.abs())
    nearest = raw.round()
    close = (raw - nearest).abs() <= SNAP_TOLERANCE * nearest.abs().clamp(min=1.0)
    return torch.where(close, nearest, raw)
