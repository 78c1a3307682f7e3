"""``perfgraph train``: split by pipeline, fit a neural cost model, write checkpoint, log and curve.

>>> result = train_model(Store("data/perfgraph.db").samples(), "gnn", Path("out/gnn.pt"),
...                      epochs=100, device="auto", seed=0)                    # doctest: +SKIP
>>> result.metrics["test"]["mape"]                                             # doctest: +SKIP

Beside the checkpoint ``OUT`` it writes ``OUT.log.json`` (hyper-parameters, the pipelines of each
part, per-epoch losses, final metrics) and ``OUT.loss.png`` (the loss curve).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import kendalltau
from torch_geometric.data import Data

from perfgraph.data.records import Sample
from perfgraph.features.layout import FEATURE_SCHEMA_VERSION
from perfgraph.features.splits import DatasetSplit, split_samples
from perfgraph.models.gnn import GNNCostModel
from perfgraph.models.neural import NeuralCostModel
from perfgraph.models.sequence import SequenceCostModel
from perfgraph.models.training import plot_loss_curve

#: The neural models ``perfgraph train --model`` knows.
MODELS: dict[str, type[NeuralCostModel]] = {"gnn": GNNCostModel, "sequence": SequenceCostModel}


@dataclass(frozen=True)
class TrainingResult:
    """A trained model, the split it was trained on, its log and where its files went."""

    model: NeuralCostModel
    split: DatasetSplit
    log: list[dict]
    metrics: dict[str, dict[str, float]]  # part ("valid", "test") -> metric name -> value
    checkpoint_path: Path
    log_path: Path
    plot_path: Path


def summary_metrics(predicted_ms: np.ndarray, measured_ms: np.ndarray,
                    groups: Sequence[Any]) -> dict[str, float]:
    """MAPE, RMSE of the log run time, and the mean within-pipeline Kendall tau (NaN if undefined)."""
    predicted_ms, measured_ms = np.asarray(predicted_ms, float), np.asarray(measured_ms, float)
    if predicted_ms.size == 0:
        return {"mape": math.nan, "rmse_log": math.nan, "kendall_tau": math.nan, "samples": 0}
    gap = np.log(predicted_ms) - np.log(measured_ms)
    taus = []
    groups = np.asarray(groups)
    for group in np.unique(groups):
        members = groups == group
        if members.sum() >= 2:
            tau = kendalltau(predicted_ms[members], measured_ms[members]).statistic
            if np.isfinite(tau):
                taus.append(float(tau))
    return {"mape": float(np.mean(np.abs(predicted_ms / measured_ms - 1))),
            "rmse_log": float(np.sqrt(np.mean(gap ** 2))),
            "kendall_tau": float(np.mean(taus)) if taus else math.nan, "samples": int(predicted_ms.size)}


def evaluate_model(model: NeuralCostModel, items: Sequence[Sample | Data]) -> dict[str, float]:
    """:func:`summary_metrics` of ``model`` on measured samples or graphs."""
    measured = np.array([s.runtime_ms if isinstance(s, Sample) else math.exp(float(s.y)) for s in items])
    return summary_metrics(model.predict(items), measured, [s.pipeline_name for s in items])


def _json_safe(value: Any) -> Any:
    """``value`` with NaN and infinities replaced by ``None`` (strict JSON has no NaN)."""
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def train_model(samples: Sequence[Sample | Data], model_name: str, out: str | Path, epochs: int | None = None,
                device: str = "auto", seed: int = 0, split: str = "fixed", **hparams: Any) -> TrainingResult:
    """Split ``samples`` by pipeline, fit ``model_name`` (``gnn`` or ``sequence``) and save it to ``out``.

    ``epochs=None`` keeps the model's default; ``hparams`` go to the model's constructor.
    """
    if model_name not in MODELS:
        raise ValueError(f"model_name must be one of {sorted(MODELS)}, got {model_name!r}")
    out = Path(out)
    parts = split_samples(samples, split)
    if epochs is not None:
        hparams["epochs"] = epochs
    model = MODELS[model_name](device=device, seed=seed, **hparams)
    model.fit(parts.train, parts.valid)
    model.save(out)
    metrics = {part: evaluate_model(model, getattr(parts, part)) for part in ("train", "valid", "test")}
    log_path = Path(f"{out}.log.json")
    plot_path = plot_loss_curve(model.log_, Path(f"{out}.loss.png"))
    log_path.write_text(json.dumps(_json_safe({
        "model": model_name, "params": model.get_params(), "feature_schema_version": FEATURE_SCHEMA_VERSION,
        "split": {"kind": split, **{part: parts.pipelines(part) for part in ("train", "valid", "test")}},
        "metrics": metrics, "epochs": model.log_,
    }), indent=1, allow_nan=False) + "\n")
    return TrainingResult(model, parts, model.log_, metrics, out, log_path, plot_path)
