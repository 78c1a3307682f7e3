"""Compare trained checkpoints on the validation and test pipelines of each machine kind, with bootstrap ratios.

``compare_models.py`` trains its models itself; this scores checkpoints that already exist (the
shipped ensemble against a candidate trained by ``perfgraph train``), so that the rule "keep the shipped
default at whatever wins on validation" can be applied to the checkpoints that would ship. For every
machine kind of the store (or ``--machine``) it prints each checkpoint's scores on that kind's
validation and test samples (split as ``perfgraph train`` splits them), the per-pipeline bias and
within-pipeline residual of the log error, and every pair's error ratio with its pipeline-bootstrap
95% interval (:func:`compare_models.print_ensembles`; a ratio above 1: the first has the lower error).
A deep ensemble also gets its members' scores, mean ± sd, as the seeds of one configuration (one row
per configuration for a mixed ensemble's members, named by what sets them apart: ``member layers=0``).

    python benchmarks/compare_checkpoints.py --db data/perfgraph.db models/ensemble.pt /tmp/ens_dir.pt

``--pool A B`` (repeatable) also scores the *pooled* ensemble of those checkpoints (ensembles or single
neural models): every member of each, averaged in log space as one ensemble averages its members
(:func:`~perfgraph.models.ensemble.pool_ensembles`; named ``pooled(A+B)``). Do two configurations
that err differently, say one better on a pipeline's level and the other on the order within it, do
better together than either alone?

Both checkpoints should have been trained on the same store (or the older one on a subset of it):
a pipeline added to the store after a checkpoint was trained lands in the part its hash says, so the
older checkpoint never saw a newer validation or test pipeline, but it saw fewer training ones. (That
holds for the default ``--split fixed``; ``--split family`` picks validation pipelines among those
present, so a checkpoint trained on several kinds may have trained on what one kind's split calls
validation.) A machine kind with too few pipelines to split is skipped, named.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from compare_models import TABLE_METRICS, print_ensembles, print_table, score, summarize, truth

from perfgraph.data.store import Store
from perfgraph.features.dataset import StageGraphDataset
from perfgraph.features.splits import SPLITS, SplitError, split_samples
from perfgraph.models.base import CostModel
from perfgraph.models.ensemble import EnsembleCostModel, pool_ensembles
from perfgraph.models.registry import load_model


def checkpoint_names(paths: list[Path]) -> list[str]:
    """A distinct name per checkpoint: its file name, or its path where two file names are the same.

    >>> checkpoint_names([Path("models/ensemble.pt"), Path("/tmp/ens_dir.pt")])
    ['ensemble.pt', 'ens_dir.pt']
    >>> checkpoint_names([Path("models/ensemble.pt"), Path("/tmp/ensemble.pt")])
    ['models/ensemble.pt', '/tmp/ensemble.pt']
    """
    names = [path.name for path in paths]
    return [str(path) if names.count(path.name) > 1 else path.name for path in paths]


def member_labels(members: list) -> list[str]:
    """``member`` for each member of one configuration; in a mixed ensemble, ``member`` and the
    hyper-parameters that set the member's configuration apart (the seed aside).

    >>> from perfgraph.models.gnn import GNNCostModel
    >>> member_labels([GNNCostModel(layers=0, seed=0), GNNCostModel(layers=0, seed=1), GNNCostModel(conv="gin-dir")])
    ['member conv=gin layers=0', 'member conv=gin layers=0', 'member conv=gin-dir layers=3']
    >>> member_labels([GNNCostModel(seed=0), GNNCostModel(seed=1)])
    ['member', 'member']
    """
    params = [{k: v for k, v in m.get_params().items() if k != "seed"} for m in members]
    differing = sorted({k for p in params for k in p if any(q.get(k) != p[k] for q in params)})
    return [" ".join(["member", *(f"{k}={p[k]}" for k in differing)]) for p in params]


def checkpoint_runs(model: CostModel, name: str, parts: dict[str, list]) -> list[dict]:
    """One run record for a checkpoint's model (and one per member of an ensemble) with its predictions on each part.

    Records have the shape :mod:`compare_models` reads: ``model`` (``name``), ``seed``, ``predicted_ms``
    per part and the part's scores. Members are named ``<name> member`` (:func:`member_labels`) and
    numbered as seeds.
    """
    members = model.members_ if isinstance(model, EnsembleCostModel) else []
    labelled = [(f"{name} {label}", m) for label, m in zip(member_labels(members), members, strict=True)]
    runs = []
    for seed, (run_name, predictor) in enumerate([(name, model), *labelled]):
        predicted = {part: np.asarray(predictor.predict(graphs), dtype=np.float64) for part, graphs in parts.items()}
        runs.append(
            {
                "model": run_name,
                "seed": seed,
                "epochs": 0,
                "predicted_ms": {part: values.tolist() for part, values in predicted.items()},
                **{part: score(values, truth(parts[part])) for part, values in predicted.items()},
            }
        )
    return runs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", type=Path, nargs="+", help="checkpoints to compare (two or more)")
    parser.add_argument("--db", type=Path, default=Path("data/perfgraph.db"))
    parser.add_argument("--machine", action="append", help="machine kind (repeatable; default: every kind)")
    parser.add_argument("--split", choices=SPLITS, default="fixed")
    parser.add_argument(
        "--pool",
        type=Path,
        nargs="+",
        action="append",
        default=[],
        help="also score these checkpoints pooled (repeatable)",
    )
    args = parser.parse_args(argv)
    if len(set(map(Path.resolve, args.checkpoints))) < 2:
        parser.error("give two or more different checkpoints to compare")
    loaded = {
        path.resolve(): load_model(path) for path in [*args.checkpoints, *(p for pool in args.pool for p in pool)]
    }
    models = {
        name: loaded[path.resolve()]
        for name, path in zip(checkpoint_names(args.checkpoints), args.checkpoints, strict=True)
    }
    for pool in args.pool:
        name = "pooled(" + "+".join(checkpoint_names(pool)) + ")"
        models[name] = pool_ensembles([loaded[path.resolve()] for path in pool])
    with Store(args.db) as store:
        kinds = args.machine or list(store.samples_by_machine_kind())
        samples = {kind: store.samples(machine=kind) for kind in kinds}
    for kind, kind_samples in samples.items():
        try:
            split = split_samples(kind_samples, args.split)
        except SplitError as error:
            print(f"\n=== {kind}: skipped ({error})")
            continue
        parts = {
            "valid": list(StageGraphDataset.from_samples(split.valid)),
            "test": list(StageGraphDataset.from_samples(split.test)),
        }
        print(
            f"\n=== {kind}: valid {len(parts['valid'])} samples of {len({s.pipeline_id for s in split.valid})} "
            f"pipelines, test {len(parts['test'])} of {len({s.pipeline_id for s in split.test})}"
        )
        runs = [run for name, model in models.items() for run in checkpoint_runs(model, name, parts)]
        summary = summarize(runs)
        print_table(summary, "valid", TABLE_METRICS, "validation (members: mean ± sd)")
        print_table(summary, "test", TABLE_METRICS, "test (members: mean ± sd)")
        whole = [run for run in runs if " member" not in run["model"]]
        print_ensembles(whole, {part: truth(graphs) for part, graphs in parts.items()})


if __name__ == "__main__":
    main()
