"""XGBoost baselines: TVM/Ansor's pack-sum model and a plain model on per-pipeline feature sums.

:class:`PackSumXGBoost` follows Ansor's ``XGBModel`` (``python/tvm/auto_scheduler/cost_model/xgb_model.py``
in apache/tvm): one XGBoost model scores every *stage* (row) of a program, a program's score is the
sum of its stages' scores, and training uses a custom objective whose gradient is taken on that sum
(``pack_sum_square_error``). Rows are tied to their program by ``pack_ids``. Ansor's hyper-parameters
(max_depth 10, gamma 0.001, min_child_weight 0, eta 0.2, early stopping after 50 rounds on the
pack-sum RMSE) are the defaults.

The target (``target=``) needs care, because perfgraph models must predict milliseconds:

* ``"throughput"`` (Ansor's): per pipeline, normalised throughput ``y = best_ms / ms`` in (0, 1], with
  Ansor's sample weights ``w = y``. The summed score is a relative throughput; we turn it into
  milliseconds as ``exp(log_scale_) / max(score, score_floor_)``, with ``log_scale_`` fitted on the
  training set by least squares in log space and ``score_floor_`` the lowest normalised throughput
  seen in training (tree sums can go to zero or below). Within a pipeline the ranking is the score's
  (schedules below the floor tie); absolute milliseconds across pipelines are crude, because the
  model never learns a pipeline's best run time.
* ``"log_runtime"``: the summed score regresses ``log(ms)`` directly (unweighted), ``ms = exp(score)``,
  the score clipped to ``±MAX_LOG_MS`` first: Ansor's diagonal Hessian (one ``w`` per row, where a pack
  of n stages has n rows sharing one residual) makes Newton steps n times too long, and on a training
  set of a dozen samples of an 11-stage pipeline the pack sum reached -1,226 (``exp`` gives 0 ms).

:class:`SummedFeatureXGBoost` is the simplest tree baseline: one row per program, ``log1p`` of the
stage-summed features, squared error on ``log(ms)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xgboost as xgb

from perfgraph.data.records import Sample
from perfgraph.features.layout import SCHEDULE_SLICE
from perfgraph.models.base import CostModel, NotFittedError, measured_runtimes
from perfgraph.models.checkpoint import load_checkpoint, save_checkpoint

TARGETS = ("throughput", "log_runtime")
#: The ``log_runtime`` target's predicted ln(ms) is clipped to this magnitude (1e-20 to 1e20 ms): finite, positive.
MAX_LOG_MS = 46.0


def stage_rows(samples: Sequence[Sample]) -> tuple[np.ndarray, np.ndarray]:
    """All stages of all samples as rows (schedule features ``log1p``-ed), and each row's pack id."""
    rows = np.concatenate([s.features for s in samples]).astype(np.float32)
    rows[:, SCHEDULE_SLICE] = np.log1p(np.maximum(rows[:, SCHEDULE_SLICE], 0.0))
    pack_ids = np.repeat(np.arange(len(samples)), [s.num_stages for s in samples])
    return rows, pack_ids


def pack_sum(row_predictions: np.ndarray, pack_ids: np.ndarray, num_packs: int | None = None) -> np.ndarray:
    """Sum per-row predictions into one prediction per pack (Ansor's ``predict_throughput_pack_sum``)."""
    return np.bincount(pack_ids, weights=row_predictions, minlength=num_packs or 0)


def pack_sum_square_error(
    row_predictions: np.ndarray, labels: np.ndarray, weights: np.ndarray | None, pack_ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Gradient and Hessian of ``sum_packs w/2 * (sum of the pack's row predictions - y)^2`` per row.

    ``labels`` and ``weights`` are given per row (each row repeats its pack's), as in Ansor. The
    derivative with respect to one row's prediction is ``w * (pack sum - y)``; the diagonal Hessian is ``w``.
    """
    summed = pack_sum(row_predictions, pack_ids)[pack_ids]
    gradient = summed - labels
    hessian = np.ones_like(gradient)
    if weights is None or len(weights) == 0:
        return gradient, hessian
    return gradient * weights, hessian * weights


def pack_sum_rmse(row_predictions: np.ndarray, labels: np.ndarray, pack_ids: np.ndarray) -> float:
    """Ansor's ``p-rmse``: RMSE of the pack sums against the labels, counted once per row."""
    summed = pack_sum(row_predictions, pack_ids)[pack_ids]
    return float(np.sqrt(np.mean(np.square(summed - labels))))


def normalized_throughput(samples: Sequence[Sample]) -> np.ndarray:
    """Ansor's target: for each sample, its pipeline's fastest run time divided by its own."""
    runtimes = measured_runtimes(samples)
    pipeline_ids = np.array([s.pipeline_id for s in samples])
    best = {p: runtimes[pipeline_ids == p].min() for p in np.unique(pipeline_ids)}
    return np.array([best[p] for p in pipeline_ids]) / runtimes


def booster_to_tensor(booster: xgb.Booster) -> torch.Tensor:
    """A booster as a uint8 tensor (its JSON bytes), so a weights-only checkpoint can hold it."""
    return torch.frombuffer(bytearray(booster.save_raw("json")), dtype=torch.uint8).clone()


def booster_from_tensor(tensor: torch.Tensor, nthread: int) -> xgb.Booster:
    booster = xgb.Booster(params={"nthread": nthread})
    booster.load_model(bytearray(tensor.numpy().tobytes()))
    return booster


class _XGBoostModel(CostModel):
    """Shared hyper-parameters, validation, refitting and persistence of the two XGBoost models."""

    def __init__(
        self,
        max_depth: int = 10,
        gamma: float = 0.001,
        min_child_weight: float = 0.0,
        eta: float = 0.2,
        max_rounds: int = 10_000,
        early_stopping_rounds: int = 50,
        nthread: int = 1,
        seed: int = 43,
    ) -> None:
        for argument, value in (
            ("max_depth", max_depth),
            ("max_rounds", max_rounds),
            ("early_stopping_rounds", early_stopping_rounds),
            ("nthread", nthread),
        ):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{argument} must be a positive integer, got {value!r}")
        for argument, value in (("gamma", gamma), ("min_child_weight", min_child_weight)):
            if not isinstance(value, float | int) or value < 0:
                raise ValueError(f"{argument} must be a non-negative number, got {value!r}")
        if not isinstance(eta, float | int) or not 0 < eta <= 1:
            raise ValueError(f"eta must be in (0, 1], got {eta!r}")
        self.max_depth, self.gamma, self.min_child_weight, self.eta = max_depth, gamma, min_child_weight, eta
        self.max_rounds, self.early_stopping_rounds = max_rounds, early_stopping_rounds
        self.nthread, self.seed = nthread, seed
        self.booster_: xgb.Booster | None = None
        self.log_scale_: float = 0.0
        # Predicted throughputs are clamped to the lowest seen in training before being inverted into ms.
        self.score_floor_: float = 0.0
        # Ansor's update() retrains from scratch on everything measured so far; we remember it here.
        self._seen: list[Sample] = []
        self._valid: list[Sample] = []

    def _xgb_params(self) -> dict[str, Any]:
        return {
            "max_depth": self.max_depth,
            "gamma": self.gamma,
            "min_child_weight": self.min_child_weight,
            "eta": self.eta,
            "nthread": self.nthread,
            "seed": self.seed,
            "verbosity": 0,
        }

    def fit(self, train: Sequence[Sample], valid: Sequence[Sample]) -> _XGBoostModel:
        """Train a fresh booster; early-stops on ``valid`` (on ``train`` when it is empty, like Ansor)."""
        if not train:
            raise ValueError("train must contain at least one measured sample, got an empty sequence")
        measured_runtimes(train)
        if valid:
            measured_runtimes(valid)
        self._seen, self._valid = list(train), list(valid)
        self.booster_ = self._train(self._seen, self._valid or self._seen)
        self._calibrate(self._seen)
        return self

    def update(self, samples: Sequence[Sample]) -> None:
        """Retrain from scratch on every sample seen since ``fit`` plus ``samples``, as Ansor does.

        After :meth:`load` no training samples are remembered, so the first update trains on ``samples`` only.
        """
        self._check_fitted()
        measured_runtimes(samples)
        self._seen.extend(samples)
        self.booster_ = self._train(self._seen, self._valid or self._seen)
        self._calibrate(self._seen)

    def _early_stopping_train(
        self,
        params: dict[str, Any],
        dtrain: xgb.DMatrix,
        dvalid: xgb.DMatrix,
        obj: Callable | None = None,
        metric: Callable | None = None,
    ) -> xgb.Booster:
        booster = xgb.train(
            params,
            dtrain,
            num_boost_round=self.max_rounds,
            evals=[(dvalid, "valid")],
            obj=obj,
            custom_metric=metric,
            maximize=False,
            early_stopping_rounds=self.early_stopping_rounds,
            verbose_eval=False,
        )
        return booster[: booster.best_iteration + 1]

    def _check_fitted(self) -> None:
        if self.booster_ is None:
            raise NotFittedError(f"{type(self).__name__} is not fitted: call fit(train, valid) or load(path) first")

    def _train(self, train: list[Sample], valid: list[Sample]) -> xgb.Booster:
        raise NotImplementedError

    def _calibrate(self, train: list[Sample]) -> None:
        """Fit what turns scores into milliseconds (nothing for models that regress log run time)."""

    def save(self, path: str | Path) -> None:
        self._check_fitted()
        assert self.booster_ is not None
        save_checkpoint(
            path,
            self.name,
            {
                "params": self.get_params(),
                "booster": booster_to_tensor(self.booster_),
                "calibration": {"log_scale": self.log_scale_, "score_floor": self.score_floor_},
            },
            machine_kinds=self.machine_kinds,
        )

    @classmethod
    def load(cls, path: str | Path) -> _XGBoostModel:
        payload = load_checkpoint(path, cls.name)
        model = cls(**payload["params"])
        model.booster_ = booster_from_tensor(payload["booster"], model.nthread)
        model.log_scale_ = float(payload["calibration"]["log_scale"])
        model.score_floor_ = float(payload["calibration"]["score_floor"])
        return model


class PackSumXGBoost(_XGBoostModel):
    """TVM/Ansor's pack-sum XGBoost cost model on Halide's per-stage features.

    >>> PackSumXGBoost(target="log_runtime", nthread=1).name
    'xgboost'
    """

    name = "xgboost"

    def __init__(self, target: str = "throughput", **booster: Any) -> None:
        if target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
        super().__init__(**booster)
        self.target = target

    def _packed_matrix(self, samples: Sequence[Sample]) -> tuple[xgb.DMatrix, np.ndarray]:
        rows, pack_ids = stage_rows(samples)
        if self.target == "throughput":
            labels = normalized_throughput(samples)
            weights = labels  # Ansor weighs every program by its normalised throughput
        else:
            labels, weights = np.log(measured_runtimes(samples)), None
        matrix = xgb.DMatrix(rows, label=labels[pack_ids], nthread=self.nthread)
        if weights is not None:
            matrix.set_weight(weights[pack_ids])
        return matrix, pack_ids

    def _train(self, train: list[Sample], valid: list[Sample]) -> xgb.Booster:
        dtrain, train_packs = self._packed_matrix(train)
        dvalid, valid_packs = self._packed_matrix(valid)
        packs_of = {id(dtrain): train_packs, id(dvalid): valid_packs}

        def objective(predictions: np.ndarray, matrix: xgb.DMatrix) -> tuple[np.ndarray, np.ndarray]:
            return pack_sum_square_error(predictions, matrix.get_label(), matrix.get_weight(), packs_of[id(matrix)])

        def metric(predictions: np.ndarray, matrix: xgb.DMatrix) -> tuple[str, float]:
            return "p-rmse", pack_sum_rmse(predictions, matrix.get_label(), packs_of[id(matrix)])

        # base_score 0: a program's score is exactly the sum of its stages' tree outputs.
        params = {**self._xgb_params(), "base_score": 0.0, "disable_default_eval_metric": 1}
        return self._early_stopping_train(params, dtrain, dvalid, objective, metric)

    def predict_scores(self, samples: Sequence[Sample]) -> np.ndarray:
        """The summed pack score per sample (a relative throughput, or a log run time)."""
        return np.array([stages.sum() for stages in self.predict_stage_scores(samples)])

    def predict_stage_scores(self, samples: Sequence[Sample]) -> list[np.ndarray]:
        """Each sample's per-stage scores, whose sum is the sample's score (Ansor's ``predict_stages``)."""
        self._check_fitted()
        assert self.booster_ is not None
        if not samples:
            return []
        rows, pack_ids = stage_rows(samples)
        row_scores = self.booster_.predict(xgb.DMatrix(rows, nthread=self.nthread), output_margin=True)
        bounds = np.cumsum([0] + [s.num_stages for s in samples])
        return [row_scores[a:b].astype(np.float64) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]

    def predict(self, samples: Sequence[Sample]) -> np.ndarray:
        """Predicted run time in milliseconds (see the module docstring for how scores become ms)."""
        scores = self.predict_scores(samples)
        if self.target == "log_runtime":
            return np.exp(np.clip(scores, -MAX_LOG_MS, MAX_LOG_MS))
        return math.exp(self.log_scale_) / np.maximum(scores, self.score_floor_)

    def _calibrate(self, train: list[Sample]) -> None:
        if self.target == "log_runtime":
            return
        self.score_floor_ = float(normalized_throughput(train).min())
        scores = np.maximum(self.predict_scores(train), self.score_floor_)
        self.log_scale_ = float(np.mean(np.log(measured_runtimes(train)) + np.log(scores)))


def summed_features(samples: Sequence[Sample]) -> np.ndarray:
    """One row per sample: ``log1p`` of its features summed over stages (Halide's features are counts)."""
    return np.log1p(np.maximum(np.stack([s.features.sum(axis=0, dtype=np.float64) for s in samples]), 0.0))


class SummedFeatureXGBoost(_XGBoostModel):
    """Plain XGBoost regression of log run time on per-pipeline summed features (no structure at all).

    >>> SummedFeatureXGBoost(nthread=1).name
    'xgboost_sum'
    """

    name = "xgboost_sum"

    def _train(self, train: list[Sample], valid: list[Sample]) -> xgb.Booster:
        dtrain = xgb.DMatrix(summed_features(train), label=np.log(measured_runtimes(train)), nthread=self.nthread)
        dvalid = xgb.DMatrix(summed_features(valid), label=np.log(measured_runtimes(valid)), nthread=self.nthread)
        params = {**self._xgb_params(), "objective": "reg:squarederror", "eval_metric": "rmse"}
        return self._early_stopping_train(params, dtrain, dvalid)

    def predict(self, samples: Sequence[Sample]) -> np.ndarray:
        """Predicted run time in milliseconds: ``exp`` of the regressed log run time."""
        self._check_fitted()
        assert self.booster_ is not None
        if not samples:
            return np.empty(0)
        matrix = xgb.DMatrix(summed_features(samples), nthread=self.nthread)
        return np.exp(self.booster_.predict(matrix).astype(np.float64))
