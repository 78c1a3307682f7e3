"""Predictions as a CSV that evaluation scripts and spreadsheets read without perfgraph.

>>> write_predictions_csv(GNNCostModel.load("out/gnn.pt"), samples, "out/pred.csv")  # doctest: +SKIP
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from perfgraph.data.records import Sample
from perfgraph.models.base import CostModel

CSV_HEADER = ("pipeline_id", "schedule_id", "predicted_ms", "measured_ms")


def write_predictions_csv(model: CostModel, samples: Sequence[Sample], path: str | Path) -> Path:
    """One row per sample: ids, the model's prediction and the measurement (empty if unmeasured)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    predicted = model.predict(samples)
    if len(predicted) != len(samples):
        raise ValueError(f"{type(model).__name__}.predict returned {len(predicted)} values for {len(samples)} samples")
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_HEADER)
        for sample, value in zip(samples, predicted, strict=True):
            measured = "" if sample.runtime_ms is None else repr(float(sample.runtime_ms))
            writer.writerow([sample.pipeline_id, sample.schedule_id, repr(float(value)), measured])
    return path
