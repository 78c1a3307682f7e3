"""Model-guided schedule search: rank many candidates, benchmark the best few, keep the fastest measured.

The loop of Halide's ``adams2019_autotune_loop.sh`` and of TVM's tuning loop, with a perfgraph cost
model: each round samples ``n`` new Adams2019 candidates (builder only: featurize, no compile), predicts
them all, benchmarks the ``k`` predicted fastest with the runner (same isolation, pinning and output
check as ``perfgraph collect``; every measurement is stored), then ``update``s the model on what it
measured before the next round.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from perfgraph.data.store import Store
from perfgraph.measure.builder import DEFAULT_TIMEOUTS, Candidate, analyse_stage_graph, build_candidates
from perfgraph.measure.collector import CollectOptions, Collector
from perfgraph.measure.timing import TimingPolicy
from perfgraph.models.base import CostModel
from perfgraph.schedules.autoscheduler import AutoschedulerConfig, beam_size_for, benchmark_target
from perfgraph.schedules.stage_graph import StageGraph
from perfgraph.search.predict import RankedCandidate, describe_config, rank_candidates, sample_candidates


@dataclass(frozen=True)
class MeasuredCandidate:
    """A benchmarked candidate: its prediction when chosen, its measured run time or why it failed."""

    round: int
    ranked: RankedCandidate
    measured_ms: float | None
    failure: str | None
    schedule_source: str | None  # as the runner's fresh process printed it (names as a fresh build has them)
    seed: bool = False  # benchmarked as one of ``tune``'s seeds, whatever its rank


@dataclass
class TuneResult:
    pipeline: str
    model: str
    measured: list[MeasuredCandidate]
    scored: int  # candidates predicted, all rounds
    featurize_s: float
    predict_s: float
    measure_s: float  # compile + benchmark + output check, wall time
    wall_s: float
    schedule_file: str | None = None
    update_s: float = 0.0
    machine: str = ""
    rounds: list[dict] = field(default_factory=list)

    @property
    def best(self) -> MeasuredCandidate | None:
        timed = [m for m in self.measured if m.measured_ms is not None]
        return min(timed, key=lambda m: m.measured_ms) if timed else None  # type: ignore[arg-type,return-value]

    def to_json(self) -> dict:
        best = self.best
        return {
            "pipeline": self.pipeline,
            "model": self.model,
            "machine": self.machine,
            "best_measured_ms": best.measured_ms if best else None,
            "best_predicted_ms": best.ranked.predicted_ms if best else None,
            "best_config": best.ranked.candidate.config.to_json() if best else None,
            "benchmarks": len(self.measured),
            "scored": self.scored,
            "wall_s": round(self.wall_s, 2),
            "featurize_s": round(self.featurize_s, 2),
            "predict_s": round(self.predict_s, 3),
            "measure_s": round(self.measure_s, 2),
            "update_s": round(self.update_s, 2),
            "schedule_file": self.schedule_file,
            "rounds": self.rounds,
        }

    def to_table(self) -> str:
        lines = [f"{self.pipeline}: {self.scored} candidates scored by {self.model}, {len(self.measured)} benchmarked"]
        lines.append(f"{'round':>5}  {'rank':>4}  {'predicted ms':>12}  {'measured ms':>11}  config")
        for m in sorted(self.measured, key=lambda m: (m.round, m.ranked.rank)):
            measured = f"{m.measured_ms:11.4g}" if m.measured_ms is not None else f"{'failed':>11}"
            config = describe_config(m.ranked.candidate.config) + ("  (seed)" if m.seed else "")
            lines.append(f"{m.round:>5}  {m.ranked.rank:>4}  {m.ranked.predicted_ms:12.4g}  {measured}  {config}")
        best = self.best
        if best is None:
            lines.append("no candidate could be measured: " + "; ".join({m.failure or "" for m in self.measured}))
        else:
            lines.append(
                f"best: measured {best.measured_ms:.4g} ms (predicted {best.ranked.predicted_ms:.4g} ms), "
                f"round {best.round}, rank {best.ranked.rank}"
            )
            total = sum(best.ranked.stage_costs_ms.values()) or 1.0
            stages = ", ".join(
                f"{n} {v:.3g} ms ({v / total:.0%})" for n, v in list(best.ranked.stage_costs_ms.items())[:5]
            )
            if stages:
                lines.append(f"predicted stage costs: {stages}")
        lines.append(
            f"wall {self.wall_s:.1f} s: featurize {self.featurize_s:.1f} s, predict {self.predict_s:.2f} s, "
            f"compile+benchmark {self.measure_s:.1f} s, update {self.update_s:.1f} s"
        )
        if self.schedule_file:
            lines.append(f"wrote {self.schedule_file}")
        return "\n".join(lines)


def beam_seed(graph: StageGraph, weights_path: str | None = None) -> AutoschedulerConfig:
    """Adams2019's own deterministic beam search, as ``collect`` runs it, as a seed for :func:`tune`.

    The beam is 32, 8 or 2 by stage count (:func:`beam_size_for`); ``weights_path`` is a ``.weights``
    file (``perfgraph export --format weights``), ``None`` for Halide's shipped weights.

    >>> graph = StageGraph(("f", "g"), ((0, 1),), ((),), (None,))
    >>> beam_seed(graph).beam_size, beam_seed(graph, "ours.weights").weights_path
    (32, 'ours.weights')
    """
    return AutoschedulerConfig(beam_size=beam_size_for(graph.num_stages), random_dropout=100, weights_path=weights_path)


def tune(
    pipeline: str,
    model: CostModel,
    store: Store,
    n: int = 256,
    k: int = 8,
    rounds: int = 1,
    workers: int = 2,
    update: bool = True,
    on_progress: Callable[[str], None] | None = None,
    timing: TimingPolicy | None = None,
    first_round: list[Candidate] | None = None,
    seeds: Sequence[AutoschedulerConfig] = (),
    graph: StageGraph | None = None,
    memory_mb: int | None = None,
) -> TuneResult:
    """Search ``pipeline`` (a workload URI) with ``model``: ``rounds`` x (score ``n``, benchmark top ``k``).

    Every benchmarked candidate is stored in ``store``. Raises ``ValueError`` for ``n``, ``k`` or
    ``rounds`` below 1, :class:`perfgraph.measure.builder.BuildError` when the pipeline cannot be built.
    ``timing`` is the benchmark's repeat policy (default: ``collect``'s). ``first_round`` reuses candidates
    already featurized with seeds ``1..`` (as ``sample_candidates(pipeline, n)`` gives them) for round 1.

    ``seeds`` are deterministic configs benchmarked in round 1 whatever the model predicts for them,
    beside its top ``k``: typically Adams2019's own beam search (``AutoschedulerConfig(beam_size=B,
    random_dropout=100, weights_path=W)``), so that the search returns at worst that schedule, as
    TVM's tuners keep the default schedule among their measured candidates (a portfolio). A seed that
    cannot be featurized is left out, and said so through ``on_progress``, as are each round's candidates
    that could not be featurized (a count per reason). ``graph``: the pipeline's stage graph when the
    caller has analysed it already.

    With ``update``, after every round but the last the model is ``update``d on that round's successful
    measurements only: earlier rounds' are in its replay buffer already. A model that cannot learn from
    them (Halide's network needs two schedules of a pipeline) is left as it is, and said so.
    ``memory_mb`` caps every worker's address space (MiB; ``None``: no limit), the autoscheduler's and
    the benchmark's, as ``collect --memory-mb``.
    """
    for name, value in (("n (--candidates)", n), ("k (--measure-top)", k), ("rounds", rounds)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    say = on_progress or (lambda _message: None)
    started = time.perf_counter()
    options = CollectOptions(
        workers=workers,
        remeasure_fraction=0.0,
        cross_machine=False,
        show_progress=False,
        timing=timing or TimingPolicy(),
        memory_mb=memory_mb,
    )
    collector = Collector(store, options)
    result = TuneResult(pipeline, model.name, [], 0, 0.0, 0.0, 0.0, 0.0, machine=collector.machine_kind)
    graph = graph or analyse_stage_graph(pipeline, memory_mb=memory_mb)
    result.featurize_s += time.perf_counter() - started
    seen: set[str] = set()
    seed = 1
    seeded: list[Candidate] = []
    if seeds:
        say(f"featurizing {len(seeds)} seed schedule(s) (Adams2019's own search)")
        t0 = time.perf_counter()
        beam_limits = replace(DEFAULT_TIMEOUTS, autoschedule_s=DEFAULT_TIMEOUTS.beam_autoschedule_s)
        built, failures = build_candidates(
            pipeline, list(seeds), graph, workers=workers, timeouts=beam_limits, memory_mb=memory_mb
        )
        seeded = [c for c in built if c is not None]
        for failure in failures:
            say(f"seed schedule left out ({describe_config(failure.config)}): {failure.message}")
        result.featurize_s += time.perf_counter() - t0
    for round_ in range(1, rounds + 1):
        say(f"round {round_}/{rounds}: featurizing {n} candidates")
        t0 = time.perf_counter()
        if round_ == 1 and first_round is not None:
            candidates, tried = first_round, len(first_round)
            seed = 1 + max(c.config.random_dropout_seed for c in first_round) if first_round else seed
        else:
            candidates, tried, failures, seed = sample_candidates(
                pipeline, n, first_seed=seed, workers=workers, graph=graph, exclude=seen, memory_mb=memory_mb
            )
            for reason, count in Counter(failure.message.splitlines()[0] for failure in failures).items():
                say(f"round {round_}/{rounds}: {count} candidate(s) left out: {reason}")
        if round_ == 1 and seeded:
            hashes = {c.features_hash for c in candidates}
            candidates = candidates + [c for c in seeded if c.features_hash not in hashes]
        seen |= {c.features_hash for c in candidates}
        t1 = time.perf_counter()
        ranked = rank_candidates(model, candidates, with_stage_costs=k, machine=collector.machine)
        t2 = time.perf_counter()
        top = ranked[:k]
        if round_ == 1 and seeded:  # the seeds are benchmarked whatever their rank
            chosen = {r.candidate.features_hash for r in top}
            wanted = {c.features_hash for c in seeded}
            top += [r for r in ranked[k:] if r.candidate.features_hash in wanted - chosen]
        say(f"round {round_}/{rounds}: benchmarking the {len(top)} predicted fastest of {len(ranked)}")
        outcomes = collector.measure_configs(pipeline, [r.candidate.config for r in top]) if top else []
        t3 = time.perf_counter()
        seed_hashes = {c.features_hash for c in seeded} if round_ == 1 else set()
        new_samples = []
        for chosen, outcome in zip(top, outcomes, strict=True):
            is_seed = chosen.candidate.features_hash in seed_hashes
            result.measured.append(
                MeasuredCandidate(
                    round_, chosen, outcome.runtime_ms, outcome.failure, outcome.schedule_source, seed=is_seed
                )
            )
            if outcome.runtime_ms is not None:
                sample = chosen.candidate.to_sample(machine=collector.machine)
                new_samples.append(replace(sample, runtime_ms=outcome.runtime_ms))
        if update and round_ < rounds and new_samples:
            try:
                model.update(new_samples)  # this round's; the model replays earlier ones itself
            except ValueError as error:  # e.g. Halide's network, which trains on pipelines with 2+ schedules
                say(f"round {round_}/{rounds}: the model was not updated: {error}")
        t4 = time.perf_counter()
        result.scored += len(ranked)
        result.featurize_s += t1 - t0
        result.predict_s += t2 - t1
        result.measure_s += t3 - t2
        result.update_s += t4 - t3
        best = result.best
        result.rounds.append(
            {
                "round": round_,
                "tried": tried,
                "distinct": len(candidates),
                "best_measured_ms": best and best.measured_ms,
            }
        )
    result.wall_s = time.perf_counter() - started
    return result


SCHEDULE_FILE = '''"""Schedule chosen by perfgraph for {pipeline}.

Measured {measured_ms:.6g} ms (predicted {predicted_ms:.6g} ms by {model}) on {machine}, single-threaded.
``apply_schedule`` re-applies it to a freshly built copy of the pipeline: Halide's Adams2019
autoscheduler with the same deterministic parameters regenerates exactly this schedule (checked by
its featurization hash). ``SCHEDULE_SOURCE`` is Halide's C++ schedule source of the same schedule.
"""

import hashlib
import os

import halide as hl

PIPELINE = {pipeline!r}
TARGET = {target!r}
ADAMS2019_PARAMS = {params!r}
FEATURES_HASH = {features_hash!r}
SCHEDULE_SOURCE = {source!r}


def apply_schedule(pipeline: hl.Pipeline, target: hl.Target | None = None) -> hl.Pipeline:
    """Schedule ``pipeline`` (built like PIPELINE) as perfgraph chose; raises RuntimeError if it differs."""
    hl.load_plugin(os.path.join(hl.install_dir(), "lib64", "libautoschedule_adams2019.so"))
    params = hl.AutoschedulerParams("Adams2019", ADAMS2019_PARAMS)
    result = pipeline.apply_autoscheduler(target or hl.Target(TARGET), params)
    found = hashlib.sha256(bytes(result.featurization)).hexdigest()
    if found != FEATURES_HASH:
        raise RuntimeError(f"the pipeline scheduled differently ({{found[:12]}} != {{FEATURES_HASH[:12]}}): "
                           "is it the same algorithm, with the same estimates, and the same Halide version?")
    return pipeline
'''


def write_schedule_file(result: TuneResult, path: str | Path) -> Path:
    """Write the best measured schedule as a Python module with ``apply_schedule(pipeline)``."""
    best = result.best
    if best is None:
        raise ValueError(f"{result.pipeline}: no candidate was measured, so there is no schedule to write")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = SCHEDULE_FILE.format(
        pipeline=result.pipeline,
        measured_ms=best.measured_ms,
        predicted_ms=best.ranked.predicted_ms,
        model=result.model,
        machine=result.machine,
        target=str(benchmark_target()),
        params=best.ranked.candidate.config.to_halide_params(),
        features_hash=best.ranked.candidate.features_hash,
        source=best.schedule_source or best.ranked.candidate.schedule_source,
    )
    path.write_text(text)
    result.schedule_file = str(path)
    path.with_suffix(".json").write_text(json.dumps(result.to_json(), indent=2))
    return path
