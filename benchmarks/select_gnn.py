"""Choose the GNN's convolution and loss on the validation split of a real dataset.

Trains one GNN per (conv, loss) pair -- plus the LSTM sequence control per loss -- on the training
pipelines, with early stopping on the validation pipelines, and prints one row per model with the
validation metrics that matter for a cost model: MAPE, RMSE of the log run time, and the mean Kendall
tau of the schedules within each pipeline (what a schedule search relies on). The test split is not
touched: pick on validation, report on test with ``perfgraph train`` / ``perfgraph evaluate``.

    taskset -c 0 .venv/bin/python benchmarks/select_gnn.py --db data/perfgraph.db --epochs 200

Graphs are read once through the cached :class:`~perfgraph.features.dataset.StageGraphDataset`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from perfgraph.features.dataset import StageGraphDataset
from perfgraph.features.splits import SPLITS, split_samples
from perfgraph.models.gnn import GNNCostModel
from perfgraph.models.neural import NeuralCostModel
from perfgraph.models.sequence import SequenceCostModel
from perfgraph.models.stage_gnn import CONVS
from perfgraph.models.train import evaluate_model


def candidates(args: argparse.Namespace) -> list[tuple[str, NeuralCostModel]]:
    common = {
        "hidden": args.hidden,
        "epochs": args.epochs,
        "patience": args.patience,
        "lr": args.lr,
        "batch_size": args.batch_size,
        "seed": args.seed,
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
        default=["mse", "mse+rank", "relative"],
        help="comma-separated loss names, e.g. mse,mse+0.5*rank",
    )
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--patience", type=int, default=20)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (core 1 is for benchmarks)")
    parser.add_argument("--no-sequence", action="store_true", help="skip the LSTM control")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    graphs = list(StageGraphDataset.from_store(args.db, args.cache_dir))
    parts = split_samples(graphs, args.split)
    print(f"{args.db}: {parts.describe()}")
    header = f"{'model':<18} {'loss':<16} {'epochs':>6} {'MAPE':>8} {'RMSE(log)':>10} {'tau':>6} {'sec':>7}"
    print(header)
    print("-" * len(header))
    rows = []
    for label, model in candidates(args):
        started = time.perf_counter()
        model.fit(parts.train, parts.valid)
        metrics = evaluate_model(model, parts.valid)
        row = {
            "model": label,
            "loss": model.loss,
            "epochs": len(model.log_),
            "seconds": time.perf_counter() - started,
            **metrics,
        }
        rows.append(row)
        print(
            f"{label:<18} {model.loss:<16} {row['epochs']:>6} {row['mape']:>8.1f} {row['rmse_log']:>10.3f} "
            f"{row['kendall_tau']:>6.3f} {row['seconds']:>7.1f}",
            flush=True,
        )
    best = min(rows, key=lambda r: r["rmse_log"])
    print(f"\nlowest validation RMSE(log): {best['model']} with loss {best['loss']}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
