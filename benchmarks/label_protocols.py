"""A model's test scores split by the timing protocol each label was taken under.

A model evaluated on labels of mixed quality is judged partly on noise. This scores one checkpoint on
the test split of one machine kind, once per label protocol (``Store.label_protocols``) and once for
all quiet protocols together, with the families each group holds (protocol and family go together in
this store: the oldest labels are of the oldest pipelines, so read a gap between groups as label
quality and family at once).

    python benchmarks/label_protocols.py --db data/perfgraph.db --machine intel-xeon-2.50ghz/avx2 \\
        --model models/ensemble.pt
"""

from __future__ import annotations

import argparse
import collections
from pathlib import Path

import numpy as np

from perfgraph.data.store import WINDOW_PROTOCOL, Store
from perfgraph.evaluate.metrics import evaluate_predictions
from perfgraph.features.splits import SPLITS, split_samples
from perfgraph.models.registry import load_model

QUIET = "quiet (all)"


def groups_by_protocol(protocols: list[str]) -> dict[str, list[int]]:
    """Sample indices per label protocol, plus :data:`QUIET`: every label not taken under ``window-v1``.

    >>> groups_by_protocol(["window-v1", "quiet-v3", "quiet-v2", "quiet-v3"])
    {'window-v1': [0], 'quiet-v3': [1, 3], 'quiet (all)': [1, 2, 3], 'quiet-v2': [2]}
    """
    groups: dict[str, list[int]] = {}
    for index, protocol in enumerate(protocols):
        groups.setdefault(protocol, []).append(index)
        if protocol != WINDOW_PROTOCOL:
            groups.setdefault(QUIET, []).append(index)
    return groups


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", type=Path, default=Path("data/perfgraph.db"))
    parser.add_argument("--machine", default=None, help="machine kind (default: the store's largest)")
    parser.add_argument("--model", type=Path, default=Path("models/ensemble.pt"))
    parser.add_argument("--split", choices=SPLITS, default="fixed")
    args = parser.parse_args(argv)
    with Store(args.db) as store:
        test = split_samples(store.samples(machine=args.machine), args.split).test
        label_protocols = store.label_protocols(machine=args.machine)
    predicted = load_model(args.model).predict(test)
    print(f"{args.model} on {args.db} ({test[0].machine_kind}), test split: {len(test)} samples")
    for name, index in groups_by_protocol([label_protocols[s.schedule_id] for s in test]).items():
        ids = np.array([test[i].pipeline_id for i in index])
        measured = np.array([test[i].runtime_ms for i in index])
        scores = evaluate_predictions(predicted[index], measured, ids)
        families = dict(collections.Counter(test[i].family for i in index))
        print(
            f"{name:<12} {len(index):>5} samples {len(set(ids)):>4} pipelines  tau {scores.kendall_tau:.3f}  "
            f"top-1 {scores.top1:.3f}  RMSE(ln) {scores.rmse_log:.3f}  MAPE {scores.mape:.1f}  {families}"
        )


if __name__ == "__main__":
    main()
