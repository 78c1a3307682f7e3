"""The report's figures, drawn with matplotlib's object API on the Agg canvas (no display, no pyplot).

Each function draws one PNG from plain arrays and returns its path; none keeps global state, so
they are safe to call from tests, the CLI or a notebook alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure

from perfgraph.data.records import Sample
from perfgraph.evaluate.metrics import absolute_percentage_errors, as_runtimes, kendall_tau_by_pipeline

_DPI = 120


def _new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=_DPI)
    return path


def plot_predicted_vs_measured(
    predictions_by_model: Mapping[str, np.ndarray], measured_ms: np.ndarray, path: str | Path
) -> Path:
    """One log-log scatter per model of predicted against measured run time, with the y = x line."""
    measured = as_runtimes(measured_ms, "measured_ms")
    figure = _new_figure(4.0 * max(len(predictions_by_model), 1), 4.0)
    axes = figure.subplots(1, max(len(predictions_by_model), 1), squeeze=False)[0]
    all_values = np.concatenate([measured, *[np.asarray(p, float) for p in predictions_by_model.values()]])
    positive = all_values[all_values > 0]
    limits = (positive.min() / 1.5, positive.max() * 1.5)
    for axis, (name, predicted) in zip(axes, predictions_by_model.items(), strict=False):
        predicted = np.asarray(predicted, dtype=np.float64)
        axis.scatter(measured, np.clip(predicted, limits[0], None), s=6, alpha=0.4, linewidths=0)
        axis.plot(limits, limits, color="black", linewidth=0.8, linestyle="--", label="y = x")
        axis.set(
            xscale="log",
            yscale="log",
            xlim=limits,
            ylim=limits,
            title=name,
            xlabel="measured run time (ms)",
            ylabel="predicted run time (ms)",
        )
        axis.set_aspect("equal")
        axis.legend(loc="upper left")
    return _save(figure, path)


def plot_error_cdf(
    predictions_by_model: Mapping[str, np.ndarray],
    measured_ms: np.ndarray,
    path: str | Path,
    noise_floor_mape: float | None = None,
) -> Path:
    """Cumulative distribution of absolute percentage error, every model on one axis.

    A curve further up and to the left is better. ``noise_floor_mape`` draws the noise floor's
    MAPE as a vertical line for scale. Errors below 0.01 % are drawn at 0.01 % (log axis).
    """
    figure = _new_figure(6.0, 4.0)
    axis = figure.subplots()
    for name, predicted in predictions_by_model.items():
        errors = np.sort(absolute_percentage_errors(predicted, measured_ms))
        fraction = np.arange(1, errors.size + 1) / errors.size
        axis.step(np.maximum(errors, 1e-2), fraction, where="post", label=name)
    if noise_floor_mape is not None:
        axis.axvline(max(noise_floor_mape, 1e-2), color="grey", linestyle=":", label="noise floor MAPE")
    axis.set(
        xscale="log",
        ylim=(0, 1),
        xlabel="absolute percentage error (%)",
        ylabel="fraction of test samples",
        title="Error CDF",
    )
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(loc="lower right")
    return _save(figure, path)


def plot_kendall_by_pipeline(
    predictions_by_model: Mapping[str, np.ndarray],
    measured_ms: np.ndarray,
    pipeline_ids: np.ndarray,
    path: str | Path,
) -> Path:
    """Per model, each test pipeline's Kendall tau as a sorted bar, with the mean as a dashed line."""
    count = max(len(predictions_by_model), 1)
    figure = _new_figure(4.0 * count, 3.5)
    axes = figure.subplots(1, count, squeeze=False, sharey=True)[0]
    for axis, (name, predicted) in zip(axes, predictions_by_model.items(), strict=False):
        by_pipeline = kendall_tau_by_pipeline(predicted, measured_ms, pipeline_ids)
        taus = np.sort(np.fromiter(by_pipeline.values(), dtype=np.float64))
        axis.bar(np.arange(taus.size), taus, width=1.0, color=np.where(taus >= 0, "tab:blue", "tab:red"))
        if taus.size:
            mean = taus.mean()
            axis.axhline(mean, color="black", linestyle="--", linewidth=0.8, label=f"mean {mean:.3f}")
            axis.legend(loc="lower right")
        axis.set(ylim=(-1, 1), title=name, xlabel="test pipelines (sorted)", ylabel="Kendall tau")
    return _save(figure, path)


def topological_depths(n_stages: int, edges: np.ndarray) -> np.ndarray:
    """Longest producer chain above each stage: 0 for stages that read only inputs.

    >>> topological_depths(4, np.array([[0, 0, 1, 2], [1, 2, 3, 3]])).tolist()  # a diamond
    [0, 1, 1, 2]
    """
    producers, consumers = np.asarray(edges, dtype=np.int64).reshape(2, -1)
    pending = np.bincount(consumers, minlength=n_stages)
    depth = np.zeros(n_stages, dtype=np.int64)
    ready = [stage for stage in range(n_stages) if pending[stage] == 0]
    placed = 0
    while ready:
        stage = ready.pop()
        placed += 1
        for consumer in consumers[producers == stage]:
            depth[consumer] = max(depth[consumer], depth[stage] + 1)
            pending[consumer] -= 1
            if pending[consumer] == 0:
                ready.append(int(consumer))
    if placed != n_stages:
        raise ValueError(f"edges contain a cycle: only {placed} of {n_stages} stages could be ordered")
    return depth


def _layered_positions(depths: np.ndarray) -> np.ndarray:
    """(x, y) per stage: x is the depth, stages of one layer are spread and centred on y = 0."""
    positions = np.zeros((depths.size, 2))
    for depth in np.unique(depths):
        layer = np.flatnonzero(depths == depth)
        positions[layer, 0] = depth
        positions[layer, 1] = (layer.size - 1) / 2.0 - np.arange(layer.size)
    return positions


def plot_stage_graph(sample: Sample, stage_costs_ms: np.ndarray, path: str | Path, title: str = "") -> Path:
    """One pipeline's stage graph, producers left of consumers, each stage coloured by its cost.

    ``stage_costs_ms`` holds one predicted cost per stage (for instance the GNN's per-stage
    contributions to the total). Nodes are labelled with the stage name and the cost.
    """
    costs = np.asarray(stage_costs_ms, dtype=np.float64)
    if costs.shape != (sample.num_stages,):
        raise ValueError(
            f"stage_costs_ms must have one value per stage of {sample.pipeline_name!r} "
            f"({sample.num_stages}), got shape {costs.shape}"
        )
    names = sample.stage_names or tuple(f"stage {i}" for i in range(sample.num_stages))
    positions = _layered_positions(topological_depths(sample.num_stages, sample.edges))
    width = 2.2 * (positions[:, 0].max() + 1) + 1.5
    height = 1.0 * (np.ptp(positions[:, 1]) + 1) + 1.5
    figure = _new_figure(min(width, 40.0), min(height, 40.0))
    axis = figure.subplots()
    for producer, consumer in np.asarray(sample.edges).T:
        axis.annotate(
            "",
            xy=positions[consumer],
            xytext=positions[producer],
            arrowprops={"arrowstyle": "->", "color": "grey", "shrinkA": 14, "shrinkB": 14},
        )
    norm = LogNorm(costs.min(), costs.max()) if costs.min() > 0 and costs.max() > costs.min() else Normalize()
    nodes = axis.scatter(*positions.T, c=costs, cmap="viridis", norm=norm, s=900, zorder=2)
    for (x, y), name, cost in zip(positions, names, costs, strict=True):
        axis.annotate(
            f"{name}\n{cost:.3g} ms",
            (x, y),
            xytext=(0, -24),
            textcoords="offset points",
            ha="center",
            va="top",
            fontsize=7,
        )
    figure.colorbar(nodes, ax=axis, label="predicted cost (ms)")
    axis.margins(0.2, 0.3)
    axis.set_axis_off()
    axis.set_title(title or f"{sample.pipeline_name} (schedule {sample.schedule_id})")
    return _save(figure, path)
