"""How good is the ensemble's uncertainty? Coverage of ±1 and ±2 sd, and whether sd tracks the error.

For each part of the split (validation, on which the sd scale was fitted, and test) it prints the
share of measured run times inside the predicted ±1 sd and ±2 sd (68% and 95% for a calibrated
Gaussian), the median sd, the Spearman correlation between sd and the absolute log error (and the
within-pipeline residual error, what ranking sees), and the median absolute log error in each third of
the samples sorted by sd: an informative uncertainty has a rising error from third to third.

    taskset -c 0 .venv/bin/python benchmarks/uncertainty.py --model models/ensemble.pt --db data/perfgraph.db
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scipy import stats

from perfgraph.data.store import Store
from perfgraph.evaluate.metrics import interval_coverage, pipeline_bias_and_residual
from perfgraph.features.splits import SPLITS, split_samples
from perfgraph.models.ensemble import EnsembleCostModel
from perfgraph.models.registry import load_model


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("models/ensemble.pt"))
    parser.add_argument("--db", type=Path, default=Path("data/perfgraph.db"))
    parser.add_argument("--machine", help="machine kind (default: the one with most samples)")
    parser.add_argument("--split", choices=SPLITS, default="fixed")
    args = parser.parse_args(argv)
    model = load_model(args.model)
    if not isinstance(model, EnsembleCostModel):
        raise SystemExit(f"--model {args.model}: a {model.name} checkpoint; this needs an ensemble")
    with Store(args.db) as store:
        parts = split_samples(store.samples(machine=args.machine), args.split)
    print(f"{args.model}: sd scale {model.sigma_scale_:.3f} (fitted on validation)")
    for part in ("valid", "test"):
        samples = getattr(parts, part)
        predicted_ms, sd = model.predict(samples, return_std=True)
        measured_log = np.log([s.runtime_ms for s in samples])
        errors = measured_log - np.log(predicted_ms)
        _, residual = pipeline_bias_and_residual(errors, [s.pipeline_id for s in samples])
        coverage = interval_coverage(np.log(predicted_ms), sd, measured_log)
        thirds = np.digitize(sd, np.quantile(sd, [1 / 3, 2 / 3]))
        by_third = [float(np.median(np.abs(errors[thirds == i]))) for i in range(3)]
        print(
            f"{part:5s} {len(samples):5d} samples: within ±1 sd {coverage['within_1sd']:.3f}, "
            f"±2 sd {coverage['within_2sd']:.3f}; median sd {np.median(sd):.3f}; Spearman(sd, |error|) "
            f"{stats.spearmanr(sd, np.abs(errors))[0]:.3f}, (sd, |residual|) "
            f"{stats.spearmanr(sd, np.abs(residual))[0]:.3f}; median |error| by sd third "
            + " / ".join(f"{value:.3f}" for value in by_third)
        )


if __name__ == "__main__":
    main()
