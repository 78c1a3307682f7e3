"""Does calibrating for MAPE change the comparison? Every model's MAPE, raw and scaled by a factor fitted on validation.

A model trained on the squared log error predicts the median run time; the point that minimises the
mean absolute percentage error lies below it (:func:`~perfgraph.evaluate.metrics.mape_factor`). For every
checkpoint this fits that one factor on the validation pipelines, applies it to the test pipelines,
and prints MAPE and RMSE(ln) before and after, and the MAPE ratios against Halide's network and the
pack-sum XGBoost (the paper's two baselines) with every model raw and with every model calibrated.
The factor leaves the ranking metrics (Kendall tau, top-k) unchanged.

    taskset -c 0 .venv/bin/python benchmarks/mape_calibration.py --db data/perfgraph.db [--machine KIND]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from perfgraph.data.store import Store
from perfgraph.evaluate.metrics import mape, mape_factor, rmse_log
from perfgraph.features.splits import SPLITS, split_samples
from perfgraph.models.base import measured_runtimes
from perfgraph.models.registry import load_model

#: The kind the shipped models were evaluated on (the README's table), whatever the store grows.
DEFAULT_MACHINE = "amd-epyc/znver4-avx2"
#: The paper's baselines, the denominators of the MAPE ratios (the shipped checkpoints' names).
BASELINES = ("halide", "xgboost")


def calibrate(model_path: Path, valid: list, test: list) -> dict:
    """MAPE and RMSE(ln) on ``test`` before and after the factor fitted on ``valid``."""
    model = load_model(model_path)
    valid_predicted, valid_measured = model.predict(valid), measured_runtimes(valid)
    factor = mape_factor(valid_predicted, valid_measured)
    predicted, measured = model.predict(test), measured_runtimes(test)
    return {
        "factor": factor,
        "valid_mape": mape(valid_predicted, valid_measured),
        "valid_mape_calibrated": mape(factor * valid_predicted, valid_measured),
        "test_mape": mape(predicted, measured),
        "test_mape_calibrated": mape(factor * predicted, measured),
        "test_rmse_log": rmse_log(predicted, measured),
        "test_rmse_log_calibrated": rmse_log(factor * predicted, measured),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", type=Path, default=Path("data/perfgraph.db"))
    parser.add_argument("--models", type=Path, nargs="*", help="checkpoints (default: models/*.pt)")
    parser.add_argument("--machine", default=DEFAULT_MACHINE, help=f"machine kind (default {DEFAULT_MACHINE})")
    parser.add_argument("--split", choices=SPLITS, default="fixed")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args(argv)
    paths = args.models or sorted(Path("models").glob("*.pt"))
    with Store(args.db) as store:
        parts = split_samples(store.samples(machine=args.machine), args.split)
    print(f"{args.db}: {parts.describe()}")
    rows = {path.stem: calibrate(path, parts.valid, parts.test) for path in paths}
    header = f"{'model':<16}{'factor':>8}{'valid MAPE':>18}{'test MAPE':>18}{'test RMSE(ln)':>18}"
    print(header + "".join(f"{'/ ' + b:>18}" for b in BASELINES if b in rows))
    print("-" * (len(header) + 18 * sum(b in rows for b in BASELINES)))
    for name, row in rows.items():
        cells = (
            f"{name:<16}{row['factor']:>8.3f}"
            f"{row['valid_mape']:>9.1f} ->{row['valid_mape_calibrated']:>6.1f}"
            f"{row['test_mape']:>9.1f} ->{row['test_mape_calibrated']:>6.1f}"
            f"{row['test_rmse_log']:>9.3f} ->{row['test_rmse_log_calibrated']:>6.3f}"
        )
        for baseline in (b for b in BASELINES if b in rows):
            raw = rows[baseline]["test_mape"] / row["test_mape"]
            both = rows[baseline]["test_mape_calibrated"] / row["test_mape_calibrated"]
            cells += f"{raw:>9.2f}x ->{both:>5.2f}x"
        print(cells)
    print("(ratios: the baseline's test MAPE over the model's, both raw -> both calibrated)")
    if args.json:
        args.json.write_text(json.dumps({"split": args.split, "machine": args.machine, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
