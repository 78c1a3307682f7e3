"""Choose the GNN's convolution and loss on the validation split of a real dataset.

Trains one GNN per (conv, loss) pair -- plus the LSTM sequence control per loss -- on the training
pipelines, with early stopping on the validation pipelines, and prints one row per model with the
validation metrics that matter for a cost model: MAPE, RMSE of the log run time, and the mean Kendall
tau of the schedules within each pipeline (what a schedule search relies on). The test split is not
touched: pick on validation, report on test with ``perfgraph train`` / ``perfgraph evaluate``.

With several ``--seeds`` every configuration is trained once per seed (the seed sets the initial
weights and the batch order), and a second table gives each configuration's mean and standard
deviation over the seeds: on a few dozen validation pipelines one seed's ranking of two
configurations can be noise, and the spread says how much.

    taskset -c 0 .venv/bin/python benchmarks/select_gnn.py --db data/perfgraph.db --seeds 0,1,2

Graphs are read once through the cached :class:`~perfgraph.features.dataset.StageGraphDataset`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from perfgraph.features.dataset import StageGraphDataset
from perfgraph.features.splits import SPLITS, split_samples
from perfgraph.models.gnn import GNNCostModel
from perfgraph.models.neural import NeuralCostModel
from perfgraph.models.sequence import SequenceCostModel
from perfgraph.models.stage_gnn import CONVS
from perfgraph.models.train import evaluate_model
from perfgraph.models.training import LR_SCHEDULES


def candidates(args: argparse.Namespace, seed: int) -> list[tuple[str, NeuralCostModel]]:
    """One untrained model per configuration, all with ``seed``."""
    common = {
        "hidden": args.hidden,
        "epochs": args.epochs,
        "patience": args.patience,
        "lr": args.lr,
        "batch_size": args.batch_size,
        "dropout": args.dropout,
        "weight_decay": args.weight_decay,
        "lr_schedule": args.lr_schedule,
        "seed": seed,
        "device": args.device,
        "progress": False,
    }
    models: list[tuple[str, NeuralCostModel]] = []
    for loss in args.losses:
        for conv in args.convs:
            models.append((f"gnn/{conv}", GNNCostModel(conv=conv, layers=args.layers, loss=loss, **common)))
        if not args.no_sequence:
            models.append(("sequence/lstm", SequenceCostModel(layers=2, loss=loss, **common)))
    return models


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", type=Path, required=True, help="perfgraph SQLite store")
    parser.add_argument("--cache-dir", type=Path, default=None, help="graph cache (default: beside the db)")
    parser.add_argument("--split", choices=SPLITS, default="fixed")
    parser.add_argument(
        "--convs", type=lambda s: s.split(","), default=list(CONVS), help=f"comma-separated, from {','.join(CONVS)}"
    )
    parser.add_argument(
        "--losses",
        type=lambda s: s.split(","),
        default=["mse", "mse+rank", "mse+listnet"],
        help="comma-separated loss names, e.g. mse,mse+0.5*rank",
    )
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--patience", type=int, default=20)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--dropout", type=float, default=0.0, help="every model's dropout (shipped: 0)")
    parser.add_argument("--weight-decay", type=float, default=0.0, help="Adam's L2 weight decay (shipped: 0)")
    parser.add_argument(
        "--lr-schedule", choices=LR_SCHEDULES, default="constant", help="learning-rate schedule (shipped: constant)"
    )
    parser.add_argument(
        "--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0], help="comma-separated, e.g. 0,1,2"
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (core 1 is for benchmarks)")
    parser.add_argument("--no-sequence", action="store_true", help="skip the LSTM control")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    graphs = list(StageGraphDataset.from_store(args.db, args.cache_dir))
    parts = split_samples(graphs, args.split)
    print(f"{args.db}: {parts.describe()}")
    header = f"{'model':<18} {'loss':<16} {'seed':>4} {'epochs':>6} {'MAPE':>8} {'RMSE(log)':>10} {'tau':>6} {'sec':>7}"
    print(header)
    print("-" * len(header))
    rows = []
    for seed, label, model in _runs(args):
        started = time.perf_counter()
        model.fit(parts.train, parts.valid)
        metrics = evaluate_model(model, parts.valid)
        row = {
            "model": label,
            "loss": model.loss,
            "seed": seed,
            "epochs": len(model.log_),
            "seconds": time.perf_counter() - started,
            **metrics,
        }
        rows.append(row)
        print(
            f"{label:<18} {model.loss:<16} {seed:>4} {row['epochs']:>6} {row['mape']:>8.1f} "
            f"{row['rmse_log']:>10.3f} {row['kendall_tau']:>6.3f} {row['seconds']:>7.1f}",
            flush=True,
        )
    summary = summarize(rows)
    if len(args.seeds) > 1:
        print(f"\nmean +- standard deviation over seeds {','.join(map(str, args.seeds))}")
        print(f"{'model':<18} {'loss':<16} {'MAPE':>13} {'RMSE(log)':>15} {'tau':>15}")
        for entry in summary:
            print(
                f"{entry['model']:<18} {entry['loss']:<16} {_mean_sd(entry, 'mape', 1):>13} "
                f"{_mean_sd(entry, 'rmse_log', 3):>15} {_mean_sd(entry, 'kendall_tau', 3):>15}"
            )
    best = min(summary, key=lambda entry: entry["rmse_log"][0])
    print(f"\nlowest mean validation RMSE(log): {best['model']} with loss {best['loss']}")
    if args.json:
        settings = {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}
        args.json.write_text(json.dumps({"command": settings, "runs": rows, "summary": summary}, indent=1) + "\n")


def _runs(args: argparse.Namespace) -> Iterator[tuple[int, str, NeuralCostModel]]:
    """Every (seed, configuration), seed by seed, so that a cut-short run has whole seeds."""
    for seed in args.seeds:
        for label, model in candidates(args, seed):
            yield seed, label, model


def summarize(rows: list[dict]) -> list[dict]:
    """Per (model, loss): ``[mean, standard deviation]`` of each metric over its seeds."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["model"], row["loss"]), []).append(row)
    summary = []
    for (model, loss), runs in groups.items():
        entry: dict = {"model": model, "loss": loss, "seeds": len(runs)}
        for key in ("mape", "rmse_log", "kendall_tau"):
            values = [run[key] for run in runs]
            entry[key] = [statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0]
        summary.append(entry)
    return summary


def _mean_sd(entry: dict, key: str, digits: int) -> str:
    mean, sd = entry[key]
    return f"{mean:.{digits}f} +- {sd:.{digits}f}"


if __name__ == "__main__":
    main()
