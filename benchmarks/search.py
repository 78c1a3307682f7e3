"""The search benchmark: schedules chosen with perfgraph's model against Adams2019's own beam search.

In one run, with the same runner for everything (single thread, pinned to the benchmark core, output
checked; every distinct schedule of a pipeline is benchmarked once and shared by the methods that
chose it), on pipelines that were never in training (the zoo blocks at their default sizes, which are
in no split, and pipelines of the test split):

1. ``M K=8`` / ``M K=16``: rank N candidates with the search model ``M`` (``--search-model``, default
   the shipped default of ``perfgraph schedule``, ``ensemble``), benchmark the predicted best K, keep
   the fastest measured (one round);
2. ``M K=8 x3``: three rounds of K=8, the model updated on its measurements between rounds;
3. ``beam shipped``: Adams2019 beam search with Halide's shipped weights;
4. ``beam retrained``: the same with our Halide network trained on our data (``models/halide.weights``,
   ``models/halide.pt`` exported with ``perfgraph export --format weights``; ``perfgraph schedule``'s default seed);
5. ``random 8`` / ``random 16``: the best of the first 8 / 16 of the same N candidates, no model;
6. ``gnn K=8``, ``halide K=8``, ``xgboost K=8``: the one-round search driven by the other shipped cost
   models (``--models``);
7. ``M K=8 + beam retrained`` / ``M K=8 x3 + beam retrained``: the model's search with Adams2019's own
   beam search (retrained weights) as a seed, benchmarked beside the model's picks (``perfgraph schedule
   --beam-seed WEIGHTS``, ``tune(seeds=...)``): the faster of the two schedules this run measured, at the
   sum of the two wall times and benchmark counts.

Prints one row per pipeline (the chosen schedule's run time per method) and the geomean speed-up of
each method over ``beam shipped``; wall times are the search's own (featurize + predict + compile and
benchmark the K, or the beam search plus one compile and benchmark).

    python benchmarks/search.py --candidates 64 --db out/search/bench.db --json out/search/result.json
    python benchmarks/search.py --summarize out/search/result.json   # the tables again, from a saved run
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from perfgraph.data.store import Store
from perfgraph.measure.builder import analyse_stage_graph
from perfgraph.measure.collector import CollectOptions, Collector
from perfgraph.models.registry import load_model
from perfgraph.paths import MODELS_DIR, RETRAINED_WEIGHTS
from perfgraph.schedules.autoscheduler import AutoschedulerConfig, beam_size_for
from perfgraph.search.predict import rank_candidates, sample_candidates
from perfgraph.search.tune import tune
from perfgraph.workloads.base import zoo_uri

PIPELINES = (
    zoo_uri("resnet_basic_block"),
    zoo_uri("resnet_bottleneck_block"),
    zoo_uri("mobilenet_inverted_residual"),
    zoo_uri("attention"),
    zoo_uri("vgg"),
    # test split (never in training): a ResNet and a MobileNet variant and a random pipeline
    "zoo:resnet_bottleneck_block?c_in=256&c_mid=32&c_out=256&h=14&stride=2&w=7",
    "zoo:mobilenet_inverted_residual?c_in=64&c_out=96&expand=1&h=28&stride=1&w=56",
    "random:2",
)


def model_path(spec: str) -> Path:
    """A ``--models`` entry: a path to a ``.pt`` file, or the name of a shipped model (``models/NAME.pt``)."""
    return Path(spec) if spec.endswith(".pt") else MODELS_DIR / f"{spec}.pt"


def model_name(spec: str) -> str:
    """A ``--models`` entry's row name: its file stem (``ensemble`` for ``ensemble`` and ``models/ensemble.pt``)."""
    return model_path(spec).stem


def geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


PORTFOLIO_SEED = "beam retrained"


def with_portfolios(methods: dict) -> dict:
    """``methods`` plus ``M + beam retrained`` for every search ``M`` that is no beam search: the faster
    schedule of the two (``random 8 + beam retrained`` is the control: the beam seed without a model)."""
    seed = methods.get(PORTFOLIO_SEED)
    if not seed or seed.get("ms") is None:
        return methods
    combined = dict(methods)
    for name, row in methods.items():
        if not name.startswith("beam") and row.get("ms") is not None and "+" not in name:
            combined[f"{name} + {PORTFOLIO_SEED}"] = {
                "ms": min(row["ms"], seed["ms"]),
                "wall_s": row["wall_s"] + seed["wall_s"],
                "benchmarks": row["benchmarks"] + seed["benchmarks"],
            }
    return combined


def run_pipeline(uri: str, args: argparse.Namespace, collector: Collector, models: dict, weights: str) -> dict:
    """Every method on one pipeline; returns ``{method: {"ms": ..., "wall_s": ..., "benchmarks": ...}}``.

    Every model of ``models`` gets a one-round K=8 search; ``args.search_model`` also K=16 and ``args.rounds``.
    """
    store = collector.store
    started = time.perf_counter()
    graph = analyse_stage_graph(uri)
    candidates, tried, _, _ = sample_candidates(uri, args.candidates, graph=graph, workers=args.workers)
    featurize_s = time.perf_counter() - started
    per_candidate_s = featurize_s / max(tried, 1)
    chosen: dict[str, list] = {}
    predict_s: dict[str, float] = {}
    for name, model in models.items():
        t0 = time.perf_counter()
        ranked = rank_candidates(model, candidates, with_stage_costs=0)
        predict_s[name] = time.perf_counter() - t0
        chosen[name] = [r.candidate for r in ranked]
    pool = {c.features_hash: c for c in candidates}
    top = {name: 16 if name == args.search_model else 8 for name in models}
    wanted = {h: None for name in models for h in [c.features_hash for c in chosen[name][: top[name]]]}
    wanted.update({c.features_hash: None for c in candidates[:16]})  # random: the first 16 in seed order
    configs = [pool[h].config for h in wanted]
    t0 = time.perf_counter()
    outcomes = collector.measure_configs(uri, configs)
    measure_each_s = (time.perf_counter() - t0) / max(len(configs), 1)
    runtime = {h: o.runtime_ms for h, o in zip(wanted, outcomes, strict=True)}

    def best_of(hashes: list[str]) -> float | None:
        times = [runtime[h] for h in hashes if runtime.get(h) is not None]
        return min(times) if times else None

    rows: dict[str, dict] = {}
    for name in models:
        for k in (8, 16) if name == args.search_model else (8,):
            hashes = [c.features_hash for c in chosen[name][:k]]
            wall = per_candidate_s * tried + predict_s[name] + measure_each_s * k
            rows[f"{name} K={k}"] = {"ms": best_of(hashes), "wall_s": wall, "benchmarks": k}
    for k in (8, 16):
        hashes = [c.features_hash for c in candidates[:k]]
        rows[f"random {k}"] = {
            "ms": best_of(hashes),
            "wall_s": per_candidate_s * k + measure_each_s * k,
            "benchmarks": k,
        }
    if args.rounds > 1:
        model = load_model(args.search_model_path)  # fresh: tune updates it
        result = tune(uri, model, store, n=args.candidates, k=8, rounds=args.rounds, first_round=candidates)
        best = result.best
        rows[f"{args.search_model} K=8 x{args.rounds}"] = {
            "ms": best.measured_ms if best else None,
            "wall_s": result.wall_s,
            "benchmarks": len(result.measured),
        }
    beam = args.beam or beam_size_for(graph.num_stages)
    for name, path in (("beam shipped", None), ("beam retrained", weights)):
        config = AutoschedulerConfig(beam_size=beam, random_dropout=100, weights_path=path)
        t0 = time.perf_counter()
        (outcome,) = collector.measure_configs(uri, [config])
        rows[name] = {"ms": outcome.runtime_ms, "wall_s": time.perf_counter() - t0, "benchmarks": 1, "beam": beam}
        if outcome.failure:
            rows[name]["failure"] = outcome.failure
    return {
        "uri": uri,
        "stages": graph.num_stages,
        "distinct": len(candidates),
        "tried": tried,
        "featurize_s": featurize_s,  # analysis + every candidate tried (Adams2019's own search per candidate)
        "predict_s": predict_s,  # per model: ranking every distinct candidate
        "methods": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", type=Path, default=Path("out/search/bench.db"), help="store of every benchmark")
    parser.add_argument("--candidates", type=int, default=256, metavar="N")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the multi-round search (1: skip it)")
    parser.add_argument(
        "--models",
        type=lambda text: text.split(","),
        default=["ensemble", "gnn", "halide", "xgboost"],
        help="models whose one-round K=8 search is compared: shipped NAMEs (models/NAME.pt) or paths to .pt files"
        " (named by their stem)",
    )
    parser.add_argument(
        "--search-model", default="ensemble", help="the one of --models also searched with K=16 and several rounds"
    )
    parser.add_argument("--beam", type=int, help="Adams2019 beam (default: 32, 8 or 2 by stage count, as collect)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--pipelines", nargs="+", default=list(PIPELINES))
    parser.add_argument("--json", type=Path, help="also write every row here")
    parser.add_argument("--summarize", type=Path, metavar="JSON", help="only print the tables of a saved --json")
    args = parser.parse_args()
    if args.summarize:
        saved = json.loads(args.summarize.read_text())
        print_report(saved["pipelines"], saved["machine"], "as saved")
        return

    names = [model_name(spec) for spec in args.models]
    if len(set(names)) < len(names):
        parser.error(f"--models {','.join(args.models)}: two models share a name ({','.join(names)}); rename a file")
    if model_name(args.search_model) not in names:
        parser.error(f"--search-model {args.search_model!r} must be one of --models {','.join(args.models)}")
    args.search_model_path = model_path(args.search_model)
    args.search_model = model_name(args.search_model)
    models = {name: load_model(model_path(spec)) for name, spec in zip(names, args.models, strict=True)}
    weights = str(RETRAINED_WEIGHTS.resolve())  # the same bytes as an export of models/halide.pt (tested)
    args.db.parent.mkdir(parents=True, exist_ok=True)
    collector = Collector(
        Store(args.db),
        CollectOptions(workers=args.workers, remeasure_fraction=0.0, cross_machine=False, show_progress=False),
    )
    results = []
    for uri in args.pipelines:
        print(f"{uri} ...", flush=True)
        results.append(run_pipeline(uri, args, collector, models, weights))
        if args.json:
            args.json.write_text(json.dumps({"machine": collector.machine_kind, "pipelines": results}, indent=2))
    print_report(results, collector.machine_kind, args.candidates)


def print_report(results: list[dict], machine: str, candidates: int | str) -> None:
    """The per-pipeline table and the geomean speed-up of every method (portfolios included)."""
    results = [{**r, "methods": with_portfolios(r["methods"])} for r in results]
    methods = list(dict.fromkeys(m for r in results for m in r["methods"]))
    print(f"\nchosen schedule's run time (ms), machine {machine}, N={candidates}")
    print(f"{'pipeline':<44} {'stages':>6} " + " ".join(f"{m:>15}" for m in methods))
    for r in results:
        cells = [r["methods"].get(m, {}).get("ms") for m in methods]
        print(f"{r['uri'][:44]:<44} {r['stages']:>6} " + " ".join(f"{c:15.4g}" if c else f"{'-':>15}" for c in cells))
    header = f"{'method':<30} {'vs beam shipped':>15} {'vs beam retrained':>17} {'wall s (mean)':>13} {'pipelines':>9}"
    print("\n" + header + "  (speed-ups: geomean)")
    for m in methods:
        pairs = [
            (r["methods"]["beam shipped"]["ms"], r["methods"][m]["ms"], r["methods"][m]["wall_s"])
            for r in results
            if r["methods"].get(m, {}).get("ms") and r["methods"].get("beam shipped", {}).get("ms")
        ]
        speedup = geomean([b / x for b, x, _ in pairs])
        retrained = geomean(
            [
                r["methods"][PORTFOLIO_SEED]["ms"] / r["methods"][m]["ms"]
                for r in results
                if r["methods"].get(m, {}).get("ms") and r["methods"].get(PORTFOLIO_SEED, {}).get("ms")
            ]
        )
        wall = sum(w for _, _, w in pairs) / len(pairs) if pairs else float("nan")
        print(f"{m:<30} {speedup:>15.3f} {retrained:>17.3f} {wall:>13.1f} {len(pairs):>9}")


if __name__ == "__main__":
    main()
