"""Where the shipped dataset and models live (inside the repository checkout)."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = REPO_ROOT / "data"
DEFAULT_DB = DATA_DIR / "perfgraph.db"
DEFAULT_SHARDS = DATA_DIR / "shards"
MODELS_DIR = REPO_ROOT / "models"
# models/halide.pt as Adams2019 .weights, the default seed of `perfgraph schedule --beam-seed`; made by
# `perfgraph export --format weights --model models/halide.pt --out models/halide.weights`
RETRAINED_WEIGHTS = MODELS_DIR / "halide.weights"
