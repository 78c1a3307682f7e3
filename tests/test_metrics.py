"""Specifications of the evaluation metrics, the noise floor and the bootstrap error ratios.

Known answers are worked out by hand in the comments. The running example has two pipelines of
three schedules each: pipeline 0 measures [1, 2, 4] ms and the model swaps its two fastest
schedules, predicting [2, 1, 4]; pipeline 1 measures [10, 20, 40] ms and is predicted exactly.
"""

import math

import numpy as np
import pytest

from perfgraph.evaluate.bootstrap import error_ratios
from perfgraph.evaluate.metrics import (
    evaluate_predictions,
    kendall_tau_by_pipeline,
    mape,
    mape_factor,
    mean_kendall_tau,
    mean_spearman,
    median_ape,
    pairwise_accuracy,
    r2_log,
    rmse_log,
    top_k_score,
)
from perfgraph.evaluate.noise import (
    REPEAT_PAIRS,
    REPEAT_SPREAD,
    noise_floor_from_pairs,
    noise_floor_from_repeats,
)

#: The per-model keys of ``perfgraph evaluate --json`` and of every score dict, in report order.
SCORE_KEYS = [
    "mape",
    "median_ape",
    "rmse_log",
    "r2",
    "kendall_tau",
    "spearman",
    "pairwise_accuracy",
    "top1",
    "top5",
    "samples_per_s",
]

MEASURED = np.array([1.0, 2.0, 4.0, 10.0, 20.0, 40.0])
SWAPPED = np.array([2.0, 1.0, 4.0, 10.0, 20.0, 40.0])
PIPELINES = np.array([0, 0, 0, 1, 1, 1])


# --- errors -------------------------------------------------------------------------------------


def test_mape_averages_percentage_errors_over_samples():
    # |2-1|/1 = 100 %, |1-2|/2 = 50 %, four exact predictions: 150 / 6 = 25 %
    assert mape(SWAPPED, MEASURED) == pytest.approx(25.0)


def test_median_ape_ignores_a_minority_of_large_errors():
    # sorted errors [0, 0, 0, 0, 50, 100]: the median is 0
    assert median_ape(SWAPPED, MEASURED) == 0.0


def test_rmse_log_is_the_root_mean_squared_natural_log_ratio():
    # log errors ln 2, -ln 2 and four zeros: sqrt(2 ln²2 / 6) = ln 2 / sqrt 3
    assert rmse_log(SWAPPED, MEASURED) == pytest.approx(math.log(2) / math.sqrt(3))


def test_r2_is_computed_on_log_run_time():
    # ln measured = [0, 2], mean 1, SS_tot = 2; ln predicted = [1, 2], SS_res = 1: R² = 1 - 1/2
    assert r2_log([math.e, math.e**2], [1.0, math.e**2]) == pytest.approx(0.5)


def test_mape_factor_is_the_scale_with_the_lowest_mape():
    # log-normal errors of sd 0.5: the factor is near exp(-0.25) and no other scale does better
    rng = np.random.default_rng(0)
    measured = rng.uniform(0.1, 10.0, 2000)
    predicted = measured * np.exp(rng.normal(0.0, 0.5, measured.size))
    factor = mape_factor(predicted, measured)
    assert factor == pytest.approx(math.exp(-0.25), abs=0.05)
    best = mape(factor * predicted, measured)
    assert all(best <= mape(scale * predicted, measured) + 1e-9 for scale in np.linspace(0.3, 1.5, 121))
    assert best < mape(predicted, measured)


def test_mape_factor_refuses_a_non_positive_prediction():
    with pytest.raises(ValueError):
        mape_factor([1.0, 0.0], [1.0, 1.0])


def test_mape_accepts_a_negative_prediction_but_log_metrics_refuse_it():
    # |-1 - 1| / 1 = 200 %
    assert mape([-1.0], [1.0]) == pytest.approx(200.0)
    with pytest.raises(ValueError, match=r"predicted_ms\[0\] = -1.0"):
        rmse_log([-1.0], [1.0])


def test_invalid_measured_times_are_named_with_their_index():
    with pytest.raises(ValueError, match=r"measured_ms\[1\] = 0.0"):
        mape([1.0, 1.0], [1.0, 0.0])


def test_mismatched_lengths_are_refused():
    with pytest.raises(ValueError, match="predicted_ms has 2 values but measured_ms has 3"):
        mape([1.0, 2.0], [1.0, 2.0, 3.0])


# --- ranking ------------------------------------------------------------------------------------


def test_kendall_tau_is_averaged_over_pipelines():
    # pipeline 0: pairs (1,2) discordant, (1,4) and (2,4) concordant: (2 - 1) / 3 = 1/3;
    # pipeline 1: 1. Mean: (1/3 + 1) / 2 = 2/3
    assert kendall_tau_by_pipeline(SWAPPED, MEASURED, PIPELINES) == pytest.approx({0: 1 / 3, 1: 1.0})
    assert mean_kendall_tau(SWAPPED, MEASURED, PIPELINES) == pytest.approx(2 / 3)


def test_spearman_is_averaged_over_pipelines():
    # pipeline 0: predicted ranks [2, 1, 3] vs [1, 2, 3], sum d² = 2, rho = 1 - 6*2 / (3*(9-1)) = 0.5;
    # pipeline 1: 1. Mean: 0.75
    assert mean_spearman(SWAPPED, MEASURED, PIPELINES) == pytest.approx(0.75)


def test_kendall_tau_corrects_for_tied_predictions():
    # measured [1, 2, 3], predicted [1, 1, 3]: 2 concordant, 0 discordant, 1 pair tied in prediction;
    # tau-b = 2 / sqrt((3 - 1) * (3 - 0)) = 2 / sqrt 6
    assert mean_kendall_tau([1.0, 1.0, 3.0], [1.0, 2.0, 3.0], [0, 0, 0]) == pytest.approx(2 / math.sqrt(6))


def test_a_constant_prediction_scores_zero_tau_not_undefined():
    assert mean_kendall_tau([5.0, 5.0, 5.0], [1.0, 2.0, 3.0], [0, 0, 0]) == 0.0


def test_ranking_skips_pipelines_with_a_single_schedule():
    # pipeline 1 has one schedule and cannot be ranked; pipeline 0 is reversed
    assert kendall_tau_by_pipeline([2.0, 1.0, 7.0], [1.0, 2.0, 3.0], [0, 0, 1]) == {0: -1.0}


def test_ranking_metrics_are_nan_when_no_pipeline_can_be_ranked():
    assert math.isnan(mean_kendall_tau([1.0, 2.0], [1.0, 2.0], [0, 1]))
    assert math.isnan(pairwise_accuracy([1.0, 2.0], [1.0, 2.0], [0, 1]))


def test_pairwise_accuracy_counts_correctly_ordered_pairs_within_pipelines():
    # 3 + 3 pairs; only (1 ms, 2 ms) of pipeline 0 is ordered wrongly: 5 / 6
    assert pairwise_accuracy(SWAPPED, MEASURED, PIPELINES) == pytest.approx(5 / 6)


def test_pairwise_accuracy_counts_a_tied_prediction_as_half():
    # pairs (1,2) tied in prediction -> 0.5, (1,3) and (2,3) right -> 1 each: 2.5 / 3
    assert pairwise_accuracy([1.0, 1.0, 3.0], [1.0, 2.0, 3.0], [0, 0, 0]) == pytest.approx(2.5 / 3)


def test_pairwise_accuracy_ignores_pairs_with_equal_measured_times():
    # the (1 ms, 1 ms) pair is wrongly "ordered" but does not count; the other two are right
    assert pairwise_accuracy([2.0, 1.0, 3.0], [1.0, 1.0, 2.0], [0, 0, 0]) == 1.0


def test_pairwise_accuracy_never_compares_schedules_of_different_pipelines():
    # across pipelines the prediction is upside down, within each single-pair pipeline it is right
    assert pairwise_accuracy([10.0, 20.0, 1.0, 2.0], [1.0, 2.0, 10.0, 20.0], [0, 0, 1, 1]) == 1.0


def test_top1_is_best_time_over_time_of_the_predicted_best():
    # pipeline 0 picks the 2 ms schedule (predicted 1 ms) while 1 ms was possible: 0.5;
    # pipeline 1 picks the fastest: 1. Mean 0.75
    assert top_k_score(SWAPPED, MEASURED, PIPELINES, k=1) == pytest.approx(0.75)


def test_top_k_succeeds_when_the_fastest_schedule_is_among_the_k_picks():
    # pipeline 0's two predicted-fastest schedules are the 2 ms and the 1 ms one
    assert top_k_score(SWAPPED, MEASURED, PIPELINES, k=2) == 1.0


def test_top_k_breaks_prediction_ties_against_the_model():
    # all predictions tie: the pick is the slowest schedule, 4 ms, so 1 / 4
    assert top_k_score([3.0, 3.0, 3.0], [1.0, 2.0, 4.0], [0, 0, 0], k=1) == 0.25


def test_top_k_refuses_a_non_positive_k():
    with pytest.raises(ValueError, match="k must be a positive integer, got 0"):
        top_k_score(SWAPPED, MEASURED, PIPELINES, k=0)


# --- all scores together ------------------------------------------------------------------------


def test_perfect_predictions_score_perfectly():
    scores = evaluate_predictions(MEASURED, MEASURED, PIPELINES)
    assert (scores.mape, scores.rmse_log, scores.r2) == (0.0, 0.0, 1.0)
    assert (scores.kendall_tau, scores.spearman, scores.pairwise_accuracy) == (1.0, 1.0, 1.0)
    assert (scores.top1, scores.top5) == (1.0, 1.0)


def test_reversed_predictions_rank_as_badly_as_possible():
    reversed_within_pipelines = np.array([4.0, 2.0, 1.0, 40.0, 20.0, 10.0])
    scores = evaluate_predictions(reversed_within_pipelines, MEASURED, PIPELINES)
    assert (scores.kendall_tau, scores.spearman, scores.pairwise_accuracy) == (-1.0, -1.0, 0.0)
    # each pipeline picks its slowest schedule, 4x the fastest
    assert scores.top1 == pytest.approx(0.25)


def test_a_scale_only_error_leaves_ranking_perfect():
    scores = evaluate_predictions(3.0 * MEASURED, MEASURED, PIPELINES)
    assert scores.mape == pytest.approx(200.0)  # every prediction is 3x: |3m - m| / m = 200 %
    assert (scores.kendall_tau, scores.pairwise_accuracy, scores.top1) == (1.0, 1.0, 1.0)


def test_scores_without_anything_to_rank_are_none():
    scores = evaluate_predictions([1.0, 2.0], [1.0, 2.0], [0, 1])
    assert (scores.kendall_tau, scores.pairwise_accuracy, scores.top1) == (None, None, None)


def test_score_dict_has_exactly_the_report_keys():
    assert list(evaluate_predictions(SWAPPED, MEASURED, PIPELINES, samples_per_s=10.0).as_dict()) == SCORE_KEYS


# --- noise floor --------------------------------------------------------------------------------


def test_noise_floor_from_pairs_averages_both_directions():
    floor = noise_floor_from_pairs([100.0, 100.0], [125.0, 125.0])
    # 25/100 = 25 % predicting the first run, 25/125 = 20 % predicting the second: 22.5 %
    assert floor.scores.mape == pytest.approx(22.5)
    assert floor.scores.median_ape == pytest.approx(22.5)
    assert floor.scores.rmse_log == pytest.approx(math.log(1.25))
    assert (floor.estimate, floor.n_samples, floor.scores.kendall_tau) == (REPEAT_PAIRS, 2, None)


def test_noise_floor_ranks_within_pipelines_when_given_their_ids():
    # a uniform 10 % slowdown of the second run keeps every order
    floor = noise_floor_from_pairs([1.0, 2.0, 3.0], [1.1, 2.2, 3.3], [0, 0, 0])
    assert (floor.scores.kendall_tau, floor.scores.pairwise_accuracy) == (pytest.approx(1.0), 1.0)


def test_noise_floor_from_repeats_measures_spread_above_the_minimum():
    floor = noise_floor_from_repeats([[10.0, 11.0, 12.0], [20.0, 20.0], [5.0]])
    # repeats above their minimum: 11 vs 10 -> 10 %, 12 vs 10 -> 20 %, 20 vs 20 -> 0 %; [5] has no spread
    assert floor.scores.mape == pytest.approx(10.0)
    assert floor.scores.median_ape == pytest.approx(10.0)
    assert floor.scores.rmse_log == pytest.approx(math.sqrt((math.log(1.1) ** 2 + math.log(1.2) ** 2) / 3))
    assert (floor.estimate, floor.n_samples, floor.scores.r2) == (REPEAT_SPREAD, 2, None)
    assert "approx" in floor.label


def test_noise_floor_from_repeats_needs_a_sample_with_two_repeats():
    with pytest.raises(ValueError, match="at least two repeats"):
        noise_floor_from_repeats([[5.0], [6.0]])


# --- bootstrap ratios ---------------------------------------------------------------------------


def test_error_ratio_is_the_baseline_error_over_the_model_error():
    measured = np.array([1.0, 2.0, 4.0, 8.0])
    ratios = error_ratios(1.1 * measured, 1.5 * measured, measured, [0, 0, 1, 1], n_boot=50)
    assert ratios["mape"].ratio == pytest.approx(50.0 / 10.0)  # 50 % against 10 % error
    assert ratios["rmse_log"].ratio == pytest.approx(math.log(1.5) / math.log(1.1))
    # every sample has the same two errors, so every resample gives the same ratio
    assert (ratios["mape"].ci_low, ratios["mape"].ci_high) == (pytest.approx(5.0), pytest.approx(5.0))


def test_bootstrap_resamples_whole_pipelines():
    # 4 schedules per pipeline. Model errs 10 % everywhere; the baseline errs 20 % on pipeline 0
    # (ratio 2) and 40 % on pipeline 1 (ratio 4). Drawing 2 pipelines gives {0,0} (p = 1/4),
    # {1,1} (1/4) or {0,1} (1/2, ratio 30/10 = 3): the 2.5th and 97.5th percentiles are 2 and 4.
    # Resampling single schedules would almost never draw all 8 from one pipeline (p = 2/256).
    measured = np.ones(8)
    model = np.full(8, 1.1)
    baseline = np.array([1.2] * 4 + [1.4] * 4)
    estimate = error_ratios(model, baseline, measured, [0] * 4 + [1] * 4, metrics=["mape"])["mape"]
    assert estimate.ratio == pytest.approx(3.0)
    assert (estimate.ci_low, estimate.ci_high) == (pytest.approx(2.0), pytest.approx(4.0))


def test_bootstrap_interval_contains_the_ratio_and_repeats_per_seed():
    rng = np.random.default_rng(1)
    measured = rng.uniform(1.0, 100.0, size=60)
    pipelines = np.repeat(np.arange(12), 5)
    model = measured * rng.lognormal(0.0, 0.1, size=60)
    baseline = measured * rng.lognormal(0.0, 0.4, size=60)
    first = error_ratios(model, baseline, measured, pipelines, n_boot=300, seed=7)
    again = error_ratios(model, baseline, measured, pipelines, n_boot=300, seed=7)
    other_seed = error_ratios(model, baseline, measured, pipelines, n_boot=300, seed=8)
    for metric in ("mape", "rmse_log"):
        assert first[metric].ci_low <= first[metric].ratio <= first[metric].ci_high
    assert first == again
    assert first["mape"].ci_low != other_seed["mape"].ci_low


def test_bootstrap_refuses_an_unknown_metric():
    with pytest.raises(ValueError, match="'r2'"):
        error_ratios([1.0], [1.0], [1.0], [0], metrics=["r2"])
