"""Compare the neural cost models fairly: one loss, one budget, several seeds, validation and test.

Does the stage graph help? Four models are trained on the same split, with the same loss, the same
epoch budget, the same early stopping (on the validation loss, with patience) and the same seeds; only
the architecture differs:

* ``gnn``: the shipped configuration, GIN convolutions, 3 residual layers, 64 channels;
* ``sequence``: the LSTM over the stages in topological order (the non-graph control);
* ``no-graph``: the same GNN with ``layers=0``, no message passing: a per-stage MLP, summed;
* ``schedule-only``: the same GNN reading only the 39 schedule features of every stage (the 287
  pipeline features zeroed after standardisation; the graph and its edge features are kept);
* ``schedule-edges``: the same GNN whose convolutions also read the schedule edge features (where
  each producer is computed and stored relative to its consumer: :mod:`perfgraph.schedules.schedule_source`);
* ``no-graph-terms`` and ``gnn-terms``: ``no-graph`` and ``gnn`` whose head predicts coefficients of
  Halide's hand-designed cost terms and a free term (:mod:`perfgraph.models.term_readout`);
* ``gnn-global``: ``gnn`` with a virtual node: every layer adds the graph's mean stage state to each
  stage (global context: :class:`~perfgraph.models.stage_gnn.StageGNN`);
* ``gnn-dir``: ``gnn`` with separate weights for a stage's producers and its consumers
  (:mod:`~perfgraph.models.directed_gine`).

Every model is trained once per seed (initial weights and batch order) and scored on the validation
and the test pipelines with :func:`~perfgraph.evaluate.metrics.evaluate_predictions`; the tables give
mean and standard deviation over the seeds. The test error is also split in two: the *bias* of each
pipeline (the mean log error over its schedules: the whole pipeline predicted too slow or too fast)
and the *residual* within it (log error minus its pipeline's mean: the schedules of one pipeline
misjudged against each other). Their RMSEs, weighted by sample, add in squares to the RMSE(ln); the
ranking metrics (tau, top-1) see the residual only.

    taskset -c 0 .venv/bin/python benchmarks/compare_models.py --db data/perfgraph.db --seeds 0,1,2 --json out.json

``--pool-machines`` trains every model machine-aware on the samples of every machine kind in the store
(split by pipeline, a pipeline in the same part for every kind; early stopping on every kind's
validation samples, as ``perfgraph train --machine all`` does) and scores it on ``--machine``'s
validation and test samples: does another machine's data change which model wins? ``train_samples`` then
counts every kind's.

Each run's predictions are kept (in ``--json`` too, with the measured times and pipeline ids), and at the
end every model's seeds are also scored as one deep ensemble (the geometric mean of their predictions,
as :class:`~perfgraph.models.ensemble.EnsembleCostModel` combines members), with each pair of models'
error ratio and its pipeline-bootstrap 95% interval (:func:`~perfgraph.evaluate.bootstrap.error_ratios`):
the issue's test of whether one model beats another by more than the test set's chance.
``--summarize out.json [--models a,b] [--seeds 0,1,2]`` prints those tables again for a subset of the
recorded runs, training nothing.

``--train-fraction F`` trains every model on the same share F of the training pipelines, drawn per seed
and nested (:func:`training_subset`), validation and test unchanged: the points of a learning curve.

Models are built by :func:`select_gnn.candidates` (the GNN and the LSTM, with the same training
keywords), the ablations from the GNN's parameters with one of them changed.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from select_gnn import candidates
from torch_geometric.data import Data

from perfgraph.data.store import Store
from perfgraph.evaluate.bootstrap import error_ratios
from perfgraph.evaluate.metrics import evaluate_predictions, log_errors, pipeline_bias_and_residual
from perfgraph.features.dataset import StageGraphDataset
from perfgraph.features.splits import SPLITS, split_samples
from perfgraph.models.gnn import GNNCostModel
from perfgraph.models.neural import NeuralCostModel
from perfgraph.models.training import LR_SCHEDULES

MODELS = (
    *("gnn", "sequence", "no-graph", "schedule-only", "schedule-edges", "no-graph-terms", "gnn-terms"),
    *("gnn-global", "gnn-dir"),
)
DEFAULT_MACHINE = "amd-epyc/znver4-avx2"
#: Metrics in the tables: (key, header, decimals).
TABLE_METRICS = (("rmse_log", "RMSE(ln)", 3), ("mape", "MAPE %", 1), ("kendall_tau", "tau", 3), ("top1", "top-1", 3))
SPLIT_METRICS = (("rmse_log", "RMSE(ln)", 3), ("bias_rmse_log", "bias", 3), ("residual_rmse_log", "residual", 3))


def models_for_seed(args: argparse.Namespace, seed: int) -> list[tuple[str, NeuralCostModel]]:
    """The models of :data:`MODELS` that ``args.models`` names, untrained, with ``seed``.

    Only those are built, so that a setting one variant refuses (``--layers 0`` for ``gnn-global``)
    fails only when that variant is asked for. With ``args.pool_machines`` every model is machine-aware.
    """
    shipped = argparse.Namespace(**{**vars(args), "convs": [args.conv], "losses": [args.loss], "no_sequence": False})
    built = dict(candidates(shipped, seed))
    gnn, sequence = built[f"gnn/{args.conv}"], built["sequence/lstm"]
    params = gnn.get_params()
    variants = {
        "no-graph": {"layers": 0},
        "schedule-only": {"features": "schedule"},
        "schedule-edges": {"schedule_edges": True},
        "no-graph-terms": {"layers": 0, "cost_terms": True},
        "gnn-terms": {"cost_terms": True},
        "gnn-global": {"global_context": True},
        "gnn-dir": {"conv": "gin-dir"},
    }
    machine = {"machine_features": True} if args.pool_machines else {}
    models = []
    for name in args.models:
        if name in variants:
            model: NeuralCostModel = GNNCostModel(**{**params, **variants[name], **machine})
        else:
            base = gnn if name == "gnn" else sequence
            model = type(base)(**{**base.get_params(), **machine}) if machine else base
        models.append((name, model))
    return models


def bias_and_residual(predicted_ms: np.ndarray, measured_ms: np.ndarray, pipeline_ids: np.ndarray) -> dict:
    """RMSE of the per-pipeline mean log error and of the log error around it (both per sample).

    ``bias**2 + residual**2 == rmse_log**2``: the residual sums to zero within every pipeline.

    >>> split = bias_and_residual(np.array([2.0, 2.0, 1.0]), np.array([1.0, 1.0, 1.0]), np.array([0, 0, 1]))
    >>> round(split["bias_rmse_log"], 4), split["residual_rmse_log"]
    (0.566, 0.0)
    """
    bias, residual = pipeline_bias_and_residual(log_errors(predicted_ms, measured_ms), pipeline_ids)
    return {
        "bias_rmse_log": float(np.sqrt(np.mean(bias**2))),
        "residual_rmse_log": float(np.sqrt(np.mean(residual**2))),
    }


def truth(graphs: Sequence[Data]) -> dict[str, np.ndarray]:
    """The measured run times (ms, shape ``[n]``) and pipeline ids (``[n]``) of ``graphs``, in their order."""
    return {
        "measured_ms": np.exp(np.array([float(g.y) for g in graphs])),
        "pipeline_ids": np.array([int(g.pipeline_id) for g in graphs]),
    }


def score(predicted_ms: np.ndarray, labels: dict[str, np.ndarray]) -> dict:
    """Every metric of :func:`evaluate_predictions` plus the bias / residual split of the log error."""
    measured, pipeline_ids = labels["measured_ms"], labels["pipeline_ids"]
    return {
        **evaluate_predictions(predicted_ms, measured, pipeline_ids).as_dict(),
        **bias_and_residual(predicted_ms, measured, pipeline_ids),
    }


def seed_ensembles(runs: list[dict], labels: dict[str, dict], part: str) -> dict[str, np.ndarray]:
    """Per model: the geometric mean over its seeds of the predicted run times on ``part`` (ms, ``[n]``).

    The seeds' networks averaged in log space are a deep ensemble of that many members (the shipped
    :class:`~perfgraph.models.ensemble.EnsembleCostModel` combines its members the same way). Runs
    recorded without predictions (older ``--json`` files) are left out.

    >>> runs = [{"model": "a", "predicted_ms": {"test": [1.0, 4.0]}}, {"model": "a", "predicted_ms": {"test": [4, 1]}}]
    >>> seed_ensembles(runs, {"test": {"measured_ms": np.ones(2)}}, "test")["a"].tolist()
    [2.0, 2.0]
    """
    logs: dict[str, list[np.ndarray]] = {}
    for run in runs:
        predicted = run.get("predicted_ms", {}).get(part)
        if predicted is not None and len(predicted) == len(labels[part]["measured_ms"]):
            logs.setdefault(run["model"], []).append(np.log(np.asarray(predicted, dtype=np.float64)))
    return {model: np.exp(np.mean(members, axis=0)) for model, members in logs.items()}


def print_ensembles(runs: list[dict], labels: dict[str, dict], n_boot: int = 2000) -> dict:
    """Score every model's seed ensemble, and every pair's error ratio with a pipeline bootstrap.

    Returns ``{part: {"scores": {model: metrics}, "ratios": {"a vs b": {metric: ratio}}}}``; a ratio
    above 1 means ``a`` has the lower error (:func:`~perfgraph.evaluate.bootstrap.error_ratios`,
    resampling pipelines).
    """
    record: dict = {}
    for part in ("valid", "test"):
        ensembles = seed_ensembles(runs, labels, part)
        if not ensembles:
            continue
        scores = {model: score(predicted, labels[part]) for model, predicted in ensembles.items()}
        print(f"\n{part}: each model's seeds as one ensemble (geometric mean of the seeds' predictions)")
        header = f"{'model':<15}" + "".join(f"{name:>10}" for _, name, _ in (*TABLE_METRICS, *SPLIT_METRICS[1:]))
        print(header)
        print("-" * len(header))
        for model, metrics in scores.items():
            cells = "".join(
                f"{'-':>10}" if metrics[key] is None else f"{metrics[key]:>10.{digits}f}"
                for key, _, digits in (*TABLE_METRICS, *SPLIT_METRICS[1:])
            )
            print(f"{model:<15}{cells}")
        ratios = {}
        names = list(ensembles)
        for i, first in enumerate(names):
            for second in names[i + 1 :]:
                pair = error_ratios(
                    ensembles[first],
                    ensembles[second],
                    labels[part]["measured_ms"],
                    labels[part]["pipeline_ids"],
                    n_boot=n_boot,
                )
                ratios[f"{first} vs {second}"] = {metric: estimate.as_dict() for metric, estimate in pair.items()}
                cells = ", ".join(
                    f"{metric} {e.ratio:.2f}x [{e.ci_low:.2f}, {e.ci_high:.2f}]" for metric, e in pair.items()
                )
                print(f"  {first} vs {second}: {cells} (95% CI over pipelines; > 1: {first} has the lower error)")
        record[part] = {"scores": scores, "ratios": ratios}
    return record


def summarize(runs: list[dict]) -> list[dict]:
    """Per model: ``[mean, standard deviation]`` over its seeds of every metric, per part."""
    groups: dict[str, list[dict]] = {}
    for run in runs:
        groups.setdefault(run["model"], []).append(run)
    summary = []
    for model, group in groups.items():
        entry: dict = {"model": model, "seeds": [run["seed"] for run in group]}
        for part in ("valid", "test"):
            entry[part] = {key: _mean_sd([run[part][key] for run in group]) for key in group[0][part]}
        entry["epochs"] = _mean_sd([run["epochs"] for run in group])
        summary.append(entry)
    return summary


def _mean_sd(values: list) -> list[float | None]:
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return [None, None]
    return [statistics.fmean(finite), statistics.stdev(finite) if len(finite) > 1 else 0.0]


def _cell(pair: list[float | None], decimals: int) -> str:
    mean, sd = pair
    return "-" if mean is None else f"{mean:.{decimals}f} ± {sd:.{decimals}f}"


def print_table(summary: list[dict], part: str, metrics: tuple, title: str) -> None:
    print(f"\n{title}")
    header = f"{'model':<15}" + "".join(f"{name:>17}" for _, name, _ in metrics)
    print(header)
    print("-" * len(header))
    for entry in summary:
        cells = "".join(f"{_cell(entry[part][key], digits):>17}" for key, _, digits in metrics)
        print(f"{entry['model']:<15}{cells}")


def report(runs: list[dict], labels: dict[str, dict]) -> dict:
    """Print the per-seed tables (mean ± sd) and the seed ensembles of ``runs``; returns the ensembles' record."""
    summary = summarize(runs)
    seeds = ",".join(map(str, sorted({run["seed"] for run in runs})))
    print_table(summary, "valid", TABLE_METRICS, f"validation, mean ± sd over seeds {seeds}")
    print_table(summary, "test", TABLE_METRICS, f"test, mean ± sd over seeds {seeds}")
    print_table(summary, "test", SPLIT_METRICS, "test log error: per-pipeline bias and within-pipeline residual")
    for part in ("valid", "test"):
        best = min(summary, key=lambda entry: entry[part]["rmse_log"][0])
        print(f"lowest mean {part} RMSE(ln): {best['model']}")
    return print_ensembles(runs, labels)


def summarize_file(path: Path, models: Sequence[str], seeds: Sequence[int] | None) -> None:
    """Print :func:`report` for the runs of a ``--json`` record that ``models`` and ``seeds`` (None: all) name."""
    record = json.loads(path.read_text())
    if "labels" not in record:
        raise SystemExit(f"{path}: recorded without predictions and labels (before session 14): nothing to summarize")
    runs = [run for run in record["runs"] if run["model"] in models and (seeds is None or run["seed"] in seeds)]
    if not runs:
        raise SystemExit(f"{path}: no runs of models {','.join(models)} and seeds {seeds or 'any'}")
    labels = {
        part: {key: np.asarray(values) for key, values in arrays.items()} for part, arrays in record["labels"].items()
    }
    print(f"{path}: {len(runs)} runs ({record['command']['db']}, scored on {record['command']['machine']})")
    report(runs, labels)


def load_graphs(db: Path, machine: str, pool: bool = False) -> list[Data]:
    """The measured samples of one machine kind, as stage graphs; with ``pool``, of every kind in the store.

    Pooled graphs carry their kind (``machine_kind``) and machine features, for machine-aware models.
    """
    with Store(db) as store:
        kinds = list(store.samples_by_machine_kind()) if pool else [machine]
        if machine not in kinds:
            raise SystemExit(f"{db}: no samples of machine kind {machine!r}; kinds: {', '.join(kinds)}")
        samples = [sample for kind in kinds for sample in store.samples(machine=kind)]
    return list(StageGraphDataset.from_samples(samples))


def of_kind(graphs: Sequence[Data], kind: str) -> list[Data]:
    """The graphs measured on machine kind ``kind``."""
    return [graph for graph in graphs if graph.machine_kind == kind]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", type=Path, default=Path("data/perfgraph.db"), help="perfgraph SQLite store")
    parser.add_argument("--machine", default=DEFAULT_MACHINE, help="machine kind whose run times are used")
    parser.add_argument(
        "--pool-machines",
        action="store_true",
        help="train machine-aware on every machine kind's samples; score on --machine's",
    )
    parser.add_argument("--split", choices=SPLITS, default="fixed")
    parser.add_argument("--models", type=lambda s: s.split(","), default=list(MODELS), help=",".join(MODELS))
    parser.add_argument("--conv", default="gin", help="the GNN's convolution (shipped: gin)")
    parser.add_argument("--layers", type=int, default=3, help="the GNN's message-passing layers (shipped: 3)")
    parser.add_argument("--loss", default="mse+listnet", help="one loss for every model (shipped GNN: mse+listnet)")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--patience", type=int, default=30)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--train-fraction",
        type=float,
        default=1.0,
        help="train on this share of the training pipelines, drawn per seed, nested (a learning curve)",
    )
    parser.add_argument("--dropout", type=float, default=0.0, help="every model's dropout (shipped: 0)")
    parser.add_argument("--weight-decay", type=float, default=0.0, help="Adam's L2 weight decay (shipped: 0)")
    parser.add_argument(
        "--lr-schedule", choices=LR_SCHEDULES, default="constant", help="learning-rate schedule (shipped: constant)"
    )
    parser.add_argument(
        "--seeds", type=lambda s: [int(x) for x in s.split(",")], help="comma-separated (default 0,1,2)"
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (core 1 is for benchmarks)")
    parser.add_argument("--json", type=Path, default=None, help="write every run and the summary here")
    parser.add_argument(
        "--resume", action="store_true", help="keep the runs already in --json (same settings) and add the missing ones"
    )
    parser.add_argument(
        "--summarize",
        type=Path,
        metavar="JSON",
        help="train nothing: print the tables of a --json record's runs (of --models, and --seeds if given)",
    )
    args = parser.parse_args(argv)
    if args.summarize:
        summarize_file(args.summarize, args.models, args.seeds)
        return
    args.seeds = args.seeds or [0, 1, 2]
    if not 0.0 < args.train_fraction <= 1.0:
        parser.error(f"--train-fraction must be in (0, 1], got {args.train_fraction}")
    unknown = sorted(set(args.models) - set(MODELS))
    if unknown:
        parser.error(f"--models: unknown {unknown}; choose from {','.join(MODELS)}")
    torch.set_num_threads(args.threads)

    started = time.perf_counter()
    graphs = load_graphs(args.db, args.machine, args.pool_machines)
    parts = split_samples(graphs, args.split)
    scored = {part: of_kind(getattr(parts, part), args.machine) for part in ("valid", "test")}
    labels = {part: truth(graphs) for part, graphs in scored.items()}
    empty = [part for part, graphs in scored.items() if not graphs]
    if empty:
        raise SystemExit(f"{args.db}: no {args.machine} samples in the {' and '.join(empty)} part of the pooled split")
    pooled = " (all kinds, machine-aware), scored on its own" if args.pool_machines else ""
    print(f"{args.db} ({args.machine}{pooled}): {parts.describe()}  [{time.perf_counter() - started:.0f} s]")
    print(
        f"loss {args.loss}, at most {args.epochs} epochs, patience {args.patience}, lr {args.lr} ({args.lr_schedule})"
    )
    header = (
        f"{'model':<15} {'seed':>4} {'epochs':>6} {'best':>4} {'valid RMSE':>10} {'tau':>6} {'test RMSE':>10} "
        f"{'tau':>6} {'s/epoch':>7} {'sec':>6}"
    )
    print(header)
    print("-" * len(header))
    runs = previous_runs(args, labels)
    done = {(run["model"], run["seed"]) for run in runs}
    for seed in args.seeds:  # seed by seed, so that a cut-short run has whole seeds
        train = training_subset(parts.train, args.train_fraction, seed)
        train_pipelines = len({graph.pipeline_name for graph in train})
        if args.train_fraction < 1.0:
            print(f"seed {seed}: {len(train)} training samples / {train_pipelines} pipelines")
        for name, model in models_for_seed(args, seed):
            if (name, seed) in done:
                continue
            fit_started = time.perf_counter()
            model.fit(train, parts.valid)
            predicted = {part: model.predict(graphs) for part, graphs in scored.items()}
            run = {
                "model": name,
                "seed": seed,
                "params": model.get_params(),
                "epochs": len(model.log_),
                "best_epoch": min(model.log_, key=lambda entry: entry["valid_loss"])["epoch"],
                "epoch_seconds": statistics.fmean(entry["seconds"] for entry in model.log_),
                "seconds": time.perf_counter() - fit_started,
                "train_samples": len(train),
                "train_pipelines": train_pipelines,
                "valid": score(predicted["valid"], labels["valid"]),
                "test": score(predicted["test"], labels["test"]),
                "predicted_ms": {part: values.tolist() for part, values in predicted.items()},
            }
            runs.append(run)
            print(
                f"{name:<15} {seed:>4} {run['epochs']:>6} {run['best_epoch']:>4} {run['valid']['rmse_log']:>10.3f} "
                f"{run['valid']['kendall_tau']:>6.3f} {run['test']['rmse_log']:>10.3f} "
                f"{run['test']['kendall_tau']:>6.3f} {run['epoch_seconds']:>7.1f} {run['seconds']:>6.0f}",
                flush=True,
            )
            if args.json:
                _write_json(args, runs, labels)
    ensembles = report(runs, labels)
    print(f"total {time.perf_counter() - started:.0f} s")
    if args.json:
        _write_json(args, runs, labels, ensembles)


#: Settings that must match for ``--resume`` to keep earlier runs.
_RESUMABLE = (
    *("db", "machine", "split", "conv", "layers", "loss", "hidden", "epochs", "patience", "lr", "batch_size"),
    *("dropout", "weight_decay", "lr_schedule", "train_fraction", "pool_machines"),
)


def training_subset(train: Sequence[Data], fraction: float, seed: int) -> list[Data]:
    """The graphs of a ``fraction`` of the training pipelines (at least one), drawn with ``seed``.

    The pipelines are shuffled once per seed and the first ``ceil(fraction * n)`` kept, so for one seed a
    smaller fraction's pipelines are a subset of a larger one's: the points of a learning curve differ
    only by the data added.

    >>> graphs = [Data(pipeline_name=f"p{i // 2}") for i in range(8)]  # 4 pipelines, 2 samples each
    >>> half = training_subset(graphs, 0.5, seed=0)
    >>> len(half), len({g.pipeline_name for g in half})
    (4, 2)
    >>> {g.pipeline_name for g in half} <= {g.pipeline_name for g in training_subset(graphs, 0.75, seed=0)}
    True
    >>> training_subset(graphs, 1.0, seed=0) == list(graphs)
    True
    """
    if fraction >= 1.0:
        return list(train)
    names = sorted({graph.pipeline_name for graph in train})
    order = np.random.default_rng(seed).permutation(len(names))
    kept = {names[i] for i in order[: max(1, math.ceil(fraction * len(names)))]}
    return [graph for graph in train if graph.pipeline_name in kept]


def previous_runs(args: argparse.Namespace, labels: dict | None = None) -> list[dict]:
    """With ``--resume``, every run already in ``--json`` (refused if its settings or, where recorded, the
    validation and test labels differ: a store whose labels were upgraded since); else none."""
    if not (args.resume and args.json and args.json.is_file()):
        return []
    record = json.loads(args.json.read_text())
    ours = _settings(args)
    defaults = {  # settings older records did not have
        "dropout": 0.0,
        "weight_decay": 0.0,
        "lr_schedule": "constant",
        "train_fraction": 1.0,
        "pool_machines": False,
    }
    differing = sorted(key for key in _RESUMABLE if record["command"].get(key, defaults.get(key)) != ours[key])
    if differing:
        raise SystemExit(f"--resume: {args.json} was run with other settings: {', '.join(differing)}")
    recorded = record.get("labels")
    if recorded and labels is not None:
        ours = {part: {key: values.tolist() for key, values in arrays.items()} for part, arrays in labels.items()}
        if recorded != ours:
            raise SystemExit(f"--resume: {args.json} was scored on other labels (the store changed since)")
    return record["runs"]


def _settings(args: argparse.Namespace) -> dict:
    return {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}


def _write_json(args: argparse.Namespace, runs: list[dict], labels: dict, ensembles: dict | None = None) -> None:
    record = {
        "command": _settings(args),
        "runs": runs,
        "summary": summarize(runs),
        "labels": {part: {key: values.tolist() for key, values in arrays.items()} for part, arrays in labels.items()},
        "seed_ensembles": ensembles or {},
    }
    args.json.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
