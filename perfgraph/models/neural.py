"""The :class:`CostModel` plumbing shared by the neural models (GNN and sequence control).

A subclass only declares its architecture hyper-parameters and builds its network
(:meth:`NeuralCostModel.build_network`); fitting, normalising, predicting, fine-tuning, per-stage
costs and checkpoints live here once. Hyper-parameters are constructor arguments, read back by
:meth:`get_params` (as in scikit-learn) and stored in the checkpoint, so ``load`` rebuilds the same
model by calling the constructor again.

Inputs may be :class:`~perfgraph.data.records.Sample` records or graphs already built by
:func:`~perfgraph.features.graphs.sample_to_graph` (e.g. from a cached
:class:`~perfgraph.features.dataset.StageGraphDataset`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch_geometric.data import Batch, Data

from perfgraph.data.records import Sample
from perfgraph.features.graphs import as_graphs, measured_only
from perfgraph.features.layout import FEATURES_PER_STAGE, SCHEDULE_SLICE
from perfgraph.features.normalization import FeatureNormalizer
from perfgraph.models.base import CostModel, NotFittedError, ReplayBuffer
from perfgraph.models.checkpoint import load_checkpoint, save_checkpoint
from perfgraph.models.losses import make_loss
from perfgraph.models.shared_inference import predict_samples_log_runtimes
from perfgraph.models.stage_network import StageCostNetwork
from perfgraph.models.training import DEVICES, LR_SCHEDULES, predict_log_runtimes, resolve_device, train_network

#: The stage features a neural model may read (``features``): all 326, or only the 39 schedule
#: features, an ablation that asks how much the pipeline features (op histograms, access patterns)
#: add. Unread features are zeroed after standardisation (each reads as its training mean), so the
#: network's shape does not change; the stage graph and its edge features are kept either way.
FEATURE_SETS: dict[str, slice] = {"all": slice(0, FEATURES_PER_STAGE), "schedule": SCHEDULE_SLICE}


def check_positive(name: str, value: Any, kind: type = int) -> None:
    """Raise ``ValueError`` naming the argument unless ``value`` is a positive ``kind``."""
    if isinstance(value, bool) or not isinstance(value, kind | int) or not value > 0:
        raise ValueError(f"{name} must be a positive {kind.__name__}, got {value!r}")


def require_machines(items: Sequence[Sample | Data], argument: str, model: str) -> None:
    """Raise ``ValueError`` naming the first sample that does not say which machine it is for."""
    for position, item in enumerate(items):
        if isinstance(item, Sample):
            known = item.machine_features is not None
        else:
            known = bool(getattr(item, "machine_kind", ""))
        if not known:
            raise ValueError(
                f"{argument}[{position}]: {model} reads the machine (machine_features=True), but this sample "
                "has no machine features; take samples from Store.samples, or pass "
                "machine=MachineInfo to Candidate.to_sample"
            )


class NeuralCostModel(CostModel):
    """Base class; see :class:`~perfgraph.models.gnn.GNNCostModel` for the hyper-parameters."""

    name = "neural"

    def __init__(
        self,
        *,
        loss: str = "mse",
        features: str = "all",
        lr: float = 1e-3,
        epochs: int = 300,
        patience: int = 30,
        batch_size: int = 64,
        weight_decay: float = 0.0,
        lr_schedule: str = "constant",
        seed: int = 0,
        device: str = "auto",
        update_epochs: int = 5,
        update_lr_factor: float = 0.1,
        replay: int = 4096,
        machine_features: bool = False,
        progress: bool = True,
    ) -> None:
        make_loss(loss)  # validates the name now rather than after an hour of data loading
        if features not in FEATURE_SETS:
            raise ValueError(f"features must be one of {sorted(FEATURE_SETS)}, got {features!r}")
        check_positive("lr", lr, float)
        check_positive("epochs", epochs)
        check_positive("batch_size", batch_size)
        check_positive("update_epochs", update_epochs)
        check_positive("update_lr_factor", update_lr_factor, float)
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 0:
            raise ValueError(f"patience must be a non-negative int, got {patience!r}")
        if not weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
        if lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {lr_schedule!r}")
        if device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
        if not isinstance(machine_features, bool):
            raise ValueError(f"machine_features must be True or False, got {machine_features!r}")
        self.loss, self.features, self.lr, self.epochs, self.patience = loss, features, lr, epochs, patience
        self.batch_size, self.weight_decay, self.seed, self.device = batch_size, weight_decay, seed, device
        self.update_epochs, self.update_lr_factor, self.progress = update_epochs, update_lr_factor, progress
        self.replay, self.machine_features, self.lr_schedule = replay, machine_features, lr_schedule
        self.replay_ = ReplayBuffer(replay, seed)
        self.network_: StageCostNetwork | None = None
        self.normalizer_: FeatureNormalizer | None = None
        self.log_: list[dict] = []

    def build_network(self) -> StageCostNetwork:
        """A freshly initialised network for this model's architecture hyper-parameters."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.get_params().items())})"

    @property
    def is_fitted(self) -> bool:
        return self.network_ is not None

    def _require_fitted(self, method: str) -> StageCostNetwork:
        if self.network_ is None or self.normalizer_ is None:
            raise NotFittedError(f"{type(self).__name__}.{method}: call fit() or load() first")
        return self.network_

    def _graphs(self, items: Sequence[Sample | Data], argument: str, require_measured: bool) -> list[Data]:
        graphs = self._as_graphs(items, argument)
        if require_measured:
            graphs = measured_only(graphs, argument)
        return self._network_inputs(graphs)

    def _as_graphs(self, items: Sequence[Sample | Data], argument: str) -> list[Data]:
        """:func:`as_graphs`, after checking that a machine-aware model is told every sample's machine."""
        if self.machine_features:
            require_machines(items, argument, type(self).__name__)
        return as_graphs(items)

    def _network_inputs(self, raw_graphs: Sequence[Data]) -> list[Data]:
        """``raw_graphs`` standardised, with the features outside ``features`` zeroed."""
        graphs = self.normalizer_.transform_all(raw_graphs)  # type: ignore[union-attr]
        unread = self._unread_features()
        if unread is not None:
            for graph in graphs:  # each x is a fresh tensor from the normaliser, safe to edit in place
                graph.x[:, unread] = 0.0
        return graphs

    def fit(self, train: Sequence[Sample | Data], valid: Sequence[Sample | Data]) -> NeuralCostModel:
        """Train from scratch; the normaliser and the run-time scale come from ``train`` only.

        ``valid`` drives early stopping; when it is empty the training loss does.
        """
        raw_train = measured_only(self._as_graphs(train, "train"), "train")
        if not raw_train:
            raise ValueError("train: no samples to fit on")
        self.normalizer_ = FeatureNormalizer().fit(raw_train)
        train_graphs = self._network_inputs(raw_train)
        valid_graphs = self._graphs(valid, "valid", require_measured=True)
        torch.manual_seed(self.seed)
        network = self.build_network()
        log_runtimes = torch.cat([g.y for g in train_graphs])
        mean_stages = float(np.mean([g.num_nodes for g in train_graphs]))
        network.set_runtime_scale(math.exp(float(log_runtimes.mean())) / mean_stages)
        if network.term_readout is not None:
            network.term_readout.fit(self.normalizer_, [g.x for g in raw_train])
        self.log_ = train_network(
            network,
            train_graphs,
            valid_graphs,
            make_loss(self.loss),
            epochs=self.epochs,
            lr=self.lr,
            patience=self.patience,
            batch_size=self.batch_size,
            seed=self.seed,
            device=resolve_device(self.device),
            weight_decay=self.weight_decay,
            lr_schedule=self.lr_schedule,
            progress=self.progress,
            desc=f"fit {self.name}",
        )
        self.network_ = network
        self.replay_ = ReplayBuffer(self.replay, self.seed)
        self.replay_.add(raw_train)
        return self

    def predict(self, samples: Sequence[Sample | Data]) -> np.ndarray:
        """Predicted run times in milliseconds (float64), one per sample, in order.

        :class:`Sample` records take the search path (:mod:`~perfgraph.models.shared_inference`):
        samples of one pipeline are scored as one batch whose pipeline part is encoded once. Graphs
        (``Data``) take the training path. Both give the same numbers to float tolerance.
        """
        network = self._require_fitted("predict")
        items = list(samples)
        for position, item in enumerate(items):
            if not isinstance(item, Sample | Data):
                raise TypeError(f"samples[{position}]: expected a Sample or a graph Data, got {type(item).__name__}")
        if self.machine_features:
            require_machines(items, "samples", type(self).__name__)
        device = resolve_device(self.device)
        if next(network.parameters()).device != device:
            network.to(device)
        if network.training:
            network.eval()
        log_runtimes = np.empty(len(items), dtype=np.float64)
        sample_positions = [i for i, item in enumerate(items) if isinstance(item, Sample)]
        graph_positions = [i for i, item in enumerate(items) if not isinstance(item, Sample)]
        if sample_positions:
            log_runtimes[sample_positions] = predict_samples_log_runtimes(
                network, self.normalizer_, [items[i] for i in sample_positions], device, self._unread_features()
            )
        if graph_positions:
            graphs = self._graphs([items[i] for i in graph_positions], "samples", require_measured=False)
            log_runtimes[graph_positions] = predict_log_runtimes(network, graphs, max(self.batch_size, 256), device)
        return np.exp(log_runtimes)

    def _unread_features(self) -> torch.Tensor | None:
        """Boolean mask (326,) of the stage features outside ``features`` (zeroed), or ``None`` for all."""
        if self.features == "all":
            return None
        unread = torch.ones(FEATURES_PER_STAGE, dtype=torch.bool)
        unread[FEATURE_SETS[self.features]] = False
        return unread

    def update(self, samples: Sequence[Sample | Data]) -> None:
        """Fine-tune for ``update_epochs`` at ``lr * update_lr_factor``, keeping the normaliser.

        Each update trains on ``samples`` plus as many earlier samples replayed from ``replay_`` (a
        uniform sample of at most ``replay`` graphs seen by ``fit`` and earlier updates; ``replay=0``
        fine-tunes on the new samples alone). On a model that was never fitted this fits from scratch
        on ``samples`` (no validation set).
        """
        if not self.is_fitted:
            self.fit(samples, [])
            return
        network = self._require_fitted("update")
        raw = measured_only(self._as_graphs(samples, "samples"), "samples")
        if not raw:
            return
        graphs = self._network_inputs(raw + self.replay_.draw(len(raw)))
        self.replay_.add(raw)
        first = (self.log_[-1]["epoch"] + 1) if self.log_ else 1
        log = train_network(
            network,
            graphs,
            [],
            make_loss(self.loss),
            epochs=self.update_epochs,
            lr=self.lr * self.update_lr_factor,
            patience=self.update_epochs,
            batch_size=self.batch_size,
            seed=self.seed + first,
            device=resolve_device(self.device),
            weight_decay=self.weight_decay,
            progress=self.progress,
            desc=f"update {self.name}",
            first_epoch=first,
        )
        self.log_.extend({**entry, "phase": "update"} for entry in log)

    @torch.no_grad()
    def stage_costs(self, sample: Sample | Data) -> np.ndarray:
        """Predicted cost of every stage in ms, in featurization-row order; they sum to ``predict``."""
        network = self._require_fitted("stage_costs")
        (graph,) = self._graphs([sample], "sample", require_measured=False)
        device = resolve_device(self.device)
        network.to(device).eval()
        batch = Batch.from_data_list([graph]).to(device)
        return np.exp(network.stage_log_costs(batch).double().cpu().numpy())

    def to_payload(self) -> dict[str, Any]:
        """The checkpoint payload: hyper-parameters, network weights, normaliser and log (plain values only)."""
        network = self._require_fitted("save")
        return {
            "params": self.get_params(),
            "network": {key: value.detach().cpu().clone() for key, value in network.state_dict().items()},
            "normalizer": self.normalizer_.state_dict(),  # type: ignore[union-attr]
            "log": list(self.log_),
        }

    def save(self, path: str | Path) -> None:
        save_checkpoint(path, self.name, self.to_payload(), machine_kinds=self.machine_kinds)

    @classmethod
    def load(cls, path: str | Path, device: str | None = None) -> NeuralCostModel:
        """Rebuild a saved model; ``device`` overrides the device it was trained with.

        A model trained on CUDA loads on a machine without it on ``auto`` (the CPU there).
        """
        return cls.from_payload(load_checkpoint(path, cls.name), device)

    @classmethod
    def from_payload(cls, payload: dict[str, Any], device: str | None = None) -> NeuralCostModel:
        """The model whose :meth:`to_payload` gave ``payload``; ``device`` as in :meth:`load`."""
        params = dict(payload["params"])
        if device is not None:
            params["device"] = device
        elif params.get("device") == "cuda" and not torch.cuda.is_available():
            params["device"] = "auto"
        model = cls(**params)
        network = model.build_network()
        network.load_state_dict(payload["network"])
        network.eval()
        model.network_ = network
        model.normalizer_ = FeatureNormalizer.from_state_dict(payload["normalizer"])
        model.log_ = list(payload["log"])
        return model
