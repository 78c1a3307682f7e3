"""Machine transfer: a model trained on machine A, adapted with few samples of machine B, against B alone.

The store holds the same schedules measured on two CPU kinds (``perfgraph collect`` on a new machine
kind measures the stored deterministic schedules there too). For machine B's test pipelines (the
usual split by pipeline), this prints the within-pipeline Kendall tau, top-1 and RMSE(ln) of:

* ``A only``: the model trained on A (``--model``, default the shipped GNN), not adapted (N = 0);
* ``A + N of B``: that model fine-tuned on N samples of B's training pipelines (``few_shot_samples``);
* ``B only``: the same architecture trained from scratch on the same N samples of B;
* with ``--joint``, ``A + N joint``: the same architecture made machine-aware
  (``machine_features=True``) and trained from scratch on A's training pipelines *and* the N
  samples of B, each sample with its machine's features: one model for both machines. Its early
  stopping watches A's validation pipelines only (no B data beyond the N). The same model is also
  scored on A's test pipelines (``... on A``), to show it still serves A.

N runs over ``--shots`` (default 32, 128, 512 and every B training sample), each with ``--seeds``
draws of the N samples; mean +- sd over seeds. The issue's goal: with <= 5% of B's data, >= 95% of
the full-B Kendall tau.

    taskset -c 0 .venv/bin/python benchmarks/transfer.py --target intel-xeon-2.50ghz/avx2 --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
from pathlib import Path

import numpy as np

from perfgraph.cli import open_store
from perfgraph.evaluate.metrics import evaluate_predictions
from perfgraph.features.splits import split_samples
from perfgraph.models.adapt import adapt, few_shot_samples
from perfgraph.models.registry import load_model, make_model
from perfgraph.paths import MODELS_DIR

METRICS = ("kendall_tau", "top1", "rmse_log")


def evaluate_model(model, test) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """The ``perfgraph evaluate`` scores of ``model`` on ``test`` (within-pipeline tau, top-1, RMSE(ln))."""
    measured = np.array([s.runtime_ms for s in test])
    return evaluate_predictions(model.predict(test), measured, np.array([s.pipeline_id for s in test])).as_dict()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", type=Path)
    parser.add_argument("--target", required=True, help="machine kind B")
    parser.add_argument("--model", type=Path, default=MODELS_DIR / "gnn.pt", help="trained on machine A")
    parser.add_argument("--shots", default="32,128,512,all")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=30, help="fine-tuning epochs")
    parser.add_argument("--scratch-epochs", type=int, default=200, help="epochs of the B-only model")
    parser.add_argument("--joint", action="store_true", help="also train machine-aware models on A + N of B")
    parser.add_argument("--joint-epochs", type=int, default=150, help="epochs of a joint model (early stopping)")
    parser.add_argument("--source", help="machine kind A for --joint (default: the kind with most samples)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    store = open_store(args.db)
    split = split_samples(store.samples(machine=args.target))
    train, test = split.train, split.test
    print(
        f"machine {args.target}: {len(train)} training samples ({len({s.pipeline_id for s in train})} pipelines), "
        f"{len(test)} test samples ({len({s.pipeline_id for s in test})} pipelines)"
    )
    base = load_model(args.model)
    seeds = [int(s) for s in args.seeds.split(",")]
    rows: dict[str, dict[str, list[float]]] = {}

    def record(row: str, metrics: dict[str, float]) -> None:
        for name in METRICS:
            rows.setdefault(row, {}).setdefault(name, []).append(metrics[name])

    record("A only (N=0)", evaluate_model(base, test))
    if args.joint:
        source = args.source or store.default_machine_kind()
        if source == args.target:
            parser.error(f"--joint: machine A ({source}) must differ from --target; pass --source")
        source_split = split_samples(store.samples(machine=source))
        print(f"machine {source} (A): {len(source_split.train)} training samples, {len(source_split.test)} test")
        record("A only (N=0), on A", evaluate_model(base, source_split.test))
    for shots in args.shots.split(","):
        n = len(train) if shots == "all" else int(shots)
        label = f"{n} ({100 * n / max(len(train), 1):.1f}% of B)"
        for seed in seeds if n < len(train) else seeds[:1]:
            picked = few_shot_samples(train, n, seed=seed)
            adapted = adapt(copy.deepcopy(base), picked, epochs=args.epochs)
            record(f"A + {label}", evaluate_model(adapted, test))
            scratch = make_model(
                base.name, **{**base.get_params(), "seed": seed, "epochs": args.scratch_epochs, "progress": False}
            )
            scratch.fit(picked, [])
            record(f"B only, {label}", evaluate_model(scratch, test))
            if args.joint:
                params = {**base.get_params(), "seed": seed, "epochs": args.joint_epochs, "progress": False}
                joint = make_model(base.name, **{**params, "machine_features": True})
                joint.fit([*source_split.train, *picked], source_split.valid)
                record(f"A + {label} joint", evaluate_model(joint, test))
                record(f"A + {label} joint, on A", evaluate_model(joint, source_split.test))
            print(f"  N={n} seed {seed} done", flush=True)
    print(f"\n{'model':<40} " + " ".join(f"{m:>18}" for m in METRICS))
    for row, values in rows.items():
        cells = [
            f"{statistics.mean(v):.3f} +- {statistics.stdev(v):.3f}" if len(v) > 1 else f"{v[0]:.3f}"
            for v in (values[m] for m in METRICS)
        ]
        print(f"{row:<40} " + " ".join(f"{c:>18}" for c in cells))
    if args.json:
        args.json.write_text(json.dumps({"target": args.target, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
