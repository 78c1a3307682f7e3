"""The measurement noise floor: the error a perfect model would still show.

Measured run times are noisy, so no model can predict them more closely than one measurement
predicts another. Putting that floor next to the models says how much of a model's error is left
to win. Two estimates, in order of preference:

* :func:`noise_floor_from_pairs` — two *independent* measurements of the same schedules (separate
  benchmark runs, each reporting its own minimum). One measurement "predicts" the other, in both
  directions, with exactly the metrics used for the models. This is the honest floor.
* :func:`noise_floor_from_repeats` — only the benchmark repeats inside one measurement are known
  (the store keeps them all). Each repeat then "predicts" the recorded minimum. This is a
  different quantity and is labelled as such: a single repeat is noisier than a minimum of many
  (overstating the floor), but repeats of one run share the process, machine state and data
  layout, so drift between runs is missed (understating it). Ranking metrics are not estimated.

Read the pair floor as "as good as measuring again", not as a hard bound: both runs are noisy,
so with independent log-normal noise a model that knew the noise-free time would see about
1/sqrt(2) of the pairs' ``rmse_log``.

>>> floor = noise_floor_from_pairs([100.0, 100.0], [125.0, 125.0])
>>> floor.scores.mape  # 25 % one way (25/100), 20 % the other (25/125): (25 + 20) / 2
22.5
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields

import numpy as np
from numpy.typing import ArrayLike

from perfgraph.evaluate.metrics import ModelScores, as_runtimes, evaluate_predictions

REPEAT_PAIRS = "repeat_pairs"
REPEAT_SPREAD = "repeat_spread"

_LABELS = {
    REPEAT_PAIRS: "noise floor (repeated measurements)",
    REPEAT_SPREAD: "noise floor (approx.: repeat spread vs min)",
}


@dataclass(frozen=True)
class NoiseFloor:
    """A noise-floor row: scores shaped like a model's, plus how they were estimated.

    ``estimate`` is :data:`REPEAT_PAIRS` or :data:`REPEAT_SPREAD`; ``n_samples`` counts the pairs
    or the samples with at least two repeats. ``scores.samples_per_s`` is always ``None``.
    """

    scores: ModelScores
    estimate: str
    n_samples: int

    def __post_init__(self) -> None:
        if self.estimate not in _LABELS:
            raise ValueError(f"estimate must be one of {sorted(_LABELS)}, got {self.estimate!r}")

    @property
    def label(self) -> str:
        """The row name for tables: says which estimate this is."""
        return _LABELS[self.estimate]

    def as_dict(self) -> dict[str, float | int | str | None]:
        """The scores' fields plus ``estimate`` and ``n_samples`` (the report's JSON row)."""
        return {**self.scores.as_dict(), "estimate": self.estimate, "n_samples": self.n_samples}


def _mean_of(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else (a + b) / 2.0


def noise_floor_from_pairs(
    first_ms: ArrayLike, second_ms: ArrayLike, pipeline_ids: ArrayLike | None = None
) -> NoiseFloor:
    """Scores of one independent measurement predicting another, averaged over both directions.

    Every metric is symmetrised, because which of the two runs is "the truth" is arbitrary (MAPE
    divides by the measured value, so it is not symmetric by itself). With ``pipeline_ids`` the
    ranking metrics are computed too: the within-pipeline ordering a perfect model could reach;
    without them they are ``None``.
    """
    first = as_runtimes(first_ms, "first_ms")
    second = as_runtimes(second_ms, "second_ms")
    if first.shape != second.shape:
        raise ValueError(f"first_ms has {first.size} values but second_ms has {second.size}")
    # Without pipeline ids every sample is its own pipeline, so the ranking metrics come out None.
    ids = np.arange(first.size) if pipeline_ids is None else np.asarray(pipeline_ids)
    forward = evaluate_predictions(second, first, ids)
    backward = evaluate_predictions(first, second, ids)
    averaged = {f.name: _mean_of(getattr(forward, f.name), getattr(backward, f.name)) for f in fields(ModelScores)}
    averaged["samples_per_s"] = None
    return NoiseFloor(ModelScores(**averaged), REPEAT_PAIRS, int(first.size))


def noise_floor_from_repeats(repeats_ms: Sequence[ArrayLike]) -> NoiseFloor:
    """Approximate floor from the benchmark repeats of each measurement (see the module docstring).

    For every sample with at least two repeats, each repeat except one copy of the minimum is
    compared with that minimum (the recorded run time); the errors of all those repeats are
    pooled. Only ``mape``, ``median_ape`` and ``rmse_log`` are filled in.

    >>> floor = noise_floor_from_repeats([[10.0, 11.0, 12.0], [20.0, 20.0]])
    >>> floor.scores.mape  # repeats above their minimum: 10 %, 20 % and 0 %
    10.0
    """
    percentage_errors, log_errors = [], []
    for index, repeats in enumerate(repeats_ms):
        times = as_runtimes(repeats, f"repeats_ms[{index}]")
        if times.size < 2:
            continue
        others = np.delete(times, np.argmin(times))
        percentage_errors.append(100.0 * (others - times.min()) / times.min())
        log_errors.append(np.log(others) - np.log(times.min()))
    if not percentage_errors:
        raise ValueError("repeats_ms has no sample with at least two repeats; no spread to measure")
    ape, log_error = np.concatenate(percentage_errors), np.concatenate(log_errors)
    scores = ModelScores(
        mape=float(np.mean(ape)),
        median_ape=float(np.median(ape)),
        rmse_log=float(np.sqrt(np.mean(log_error**2))),
        r2=None,
        kendall_tau=None,
        spearman=None,
        pairwise_accuracy=None,
        top1=None,
        top5=None,
    )
    return NoiseFloor(scores, REPEAT_SPREAD, len(percentage_errors))


NOISE_CEILING = "noise ceiling (all re-measured)"
#: A timing protocol with fewer re-measured pairs than this borrows the pooled pairs' noise.
MIN_PROTOCOL_PAIRS = 30


def noise_ceiling(
    measured_ms: ArrayLike,
    pipeline_ids: ArrayLike,
    log_ratios: ArrayLike,
    draws: int = 20,
    seed: int = 0,
    protocols: Sequence[str] | None = None,
    ratios_by_protocol: Mapping[str, ArrayLike] | None = None,
) -> ModelScores:
    """Scores of a "model" that re-measures every schedule once, with the store's empirical noise.

    Each measured run time is multiplied by ``exp(r)``, ``r`` drawn from the observed log ratios of
    independent re-measurements (``ln(second / first)``, both signs: which run is first is arbitrary),
    and the re-measured times are scored against the originals with the models' metrics, averaged
    over ``draws`` draws. Unlike the pair floor, which covers only the few re-measured schedules, this
    covers every test schedule: its Kendall tau is the within-pipeline ranking that no model can beat
    on these labels (the labels-and-data issue's "noise ceiling").

    Labels taken under different timing protocols are not equally noisy. With ``protocols`` (one per
    sample: the protocol its label was measured under) and ``ratios_by_protocol`` (the log ratios of
    pairs measured twice under each protocol), each sample's noise is drawn from its own protocol's
    pairs; a protocol with fewer than :data:`MIN_PROTOCOL_PAIRS` pairs (or none) uses the pooled
    ``log_ratios``. ``ValueError`` if ``log_ratios`` is empty or ``protocols`` has the wrong length.

    >>> scores = noise_ceiling([1.0, 2.0, 4.0, 8.0], [0, 0, 0, 0], [0.0])
    >>> scores.kendall_tau, scores.rmse_log  # noise-free labels: a perfect ceiling
    (1.0, 0.0)
    >>> quiet = {"quiet-v3": [0.0] * MIN_PROTOCOL_PAIRS}  # a protocol whose re-measurements agree exactly
    >>> noise_ceiling([1.0, 2.0], [0, 0], [0.5], protocols=["quiet-v3"] * 2, ratios_by_protocol=quiet).rmse_log
    0.0
    """
    measured = as_runtimes(measured_ms, "measured_ms")
    ids = np.asarray(pipeline_ids)
    pooled = _symmetric(log_ratios)
    if pooled.size == 0:
        raise ValueError("log_ratios is empty: the store has no independent re-measurements")
    sources = [pooled]  # per sample, the index of the noise it draws from
    source_of = np.zeros(measured.size, dtype=np.int64)
    if protocols is not None:
        if len(protocols) != measured.size:
            raise ValueError(f"protocols has {len(protocols)} entries but measured_ms has {measured.size}")
        for protocol, ratios in (ratios_by_protocol or {}).items():
            ratios = np.asarray(ratios, dtype=np.float64)
            if ratios.size >= MIN_PROTOCOL_PAIRS:
                source_of[np.asarray(protocols) == protocol] = len(sources)
                sources.append(_symmetric(ratios))
    rng = np.random.default_rng(seed)
    runs = []
    for _ in range(draws):
        noise = np.empty(measured.size)
        for index, ratios in enumerate(sources):
            chosen = source_of == index
            noise[chosen] = rng.choice(ratios, int(chosen.sum()))
        runs.append(evaluate_predictions(measured * np.exp(noise), measured, ids))
    averaged = {}
    for f in fields(ModelScores):
        values = [getattr(run, f.name) for run in runs]
        averaged[f.name] = None if any(v is None for v in values) else float(np.mean(values))
    return ModelScores(**averaged)


def _symmetric(log_ratios: ArrayLike) -> np.ndarray:
    """The log ratios and their negatives: which of two measurements came first is arbitrary."""
    ratios = np.asarray(log_ratios, dtype=np.float64).ravel()
    return np.concatenate([ratios, -ratios])
