"""How many times lower one model's error is than another's, with a bootstrap confidence interval.

The paper's headline claims ("7.75x lower error than Halide's cost model") are ratios of errors
on one test set. A test set has few pipelines and schedules of one pipeline are not independent,
so the interval resamples *pipelines* with replacement (all schedules of a drawn pipeline come
along), recomputes both models' errors on each resample and takes percentiles of the ratio.

>>> measured = np.array([1.0, 2.0, 4.0, 8.0])
>>> ratios = error_ratios(measured * 1.1, measured * 1.5, measured, [0, 0, 1, 1], n_boot=200)
>>> round(ratios["mape"].ratio, 6)  # 50 % error against 10 %
5.0
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from perfgraph.evaluate.metrics import absolute_percentage_errors, log_errors

# Metrics that are a function of a mean of per-sample losses, so a resample's value follows from
# per-pipeline sums weighted by how often each pipeline was drawn: (per-sample loss, finish).
_MEAN_LOSS_METRICS: dict[str, tuple[Callable[[np.ndarray, np.ndarray], np.ndarray], Callable]] = {
    "mape": (absolute_percentage_errors, lambda mean: mean),
    "rmse_log": (lambda p, m: log_errors(p, m) ** 2, np.sqrt),
}
BOOTSTRAP_METRICS: tuple[str, ...] = tuple(_MEAN_LOSS_METRICS)


@dataclass(frozen=True)
class RatioEstimate:
    """``ratio = error(baseline) / error(model)`` with a percentile bootstrap interval.

    A ratio above 1 means the model's error is that many times lower than the baseline's. When the
    model's error is 0 (on the data or on a resample) the ratio is infinite.
    """

    metric: str
    ratio: float
    ci_low: float
    ci_high: float
    confidence: float
    n_boot: int

    def as_dict(self) -> dict[str, float | list[float]]:
        """``{"ratio": r, "ci95": [lo, hi]}`` (the key names the confidence level)."""
        return {"ratio": self.ratio, f"ci{round(100 * self.confidence)}": [self.ci_low, self.ci_high]}


def _pipeline_weights(pipeline_ids: np.ndarray, n_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample pipeline index, and per-resample counts of how often each pipeline was drawn."""
    _, pipeline_index = np.unique(pipeline_ids, return_inverse=True)
    n_pipelines = int(pipeline_index.max()) + 1
    rng = np.random.default_rng(seed)
    # Drawing n_pipelines pipelines with replacement == one multinomial count vector per resample.
    counts = rng.multinomial(n_pipelines, np.full(n_pipelines, 1.0 / n_pipelines), size=n_boot)
    return pipeline_index, counts.astype(np.float64)


def error_ratios(
    model_ms: ArrayLike,
    baseline_ms: ArrayLike,
    measured_ms: ArrayLike,
    pipeline_ids: ArrayLike,
    metrics: Sequence[str] = BOOTSTRAP_METRICS,
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, RatioEstimate]:
    """Error ratio of ``baseline_ms`` over ``model_ms`` for each metric, with a pipeline bootstrap.

    All metrics share the same resamples, and the same ``seed`` gives the same intervals.
    ``metrics`` may name any of :data:`BOOTSTRAP_METRICS`.
    """
    unknown = [name for name in metrics if name not in _MEAN_LOSS_METRICS]
    if unknown or not metrics:
        raise ValueError(f"metrics must name some of {list(BOOTSTRAP_METRICS)}, got {list(metrics)!r}")
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence!r}")
    measured = np.asarray(measured_ms, dtype=np.float64)
    ids = np.asarray(pipeline_ids)
    if ids.shape != measured.shape:
        raise ValueError(f"pipeline_ids must have shape {measured.shape} like measured_ms, got {ids.shape}")
    pipeline_index, draws = _pipeline_weights(ids, n_boot, seed)
    samples_per_pipeline = np.bincount(pipeline_index).astype(np.float64)
    tail = (1.0 - confidence) / 2.0

    results = {}
    for name in metrics:
        loss, finish = _MEAN_LOSS_METRICS[name]
        model_sums = np.bincount(pipeline_index, weights=loss(model_ms, measured))
        baseline_sums = np.bincount(pipeline_index, weights=loss(baseline_ms, measured))
        with np.errstate(divide="ignore", invalid="ignore"):
            n = measured.size
            ratio = float(finish(baseline_sums.sum() / n) / finish(model_sums.sum() / n))
            resampled_n = draws @ samples_per_pipeline
            boot = finish((draws @ baseline_sums) / resampled_n) / finish((draws @ model_sums) / resampled_n)
        low, high = np.quantile(boot, [tail, 1.0 - tail])
        results[name] = RatioEstimate(name, ratio, float(low), float(high), confidence, n_boot)
    return results
