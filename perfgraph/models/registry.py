"""Every cost model by name, and loading any checkpoint by the model kind it records."""

from __future__ import annotations

from pathlib import Path

from perfgraph.models.base import CostModel, constructor_params
from perfgraph.models.checkpoint import CheckpointError, read_checkpoint_header
from perfgraph.models.ensemble import EnsembleCostModel
from perfgraph.models.gnn import GNNCostModel
from perfgraph.models.halide_net import HalideCostModel
from perfgraph.models.sequence import SequenceCostModel
from perfgraph.models.xgboost_model import PackSumXGBoost, SummedFeatureXGBoost

MODEL_CLASSES: dict[str, type[CostModel]] = {
    cls.name: cls
    for cls in (
        GNNCostModel,
        SequenceCostModel,
        EnsembleCostModel,
        HalideCostModel,
        PackSumXGBoost,
        SummedFeatureXGBoost,
    )
}


def make_model(name: str, **hyper_parameters: object) -> CostModel:
    """A fresh, untrained model; ``name`` is one of :data:`MODEL_CLASSES`."""
    if name not in MODEL_CLASSES:
        raise ValueError(f"model {name!r}: unknown; choose from {', '.join(sorted(MODEL_CLASSES))}")
    accepted = constructor_params(MODEL_CLASSES[name])
    if name != "ensemble":  # an ensemble forwards any keyword to its members, which check them
        unknown = sorted(set(hyper_parameters) - set(accepted))
        if unknown:
            raise ValueError(
                f"model {name!r} has no hyper-parameter {', '.join(unknown)}; it takes {', '.join(accepted)}"
            )
    return MODEL_CLASSES[name](**hyper_parameters)


def load_model(path: str | Path) -> CostModel:
    """Load a checkpoint of any kind (safely: no code runs), refusing other feature-schema versions."""
    header = read_checkpoint_header(path)
    kind = header["model_kind"]
    if kind not in MODEL_CLASSES:
        raise CheckpointError(f"{path}: unknown model kind {kind!r}")
    model = MODEL_CLASSES[kind].load(path)
    model.machine_kinds = tuple(header.get("machine_kinds", ()))
    return model
