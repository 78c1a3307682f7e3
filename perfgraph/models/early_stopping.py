"""The one early-stopping rule of every epoch loop: patience epochs without a strictly lower score.

Both epoch loops, :func:`~perfgraph.models.training.train_network` (the neural models) and
:meth:`~perfgraph.models.halide_net.HalideCostModel.fit` (Halide's network, trained per pipeline as
Adams2019's trainer does), watch a score (the validation loss, or the training loss without a
validation set) through this class, so they stop alike and restore the same best weights.

>>> from torch import nn
>>> net = nn.Linear(1, 1)
>>> stopper = EarlyStopping(net, patience=2)
>>> [stopper.step(score, net) for score in (3.0, 2.0, 2.0, 2.5)]   # two epochs without improvement
[False, False, False, True]
>>> stopper.best_score, stopper.best_epoch
(2.0, 1)
"""

from __future__ import annotations

import copy
import math

from torch import nn


class EarlyStopping:
    """Keeps the weights of the epoch with the lowest score; says when ``patience`` epochs brought none lower.

    ``step(score, module)`` is called once per epoch, after it; a score must be strictly lower than the
    best so far to count as an improvement. ``restore(module)`` loads the best weights back (the
    initial ones when no epoch improved on infinity, e.g. every score was NaN).
    """

    def __init__(self, module: nn.Module, patience: int) -> None:
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 0:
            raise ValueError(f"patience must be a non-negative int, got {patience!r}")
        self.patience = patience
        self.best_score = math.inf
        self.best_epoch: int | None = None
        self.best_state = copy.deepcopy(module.state_dict())
        self.epochs = 0
        self.since_best = 0

    def step(self, score: float, module: nn.Module) -> bool:
        """Record one epoch's ``score``; ``True`` when training should stop now."""
        if score < self.best_score:
            self.best_score, self.best_epoch = score, self.epochs
            self.best_state = copy.deepcopy(module.state_dict())
            self.since_best = 0
        else:
            self.since_best += 1
        self.epochs += 1
        return self.since_best >= self.patience

    def restore(self, module: nn.Module) -> None:
        """Load the best epoch's weights into ``module``."""
        module.load_state_dict(self.best_state)
