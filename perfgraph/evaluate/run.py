"""Evaluate several trained cost models on one test set: predictions, throughput, scores, ratios.

This is the one function the CLI's ``perfgraph evaluate`` calls; everything it computes comes
from the pure metric functions, and it writes nothing (see :func:`~perfgraph.evaluate.report.write_report`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike

from perfgraph.data.records import Sample
from perfgraph.evaluate.bootstrap import error_ratios
from perfgraph.evaluate.metrics import evaluate_predictions, interval_coverage
from perfgraph.evaluate.noise import NoiseFloor, noise_floor_from_pairs
from perfgraph.evaluate.report import EvaluationReport
from perfgraph.models.base import CostModel, measured_runtimes, predict_with_uncertainty

NoisePairs = tuple[ArrayLike, ArrayLike, ArrayLike]  # (first_ms, second_ms, pipeline_ids)


def predict_timed(
    model: CostModel, samples: Sequence[Sample], warmup: int = 8
) -> tuple[np.ndarray, np.ndarray | None, float]:
    """Predictions for ``samples``, their uncertainty (``None`` for a model without one, see
    :func:`~perfgraph.models.base.predict_with_uncertainty`) and the throughput in samples per second.

    One warm-up call on the first ``warmup`` samples comes first (lazy initialisation, allocator
    and kernel caches should not count), then a single timed ``predict`` call on the whole list.
    """
    if not samples:
        raise ValueError("samples is empty; nothing to predict")
    model.predict(list(samples[:warmup]))
    start = time.perf_counter()
    predicted, sd_log = predict_with_uncertainty(model, list(samples))
    elapsed_s = time.perf_counter() - start
    if predicted.shape != (len(samples),):
        raise ValueError(f"model {model.name!r} returned shape {predicted.shape} for {len(samples)} samples")
    if not np.all(np.isfinite(predicted)):
        first = int(np.flatnonzero(~np.isfinite(predicted))[0])
        raise ValueError(f"model {model.name!r} predicted {float(predicted[first])!r} for sample {first}")
    return predicted, sd_log, len(samples) / max(elapsed_s, 1e-9)


def uncertainty_calibration(predicted_ms: np.ndarray, sd_log: np.ndarray, measured_ms: np.ndarray) -> dict[str, float]:
    """Share of measured run times inside the predicted ±1 and ±2 standard deviations, and the median sd.

    For a calibrated Gaussian uncertainty of the log run time the shares are 0.683 and 0.954.
    """
    coverage = interval_coverage(np.log(predicted_ms), sd_log, np.log(measured_ms))
    return {**coverage, "median_sd_log": round(float(np.median(sd_log)), 4)}


def evaluate_models(
    models: Mapping[str, CostModel],
    test_samples: Sequence[Sample],
    noise_pairs: NoisePairs | NoiseFloor | None,
    extra_rows: Mapping[str, Mapping[str, float | None]] | None = None,
    reference: str | None = "gnn",
    n_boot: int = 1000,
    seed: int = 0,
    split: str = "test",
) -> tuple[EvaluationReport, dict[str, np.ndarray]]:
    """Score every model on ``test_samples`` and compare ``reference`` against each other model.

    ``noise_pairs`` is either ``(first_ms, second_ms, pipeline_ids)`` of repeated measurements,
    an already computed :class:`NoiseFloor` (e.g. the repeat-spread fallback), or ``None``.
    Ratios are keyed ``f"{reference}_vs_{other}"`` and equal other's error / reference's error, so
    a value above 1 means the reference model is better; ``reference=None`` skips them.
    Returns the report and each model's predictions (ms, in ``test_samples`` order).
    """
    if not models:
        raise ValueError("models is empty; nothing to evaluate")
    if reference is not None and reference not in models:
        raise ValueError(f"reference model {reference!r} is not among models {sorted(models)}")
    measured = measured_runtimes(test_samples)
    pipeline_ids = np.array([s.pipeline_id for s in test_samples])

    predictions, scores, calibration = {}, {}, {}
    for name, model in models.items():
        predictions[name], sd_log, samples_per_s = predict_timed(model, test_samples)
        scores[name] = evaluate_predictions(predictions[name], measured, pipeline_ids, samples_per_s)
        if sd_log is not None:
            calibration[name] = uncertainty_calibration(predictions[name], sd_log, measured)

    ratios = {}
    if reference is not None:
        for other in models:
            if other != reference:
                ratios[f"{reference}_vs_{other}"] = error_ratios(
                    predictions[reference],
                    predictions[other],
                    measured,
                    pipeline_ids,
                    n_boot=n_boot,
                    seed=seed,
                )

    noise_floor = noise_pairs
    if not isinstance(noise_pairs, NoiseFloor | None):
        noise_floor = noise_floor_from_pairs(*noise_pairs)
    report = EvaluationReport(
        split=split,
        models=scores,
        noise_floor=noise_floor,
        ratios=ratios,
        extra_rows=dict(extra_rows or {}),
        calibration=calibration,
        n_samples=len(test_samples),
        n_pipelines=int(np.unique(pipeline_ids).size),
    )
    return report, predictions
