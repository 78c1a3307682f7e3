"""Accuracy and ranking metrics for run-time predictions: pure functions of arrays.

Every function takes predicted and measured run times in milliseconds (and, for the ranking
metrics, the pipeline each sample belongs to) and returns a plain float, so that each number in
a report can be checked by hand. Ranking metrics only compare schedules *of the same pipeline*:
that is the decision a schedule search makes, and knowing that a 100 ms pipeline is slower than a
1 ms one says nothing about a cost model's use to an autoscheduler.

>>> measured = np.array([1.0, 2.0, 4.0])
>>> round(mape(np.array([1.1, 1.8, 4.0]), measured), 3)  # (10 % + 10 % + 0 %) / 3
6.667
>>> pairwise_accuracy(measured * 3.0, measured, np.zeros(3))  # a scale error keeps the order
1.0

A metric that has nothing to average over (say, Kendall's tau when every pipeline has a single
schedule) returns ``nan``; :func:`evaluate_predictions` turns that into ``None``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats

# Rows of the pairwise comparison matrix built at once; bounds memory on pipelines with many schedules.
_PAIR_CHUNK = 1024


@dataclass(frozen=True)
class ModelScores:
    """All metrics of one model on one test set; ``None`` where a metric could not be computed.

    Errors are in percent (``mape``, ``median_ape``) or natural-log units (``rmse_log``); ``r2``
    is the coefficient of determination of *log* run time; ranking metrics are averaged within
    pipelines; ``samples_per_s`` is prediction throughput.
    """

    mape: float | None
    median_ape: float | None
    rmse_log: float | None
    r2: float | None
    kendall_tau: float | None
    spearman: float | None
    pairwise_accuracy: float | None
    top1: float | None
    top5: float | None
    samples_per_s: float | None = None

    def as_dict(self) -> dict[str, float | None]:
        """The scores keyed by field name, in a fixed order (the report's JSON schema)."""
        return asdict(self)


def as_runtimes(values: ArrayLike, name: str, positive: bool = True) -> np.ndarray:
    """``values`` as a 1-D float64 array; raises naming ``name`` on a bad shape or value."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} is empty")
    bad = ~np.isfinite(array) | (array <= 0) if positive else ~np.isfinite(array)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        wanted = "finite and positive" if positive else "finite"
        raise ValueError(f"{name} must be {wanted} run times (ms), but {name}[{first}] = {float(array[first])!r}")
    return array


def _checked(predicted_ms: ArrayLike, measured_ms: ArrayLike, positive_prediction: bool):
    predicted = as_runtimes(predicted_ms, "predicted_ms", positive=positive_prediction)
    measured = as_runtimes(measured_ms, "measured_ms")
    if predicted.shape != measured.shape:
        raise ValueError(
            f"predicted_ms has {predicted.size} values but measured_ms has {measured.size}; "
            "they must describe the same samples"
        )
    return predicted, measured


def pipeline_groups(pipeline_ids: ArrayLike, n_samples: int) -> list[np.ndarray]:
    """Sample indices of each pipeline, in increasing pipeline-id order.

    >>> [g.tolist() for g in pipeline_groups([7, 3, 7, 3, 5], 5)]
    [[1, 3], [4], [0, 2]]
    """
    ids = np.asarray(pipeline_ids)
    if ids.shape != (n_samples,):
        raise ValueError(f"pipeline_ids must have shape ({n_samples},) like the run times, got {ids.shape}")
    order = np.argsort(ids, kind="stable")
    boundaries = np.flatnonzero(ids[order][1:] != ids[order][:-1]) + 1
    return np.split(order, boundaries)


def absolute_percentage_errors(predicted_ms: ArrayLike, measured_ms: ArrayLike) -> np.ndarray:
    """Per-sample ``100 * |predicted - measured| / measured``."""
    predicted, measured = _checked(predicted_ms, measured_ms, positive_prediction=False)
    return 100.0 * np.abs(predicted - measured) / measured


def mape(predicted_ms: ArrayLike, measured_ms: ArrayLike) -> float:
    """Mean absolute percentage error, in percent (the paper's headline error)."""
    return float(np.mean(absolute_percentage_errors(predicted_ms, measured_ms)))


def mape_factor(predicted_ms: ArrayLike, measured_ms: ArrayLike) -> float:
    """The constant ``a`` that minimises ``mape(a * predicted, measured)``: a MAPE calibration.

    A model trained on the squared log error predicts the median run time, and under a spread of
    errors the point that minimises the expected *relative* error lies below the median (for a
    log-normal error of sd ``s``, by the factor ``exp(-s**2)``). The exact minimiser of
    ``sum(|a * r_i - 1|)``, ``r_i = predicted_i / measured_i``, is the weighted median of ``1 / r_i``
    with weights ``r_i`` (the objective is convex and piecewise linear in ``a``). Fit it on
    validation data and apply it to test data; it leaves every ranking metric unchanged.

    >>> mape_factor([2.0, 4.0, 6.0], [1.0, 2.0, 3.0])
    0.5
    """
    predicted, measured = _checked(predicted_ms, measured_ms, positive_prediction=True)
    ratio = predicted / measured
    order = np.argsort(1.0 / ratio)
    weight = np.cumsum(ratio[order])
    return float(1.0 / ratio[order][np.searchsorted(weight, weight[-1] / 2.0)])


def median_ape(predicted_ms: ArrayLike, measured_ms: ArrayLike) -> float:
    """Median absolute percentage error, in percent; unlike MAPE, not dominated by a few outliers."""
    return float(np.median(absolute_percentage_errors(predicted_ms, measured_ms)))


def log_errors(predicted_ms: ArrayLike, measured_ms: ArrayLike) -> np.ndarray:
    """Per-sample ``ln(predicted) - ln(measured)``: symmetric in over- and under-prediction."""
    predicted, measured = _checked(predicted_ms, measured_ms, positive_prediction=True)
    return np.log(predicted) - np.log(measured)


def pipeline_bias_and_residual(errors: ArrayLike, pipeline_ids: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Split per-sample log errors into their pipeline's mean (the bias) and the rest (the residual).

    Both are per sample; the residual sums to zero within every pipeline, and only it matters to
    the ranking metrics (Kendall tau, top-k).

    >>> bias, residual = pipeline_bias_and_residual([0.5, 0.3, -0.2], [7, 7, 9])
    >>> bias.round(2).tolist(), residual.round(2).tolist()
    ([0.4, 0.4, -0.2], [0.1, -0.1, 0.0])
    """
    errors = np.asarray(errors, dtype=np.float64)
    _, group = np.unique(np.asarray(pipeline_ids), return_inverse=True)
    bias = (np.bincount(group, weights=errors) / np.bincount(group))[group]
    return bias, errors - bias


def rmse_log(predicted_ms: ArrayLike, measured_ms: ArrayLike) -> float:
    """Root mean squared error of the natural log of run time (0.1 is roughly a 10 % error)."""
    return float(np.sqrt(np.mean(log_errors(predicted_ms, measured_ms) ** 2)))


def r2_log(predicted_ms: ArrayLike, measured_ms: ArrayLike) -> float:
    """Coefficient of determination R² of the natural log of run time.

    Computed on log run time because run times span orders of magnitude: on raw milliseconds the
    few slowest pipelines would decide the score alone. ``nan`` when all measured times are equal.
    """
    residuals = log_errors(predicted_ms, measured_ms)
    log_measured = np.log(as_runtimes(measured_ms, "measured_ms"))
    total = float(np.sum((log_measured - log_measured.mean()) ** 2))
    if total == 0.0:
        return math.nan
    return 1.0 - float(np.sum(residuals**2)) / total


def _rank_correlation_by_pipeline(predicted_ms, measured_ms, pipeline_ids, correlation) -> dict:
    predicted, measured = _checked(predicted_ms, measured_ms, positive_prediction=False)
    ids = np.asarray(pipeline_ids)
    result = {}
    for group in pipeline_groups(ids, measured.size):
        p, m = predicted[group], measured[group]
        if group.size < 2 or np.all(m == m[0]):
            continue  # nothing to rank: one schedule, or all measured equal
        # A constant prediction carries no ranking information: score it 0, not undefined.
        result[ids[group[0]].item()] = 0.0 if np.all(p == p[0]) else float(correlation(p, m).statistic)
    return result


def kendall_tau_by_pipeline(
    predicted_ms: ArrayLike, measured_ms: ArrayLike, pipeline_ids: ArrayLike
) -> dict[int, float]:
    """Kendall's tau-b (which corrects for ties) between predicted and measured, per pipeline.

    Pipelines with fewer than two schedules, or whose measured times are all equal, are left out;
    a pipeline whose predictions are all equal scores 0.
    """
    return _rank_correlation_by_pipeline(predicted_ms, measured_ms, pipeline_ids, stats.kendalltau)


def spearman_by_pipeline(predicted_ms: ArrayLike, measured_ms: ArrayLike, pipeline_ids: ArrayLike) -> dict[int, float]:
    """Spearman's rho (average ranks for ties) per pipeline; same exclusions as Kendall's tau."""
    return _rank_correlation_by_pipeline(predicted_ms, measured_ms, pipeline_ids, stats.spearmanr)


def _mean_or_nan(values) -> float:
    values = list(values)
    return float(np.mean(values)) if values else math.nan


def mean_kendall_tau(predicted_ms: ArrayLike, measured_ms: ArrayLike, pipeline_ids: ArrayLike) -> float:
    """Mean over pipelines of :func:`kendall_tau_by_pipeline`; each pipeline weighs the same."""
    return _mean_or_nan(kendall_tau_by_pipeline(predicted_ms, measured_ms, pipeline_ids).values())


def mean_spearman(predicted_ms: ArrayLike, measured_ms: ArrayLike, pipeline_ids: ArrayLike) -> float:
    """Mean over pipelines of :func:`spearman_by_pipeline`; each pipeline weighs the same."""
    return _mean_or_nan(spearman_by_pipeline(predicted_ms, measured_ms, pipeline_ids).values())


def pairwise_accuracy(predicted_ms: ArrayLike, measured_ms: ArrayLike, pipeline_ids: ArrayLike) -> float:
    """Fraction of same-pipeline schedule pairs whose measured order the prediction gets right.

    Only pairs with distinct measured times count; a pair the model predicts as tied counts half
    (it is a coin flip for a search). Pairs are pooled over all pipelines, which is what Halide's
    trainer reports as "correct ordering".

    >>> pairwise_accuracy([1.0, 1.0, 3.0], [1.0, 2.0, 3.0], [0, 0, 0])  # (0.5 + 1 + 1) / 3 pairs
    0.8333333333333334
    """
    predicted, measured = _checked(predicted_ms, measured_ms, positive_prediction=False)
    correct, total = 0.0, 0
    for group in pipeline_groups(pipeline_ids, measured.size):
        p, m = predicted[group], measured[group]
        for start in range(0, group.size, _PAIR_CHUNK):
            # Row i is slower than column j: every distinct pair appears exactly once.
            slower = (m[start : start + _PAIR_CHUNK, None] - m[None, :]) > 0
            predicted_gap = (p[start : start + _PAIR_CHUNK, None] - p[None, :])[slower]
            total += int(slower.sum())
            correct += float(np.sum(predicted_gap > 0)) + 0.5 * float(np.sum(predicted_gap == 0))
    return correct / total if total else math.nan


def top_k_score(predicted_ms: ArrayLike, measured_ms: ArrayLike, pipeline_ids: ArrayLike, k: int) -> float:
    """How close the model's top-``k`` picks come to the fastest schedule, averaged over pipelines.

    Per pipeline: the best measured time of all its schedules divided by the best measured time
    among the ``k`` schedules predicted fastest, so 1.0 means the fastest schedule was among the
    picks and 0.5 means the best pick runs twice as long. Ties in the prediction are broken
    against the model (slowest measured first), so a constant predictor earns no luck. Pipelines
    with fewer than two schedules are left out.

    >>> top_k_score([1.0, 2.0, 3.0], [4.0, 2.0, 1.0], [0, 0, 0], k=1)  # picks the 4 ms schedule
    0.25
    """
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    predicted, measured = _checked(predicted_ms, measured_ms, positive_prediction=False)
    scores = []
    for group in pipeline_groups(pipeline_ids, measured.size):
        if group.size < 2:
            continue
        p, m = predicted[group], measured[group]
        picks = np.lexsort((-m, p))[:k]  # primary key: prediction; ties: slowest first
        scores.append(m.min() / m[picks].min())
    return _mean_or_nan(scores)


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def evaluate_predictions(
    predicted_ms: ArrayLike,
    measured_ms: ArrayLike,
    pipeline_ids: ArrayLike,
    samples_per_s: float | None = None,
) -> ModelScores:
    """Every metric of one model's predictions on one test set.

    >>> scores = evaluate_predictions([1.0, 2.0, 4.0], [1.0, 2.0, 4.0], [0, 0, 0])
    >>> scores.mape, scores.kendall_tau, scores.pairwise_accuracy, scores.top1
    (0.0, 1.0, 1.0, 1.0)
    """
    args = (predicted_ms, measured_ms, pipeline_ids)
    return ModelScores(
        mape=mape(predicted_ms, measured_ms),
        median_ape=median_ape(predicted_ms, measured_ms),
        rmse_log=rmse_log(predicted_ms, measured_ms),
        r2=_finite_or_none(r2_log(predicted_ms, measured_ms)),
        kendall_tau=_finite_or_none(mean_kendall_tau(*args)),
        spearman=_finite_or_none(mean_spearman(*args)),
        pairwise_accuracy=_finite_or_none(pairwise_accuracy(*args)),
        top1=_finite_or_none(top_k_score(*args, k=1)),
        top5=_finite_or_none(top_k_score(*args, k=5)),
        samples_per_s=None if samples_per_s is None else _finite_or_none(samples_per_s),
    )


def interval_coverage(mean_log: np.ndarray, sd_log: np.ndarray, measured_log: np.ndarray) -> dict[str, float]:
    """Share of measured log run times within ``mean ± sd`` and ``mean ± 2 sd``.

    For a calibrated Gaussian uncertainty these are 0.683 and 0.954.

    >>> interval_coverage(np.log([1.0, 2.0, 4.0]), np.array([0.1, 0.1, 0.1]), np.log([1.05, 2.5, 4.0]))
    {'within_1sd': 0.6667, 'within_2sd': 0.6667}
    """
    gap = np.abs(np.asarray(measured_log) - np.asarray(mean_log))
    sd = np.asarray(sd_log)
    return {
        "within_1sd": round(float(np.mean(gap <= sd)), 4),
        "within_2sd": round(float(np.mean(gap <= 2 * sd)), 4),
    }
