"""Evaluation: metrics, the measurement noise floor, error ratios with bootstrap intervals, reports.

``metrics``, ``noise`` and ``bootstrap`` are pure functions of arrays; ``run`` predicts with
trained models; ``report`` and ``plots`` render the outcome.
"""

from perfgraph.evaluate.bootstrap import RatioEstimate, error_ratios
from perfgraph.evaluate.metrics import ModelScores, evaluate_predictions
from perfgraph.evaluate.noise import NoiseFloor, noise_floor_from_pairs, noise_floor_from_repeats
from perfgraph.evaluate.report import EvaluationReport, write_report
from perfgraph.evaluate.run import evaluate_models

__all__ = [
    "EvaluationReport",
    "ModelScores",
    "NoiseFloor",
    "RatioEstimate",
    "error_ratios",
    "evaluate_models",
    "evaluate_predictions",
    "noise_floor_from_pairs",
    "noise_floor_from_repeats",
    "write_report",
]
