"""``perfgraph train``: split by pipeline, fit any cost model, write checkpoint, log and loss curve.

>>> result = train_model(Store("data/perfgraph.db").samples(), "gnn", Path("out/gnn.pt"),
...                      epochs=100, device="auto", seed=0)                    # doctest: +SKIP
>>> result.metrics["test"]["mape"]                                             # doctest: +SKIP

Beside the checkpoint ``OUT`` it writes ``OUT.log.json`` (hyper-parameters, the pipelines of each
part, per-epoch losses, final metrics) and ``OUT.loss.png`` (the loss curve).

``python -m perfgraph.models.train ARGS`` is ``perfgraph train ARGS``; under ``torchrun`` it trains one
neural model in several processes (:mod:`~perfgraph.models.distributed`)::

    torchrun --nproc-per-node 4 -m perfgraph.models.train --model gnn --device cuda --out out/gnn.pt
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch_geometric.data import Data

from perfgraph.data.records import Sample
from perfgraph.evaluate.metrics import mape, mean_kendall_tau, rmse_log
from perfgraph.features.layout import FEATURE_SCHEMA_VERSION
from perfgraph.features.splits import DatasetSplit, split_samples
from perfgraph.models.base import CostModel, constructor_params, reads_machines
from perfgraph.models.distributed import Ranks, current_ranks, process_group
from perfgraph.models.neural import NeuralCostModel
from perfgraph.models.registry import MODEL_CLASSES, make_model
from perfgraph.models.training import plot_loss_curve


@dataclass(frozen=True)
class TrainingResult:
    """A trained model, the split it was trained on, its log and where its files went."""

    model: CostModel
    split: DatasetSplit
    log: list[dict]
    metrics: dict[str, dict[str, float]]  # part ("valid", "test") -> metric name -> value
    checkpoint_path: Path
    log_path: Path
    plot_path: Path | None  # None for models trained without epochs (XGBoost)


def summary_metrics(predicted_ms: np.ndarray, measured_ms: np.ndarray, groups: Sequence[Any]) -> dict[str, float]:
    """MAPE (%), RMSE of the log run time, and the mean within-pipeline Kendall tau (NaN if undefined).

    The same definitions as ``perfgraph evaluate`` (:mod:`perfgraph.evaluate.metrics`), so a training
    log and the evaluation table agree.
    """
    if len(predicted_ms) == 0:
        return {"mape": math.nan, "rmse_log": math.nan, "kendall_tau": math.nan, "samples": 0}
    return {
        "mape": mape(predicted_ms, measured_ms),
        "rmse_log": rmse_log(predicted_ms, measured_ms),
        "kendall_tau": mean_kendall_tau(predicted_ms, measured_ms, groups),
        "samples": len(predicted_ms),
    }


def evaluate_model(model: CostModel, items: Sequence[Sample | Data]) -> dict[str, float]:
    """:func:`summary_metrics` of ``model`` on measured samples or graphs."""
    measured = np.array([s.runtime_ms if isinstance(s, Sample) else math.exp(float(s.y)) for s in items])
    groups = [f"{s.pipeline_name}@{machine_kind_of(s)}" for s in items]  # never rank two machines together
    return summary_metrics(model.predict(items), measured, groups)


def machine_kind_of(item: Sample | Data) -> str:
    """The machine kind a sample or graph belongs to (``""`` when it does not say)."""
    return (item.machine_kind if isinstance(item, Sample) else getattr(item, "machine_kind", "")) or ""


def _json_safe(value: Any) -> Any:
    """``value`` with NaN and infinities replaced by ``None`` (strict JSON has no NaN)."""
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def train_model(
    samples: Sequence[Sample | Data],
    model_name: str,
    out: str | Path,
    epochs: int | None = None,
    device: str = "auto",
    seed: int = 0,
    split: str = "fixed",
    machine: str | Sequence[str] | None = None,
    **hparams: Any,
) -> TrainingResult:
    """Split ``samples`` by pipeline, fit ``model_name`` (any of ``MODEL_CLASSES``) and save it to ``out``.

    ``hparams`` go to the model's constructor, as do ``device`` and ``epochs`` for the models that
    train by epochs (``epochs=None`` keeps the model's default). ``machine`` (the samples' machine
    kind, or kinds for a machine-aware model; default: the kinds the samples name) is recorded in the
    checkpoint. Samples of several kinds need a machine-aware model (``ValueError`` otherwise). With
    several kinds, ``metrics`` also holds each part per kind (``"test intel-xeon-2.50ghz/avx2"``); a
    pipeline measured on two kinds is in the same part for both.

    In a process group (``torchrun``) every rank trains; rank 0 alone evaluates and writes the
    files, and the other ranks return their model with empty ``metrics``.
    """
    if model_name not in MODEL_CLASSES:
        raise ValueError(f"model_name must be one of {sorted(MODEL_CLASSES)}, got {model_name!r}")
    parts = split_samples(samples, split)
    accepted = constructor_params(MODEL_CLASSES[model_name])
    options = {"device": device, "seed": seed, "epochs": epochs}
    hparams.update({k: v for k, v in options.items() if k in accepted and v is not None})
    model = make_model(model_name, **hparams)
    kinds = tuple(dict.fromkeys(kind for kind in map(machine_kind_of, samples) if kind))
    if len(kinds) > 1 and not reads_machines(model):
        raise ValueError(
            f"samples come from {len(kinds)} machine kinds ({', '.join(kinds)}); a machine-blind {model_name} "
            "would average their run times: train on one kind, or a neural model with machine_features=True"
        )
    model.fit(parts.train, parts.valid)
    model.machine_kinds = (machine,) if isinstance(machine, str) else tuple(machine or kinds)
    return save_trained(model, model_name, parts, split, out)


def save_trained(
    model: CostModel, model_name: str, parts: DatasetSplit, split: str, out: str | Path, **log_fields: Any
) -> TrainingResult:
    """Write a fitted model's checkpoint ``out``, ``out.log.json`` (with ``log_fields``) and loss curve.

    ``parts`` is the split it was trained on (``split`` names it); the log holds the pipelines of
    each part and the model's metrics on each, per machine kind too when the model knows several.
    In a process group only rank 0 writes; the other ranks get the result with empty ``metrics``.
    """
    out = Path(out)
    log_path = Path(f"{out}.log.json")
    epoch_log = training_log(model)
    if not current_ranks().is_main:
        return TrainingResult(model, parts, epoch_log, {}, out, log_path, None)
    model.save(out)
    metrics = {part: evaluate_model(model, getattr(parts, part)) for part in ("train", "valid", "test")}
    if len(model.machine_kinds) > 1:
        for part in ("valid", "test"):
            for kind in model.machine_kinds:
                items = [s for s in getattr(parts, part) if machine_kind_of(s) == kind]
                metrics[f"{part} {kind}"] = evaluate_model(model, items) if items else summary_metrics([], [], [])
    plot_path = plot_loss_curve(epoch_log, Path(f"{out}.loss.png")) if epoch_log else None
    log_path.write_text(
        json.dumps(
            _json_safe(
                {
                    "model": model_name,
                    "params": model.get_params(),
                    "feature_schema_version": FEATURE_SCHEMA_VERSION,
                    "split": {"kind": split, **{part: parts.pipelines(part) for part in ("train", "valid", "test")}},
                    **log_fields,
                    "metrics": metrics,
                    "epochs": epoch_log,
                }
            ),
            indent=1,
            allow_nan=False,
        )
        + "\n"
    )
    return TrainingResult(model, parts, epoch_log, metrics, out, log_path, plot_path)


def training_log(model: CostModel) -> list[dict]:
    """Per-epoch losses of a model that trains by epochs (empty for XGBoost)."""
    if hasattr(model, "log_"):
        return list(model.log_)
    return [
        {"epoch": epoch, "train_loss": train, "valid_loss": valid}
        for epoch, train, valid in getattr(model, "history_", [])
    ]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m perfgraph.models.train ARGS``: ``perfgraph train ARGS`` in every process ``torchrun`` starts.

    The processes join one process group (gloo on CPU, NCCL on CUDA) and train one model; rank 0
    alone prints and writes files.
    """
    from perfgraph.cli import build_parser
    from perfgraph.models.training import resolve_device

    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(["train", *argv])
    try:
        resolve_device(args.device)  # here, so that a missing GPU is one line and not a traceback per rank
    except ValueError as error:
        print(f"perfgraph: error: train --device {args.device}: {error}", file=sys.stderr)
        return 2
    with process_group(args.device) as ranks:
        return _train_on_rank(ranks, args.model, args.db, argv)


def _train_on_rank(ranks: Ranks, model_name: str, db: Path | None, argv: list[str]) -> int:
    from perfgraph.cli import CliError, open_store
    from perfgraph.cli import main as cli_main

    if ranks.distributed and not issubclass(MODEL_CLASSES.get(model_name, CostModel), NeuralCostModel):
        neural = " and ".join(sorted(name for name, cls in MODEL_CLASSES.items() if issubclass(cls, NeuralCostModel)))
        print(
            f"perfgraph: error: train --model {model_name}: only {neural} train in several processes; "
            "run it without torchrun",
            file=sys.stderr,
        )
        return 2
    if ranks.distributed and ranks.is_main and db is None:
        # The default store is built from the shards when missing: by rank 0 alone, two builds would collide.
        with contextlib.suppress(CliError):  # perfgraph train reports it below
            open_store(None).close()
    ranks.barrier()
    quiet = contextlib.redirect_stdout(io.StringIO()) if not ranks.is_main else contextlib.nullcontext()
    with quiet:
        return cli_main(["train", *argv])


if __name__ == "__main__":
    sys.exit(main())
