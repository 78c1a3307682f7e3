"""Specifications of the evaluation report, its plots and the model-evaluation entry point.

Models here are tiny stand-ins (not the thing under test): they "predict" a fixed multiple of the
measured run time, so every error they make is known by hand.
"""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from perfgraph.data.records import Sample
from perfgraph.evaluate.bootstrap import RatioEstimate
from perfgraph.evaluate.metrics import ModelScores
from perfgraph.evaluate.noise import noise_floor_from_pairs, noise_floor_from_repeats
from perfgraph.evaluate.plots import plot_stage_graph, topological_depths
from perfgraph.evaluate.report import EvaluationReport, write_report
from perfgraph.evaluate.run import evaluate_models
from perfgraph.features.layout import FEATURES_PER_STAGE, NUM_EDGE_FEATURES
from perfgraph.models.base import CostModel

from .test_metrics import SCORE_KEYS

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class ScaledRuntimeModel(CostModel):
    """Predicts ``factor`` times the measured run time: a known, constant percentage error."""

    def __init__(self, name: str, factor: float) -> None:
        self.name, self.factor = name, factor

    def fit(self, train, valid):
        return self

    def predict(self, samples):
        return np.array([self.factor * s.runtime_ms for s in samples])

    def update(self, samples):
        pass

    def save(self, path):
        raise NotImplementedError

    @classmethod
    def load(cls, path):
        raise NotImplementedError


def make_sample(pipeline_id: int, schedule_id: int, runtime_ms: float) -> Sample:
    """A diamond of four stages: input -> (blur_x, blur_y) -> output."""
    edges = np.array([[0, 0, 1, 2], [1, 2, 3, 3]])
    return Sample(
        pipeline_id=pipeline_id,
        schedule_id=schedule_id,
        pipeline_name=f"pipe{pipeline_id}",
        family="conv",
        features=np.zeros((4, FEATURES_PER_STAGE), dtype=np.float32),
        edges=edges,
        edge_features=np.zeros((4, NUM_EDGE_FEATURES), dtype=np.float32),
        stage_names=("input", "blur_x", "blur_y", "output"),
        runtime_ms=runtime_ms,
    )


@pytest.fixture
def samples() -> list[Sample]:
    # 3 pipelines x 3 schedules with distinct run times
    return [make_sample(p, s, (p + 1) * 10.0 * 2**s) for p in range(3) for s in range(3)]


@pytest.fixture
def evaluated(samples):
    models = {"gnn": ScaledRuntimeModel("gnn", 1.1), "halide": ScaledRuntimeModel("halide", 1.5)}
    first = np.array([s.runtime_ms for s in samples])
    noise = (first, first * 1.02, [s.pipeline_id for s in samples])
    extra = {"halide_trainer_correct_ordering": {"pairwise_accuracy": 0.83}}
    return evaluate_models(models, samples, noise, extra_rows=extra, n_boot=100, seed=0)


def scores(mape: float) -> ModelScores:
    return ModelScores(mape, 1.0, 0.1, 0.9, 0.8, 0.85, 0.9, 0.95, 1.0, 1000.0)


def test_evaluate_models_scores_every_model(evaluated):
    report, predictions = evaluated
    assert set(report.models) == set(predictions) == {"gnn", "halide"}
    assert report.models["gnn"].mape == pytest.approx(10.0)  # |1.1 m - m| / m = 10 % on every sample
    assert report.models["gnn"].kendall_tau == 1.0  # a scale error keeps the order
    assert report.models["gnn"].samples_per_s > 0


def test_evaluate_models_compares_the_reference_with_every_other_model(evaluated):
    report, _ = evaluated
    assert list(report.ratios) == ["gnn_vs_halide"]
    assert report.ratios["gnn_vs_halide"]["mape"].ratio == pytest.approx(5.0)  # 50 % / 10 %


def test_evaluate_models_turns_repeat_pairs_into_a_noise_floor(evaluated):
    report, _ = evaluated
    # one run is 2 % above the other: 2/100 and 2/102 one way each, averaged
    assert report.noise_floor.scores.mape == pytest.approx((2.0 + 200.0 / 102.0) / 2)


def test_evaluate_models_refuses_a_missing_reference(samples):
    with pytest.raises(ValueError, match=r"reference model 'gnn' is not among models \['xgboost'\]"):
        evaluate_models({"xgboost": ScaledRuntimeModel("xgboost", 2.0)}, samples, None)


def test_json_dict_has_the_report_schema(evaluated):
    document = evaluated[0].to_json_dict()
    assert {"split", "models", "noise_floor", "ratios"} <= set(document)
    assert list(document["models"]["halide"]) == SCORE_KEYS
    assert set(SCORE_KEYS) <= set(document["noise_floor"])
    assert set(document["ratios"]["gnn_vs_halide"]) == {"mape", "rmse_log"}
    assert set(document["ratios"]["gnn_vs_halide"]["mape"]) == {"ratio", "ci95"}


def test_json_dict_writes_non_finite_numbers_as_null():
    infinite = RatioEstimate("mape", math.inf, 1.0, math.inf, 0.95, 10)
    report = EvaluationReport("test", {"gnn": scores(0.0)}, ratios={"gnn_vs_halide": {"mape": infinite}})
    text = json.dumps(report.to_json_dict(), allow_nan=False)  # strict JSON: raises on inf / nan
    assert json.loads(text)["ratios"]["gnn_vs_halide"]["mape"] == {"ratio": None, "ci95": [1.0, None]}


def test_table_has_one_aligned_row_per_model_and_the_noise_floor():
    floor = noise_floor_from_repeats([[1.0, 1.1]])
    report = EvaluationReport("family", {"gnn": scores(12.5), "halide_net": scores(50.0)}, noise_floor=floor)
    lines = report.to_table().splitlines()
    rows = [line for line in lines[3:] if line.strip()]
    assert [row.split("  ")[0].strip() for row in rows] == ["gnn", "halide_net", floor.label]
    assert len({len(line) for line in lines[1:]}) == 1  # header, rule and rows share one width
    assert "12.50" in rows[0] and "50.00" in rows[1]


def test_extra_rows_appear_in_the_table_and_markdown(evaluated):
    report = evaluated[0]
    assert "halide_trainer_correct_ordering" in report.to_table()
    assert "| halide_trainer_correct_ordering |" in report.to_markdown()


def test_extra_rows_must_name_known_metrics():
    with pytest.raises(ValueError, match=r"extra_rows\['trainer'\] has unknown metrics \['accuracy'\]"):
        EvaluationReport("test", {"gnn": scores(1.0)}, extra_rows={"trainer": {"accuracy": 0.8}})


def test_markdown_lists_models_ratios_and_embeds_plots(evaluated):
    markdown = evaluated[0].to_markdown(["error_cdf.png"])
    assert "| gnn |" in markdown and "| halide |" in markdown
    assert "| gnn_vs_halide | mape | 5.00x" in markdown
    assert "![error_cdf](error_cdf.png)" in markdown


def test_write_report_writes_markdown_json_and_plots(evaluated, samples, tmp_path):
    report, predictions = evaluated
    costs = np.array([0.1, 2.0, 3.0, 0.5])
    written = write_report(report, predictions, samples, tmp_path / "out", stage_costs=(samples[0], costs))
    assert json.loads((tmp_path / "out" / "report.json").read_text())["split"] == "test"
    assert (tmp_path / "out" / "report.md").read_text().startswith("# Evaluation")
    pngs = [path for path in written.values() if path.suffix == ".png"]
    assert {path.name for path in pngs} == {
        "predicted_vs_measured.png",
        "error_cdf.png",
        "kendall_tau_by_pipeline.png",
        "stage_graph.png",
    }
    for png in pngs:
        assert Path(png).read_bytes()[:8] == PNG_SIGNATURE


def test_write_report_refuses_predictions_of_another_length(evaluated, samples, tmp_path):
    report, _ = evaluated
    with pytest.raises(ValueError, match=r"predictions_by_model\['gnn'\] has shape \(2,\), expected \(9,\)"):
        write_report(report, {"gnn": np.ones(2)}, samples, tmp_path)


def test_topological_depth_is_the_longest_producer_chain():
    # 0 -> 1 -> 2 and 0 -> 2: stage 2 sits below its deepest producer, stage 1
    assert topological_depths(3, np.array([[0, 1, 0], [1, 2, 2]])).tolist() == [0, 1, 2]


def test_topological_depth_refuses_a_cycle():
    with pytest.raises(ValueError, match="cycle"):
        topological_depths(2, np.array([[0, 1], [1, 0]]))


def test_stage_graph_needs_one_cost_per_stage(samples, tmp_path):
    with pytest.raises(ValueError, match=r"one value per stage of 'pipe0' \(4\)"):
        plot_stage_graph(samples[0], np.ones(3), tmp_path / "graph.png")


def test_noise_floor_row_is_labelled_by_its_estimate():
    pairs = noise_floor_from_pairs([1.0], [1.1])
    spread = noise_floor_from_repeats([[1.0, 1.1]])
    assert pairs.as_dict()["estimate"] == "repeat_pairs"
    assert spread.as_dict()["estimate"] == "repeat_spread"
    assert pairs.label != spread.label
