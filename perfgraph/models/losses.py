"""Training losses on predicted log run times, selectable by name.

Every loss takes ``(pred_log, true_log, group)``: predicted and measured natural-log run times of a
batch of samples and each sample's ranking group (its pipeline, on its machine). Four terms, and
weighted sums of them:

* ``mse``: mean squared error of the log run time; errors are relative, so a 2x error costs the same
  on a 0.1 ms and on a 1 s pipeline.
* ``relative``: the symmetric relative error ``max(pred/true, true/pred) - 1`` (0.5 = 50 % off), made
  linear beyond a 20x error so that a badly initialised model still gets bounded gradients.
* ``rank``: a pairwise logistic loss on the order of the schedules *of one pipeline* -- what a schedule
  search needs -- ignoring pairs whose measured times are within 1 % (measurement noise).
* ``listnet``: a listwise loss on the same groups (ListNet, Cao et al., "Learning to Rank: From
  Pairwise Approach to Listwise Approach", ICML 2007): the cross-entropy between the top-one
  probabilities ``softmax(-log_time / T)`` of the measured and of the predicted times, ``T`` =
  :data:`LISTNET_TEMPERATURE`. Unlike ``rank``, which counts every misordered pair alike, it weighs
  the fastest schedules of a pipeline most, which is what picking the best schedule needs.

Names combine with ``+`` and optional weights: ``"mse+rank"``, ``"relative+0.5*rank"``.

>>> import torch
>>> loss = make_loss("mse+0.5*rank")
>>> float(loss(torch.tensor([0.0, 1.0]), torch.tensor([0.0, 1.0]), torch.tensor([7, 7]))) < 0.2
True
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch_geometric.utils import scatter

LossTerm = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

#: Beyond this log-ratio the relative loss grows linearly (exp(3) = 20x off).
RELATIVE_LINEAR_FROM = 3.0
#: Pairs of schedules whose measured log times differ by less than this are not ranked.
RANK_TIE_THRESHOLD = 0.01
#: Temperature of the listwise loss, in natural-log run time: a schedule 25 % slower than another
#: (ln 1.25 = 0.22) gets about e^-1 of its top-one probability, far above the ~4 % measurement noise.
LISTNET_TEMPERATURE = 0.25


def mse_log_loss(pred_log: torch.Tensor, true_log: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(pred_log, true_log)


def relative_error_loss(pred_log: torch.Tensor, true_log: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """Mean of ``exp(|pred_log - true_log|) - 1``, continued linearly (same slope) past a 20x error."""
    gap = (pred_log - true_log).abs()
    knee = RELATIVE_LINEAR_FROM
    inside = torch.expm1(gap.clamp(max=knee))
    outside = math.exp(knee) * (gap - knee).clamp(min=0.0)
    return (inside + outside).mean()


def pairwise_rank_loss(pred_log: torch.Tensor, true_log: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """Mean ``log(1 + exp(pred_slow - pred_fast))`` over ordered pairs of schedules of one pipeline.

    Zero (with a gradient path) when the batch has no such pair.
    """
    same_pipeline = group.unsqueeze(0) == group.unsqueeze(1)
    slower = (true_log.unsqueeze(0) - true_log.unsqueeze(1)) > RANK_TIE_THRESHOLD  # [i, j]: j slower than i
    pairs = same_pipeline & slower
    if not bool(pairs.any()):
        return pred_log.sum() * 0.0
    margin = pred_log.unsqueeze(0) - pred_log.unsqueeze(1)  # [i, j]: pred_j - pred_i, should be > 0
    return F.softplus(-margin[pairs]).mean()


def _group_log_softmax(scores: torch.Tensor, index: torch.Tensor, num_groups: int) -> torch.Tensor:
    """``log_softmax`` of ``scores`` within each group of ``index`` (values 0..num_groups-1)."""
    peak = scatter(scores.detach(), index, dim=0, dim_size=num_groups, reduce="max")
    shifted = scores - peak[index]
    total = scatter(shifted.exp(), index, dim=0, dim_size=num_groups, reduce="sum")
    return shifted - total.log()[index]


def listwise_rank_loss(pred_log: torch.Tensor, true_log: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """ListNet's top-one cross-entropy per group of at least two schedules, averaged over the groups.

    ``-sum_i softmax(-true/T)_i * log_softmax(-pred/T)_i`` within each group, minus its minimum (the
    entropy of the measured distribution), so that a perfect ranking with the right gaps costs 0.
    Zero (with a gradient path) when no group has two schedules.

    >>> import torch
    >>> t = torch.tensor([0.0, 0.5, 1.0, 2.0])
    >>> g = torch.tensor([0, 0, 0, 1])
    >>> float(listwise_rank_loss(t, t, g)) < 1e-6 < float(listwise_rank_loss(t.flip(0), t, g))
    True
    """
    _, index = torch.unique(group, return_inverse=True)
    num_groups = int(index.max()) + 1 if index.numel() else 0
    counts = torch.bincount(index, minlength=num_groups)
    ranked = counts[index] > 1
    if not bool(ranked.any()):
        return pred_log.sum() * 0.0
    target_log = _group_log_softmax(-true_log / LISTNET_TEMPERATURE, index, num_groups)
    pred_log_p = _group_log_softmax(-pred_log / LISTNET_TEMPERATURE, index, num_groups)
    per_sample = target_log.exp() * (target_log - pred_log_p)  # KL divergence terms, >= 0 summed per group
    return per_sample[ranked].sum() / int((counts > 1).sum())


LOSS_TERMS: dict[str, LossTerm] = {
    "mse": mse_log_loss,
    "relative": relative_error_loss,
    "rank": pairwise_rank_loss,
    "listnet": listwise_rank_loss,
}


class Loss:
    """A weighted sum of named loss terms; build one with :func:`make_loss`."""

    def __init__(self, name: str, terms: list[tuple[float, str]]) -> None:
        self.name = name
        self.terms = terms

    @property
    def uses_pairs(self) -> bool:
        """Whether batches should keep schedules of one pipeline together."""
        return any(term in ("rank", "listnet") for _, term in self.terms)

    def __call__(self, pred_log: torch.Tensor, true_log: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
        total = pred_log.new_zeros(())
        for weight, term in self.terms:
            total = total + weight * LOSS_TERMS[term](pred_log, true_log, group)
        return total

    def __repr__(self) -> str:
        return f"Loss({self.name!r})"


def make_loss(name: str) -> Loss:
    """Parse ``"term[+weight*term...]"`` into a :class:`Loss`; raises ``ValueError`` naming bad parts."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"loss must be a name like 'mse' or 'mse+0.5*rank', got {name!r}")
    terms: list[tuple[float, str]] = []
    for part in name.replace(" ", "").split("+"):
        weight_text, star, term = part.rpartition("*")
        try:
            weight = float(weight_text) if star else 1.0
        except ValueError:
            raise ValueError(f"loss {name!r}: bad weight {weight_text!r} in {part!r}") from None
        if term not in LOSS_TERMS:
            raise ValueError(f"loss {name!r}: unknown term {term!r}; known: {', '.join(LOSS_TERMS)}")
        if not weight > 0:
            raise ValueError(f"loss {name!r}: weights must be positive, got {weight_text!r}")
        terms.append((weight, term))
    return Loss(name, terms)
