"""Check the PyTorch re-implementation of Halide's Adams2019 network against Halide's own trainer.

Both are trained on the same pipelines and scored with Halide's correct-ordering rate on the same
held-out pipelines:

1. the ``.sample`` export of the training split goes to Halide's ``adams2019_retrain_cost_model``,
   which holds out the pipelines whose feature hash & 7 == 0 (it only holds out with > 16 pipelines);
2. our ``HalideCostModel`` (Halide's loss) is fitted on the same training pipelines minus those;
3. both networks are scored on the held-out pipelines. Halide's weights are scored with our forward
   pass, which the tests check reproduces Halide's own predictions; Halide's printed (decayed running
   average) rate is reported beside it.

    python benchmarks/halide_trainer.py [--db D] [--epochs N] [--out models/halide_trainer.json]

``perfgraph evaluate`` shows the recorded rate as the ``halide_trainer`` row.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from perfgraph.cli import open_store
from perfgraph.data.export import export_samples
from perfgraph.features.splits import split_samples
from perfgraph.models.halide_net import HalideCostModel
from perfgraph.models.halide_trainer import (
    correct_ordering_rate,
    is_halide_validation_pipeline,
    read_halide_weights,
    run_halide_retrain,
)
from perfgraph.paths import MODELS_DIR


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", type=Path)
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--out", type=Path, default=MODELS_DIR / "halide_trainer.json")
    args = parser.parse_args()

    store = open_store(args.db)
    split = split_samples(store.samples(), "fixed")
    held_out = {s.pipeline_id for s in split.train if is_halide_validation_pipeline(s.features)}
    if not held_out:
        raise SystemExit("Halide's trainer holds out no pipeline of this training split: collect more pipelines")
    with tempfile.TemporaryDirectory() as work:
        paths = export_samples(store, Path(work) / "samples", {s.pipeline_id for s in split.train})
        halide = run_halide_retrain(paths, epochs=args.epochs, workdir=Path(work), num_cores=1)
        trained_by_halide = HalideCostModel().load_halide_weights(read_halide_weights(halide.weights_path))
    validation = [s for s in split.train if s.pipeline_id in held_out]
    ours = HalideCostModel(loss="halide").fit([s for s in split.train if s.pipeline_id not in held_out], split.valid)

    def rate(model: HalideCostModel) -> float:
        predicted = model.predict_halide_units(validation)
        return correct_ordering_rate(
            predicted, np.array([s.runtime_ms for s in validation]), [s.pipeline_id for s in validation]
        )

    result = {
        "command": f"python benchmarks/halide_trainer.py --epochs {args.epochs}",
        "training_pipelines": len({s.pipeline_id for s in split.train}) - len(held_out),
        "validation_pipelines": len(held_out),
        "validation_samples": len(validation),
        "halide_trainer_correct_ordering": rate(trained_by_halide),
        "halide_trainer_printed_correct_ordering": halide.valid_correct_ordering[-1],
        "reimplementation_correct_ordering": rate(ours),
        "epochs": args.epochs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
