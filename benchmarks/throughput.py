"""Schedules scored per second by each shipped cost model, beside Adams2019's own cost-evaluation rate.

A cost model inside a schedule search is called on many candidates of one pipeline. This samples
``--candidates`` distinct Adams2019 candidates of each of five zoo blocks at their default sizes
(featurized by the builder, nothing compiled), then times ``model.predict`` on batches of 1, 16, 256
and 4096 candidates of one pipeline (featurized candidates in, predictions out; a batch larger than
the distinct candidates repeats them). Beside it, Halide's Adams2019 beam search runs on the same
pipelines in a subprocess with ``HL_DEBUG_AUTOSCHEDULE=1``: it prints ``Cost evaluated this many
times: N`` at the end of a search, and N over the search time is its rate (its C++ featurization of
each state included; ours starts from featurized candidates).

    taskset -c 0 python benchmarks/throughput.py [--models models/gnn.pt,...] [--candidates 32]
        [--batches 1,16,256,4096] [--device cpu|cuda] [--clock cpu|wall] [--adams-beam 1]
        [--graph-path] [--cache FILE] [--json]

``--clock cpu`` (the default on CPU) divides by the process's CPU time, so that a core shared with
other work (here: a data collector's compiles) slows both sides alike; ``wall`` uses elapsed time
(the default, and the only meaningful clock, with ``--device cuda``). ``--graph-path`` adds rows for
the neural models fed graphs (the training path) instead of samples (the search path). ``--json``
prints one object: ``{"device", "clock", "adams2019_schedules_per_s", "models": {NAME: {"1": rate,
...}}, ...}``.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from perfgraph.data.records import Sample
from perfgraph.features.graphs import as_graphs
from perfgraph.models.base import CostModel
from perfgraph.models.neural import NeuralCostModel
from perfgraph.models.registry import load_model
from perfgraph.workloads.base import zoo_uri
from perfgraph.workloads.zoo import ZOO

REPO = Path(__file__).resolve().parents[1]
BLOCKS = ("resnet_basic_block", "resnet_bottleneck_block", "mobilenet_inverted_residual", "attention", "vgg")
DEFAULT_MODELS = tuple(str(REPO / "models" / f"{name}.pt") for name in ("gnn", "sequence", "halide", "xgboost"))
# Each (model, batch size, pipeline) is timed for at least this long on the chosen clock.
MIN_SECONDS = 0.3

ADAMS_SCRIPT = """
import json, sys, time
import halide as hl
from perfgraph.schedules.autoscheduler import AutoschedulerConfig, benchmark_target, load_adams2019
from perfgraph.workloads.base import build_pipeline

uri, beam = sys.argv[1], int(sys.argv[2])
load_adams2019()
built = build_pipeline(uri)
config = AutoschedulerConfig(beam_size=beam, random_dropout=100, parallelism=1)
params = hl.AutoschedulerParams("Adams2019", config.to_halide_params())
wall, cpu = time.perf_counter(), time.process_time()
built.pipeline.apply_autoscheduler(benchmark_target(), params)
print(json.dumps({"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu}))
"""
_EVALUATIONS = re.compile(r"Cost evaluated this many times: (\d+)")


@dataclass(frozen=True)
class AdamsRun:
    """One Adams2019 search: cost evaluations it printed and the time it took (seconds)."""

    uri: str
    evaluations: int
    wall_s: float
    cpu_s: float


def block_uris() -> list[str]:
    """The five zoo blocks at their default sizes."""
    return [zoo_uri(name, **ZOO[name].defaults) for name in BLOCKS]


def candidate_samples(uris: Sequence[str], count: int, cache: Path | None) -> dict[str, list[Sample]]:
    """Up to ``count`` distinct featurized candidates per pipeline, as unmeasured samples (cached if asked)."""
    if cache is not None and cache.exists():
        with cache.open("rb") as handle:
            stored = pickle.load(handle)
        if list(stored) == list(uris):
            return {uri: samples[:count] for uri, samples in stored.items()}
    from perfgraph.measure.host import current_machine
    from perfgraph.schedules.autoscheduler import benchmark_target
    from perfgraph.search.predict import sample_candidates

    machine = current_machine(str(benchmark_target()))  # what machine-aware models read
    samples = {}
    for pipeline_id, uri in enumerate(uris):
        candidates, _, failures, _ = sample_candidates(uri, count, workers=1)
        if not candidates:
            raise SystemExit(f"{uri}: no candidate could be featurized ({failures[:1]})")
        samples[uri] = [
            c.to_sample(schedule_id=i, pipeline_id=pipeline_id, machine=machine) for i, c in enumerate(candidates)
        ]
        print(f"{uri}: {len(candidates)} candidates, {candidates[0].graph.num_stages} stages", file=sys.stderr)
    if cache is not None:
        with cache.open("wb") as handle:
            pickle.dump(samples, handle)
    return samples


def adams_rate(uris: Sequence[str], beam: int) -> tuple[list[AdamsRun], float, float]:
    """Adams2019 searches of ``uris`` in subprocesses; returns the runs and evaluations per CPU / wall second."""
    runs = []
    for uri in uris:
        completed = subprocess.run(
            [sys.executable, "-c", ADAMS_SCRIPT, uri, str(beam)],
            capture_output=True,
            text=True,
            timeout=3600,
            env={**os.environ, "HL_DEBUG_AUTOSCHEDULE": "1", "HL_NUM_THREADS": "1"},
            check=False,
        )
        found = _EVALUATIONS.findall(completed.stderr)
        if completed.returncode != 0 or len(found) != 1:
            raise SystemExit(f"{uri}: Adams2019 failed (exit {completed.returncode}): {completed.stderr[-2000:]}")
        times = json.loads(completed.stdout.strip().splitlines()[-1])
        runs.append(AdamsRun(uri, int(found[0]), times["wall_s"], times["cpu_s"]))
        print(f"Adams2019 {uri}: {found[0]} cost evaluations in {times['cpu_s']:.2f} CPU s", file=sys.stderr)
    evaluations = sum(r.evaluations for r in runs)
    return runs, evaluations / sum(r.cpu_s for r in runs), evaluations / sum(r.wall_s for r in runs)


def repeat_to(samples: Sequence[Sample], size: int) -> list[Sample]:
    """``size`` candidates, cycling through ``samples``."""
    return [samples[i % len(samples)] for i in range(size)]


def timed_rate(score: Callable[[], object], size: int, clock: Callable[[], float]) -> float:
    """Schedules per second of ``score`` (one call scores ``size``), after one warm-up call."""
    score()
    calls, start = 0, clock()
    while True:
        score()
        calls += 1
        elapsed = clock() - start
        if elapsed >= MIN_SECONDS:
            return calls * size / elapsed


def model_rates(
    model: CostModel, samples: dict[str, list[Sample]], batches: Sequence[int], clock: Callable[[], float], graphs: bool
) -> dict[str, float]:
    """Schedules per second at each batch size, over all pipelines (total schedules over total time)."""
    rates = {}
    for size in batches:
        seconds = 0.0
        for pipeline_samples in samples.values():
            batch = repeat_to(pipeline_samples, size)
            if graphs:  # what predict(samples) did before the search path: build graphs, collate them
                score = lambda batch=batch: model.predict(as_graphs(batch))  # noqa: E731
            else:
                score = lambda batch=batch: model.predict(batch)  # noqa: E731
            seconds += size / timed_rate(score, size, clock)
        rates[str(size)] = len(samples) * size / seconds
    return rates


def load_for(path: str, device: str) -> CostModel:
    model = load_model(path)
    if hasattr(model, "device"):
        model.device = device  # type: ignore[attr-defined]
    return model


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated checkpoints")
    parser.add_argument("--candidates", type=int, default=32, help="distinct candidates per pipeline")
    parser.add_argument("--batches", default="1,16,256,4096")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--clock", choices=("cpu", "wall"), default=None, help="default: cpu on CPU, wall on CUDA")
    parser.add_argument("--adams-beam", type=int, default=1, help="Adams2019 beam size for its rate")
    parser.add_argument("--graph-path", action="store_true", help="also time the neural models fed graphs")
    parser.add_argument("--cache", type=Path, default=None, help="pickle of the featurized candidates, reused")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        message = "--device cuda: torch sees no CUDA device; nothing measured"
        print(json.dumps({"device": "cuda", "skipped": message}) if args.json else message)
        return 0
    clock_name = args.clock or ("cpu" if args.device == "cpu" else "wall")
    clock = time.process_time if clock_name == "cpu" else time.perf_counter
    torch.set_num_threads(1)
    batches = [int(b) for b in args.batches.split(",")]
    uris = block_uris()
    samples = candidate_samples(uris, args.candidates, args.cache)
    runs, adams_cpu, adams_wall = adams_rate(uris, args.adams_beam)
    models: dict[str, dict[str, float]] = {}
    for path in args.models.split(","):
        model = load_for(path, args.device)
        models[model.name] = model_rates(model, samples, batches, clock, graphs=False)
        if args.graph_path and isinstance(model, NeuralCostModel):
            models[f"{model.name} (graph path)"] = model_rates(model, samples, batches, clock, graphs=True)
    adams = adams_cpu if clock_name == "cpu" else adams_wall
    if args.json:
        print(
            json.dumps(
                {
                    "device": args.device,
                    "clock": clock_name,
                    "adams2019_schedules_per_s": adams,
                    "models": models,
                    "pipelines": {uri: len(s) for uri, s in samples.items()},
                    "adams2019_runs": [vars(run) for run in runs],
                }
            )
        )
        return 0
    print(f"schedules scored per second ({clock_name} clock, device {args.device}), five zoo blocks:")
    print(f"{'model':<22}" + "".join(f"{'batch ' + str(b):>12}" for b in batches) + f"{'/ Adams2019':>13}")
    for name, rates in models.items():
        best = max(rates.values())
        print(f"{name:<22}" + "".join(f"{rates[str(b)]:>12,.0f}" for b in batches) + f"{best / adams:>12.2f}x")
    evaluations = sum(r.evaluations for r in runs)
    print(
        f"Adams2019 (beam {args.adams_beam}): {adams:,.0f} cost evaluations/s "
        f"({evaluations} in {sum(r.cpu_s for r in runs):.2f} CPU s, {sum(r.wall_s for r in runs):.2f} wall s)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
