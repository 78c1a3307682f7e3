"""Rank schedules that were never compiled or run: sample Adams2019 candidates, featurize, predict.

This is what a learned cost model is for (Adams et al. 2019, "Learning to Optimize Halide with Tree
Search and Random Programs"; Singh et al. 2022): score many candidate schedules of a pipeline from their
features alone, so that only the most promising few are compiled and benchmarked.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from perfgraph.measure.builder import (
    DEFAULT_TIMEOUTS,
    BuildFailure,
    Candidate,
    analyse_stage_graph,
    build_candidates,
)
from perfgraph.measure.host import MachineInfo, current_machine
from perfgraph.measure.runner import Timeouts
from perfgraph.models.base import CostModel, predict_with_uncertainty
from perfgraph.schedules.autoscheduler import AutoschedulerConfig, benchmark_target, search_configs
from perfgraph.schedules.stage_graph import StageGraph

# Duplicates (equal featurizations) are common on small pipelines: more configs are drawn until
# ``count`` distinct candidates are found or this many times ``count`` were tried.
MAX_DRAW_FACTOR = 3
# ... unless the last this-many configs tried gave nothing new (as the collector's saturation rule).
SATURATION_WINDOW = 8


@dataclass(frozen=True)
class RankedCandidate:
    """A candidate with its predicted run time (ms) and per-stage predicted costs (ms, most first).

    ``sd_log`` is the model's standard deviation of the log run time (an ensemble's; ``None`` for a
    model without one): the measured time is expected within ``predicted_ms * exp(±sd_log)`` about
    68% of the time.
    """

    rank: int
    predicted_ms: float
    candidate: Candidate
    stage_costs_ms: dict[str, float]
    sd_log: float | None = None

    def to_json(self, top_stages: int | None = None) -> dict:
        stages = dict(list(self.stage_costs_ms.items())[:top_stages]) if top_stages else self.stage_costs_ms
        return {
            "rank": self.rank,
            "predicted_ms": self.predicted_ms,
            "sd_log": self.sd_log,
            "config": self.candidate.config.to_json(),
            "features_hash": self.candidate.features_hash,
            "stage_costs_ms": stages,
            "schedule_source": self.candidate.schedule_source,
        }


@dataclass
class CandidatePredictions:
    """Every distinct candidate of one pipeline, ranked fastest first by the model."""

    pipeline: str
    model: str
    candidates: list[RankedCandidate]
    featurize_s: float
    predict_s: float
    tried: int  # configs autoscheduled (distinct or not)
    failures: list[BuildFailure] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "pipeline": self.pipeline,
            "model": self.model,
            "candidates": [c.to_json() for c in self.candidates],
            "tried": self.tried,
            "failures": [{"config": f.config.to_json(), "message": f.message} for f in self.failures],
            "featurize_s": round(self.featurize_s, 3),
            "predict_s": round(self.predict_s, 4),
        }

    def to_table(self, limit: int = 20) -> str:
        """Fastest first; a model with an uncertainty adds ``×/÷ sd``, ``exp(sd_log)``: the measured time is
        expected between ``predicted / factor`` and ``predicted × factor`` about two times in three."""
        uncertain = any(ranked.sd_log is not None for ranked in self.candidates)
        lines = [
            f"{self.pipeline}: {len(self.candidates)} distinct candidates of {self.tried} tried, "
            f"ranked by {self.model} (featurize {self.featurize_s:.1f} s, predict {self.predict_s * 1000:.1f} ms)",
            f"{'rank':>4}  {'predicted ms':>12}  {'×/÷ sd' if uncertain else '':>6}  {'config':<34}  "
            "most expensive stages (predicted share)",
        ]
        for ranked in self.candidates[:limit]:
            config = describe_config(ranked.candidate.config)
            total = sum(ranked.stage_costs_ms.values()) or 1.0
            stages = ", ".join(f"{n} {v / total:.0%}" for n, v in list(ranked.stage_costs_ms.items())[:3])
            spread = "" if ranked.sd_log is None else f"{math.exp(ranked.sd_log):.2f}"  # one sd, as a factor
            lines.append(f"{ranked.rank:>4}  {ranked.predicted_ms:>12.4g}  {spread:>6}  {config:<34}  {stages}")
        if len(self.candidates) > limit:
            lines.append(f"... {len(self.candidates) - limit} more (--json lists all)")
        for failure in self.failures[:3]:
            lines.append(f"failed: seed {failure.config.random_dropout_seed}: {failure.message.strip()[:200]}")
        return "\n".join(lines)

    def write_sources(self, out_dir: str | Path) -> list[Path]:
        """``rank-NNN.schedule.h``: each candidate's Halide schedule source, with its config as a comment."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = []
        for ranked in self.candidates:
            path = out / f"rank-{ranked.rank:03d}.schedule.h"
            header = f"// {self.pipeline}, predicted {ranked.predicted_ms:.6g} ms by {self.model}\n"
            header += f"// Adams2019 parameters: {ranked.candidate.config.to_halide_params()}\n"
            path.write_text(header + ranked.candidate.schedule_source)
            paths.append(path)
        return paths


def describe_config(config: AutoschedulerConfig) -> str:
    """``seed 7, narrow, 4 cores``: what sets a search candidate apart, for tables.

    >>> describe_config(AutoschedulerConfig(random_dropout_seed=7, disable_subtiling=True))
    'seed 7, narrow, 1 core'
    """
    cores = f"{config.parallelism} core{'s' if config.parallelism > 1 else ''}"
    if config.beam_size > 1:
        return f"beam {config.beam_size}, {'narrow' if config.disable_subtiling else 'full'}, {cores}"
    return f"seed {config.random_dropout_seed}, {'narrow' if config.disable_subtiling else 'full'}, {cores}"


def sample_candidates(
    uri: str,
    count: int,
    first_seed: int = 1,
    workers: int = 2,
    graph: StageGraph | None = None,
    exclude: set[str] | None = None,
    timeouts: Timeouts = DEFAULT_TIMEOUTS,
    on_candidate: Callable[[], None] | None = None,
    memory_mb: int | None = None,
) -> tuple[list[Candidate], int, list[BuildFailure], int]:
    """Up to ``count`` distinct featurized candidates (none whose features hash is in ``exclude``).

    Returns ``(candidates, configs tried, failures, next free seed)``; compiles and runs nothing.
    ``memory_mb``: each autoscheduler worker's address-space cap in MiB (``None``: no limit).
    """
    if count < 1:
        raise ValueError(f"count (--candidates) must be >= 1, got {count}")
    graph = graph or analyse_stage_graph(uri, timeouts, memory_mb=memory_mb)
    seen = set(exclude or ())
    distinct: list[Candidate] = []
    failures: list[BuildFailure] = []
    found: list[bool] = []  # per config tried, in seed order: did it give a new distinct candidate?
    seed = first_seed
    while len(distinct) < count and len(found) < MAX_DRAW_FACTOR * count:
        if len(found) >= SATURATION_WINDOW and not any(found[-SATURATION_WINDOW:]):
            break  # saturated: this pipeline's search space has no more distinct schedules to give
        wanted = min(count - len(distinct), MAX_DRAW_FACTOR * count - len(found))
        built, failed = build_candidates(
            uri, search_configs(wanted, first_seed=seed), graph, workers, timeouts, on_candidate, memory_mb
        )
        failures += failed
        seed += wanted
        for candidate in built:
            new = candidate is not None and candidate.features_hash not in seen
            found.append(new)
            if new:
                seen.add(candidate.features_hash)
                distinct.append(candidate)
    tried = len(found)
    return distinct, tried, failures, seed


def rank_candidates(
    model: CostModel,
    candidates: list[Candidate],
    with_stage_costs: int | None = None,
    machine: MachineInfo | None = None,
) -> list[RankedCandidate]:
    """Predict every candidate and sort them fastest first.

    Per-stage costs (where the model has them) are computed for the ``with_stage_costs`` best ranked
    candidates (``None``: all); they cost one forward pass each, the ranking one batched pass in all.
    ``machine``: the machine whose run times are predicted (default: this one, for the benchmark target).
    """
    if not candidates:
        return []
    machine = machine or current_machine(str(benchmark_target()))
    samples = [c.to_sample(schedule_id=i, machine=machine) for i, c in enumerate(candidates)]
    predicted, sd_log = predict_with_uncertainty(model, samples)
    stage_costs = getattr(model, "stage_costs", None)
    limit = len(candidates) if with_stage_costs is None else with_stage_costs
    order = np.argsort(predicted, kind="stable")
    ranked = []
    for rank, index in enumerate(order, start=1):
        candidate = candidates[index]
        costs: dict[str, float] = {}
        if callable(stage_costs) and rank <= limit:
            values = stage_costs(samples[index])
            pairs = zip(candidate.graph.stage_names, map(float, values), strict=True)
            costs = dict(sorted(pairs, key=lambda kv: -kv[1]))
        sd = None if sd_log is None else float(sd_log[index])
        ranked.append(RankedCandidate(rank, float(predicted[index]), candidate, costs, sd))
    return ranked


def predict_candidates(
    pipeline: str,
    model: CostModel,
    n: int = 64,
    workers: int = 2,
    first_seed: int = 1,
    on_candidate: Callable[[], None] | None = None,
    machine: MachineInfo | None = None,
    memory_mb: int | None = None,
) -> CandidatePredictions:
    """Sample ``n`` distinct Adams2019 candidates of ``pipeline`` (a workload URI), rank them by ``model``.

    Nothing is compiled or benchmarked: only the autoscheduler runs (in worker processes). ``machine``:
    the machine whose run times a machine-aware model predicts (default: this one). ``memory_mb``: each
    worker's address-space cap in MiB (``None``: no limit); a candidate that needs more is a failure.

    >>> from perfgraph.models.registry import load_model                      # doctest: +SKIP
    >>> result = predict_candidates("zoo:conv2d", load_model("models/gnn.pt"), n=8)  # doctest: +SKIP
    >>> result.candidates[0].predicted_ms <= result.candidates[-1].predicted_ms  # doctest: +SKIP
    True
    """
    started = time.perf_counter()
    candidates, tried, failures, _ = sample_candidates(
        pipeline, n, first_seed=first_seed, workers=workers, on_candidate=on_candidate, memory_mb=memory_mb
    )
    featurize_s = time.perf_counter() - started
    started = time.perf_counter()
    ranked = rank_candidates(model, candidates, machine=machine)
    predict_s = time.perf_counter() - started
    return CandidatePredictions(pipeline, model.name, ranked, featurize_s, predict_s, tried, failures)
