"""A deep ensemble of neural cost models: a prediction with an uncertainty.

Members are one model (GNN by default) trained from different seeds (initialisation and batch
order), as in Lakshminarayanan, Pritzel and Blundell, "Simple and Scalable Predictive Uncertainty
Estimation using Deep Ensembles" (NeurIPS 2017), or, with ``member_configs``, models of several
configurations (below). The prediction is the mean of the members' log run times (a geometric mean
in ms); the uncertainty is their standard deviation in natural-log units, so ``sigma = 0.1`` reads as
"about 10%".

Seed-only ensembles are known to be overconfident: the members agree more with each other than with
the measurement. After fitting, ``sigma_scale_`` is set on the validation set so that the scaled
standard deviation matches the root-mean-square standardised error there (variance scaling, Levi et
al., "Evaluating and Calibrating Uncertainty Prediction in Regression Tasks", 2022). It is fitted on
validation only; :func:`~perfgraph.evaluate.metrics.interval_coverage` measures the calibration on held-out data.

>>> model = EnsembleCostModel(size=3, epochs=2, hidden=8, progress=False)
>>> model.fit(train, valid).predict(test, return_std=True)           # doctest: +SKIP
(array([1.83, 0.41, ...]), array([0.12, 0.31, ...]))

Members need not share a configuration: ``member_configs`` gives each member its own constructor
arguments over the shared ones (a *heterogeneous* ensemble, whose members err differently: Zaidi et
al., "Neural Ensemble Search for Uncertainty Estimation and Dataset Shift", NeurIPS 2021), and
:func:`pool_ensembles` makes one ensemble of the members of several trained ones, e.g. members with
and without message passing (``benchmarks/RESULTS.md``, session 16).

>>> mixed = EnsembleCostModel(size=3, hidden=8, member_configs=[{"layers": 0}, {"layers": 0}, {"conv": "gin-dir"}])
>>> [(m.layers, m.conv, m.seed) for m in mixed.members_]
[(0, 'gin', 0), (0, 'gin', 1), (3, 'gin-dir', 2)]
"""

from __future__ import annotations

import copy
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

#: The models an ensemble can be made of (neural ones; one class per ensemble).
MEMBER_CLASSES: dict[str, type[NeuralCostModel]] = {cls.name: cls for cls in (GNNCostModel, SequenceCostModel)}


class EnsembleCostModel(CostModel):
    """``size`` neural models of one class trained from seeds ``seed``, ``seed + 1``, ...

    ``member_params`` go to every member's constructor (``loss``, ``conv``, ``lr`` ...), with
    ``epochs`` (``None``: the member's default) and ``device``; ``member_configs`` (one dict per
    member, or ``None``) overrides them member by member, ``seed`` included. ``predict(samples)``
    gives run times in ms; ``predict(samples, return_std=True)`` also the calibrated standard
    deviation of the log run time (the convention of scikit-learn's ``GaussianProcessRegressor.predict``).
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
        member_configs: Sequence[dict[str, Any]] | None = None,
        **member_params: Any,
    ) -> None:
        if member not in MEMBER_CLASSES:
            raise ValueError(f"member must be one of {sorted(MEMBER_CLASSES)}, got {member!r}")
        check_positive("size", size)
        if size < 2:
            raise ValueError(f"size must be at least 2 (a standard deviation needs two members), got {size}")
        if member_configs is not None and (
            len(member_configs) != size or not all(isinstance(config, dict) for config in member_configs)
        ):
            raise ValueError(f"member_configs must be one dict per member ({size}), got {member_configs!r:.80}")
        self.member, self.size, self.seed, self.epochs, self.device = member, size, seed, epochs, device
        self.member_params = dict(member_params)
        self.member_configs = None if member_configs is None else [dict(config) for config in member_configs]
        self.members_ = [self._new_member(i) for i in range(size)]  # validates member_params now
        self.sigma_scale_ = 1.0
        self.fitted_ = False

    def get_params(self) -> dict[str, Any]:
        params = {"member": self.member, "size": self.size, "seed": self.seed, "epochs": self.epochs}
        if self.member_configs is not None:
            params["member_configs"] = [dict(config) for config in self.member_configs]
        return {**params, "device": self.device, **self.member_params}

    def _new_member(self, index: int) -> NeuralCostModel:
        options = {"seed": self.seed + index, "device": self.device, **self.member_params}
        if self.epochs is not None:
            options["epochs"] = self.epochs
        if self.member_configs is not None:
            options.update(self.member_configs[index])
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
        return self.calibrate_uncertainty(valid_graphs)

    def calibrate_uncertainty(self, valid: Sequence[Sample | Data]) -> EnsembleCostModel:
        """Set ``sigma_scale_`` (:func:`variance_scale`) on the measured samples of ``valid`` (1 if none)."""
        self._require_fitted("calibrate_uncertainty")
        self.sigma_scale_ = 1.0
        measured = measured_only(as_graphs(valid), "valid")
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


def pool_ensembles(models: Sequence[CostModel]) -> EnsembleCostModel:
    """One ensemble of every member of ``models`` (ensembles, or neural models taken as one member each).

    Each member keeps its own configuration (``member_configs``, from its hyper-parameters), so the
    pooled ensemble saves, loads and refits as any other; its prediction is the geometric mean over
    all members (an ensemble of five weighs five times a single model). Members are copies: updating
    the pooled ensemble leaves ``models`` as they were. Its ``sigma_scale_`` is 1 until
    :meth:`EnsembleCostModel.calibrate_uncertainty` is called on validation samples (``perfgraph
    pool`` does). Raises :class:`~perfgraph.models.base.NotFittedError` for a model neither fitted
    nor loaded, and ``ValueError`` unless ``models`` are neural models of one member class, trained
    on the same machine kinds, two distinct members or more in all (two members with the same
    hyper-parameters and seed would agree everywhere, and make the uncertainty meaningless).

    >>> pool_ensembles([EnsembleCostModel(size=2)])
    Traceback (most recent call last):
    ...
    perfgraph.models.base.NotFittedError: model 0 (EnsembleCostModel) is neither fitted nor loaded
    """
    members: list[NeuralCostModel] = []
    for index, model in enumerate(models):
        if not (isinstance(model, EnsembleCostModel) or type(model) in MEMBER_CLASSES.values()):
            raise ValueError(
                f"model {index} is {model.name!r}; only ensembles and {sorted(MEMBER_CLASSES)} models pool"
            )
        if not model.is_fitted:
            raise NotFittedError(f"model {index} ({type(model).__name__}) is neither fitted nor loaded")
        members.extend(model.members_ if isinstance(model, EnsembleCostModel) else [model])
    kinds = {tuple(sorted(model.machine_kinds)) for model in models}
    if len(kinds) > 1:
        named = ", ".join(" + ".join(kind) or "(none recorded)" for kind in sorted(kinds))
        raise ValueError(f"the models were trained on different machine kinds: {named}")
    if len({member.name for member in members}) > 1:
        raise ValueError(f"members of several classes ({', '.join(sorted({m.name for m in members}))}) do not pool")
    if len(members) < 2:
        raise ValueError(f"{len(members)} member in all; an ensemble needs two or more")
    configs = [{k: v for k, v in member.get_params().items() if k != "device"} for member in members]
    twins = [(i, configs.index(config)) for i, config in enumerate(configs) if configs.index(config) != i]
    if twins:
        i, j = twins[0]
        raise ValueError(f"members {j} and {i} have the same hyper-parameters and seed (the same checkpoint twice?)")
    pooled = EnsembleCostModel(member=members[0].name, size=len(members), member_configs=configs)
    pooled.members_ = [copy.deepcopy(member) for member in members]
    pooled.fitted_ = True
    pooled.machine_kinds = models[0].machine_kinds
    return pooled


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
