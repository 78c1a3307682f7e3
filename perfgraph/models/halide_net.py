"""Halide's Adams2019 cost model re-implemented in PyTorch, as a perfgraph baseline.

The network follows Halide's ``cost_model_generator.cpp`` layer by layer (sizes from
``NetworkSize.h``, names of Halide's weight buffers):

* ``head1``: an 8-channel embedding of the 40 x 7 pipeline features of each stage (Halide skips the
  ``types_in_use`` row), whose weights go through a sigmoid so that they are positive and bounded;
* ``head2``: a 24-channel ReLU layer on ``log(x + 1)`` of the 39 schedule features;
* ``conv1``: a 32-channel ReLU layer over the concatenation, giving per-stage *coefficients* that
  multiply Halide's hand-designed compute, load, store, parallelism and working-set terms
  (:mod:`perfgraph.models.halide_terms`); stage costs are summed per pipeline.

Training is Halide's too: one Adam step per batch of schedules of a single pipeline, weights drawn
uniformly from [-0.5, 0.5], Adam with epsilon 1e-5, and either Halide's own relative-throughput loss
(``loss="halide"``) or our mean squared error of log run time (``loss="mse_log"``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from perfgraph.data.records import Sample
from perfgraph.features.layout import (
    NUM_PIPELINE_FEATURE_ROWS,
    NUM_SCALAR_TYPES,
    PIPELINE_SLICE,
    SCHEDULE_SLICE,
)
from perfgraph.models.base import CostModel, NotFittedError, ReplayBuffer, measured_runtimes
from perfgraph.models.checkpoint import load_checkpoint, save_checkpoint
from perfgraph.models.early_stopping import EarlyStopping
from perfgraph.models.halide_terms import (
    CONV1_CHANNELS,
    HEAD1_CHANNELS,
    HEAD1_H,
    HEAD1_W,
    HEAD2_CHANNELS,
    HEAD2_W,
    MIN_RELATIVE_PREDICTION,
    coefficient_regularizer,
    halide_throughput_loss,
    log_mse_loss,
    stage_costs,
)

LOSSES = {"halide": halide_throughput_loss, "mse_log": log_mse_loss}
# Hyper-parameter names of checkpoints written before the models shared one set of names.
LEGACY_PARAMS = {"learning_rate": "lr", "max_epochs": "epochs"}
# Halide's retrain_cost_model rejects samples with features outside this range (overflowed counts).
MAX_PLAUSIBLE_SCHEDULE_FEATURE = 1e14
# ... and run times above 100 s ("Don't try to predict runtime over 100s").
MAX_PLAUSIBLE_RUNTIME_MS = 100_000.0


class NetworkOutput(NamedTuple):
    prediction: torch.Tensor  # (B,) summed stage costs, Halide's units
    stage_costs: torch.Tensor  # (B, S)
    pre_activation: torch.Tensor  # (B, S, 32) conv1 before its ReLU, for Halide's regularizer


class AdamsNetwork(nn.Module):
    """The Adams2019 network; parameter names and shapes mirror Halide's ``.weights`` buffers."""

    def __init__(self, num_cores: int = 1, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.num_cores = num_cores

        def uniform(*shape: int) -> nn.Parameter:  # Halide's Weights::randomize
            return nn.Parameter(torch.rand(*shape, generator=generator) - 0.5)

        self.head1_filter = uniform(HEAD1_CHANNELS, HEAD1_W, HEAD1_H)
        self.head1_bias = uniform(HEAD1_CHANNELS)
        self.head2_filter = uniform(HEAD2_CHANNELS, HEAD2_W)
        self.head2_bias = uniform(HEAD2_CHANNELS)
        self.conv1_filter = uniform(CONV1_CHANNELS, HEAD1_CHANNELS + HEAD2_CHANNELS)
        self.conv1_bias = uniform(CONV1_CHANNELS)

    def forward(self, schedule_features: torch.Tensor, pipeline_features: torch.Tensor) -> NetworkOutput:
        """``schedule_features`` (B, S, 39) raw; ``pipeline_features`` (B or 1, S, 40, 7)."""
        squashed = torch.sigmoid(self.head1_filter).reshape(HEAD1_CHANNELS, -1)
        head1 = pipeline_features.flatten(-2) @ squashed.T + self.head1_bias  # no ReLU: all positive
        head2 = torch.relu(torch.log1p(schedule_features) @ self.head2_filter.T + self.head2_bias)
        stage1 = head1 @ self.conv1_filter[:, :HEAD1_CHANNELS].T + self.conv1_bias
        pre_activation = stage1 + head2 @ self.conv1_filter[:, HEAD1_CHANNELS:].T
        costs = stage_costs(schedule_features, torch.relu(pre_activation), self.num_cores)
        return NetworkOutput(costs.sum(dim=-1), costs, pre_activation)


def pipeline_block(features: np.ndarray) -> np.ndarray:
    """The (n_stages, 40, 7) pipeline features Halide's network reads: all rows but ``types_in_use``."""
    rows = features[:, PIPELINE_SLICE].reshape(-1, NUM_PIPELINE_FEATURE_ROWS, NUM_SCALAR_TYPES)
    return np.ascontiguousarray(rows[:, 1:, :])


def plausible(sample: Sample) -> bool:
    """Whether Halide's trainer would keep this sample (finite, non-negative, not overflowed)."""
    schedule = sample.features[:, SCHEDULE_SLICE]
    return bool(
        np.isfinite(schedule).all()
        and (schedule >= 0).all()
        and (schedule <= MAX_PLAUSIBLE_SCHEDULE_FEATURE).all()
        and sample.runtime_ms is not None
        and 0 < sample.runtime_ms <= MAX_PLAUSIBLE_RUNTIME_MS
    )


class _PipelineBatch(NamedTuple):
    schedule: torch.Tensor  # (B, S, 39)
    pipeline: torch.Tensor  # (1, S, 40, 7)
    runtime_ms: torch.Tensor  # (B,)


def pipeline_groups(samples: Sequence[Sample], min_schedules: int = 1) -> list[_PipelineBatch]:
    """Group measured samples by pipeline, one batch per pipeline, as Halide trains."""
    groups: dict[int, list[Sample]] = {}
    for sample in samples:
        groups.setdefault(sample.pipeline_id, []).append(sample)
    batches = []
    for pipeline_id, group in sorted(groups.items()):
        stage_counts = {s.num_stages for s in group}
        if len(stage_counts) != 1:
            raise ValueError(
                f"pipeline_id {pipeline_id}: schedules disagree on the number of stages "
                f"{sorted(stage_counts)}; one pipeline_id must name one pipeline"
            )
        if len(group) < min_schedules:
            continue
        schedule = np.stack([s.features[:, SCHEDULE_SLICE] for s in group]).astype(np.float32)
        # Halide takes the pipeline features of the first sample it reads for the whole pipeline.
        pipeline = pipeline_block(group[0].features).astype(np.float32)[None]
        batches.append(
            _PipelineBatch(
                torch.from_numpy(schedule),
                torch.from_numpy(pipeline),
                torch.from_numpy(measured_runtimes(group).astype(np.float32)),
            )
        )
    return batches


class HalideCostModel(CostModel):
    """Halide's Adams2019 cost model, trained on perfgraph samples.

    ``predict`` returns milliseconds: the network's output times ``exp(log_scale_)``, a single scale
    fitted after training by least squares in log space on the training set
    (``log_scale_ = mean(log measured - log predicted)``). The network's output is in "Halide units":
    Halide's loss is minimal when the output equals the measured run time in whatever unit it was
    given, but it weighs each error by relative throughput against the pipeline's fastest schedule,
    so the output of slow schedules, and with it the overall scale, is only loosely pinned down. For
    ``loss="mse_log"`` the fitted scale comes out close to 1. Rankings within a pipeline do not
    depend on the scale.

    >>> model = HalideCostModel(loss="mse_log", epochs=5)
    >>> model.name, model.loss
    ('halide', 'mse_log')
    """

    name = "halide"

    def __init__(
        self,
        loss: str = "halide",
        lr: float = 1e-3,
        epochs: int = 300,
        patience: int = 30,
        num_cores: int = 1,
        max_batch_size: int = 1024,
        min_schedules_per_pipeline: int = 2,
        update_epochs: int = 20,
        replay: int = 512,
        seed: int = 0,
    ) -> None:
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {sorted(LOSSES)}, got {loss!r}")
        for argument, value in (
            ("epochs", epochs),
            ("patience", patience),
            ("num_cores", num_cores),
            ("max_batch_size", max_batch_size),
            ("min_schedules_per_pipeline", min_schedules_per_pipeline),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{argument} must be a positive integer, got {value!r}")
        if not isinstance(update_epochs, int) or update_epochs < 0:
            raise ValueError(f"update_epochs must be a non-negative integer, got {update_epochs!r}")
        if not (isinstance(lr, float | int) and lr > 0):
            raise ValueError(f"lr must be a positive number, got {lr!r}")
        self.loss = loss
        self.lr = float(lr)
        self.epochs = epochs
        self.patience = patience
        self.num_cores = num_cores
        self.max_batch_size = max_batch_size
        self.min_schedules_per_pipeline = min_schedules_per_pipeline
        self.update_epochs = update_epochs
        self.replay = replay
        self.seed = seed
        #: Pipeline batches seen by fit and update, replayed beside new ones (Halide trains per pipeline).
        self.replay_ = ReplayBuffer(replay, seed)
        self.network_: AdamsNetwork | None = None
        self.log_scale_: float = 0.0
        #: One (epoch, mean train loss, validation loss or nan) per epoch of the last fit.
        self.history_: list[tuple[int, float, float]] = []

    # ------------------------------------------------------------------ training
    def fit(self, train: Sequence[Sample], valid: Sequence[Sample]) -> HalideCostModel:
        """Train from fresh random weights; early-stops on the validation loss when ``valid`` is not empty."""
        train_batches = self._training_batches(train, "train")
        valid_batches = pipeline_groups([s for s in valid if plausible(s)]) if valid else []
        generator = torch.Generator().manual_seed(self.seed)
        self.network_ = AdamsNetwork(self.num_cores, generator)
        optimizer = self._optimizer()
        rng = np.random.default_rng(self.seed)
        stopper = EarlyStopping(self.network_, self.patience)
        self.history_ = []
        for epoch in range(self.epochs):
            train_loss = self._train_epoch(train_batches, optimizer, rng)
            valid_loss = self._mean_loss(valid_batches) if valid_batches else math.nan
            self.history_.append((epoch, train_loss, valid_loss))
            if stopper.step(valid_loss if valid_batches else train_loss, self.network_):
                break
        stopper.restore(self.network_)
        self._calibrate(train)
        self.replay_ = ReplayBuffer(self.replay, self.seed)
        self.replay_.add(train_batches)
        return self

    def update(self, samples: Sequence[Sample]) -> None:
        """Fine-tune for ``update_epochs`` epochs on new samples, with a fresh Adam state; keeps the scale.

        The new samples' pipelines are trained on beside as many pipelines replayed from ``replay_``
        (at most ``replay`` pipeline batches seen by fit and earlier updates; 0: none).
        """
        self._check_fitted()
        new = self._training_batches(samples, "samples")
        batches = new + self.replay_.draw(len(new))
        self.replay_.add(new)
        optimizer = self._optimizer()
        rng = np.random.default_rng(self.seed + len(self.history_))
        for _ in range(self.update_epochs):
            self._train_epoch(batches, optimizer, rng)

    def _optimizer(self) -> torch.optim.Optimizer:
        # Halide's hand-written Adam: betas 0.9 / 0.999, epsilon 1e-5 added to sqrt of the second moment.
        assert self.network_ is not None
        return torch.optim.Adam(self.network_.parameters(), lr=self.lr, betas=(0.9, 0.999), eps=1e-5)

    def _training_batches(self, samples: Sequence[Sample], argument: str) -> list[_PipelineBatch]:
        kept = [s for s in samples if plausible(s)]
        batches = pipeline_groups(kept, self.min_schedules_per_pipeline)
        if not batches:
            raise ValueError(
                f"{argument}: no pipeline has {self.min_schedules_per_pipeline} or more measured schedules "
                f"with plausible features ({len(kept)} of {len(samples)} samples usable)"
            )
        return batches

    def _batch_loss(self, batch: _PipelineBatch) -> torch.Tensor:
        assert self.network_ is not None
        out = self.network_(batch.schedule, batch.pipeline)
        return LOSSES[self.loss](out.prediction, batch.runtime_ms, coefficient_regularizer(out.pre_activation))

    def _train_epoch(
        self, batches: list[_PipelineBatch], optimizer: torch.optim.Optimizer, rng: np.random.Generator
    ) -> float:
        assert self.network_ is not None
        self.network_.train()
        losses = []
        for index in rng.permutation(len(batches)):
            batch = batches[index]
            if len(batch.runtime_ms) > self.max_batch_size:  # Halide: at most 1024 schedules per step
                keep = torch.from_numpy(rng.choice(len(batch.runtime_ms), self.max_batch_size, replace=False))
                batch = _PipelineBatch(batch.schedule[keep], batch.pipeline, batch.runtime_ms[keep])
            optimizer.zero_grad()
            loss = self._batch_loss(batch)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        return float(np.mean(losses))

    @torch.no_grad()
    def _mean_loss(self, batches: list[_PipelineBatch]) -> float:
        assert self.network_ is not None
        self.network_.eval()
        return float(np.mean([float(self._batch_loss(batch)) for batch in batches]))

    def _calibrate(self, train: Sequence[Sample]) -> None:
        kept = [s for s in train if plausible(s)]
        predicted = np.maximum(self.predict_halide_units(kept), MIN_RELATIVE_PREDICTION)
        self.log_scale_ = float(np.mean(np.log(measured_runtimes(kept)) - np.log(predicted)))

    # ------------------------------------------------------------------ prediction
    def predict(self, samples: Sequence[Sample]) -> np.ndarray:
        """Predicted run time in milliseconds (network output times the calibrated scale)."""
        raw = np.maximum(self.predict_halide_units(samples), MIN_RELATIVE_PREDICTION)
        return raw * math.exp(self.log_scale_)

    @torch.no_grad()
    def predict_halide_units(self, samples: Sequence[Sample]) -> np.ndarray:
        """The network's own output (sum of stage costs), before calibration; float64, one per sample."""
        return np.array([costs.sum() for costs in self.predict_stage_costs(samples)], dtype=np.float64)

    @torch.no_grad()
    def predict_stage_costs(self, samples: Sequence[Sample]) -> list[np.ndarray]:
        """Per-stage costs in Halide's units, one array of length ``num_stages`` per sample."""
        self._check_fitted()
        assert self.network_ is not None
        self.network_.eval()
        result: list[np.ndarray] = [np.empty(0)] * len(samples)
        by_stage_count: dict[int, list[int]] = {}
        for index, sample in enumerate(samples):
            by_stage_count.setdefault(sample.num_stages, []).append(index)
        for indices in by_stage_count.values():
            for start in range(0, len(indices), 4096):
                chunk = indices[start : start + 4096]
                schedule = np.stack([samples[i].features[:, SCHEDULE_SLICE] for i in chunk]).astype(np.float32)
                pipeline = np.stack([pipeline_block(samples[i].features) for i in chunk]).astype(np.float32)
                costs = self.network_(torch.from_numpy(schedule), torch.from_numpy(pipeline)).stage_costs
                for i, row in zip(chunk, costs.numpy().astype(np.float64), strict=True):
                    result[i] = row
        return result

    def _check_fitted(self) -> None:
        if self.network_ is None:
            raise NotFittedError("HalideCostModel is not fitted: call fit(train, valid) or load(path) first")

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> None:
        self._check_fitted()
        assert self.network_ is not None
        save_checkpoint(
            path,
            self.name,
            {
                "params": self.get_params(),
                "state": {k: v.detach().clone() for k, v in self.network_.state_dict().items()},
                "log_scale": self.log_scale_,
                "history": [list(row) for row in self.history_],
            },
            machine_kinds=self.machine_kinds,
        )

    @classmethod
    def load(cls, path: str | Path) -> HalideCostModel:
        payload = load_checkpoint(path, cls.name)
        params = {LEGACY_PARAMS.get(name, name): value for name, value in payload["params"].items()}
        model = cls(**params)
        model.network_ = AdamsNetwork(model.num_cores)
        model.network_.load_state_dict(payload["state"])
        model.log_scale_ = float(payload["log_scale"])
        model.history_ = [(int(e), float(t), float(v)) for e, t, v in payload["history"]]
        return model

    def load_halide_weights(self, arrays: dict[str, np.ndarray]) -> HalideCostModel:
        """Use weights trained by Halide (see :func:`perfgraph.models.halide_trainer.read_halide_weights`)."""
        self.network_ = AdamsNetwork(self.num_cores)
        self.network_.load_state_dict({name: torch.from_numpy(np.asarray(a, np.float32)) for name, a in arrays.items()})
        self.log_scale_ = 0.0
        return self
