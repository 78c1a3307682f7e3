"""The evaluation report: every model's scores, the noise floor and the error ratios, as JSON,
a terminal table, Markdown and plots.

:class:`EvaluationReport` is a plain record; rendering it is pure (strings and dicts), and only
:func:`write_report` touches the file system.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from perfgraph.data.records import Sample
from perfgraph.evaluate import plots
from perfgraph.evaluate.bootstrap import RatioEstimate
from perfgraph.evaluate.metrics import ModelScores
from perfgraph.evaluate.noise import NoiseFloor
from perfgraph.models.base import measured_runtimes

# (ModelScores field, column header, number format) — shared by the table and the Markdown.
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("mape", "MAPE%", "{:.2f}"),
    ("median_ape", "MdAPE%", "{:.2f}"),
    ("rmse_log", "RMSE(ln)", "{:.3f}"),
    ("r2", "R2(ln)", "{:.3f}"),
    ("kendall_tau", "tau", "{:.3f}"),
    ("spearman", "rho", "{:.3f}"),
    ("pairwise_accuracy", "pairs", "{:.3f}"),
    ("top1", "top1", "{:.3f}"),
    ("top5", "top5", "{:.3f}"),
    ("samples_per_s", "samples/s", "{:.4g}"),
)
_SCORE_KEYS = frozenset(f.name for f in fields(ModelScores))

#: The paper's reported error reductions of its GNN against each baseline, shown for context.
PAPER_CLAIMED_RATIOS: dict[str, float] = {"halide": 7.75, "xgboost": 12.0}

PLOT_FILES = {
    "predicted_vs_measured": "predicted_vs_measured.png",
    "error_cdf": "error_cdf.png",
    "kendall_tau_by_pipeline": "kendall_tau_by_pipeline.png",
    "stage_graph": "stage_graph.png",
}


def _json_number(value):
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, list):
        return [_json_number(item) for item in value]
    return value


def _format(value: float | None, pattern: str) -> str:
    return "—" if value is None or not math.isfinite(value) else pattern.format(value)


@dataclass(frozen=True)
class EvaluationReport:
    """The outcome of evaluating several models on one split.

    ``ratios`` maps a comparison such as ``"gnn_vs_halide"`` to its per-metric
    :class:`RatioEstimate`; ``extra_rows`` holds rows measured elsewhere, keyed by row name, with
    values keyed by :class:`ModelScores` field, e.g. Halide's own trainer's ordering accuracy:
    ``{"halide_trainer_correct_ordering": {"pairwise_accuracy": 0.83}}``.
    """

    split: str
    models: Mapping[str, ModelScores]
    noise_floor: NoiseFloor | None = None
    ratios: Mapping[str, Mapping[str, RatioEstimate]] = field(default_factory=dict)
    extra_rows: Mapping[str, Mapping[str, float | None]] = field(default_factory=dict)
    calibration: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    n_samples: int = 0
    n_pipelines: int = 0

    def __post_init__(self) -> None:
        for row, values in self.extra_rows.items():
            unknown = sorted(set(values) - _SCORE_KEYS)
            if unknown:
                raise ValueError(
                    f"extra_rows[{row!r}] has unknown metrics {unknown}; use some of {sorted(_SCORE_KEYS)}"
                )

    def to_json_dict(self) -> dict:
        """Plain JSON-ready dict; non-finite numbers become ``None`` so strict JSON parsers accept it."""
        return {
            "split": self.split,
            "n_samples": self.n_samples,
            "n_pipelines": self.n_pipelines,
            "models": {name: _clean(scores.as_dict()) for name, scores in self.models.items()},
            "noise_floor": None if self.noise_floor is None else _clean(self.noise_floor.as_dict()),
            "ratios": {
                comparison: {metric: _clean(estimate.as_dict()) for metric, estimate in by_metric.items()}
                for comparison, by_metric in self.ratios.items()
            },
            "extra_rows": {row: _clean(dict(values)) for row, values in self.extra_rows.items()},
            "calibration": {name: _clean(dict(values)) for name, values in self.calibration.items()},
        }

    def _calibration_lines(self) -> list[str]:
        return [
            f"{name} uncertainty: {values['within_1sd']:.0%} of measured times within ±1 sd (calibrated: 68%), "
            f"{values['within_2sd']:.0%} within ±2 sd (95%); median sd {values['median_sd_log']:.3f} (ln)"
            for name, values in self.calibration.items()
        ]

    def _rows(self) -> list[tuple[str, Mapping[str, float | None]]]:
        rows = [(name, scores.as_dict()) for name, scores in self.models.items()]
        if self.noise_floor is not None:
            rows.append((self.noise_floor.label, self.noise_floor.scores.as_dict()))
        rows.extend((name, values) for name, values in self.extra_rows.items())
        return rows

    def _ratio_lines(self) -> list[tuple[str, str, str]]:
        """(comparison, metric, "r x [lo, hi]") for each ratio."""
        return [
            (
                comparison,
                metric,
                f"{_format(e.ratio, '{:.2f}')}x [{_format(e.ci_low, '{:.2f}')}, {_format(e.ci_high, '{:.2f}')}]",
            )
            for comparison, by_metric in self.ratios.items()
            for metric, e in by_metric.items()
        ]

    def to_table(self) -> str:
        """A fixed-width terminal table: one row per model, the noise floor and the extra rows,
        followed by the error ratios with their confidence intervals."""
        rows = self._rows()
        name_width = max([len("model"), *(len(name) for name, _ in rows)])
        cells = [[_format(values.get(key), pattern) for key, _, pattern in COLUMNS] for _, values in rows]
        headers = [header for _, header, _ in COLUMNS]
        widths = [max(len(header), *(len(row[i]) for row in cells)) for i, header in enumerate(headers)]
        header = "  ".join(["model".ljust(name_width), *map(str.rjust, headers, widths)])
        lines = [
            f"split: {self.split}  ({self.n_samples} samples, {self.n_pipelines} pipelines)",
            header,
            "-" * len(header),
        ]
        for (name, _), row in zip(rows, cells, strict=True):
            lines.append("  ".join([name.ljust(name_width), *map(str.rjust, row, widths)]))
        for comparison, metric, text in self._ratio_lines():
            confidence = round(100 * self.ratios[comparison][metric].confidence)
            winner = comparison.split("_vs_", 1)[0]
            lines.append(f"{comparison} {metric}: {text} ({confidence}% CI; > 1: {winner} has lower error)")
        return "\n".join(lines + self._calibration_lines())

    def to_markdown(self, plot_files: Sequence[str] = ()) -> str:
        """The report as Markdown; ``plot_files`` (paths relative to the report) are embedded."""
        lines = [
            f"# Evaluation on split `{self.split}`",
            "",
            f"{self.n_samples} test samples from {self.n_pipelines} pipelines. Errors in percent or "
            "natural-log units; R² is of log run time; ranking metrics are within pipelines.",
            "",
            "| model | " + " | ".join(h for _, h, _ in COLUMNS) + " |",
            "|---|" + "---:|" * len(COLUMNS),
        ]
        for name, values in self._rows():
            lines.append(f"| {name} | " + " | ".join(_format(values.get(k), p) for k, _, p in COLUMNS) + " |")
        if self.ratios:
            lines += [
                "",
                "## Error ratios (baseline error / reference error; > 1: reference better)",
                "",
                "| comparison | metric | ratio [CI] | paper |",
                "|---|---|---|---:|",
            ]
            for comparison, metric, text in self._ratio_lines():
                baseline = comparison.rsplit("_vs_", 1)[-1]
                claim = PAPER_CLAIMED_RATIOS.get(baseline) if metric == "mape" else None
                lines.append(f"| {comparison} | {metric} | {text} | {_format(claim, '{:.2f}x')} |")
            lines += [
                "",
                "Intervals: percentile bootstrap over test pipelines. *paper*: the reduction in "
                "prediction error Singh et al. (MAPS 2022) report against Halide's and TVM's cost "
                "models (our `xgboost` stands in for TVM's), for context; their data set differs.",
            ]
        if self.calibration:
            lines += ["", *(f"- {line}" for line in self._calibration_lines())]
        if self.noise_floor is not None:
            lines += [
                "",
                f"Noise floor: *{self.noise_floor.label}*, from {self.noise_floor.n_samples} "
                "samples: the error of one measurement predicting another. A model that reaches it "
                "predicts as well as measuring again.",
            ]
        for plot_file in plot_files:
            lines += ["", f"![{Path(plot_file).stem}]({plot_file})"]
        return "\n".join(lines) + "\n"


def _clean(values: Mapping) -> dict:
    return {key: _json_number(value) for key, value in values.items()}


def write_report(
    report: EvaluationReport,
    predictions_by_model: Mapping[str, np.ndarray],
    samples: Sequence[Sample],
    out_dir: str | Path,
    *,
    stage_costs: tuple[Sample, np.ndarray] | None = None,
) -> dict[str, Path]:
    """Write ``report.md``, ``report.json`` and the plots into ``out_dir``; returns the paths by name.

    ``samples`` are the test samples the predictions belong to (same order). ``stage_costs``, a
    sample and one predicted cost per stage, adds the stage-graph plot.
    """
    measured = measured_runtimes(samples)
    for name, predicted in predictions_by_model.items():
        if np.shape(predicted) != measured.shape:
            raise ValueError(
                f"predictions_by_model[{name!r}] has shape {np.shape(predicted)}, expected {measured.shape}"
            )
    pipeline_ids = np.array([s.pipeline_id for s in samples])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    noise_mape = report.noise_floor.scores.mape if report.noise_floor is not None else None
    written = {
        "predicted_vs_measured": plots.plot_predicted_vs_measured(
            predictions_by_model, measured, out_dir / PLOT_FILES["predicted_vs_measured"]
        ),
        "error_cdf": plots.plot_error_cdf(
            predictions_by_model, measured, out_dir / PLOT_FILES["error_cdf"], noise_floor_mape=noise_mape
        ),
        "kendall_tau_by_pipeline": plots.plot_kendall_by_pipeline(
            predictions_by_model, measured, pipeline_ids, out_dir / PLOT_FILES["kendall_tau_by_pipeline"]
        ),
    }
    if stage_costs is not None:
        sample, costs = stage_costs
        written["stage_graph"] = plots.plot_stage_graph(sample, costs, out_dir / PLOT_FILES["stage_graph"])
    json_path = out_dir / "report.json"
    json_path.write_text(json.dumps(report.to_json_dict(), indent=2, allow_nan=False) + "\n")
    markdown_path = out_dir / "report.md"
    markdown_path.write_text(report.to_markdown([path.name for path in written.values()]))
    return {**written, "json": json_path, "markdown": markdown_path}
