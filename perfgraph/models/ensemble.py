"""A deep ensemble of neural cost models: a prediction with an uncertainty.

Members are the same model (GNN by default) trained from different seeds (initialisation and batch
order), as in Lakshminarayanan, Pritzel and Blundell, "Simple and Scalable Predictive Uncertainty
Estimation using Deep Ensembles" (NeurIPS 2017). The prediction is the mean of the members' log run
times (a geometric mean in ms); the uncertainty is their standard deviation in natural-log units, so
``sigma = 0.1`` reads as "about 10%".

Seed-only ensembles are known to be overconfident: the members agree more with each other than with
the measurement. After fitting, ``sigma_scale_`` is set on the validation set so that the scaled
standard deviation matches the root-mean-square standardised error there (variance scaling, Levi et
al., "Evaluating and Calibrating Uncertainty Prediction in Regression Tasks", 2022). It is fitted on
validation only; :func:`~perfgraph.evaluate.metrics.interval_coverage` measures the calibration on held-out data.

>>> model = EnsembleCostModel(size=3, epochs=2, hidden=8, progress=False)
>>> model.fit(train, valid).predict(test, return_std=True)           # doctest: +SKIP
(array([1.83, 0.41, ...]), array([0.12, 0.31, ...]))
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch_geometric.data import Data

from perfgraph.data.records import Sample
from perfgraph.features.graphs import as_graphs, measured_only
from perfgraph.models.base import CostModel, NotFittedError
from perfgraph.models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from perfgraph.models.gnn import GNNCostModel
from perfgraph.models.neural import NeuralCostModel, check_positive
from perfgraph.models.sequence import SequenceCostModel

#: The models an ensemble can be made of (neural ones: their members differ by seed).
MEMBER_CLASSES: dict[str, type[NeuralCostModel]] = {cls.name: cls for cls in (GNNCostModel, SequenceCostModel)}


class EnsembleCostModel(CostModel):
    """``size`` copies of a neural model trained from seeds ``seed``, ``seed + 1``, ...

    ``member_params`` go to every member's constructor (``loss``, ``conv``, ``lr`` ...), with
    ``epochs`` (``None``: the member's default) and ``device``. ``predict(samples)`` gives run times in
    ms; ``predict(samples, return_std=True)`` also the calibrated standard deviation of the log run
    time (the convention of scikit-learn's ``GaussianProcessRegressor.predict``).
    """

    name = "ensemble"
    gives_uncertainty = True

    def __init__(
        self,
        member: str = "gnn",
        size: int = 5,
        seed: int = 0,
        epochs: int | None = None,
        device: str = "auto",
        **member_params: Any,
    ) -> None:
        if member not in MEMBER_CLASSES:
            raise ValueError(f"member must be one of {sorted(MEMBER_CLASSES)}, got {member!r}")
        check_positive("size", size)
        if size < 2:
            raise ValueError(f"size must be at least 2 (a standard deviation needs two members), got {size}")
        self.member, self.size, self.seed, self.epochs, self.device = member, size, seed, epochs, device
        self.member_params = dict(member_params)
        self.members_ = [self._new_member(i) for i in range(size)]  # validates member_params now
        self.sigma_scale_ = 1.0
        self.fitted_ = False

    def get_params(self) -> dict[str, Any]:
        params = {"member": self.member, "size": self.size, "seed": self.seed, "epochs": self.epochs}
        return {**params, "device": self.device, **self.member_params}

    def _new_member(self, index: int) -> NeuralCostModel:
        options = {"seed": self.seed + index, "device": self.device, **self.member_params}
        if self.epochs is not None:
            options["epochs"] = self.epochs
        return MEMBER_CLASSES[self.member](**options)

    @property
    def log_(self) -> list[dict]:
        """The members' training logs, one after the other, each entry tagged with its ``member``."""
        return [{**entry, "member": i} for i, model in enumerate(self.members_) for entry in model.log_]

    @property
    def is_fitted(self) -> bool:
        return self.fitted_

    def _require_fitted(self, method: str) -> None:
        if not self.fitted_:
            raise NotFittedError(f"{type(self).__name__}.{method}: call fit() or load() first")

    def fit(self, train: Sequence[Sample | Data], valid: Sequence[Sample | Data]) -> EnsembleCostModel:
        """Fit every member on the same data, then set ``sigma_scale_`` on ``valid`` (1 if it is empty)."""
        train_graphs, valid_graphs = as_graphs(train), as_graphs(valid)
        self.members_ = [self._new_member(i).fit(train_graphs, valid_graphs) for i in range(self.size)]
        self.fitted_ = True
        self.sigma_scale_ = 1.0
        measured = measured_only(valid_graphs, "valid")
        if measured:
            mean, sd = self.predict_log(measured)
            truth = np.array([float(g.y) for g in measured])
            self.sigma_scale_ = variance_scale(mean, sd, truth)
        return self

    def predict_log(self, samples: Sequence[Sample | Data]) -> tuple[np.ndarray, np.ndarray]:
        """Mean and *uncalibrated* standard deviation over members of the natural-log run time (ms)."""
        self._require_fitted("predict")
        logs = np.stack([np.log(member.predict(samples)) for member in self.members_])  # (size, n)
        return logs.mean(axis=0), logs.std(axis=0, ddof=1)

    def predict(
        self, samples: Sequence[Sample | Data], return_std: bool = False
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Run times in ms (geometric mean of the members), and with ``return_std`` the calibrated
        standard deviation of the log run time: the measured time is expected within
        ``ms * exp(±sd)`` about 68% of the time."""
        mean, sd = self.predict_log(samples)
        if return_std:
            return np.exp(mean), sd * self.sigma_scale_
        return np.exp(mean)

    def update(self, samples: Sequence[Sample | Data]) -> None:
        """Every member's :meth:`~perfgraph.models.neural.NeuralCostModel.update`; ``sigma_scale_`` is kept."""
        graphs = as_graphs(samples)
        for member in self.members_:
            member.update(graphs)
        self.fitted_ = True

    def stage_costs(self, sample: Sample | Data) -> np.ndarray:
        """Per-stage costs in ms: the geometric mean over members (they need not sum to ``predict``)."""
        self._require_fitted("stage_costs")
        logs = np.stack([np.log(member.stage_costs(sample)) for member in self.members_])
        return np.exp(logs.mean(axis=0))

    def save(self, path: str | Path) -> None:
        self._require_fitted("save")
        payload = {
            "params": self.get_params(),
            "sigma_scale": float(self.sigma_scale_),
            "members": [member.to_payload() for member in self.members_],
        }
        save_checkpoint(path, self.name, payload, machine_kinds=self.machine_kinds)

    @classmethod
    def load(cls, path: str | Path, device: str | None = None) -> EnsembleCostModel:
        payload = load_checkpoint(path, cls.name)
        params = dict(payload["params"])
        if device is not None:
            params["device"] = device
        elif params.get("device") == "cuda" and not torch.cuda.is_available():
            params["device"] = "auto"  # as NeuralCostModel.load does for each member
        model = cls(**params)
        member_class = MEMBER_CLASSES[model.member]
        model.members_ = [member_class.from_payload(p, params["device"]) for p in payload["members"]]
        if len(model.members_) != model.size:
            raise CheckpointError(f"{path}: ensemble of size {model.size} holds {len(model.members_)} members")
        model.sigma_scale_ = float(payload["sigma_scale"])
        model.fitted_ = True
        return model


def variance_scale(mean: np.ndarray, sd: np.ndarray, truth: np.ndarray) -> float:
    """The factor ``s`` that makes ``s * sd`` match the errors: ``sqrt(mean(((truth - mean) / sd)^2))``.

    Standard deviations are floored at 1e-6 only to avoid dividing by zero. The root mean square
    follows the tails of the errors: with heavy-tailed errors the scaled sd covers more than 68% at
    ±1 sd (``benchmarks/uncertainty.py`` measures it).

    >>> variance_scale(np.zeros(4), np.full(4, 0.1), np.array([0.2, -0.2, 0.2, -0.2]))
    2.0
    """
    z = (np.asarray(truth) - np.asarray(mean)) / np.maximum(np.asarray(sd), 1e-6)
    return float(math.sqrt(float(np.mean(z**2)))) if len(z) else 1.0
