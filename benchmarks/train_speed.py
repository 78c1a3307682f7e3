"""How fast does the neural cost model train: seconds per epoch per 10,000 samples, and peak memory.

The goal (issue 16) is an epoch over 50,000 samples in under a minute on a CPU. This trains the
shipped GNN configuration (:class:`~perfgraph.models.gnn.GNNCostModel` with its defaults: GIN, 3
layers, 64 channels, batches of 64 that keep pipelines together, ``mse+rank``) with the one training
loop, :func:`~perfgraph.models.training.train_network`, for a few epochs on the store's samples of
one machine kind, once per configuration: the CPU with each of ``--threads`` (``torch.set_num_threads``)
and, with ``--device cuda``, the GPU. Nothing is validated, so an epoch's time (the loop's own
``seconds``) is the training pass alone; the first epoch is reported apart (warm-up) and the others'
median is scaled to 10,000 and 50,000 samples.

Memory: the peak resident set of the process (``ru_maxrss``; it includes the samples and graphs,
and never goes down, so later rows read at least the earlier ones' peak) and, on the GPU,
``torch.cuda.max_memory_allocated`` of each configuration.

    taskset -c 0 .venv/bin/python benchmarks/train_speed.py --db data/perfgraph.db --samples 5000 --epochs 3
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

from perfgraph.data.store import Store
from perfgraph.features.dataset import StageGraphDataset
from perfgraph.models.gnn import GNNCostModel
from perfgraph.models.neural import NeuralCostModel
from perfgraph.models.sequence import SequenceCostModel
from perfgraph.paths import DEFAULT_DB

MODELS: dict[str, type[NeuralCostModel]] = {"gnn": GNNCostModel, "sequence": SequenceCostModel}


def load_graphs(db: Path, machine: str | None, limit: int | None) -> tuple[list, str, float]:
    """The first ``limit`` measured samples of ``machine`` (default: the kind with most) as graphs."""
    started = time.perf_counter()
    with Store(db) as store:
        machine = machine or store.default_machine_kind()
        samples = store.samples(machine=machine)
    graphs = list(StageGraphDataset.from_samples(samples[:limit] if limit else samples))
    return graphs, machine, time.perf_counter() - started


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def time_epochs(model_name: str, graphs: list, device: str, threads: int, epochs: int, seed: int) -> dict:
    """Train a fresh model for ``epochs`` epochs (no early stop, nothing validated) and time each."""
    torch.set_num_threads(threads)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    model = MODELS[model_name](epochs=epochs, patience=epochs, device=device, seed=seed, progress=False)
    started = time.perf_counter()
    model.fit(graphs, [])
    fit_s = time.perf_counter() - started
    seconds = [entry["seconds"] for entry in model.log_]
    steady = statistics.median(seconds[1:]) if len(seconds) > 1 else seconds[0]
    return {
        "device": device,
        "threads": threads,
        "samples": len(graphs),
        "epochs": len(seconds),
        "first_epoch_s": seconds[0],
        "epoch_s": steady,
        "epoch_s_per_10k": steady * 10_000 / len(graphs),
        "epoch_s_per_50k": steady * 50_000 / len(graphs),
        "fit_s": fit_s,  # epochs plus normalising the graphs
        "peak_rss_mb": peak_rss_mb(),
        "peak_cuda_mb": torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None,
    }


def format_table(rows: list[dict]) -> str:
    lines = [
        f"{'device':6} {'threads':>7} {'samples':>7} {'1st epoch s':>11} {'epoch s':>8} "
        f"{'s / 10k':>8} {'s / 50k':>8} {'peak RSS MB':>11} {'peak CUDA MB':>12}"
    ]
    for row in rows:
        cuda = "-" if row["peak_cuda_mb"] is None else f"{row['peak_cuda_mb']:.0f}"
        lines.append(
            f"{row['device']:6} {row['threads']:>7} {row['samples']:>7} {row['first_epoch_s']:>11.2f} "
            f"{row['epoch_s']:>8.2f} {row['epoch_s_per_10k']:>8.2f} {row['epoch_s_per_50k']:>8.1f} "
            f"{row['peak_rss_mb']:>11.0f} {cuda:>12}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", type=Path, default=DEFAULT_DB)
    parser.add_argument("--machine", help="machine kind whose samples to train on (default: the one with most)")
    parser.add_argument("--samples", type=int, help="train on the first N samples (default: all of the kind)")
    parser.add_argument("--model", choices=sorted(MODELS), default="gnn")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per configuration (the first is warm-up)")
    parser.add_argument("--threads", default="1,2", help="CPU thread counts to time, comma-separated")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cuda: time the GPU too")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the rows to this file")
    args = parser.parse_args(argv)

    graphs, machine, load_s = load_graphs(args.db, args.machine, args.samples)
    print(f"{machine}: {len(graphs)} samples as graphs in {load_s:.1f} s; model {args.model}", file=sys.stderr)
    rows = [
        time_epochs(args.model, graphs, "cpu", int(threads), args.epochs, args.seed)
        for threads in args.threads.split(",")
    ]
    if args.device == "cuda":
        rows.append(time_epochs(args.model, graphs, "cuda", torch.get_num_threads(), args.epochs, args.seed))
    print(format_table(rows))
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "load_s": load_s, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
