"""Halide's own cost-model trainer (``adams2019_retrain_cost_model``) and the metric it reports.

Running the real binary on the same ``.sample`` files is the reference our PyTorch re-implementation
(:mod:`perfgraph.models.halide_net`) is checked against. This module sits at the edge: it writes and
reads Halide's ``.weights`` format, runs the subprocess and parses what it prints.

Halide's trainer, as read in ``src/autoschedulers/adams2019/retrain_cost_model.cpp``:

* reads ``.sample`` paths from stdin (whitespace-separated, so paths must not contain whitespace);
* skips pipelines with fewer than 8 distinct schedules, merges schedules with identical features;
* when there are more than 16 pipelines, holds out those whose pipeline-feature hash ``& 7 == 0``
  (:func:`is_halide_validation_pipeline`);
* prints one ``Loss: L  Rate: T V`` line per epoch, where L is the mean per-pipeline loss and T and
  V the training and validation correct-ordering rates. All three are **running averages**: the
  sums behind them are multiplied by 0.9 after every epoch, so epoch e mixes in earlier epochs.
* seeds its random weights and its shuffling from the wall clock (``time(NULL)``): runs are not
  reproducible unless initial weights are given.
"""

from __future__ import annotations

import math
import os
import re
import struct
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from perfgraph.features.layout import NUM_PIPELINE_FEATURE_ROWS, NUM_SCALAR_TYPES, PIPELINE_SLICE

#: Halide counts a schedule as "clearly slower" than the pipeline's fastest above this run-time ratio.
CORRECT_ORDERING_MIN_RATIO = 1.3
_WEIGHTS_SIGNATURE = 0x68776631  # 'hwf1'
# Buffer names in file order, with Halide's extents (innermost first).
_WEIGHT_BUFFERS: tuple[tuple[str, tuple[int, ...]], ...] = (
    ("head1_filter", (8, 40, 7)),
    ("head1_bias", (8,)),
    ("head2_filter", (24, 39)),
    ("head2_bias", (24,)),
    ("conv1_filter", (32, 32)),
    ("conv1_bias", (32,)),
)
#: PipelineFeatures::version() and ScheduleFeatures::version() of the halide 21 wheel.
HALIDE_FEATURE_VERSIONS = (3, 3)
_EPOCH_LINE = re.compile(r"^Loss:\s+(\S+)\s+Rate:\s+(\S+)\s+(\S+)")


def correct_ordering_rate(
    predicted: Sequence[float] | np.ndarray,
    measured: Sequence[float] | np.ndarray,
    pipeline_ids: Sequence[int] | np.ndarray,
) -> float:
    """Halide's "correct ordering" rate: how often a clearly slower schedule is predicted slower.

    Within each pipeline, every schedule more than 1.3x slower than the pipeline's fastest measured
    schedule is compared with that fastest one; the pair is correct when its prediction is greater
    than or equal to the fastest one's. Counts are pooled over pipelines (not averaged), as in
    ``retrain_cost_model.cpp``. Returns nan when no pair qualifies.

    >>> correct_ordering_rate([1.0, 3.0, 0.5], [1.0, 2.0, 1.2], [7, 7, 7])
    1.0
    """
    predicted, measured = np.asarray(predicted, np.float64), np.asarray(measured, np.float64)
    pipeline_ids = np.asarray(pipeline_ids)
    if not predicted.shape == measured.shape == pipeline_ids.shape or predicted.ndim != 1:
        raise ValueError(
            f"predicted, measured and pipeline_ids must be 1-D of one length, got shapes "
            f"{predicted.shape}, {measured.shape}, {pipeline_ids.shape}"
        )
    good = bad = 0
    for pipeline in np.unique(pipeline_ids):
        members = np.flatnonzero(pipeline_ids == pipeline)
        reference = members[np.argmin(measured[members])]
        slower = members[measured[members] / measured[reference] > CORRECT_ORDERING_MIN_RATIO]
        correct = int(np.count_nonzero(predicted[slower] >= predicted[reference]))
        good += correct
        bad += len(slower) - correct
    return good / (good + bad) if good + bad else math.nan


def halide_pipeline_hash(features: np.ndarray) -> int:
    """The 64-bit hash Halide's trainer computes over a pipeline's (n_stages, 40, 7) pipeline features.

    Halide hashes the float bits in its buffer's memory order (row fastest, then type, then stage)
    with boost's ``hash_combine``.
    """
    rows = features[:, PIPELINE_SLICE].reshape(-1, NUM_PIPELINE_FEATURE_ROWS, NUM_SCALAR_TYPES)[:, 1:, :]
    bits = np.ascontiguousarray(rows.transpose(0, 2, 1), dtype=np.float32).view(np.uint32).ravel()
    mask = (1 << 64) - 1
    h = 0
    for b in bits.tolist():
        h ^= (b + 0x9E3779B9 + (h << 6) + (h >> 2)) & mask
    return h


def is_halide_validation_pipeline(features: np.ndarray) -> bool:
    """Whether Halide's trainer holds this pipeline out (it only does so with more than 16 pipelines)."""
    return halide_pipeline_hash(features) & 7 == 0


def read_halide_weights(path: str | Path) -> dict[str, np.ndarray]:
    """Read a Halide ``.weights`` file into arrays shaped like ``AdamsNetwork``'s parameters.

    Halide's buffers are stored innermost extent first; they are transposed so that ``[c, x, y]``
    indexing means the same as in the generator.
    """
    data = Path(path).read_bytes()
    signature, _pipeline_version, _schedule_version, count = struct.unpack_from("<4I", data, 0)
    if signature != _WEIGHTS_SIGNATURE or count != len(_WEIGHT_BUFFERS):
        raise ValueError(f"{path}: not a Halide Adams2019 .weights file (signature {signature:#x}, {count} buffers)")
    offset, arrays = 16, {}
    for name, extents in _WEIGHT_BUFFERS:
        (dims,) = struct.unpack_from("<I", data, offset)
        found = struct.unpack_from(f"<{dims}I", data, offset + 4)
        if found != extents:
            raise ValueError(f"{path}: buffer {name} has extents {found}, expected {extents}")
        offset += 4 + 4 * dims
        size = math.prod(extents)
        flat = np.frombuffer(data, "<f4", size, offset)
        offset += 4 * size
        arrays[name] = np.ascontiguousarray(flat.reshape(extents[::-1]).transpose()).astype(np.float32)
    return arrays


def write_halide_weights(path: str | Path, arrays: dict[str, np.ndarray]) -> None:
    """Write arrays (as :func:`read_halide_weights` returns them) as a Halide ``.weights`` file."""
    chunks = [struct.pack("<4I", _WEIGHTS_SIGNATURE, *HALIDE_FEATURE_VERSIONS, len(_WEIGHT_BUFFERS))]
    for name, extents in _WEIGHT_BUFFERS:
        array = np.asarray(arrays[name], np.float32)
        if array.shape != extents:
            raise ValueError(f"arrays[{name!r}] must have shape {extents}, got {array.shape}")
        chunks.append(struct.pack(f"<{len(extents) + 1}I", len(extents), *extents))
        chunks.append(np.ascontiguousarray(array.transpose()).astype("<f4").tobytes())
    Path(path).write_bytes(b"".join(chunks))


@dataclass(frozen=True)
class HalideTrainerResult:
    """What one run of Halide's trainer reported, one entry per epoch (running averages, see module doc)."""

    losses: tuple[float, ...]
    train_correct_ordering: tuple[float, ...]
    valid_correct_ordering: tuple[float, ...]  # nan when Halide held out no pipeline (16 or fewer)
    weights_path: Path
    log_path: Path
    distinct_pipelines: int


def retrain_binary() -> Path:
    """Path of ``adams2019_retrain_cost_model`` in the installed halide wheel."""
    import halide  # imported here: only this edge function needs the wheel

    return Path(halide.install_dir()) / "bin" / "adams2019_retrain_cost_model"


def run_halide_retrain(
    sample_paths: Sequence[Path],
    epochs: int,
    workdir: Path,
    num_cores: int = 1,
    lr: float = 0.0001,
    initial_weights: Path | None = None,
    timeout_s: float | None = None,
) -> HalideTrainerResult:
    """Train Halide's cost model with Halide's own binary on ``.sample`` files.

    Without ``initial_weights`` the binary starts from random weights (``--randomize_weights``,
    seeded by the clock). ``num_cores`` is the core count the model reasons about and also caps the
    Halide runtime's thread pool. Writes ``trained.weights``, ``retrain.log``, ``best_benchmark.txt`` and
    ``best_schedule.h`` into ``workdir``.
    """
    paths = [Path(p) for p in sample_paths]
    if not paths:
        raise ValueError("sample_paths must not be empty")
    for path in paths:
        if path.suffix != ".sample" or any(c.isspace() for c in str(path)):
            raise ValueError(
                f"sample_paths: {path} must end in .sample and contain no whitespace "
                "(Halide reads whitespace-separated paths from stdin)"
            )
        if not path.is_file():
            raise ValueError(f"sample_paths: {path} does not exist")
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
    if not isinstance(num_cores, int) or num_cores < 1:
        raise ValueError(f"num_cores must be a positive integer, got {num_cores!r}")
    binary = retrain_binary()
    if not binary.is_file():
        raise FileNotFoundError(f"Halide's trainer is missing from the halide wheel: {binary}")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    weights_path, log_path = workdir / "trained.weights", workdir / "retrain.log"
    command = [
        str(binary),
        f"--epochs={epochs}",
        f"--rates={lr}",
        f"--num_cores={num_cores}",
        f"--weights_out={weights_path}",
        f"--best_benchmark={workdir / 'best_benchmark.txt'}",
        f"--best_schedule={workdir / 'best_schedule.h'}",
    ]
    command += [f"--initial_weights={initial_weights}"] if initial_weights else ["--randomize_weights=1"]
    env = dict(os.environ, HL_NUM_THREADS=str(num_cores))
    completed = subprocess.run(
        command,
        input="\n".join(str(p.absolute()) for p in paths) + "\n",
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout_s,
        check=False,
    )
    log_path.write_text(completed.stdout + ("\n--- stderr ---\n" + completed.stderr if completed.stderr else ""))
    if completed.returncode != 0:
        raise RuntimeError(
            f"{binary.name} exited with status {completed.returncode}; see {log_path}:\n"
            f"{(completed.stdout + completed.stderr)[-2000:]}"
        )
    return parse_retrain_output(completed.stdout, weights_path, log_path)


def parse_retrain_output(stdout: str, weights_path: Path, log_path: Path) -> HalideTrainerResult:
    """Pull the per-epoch loss and correct-ordering rates out of the trainer's stdout."""
    losses, train_rates, valid_rates = [], [], []
    distinct = 0
    for line in stdout.splitlines():
        if line.startswith("Distinct pipelines:"):
            distinct = int(line.split(":")[1])
        match = _EPOCH_LINE.match(line)
        if match:
            loss, train, valid = (_halide_float(v) for v in match.groups())
            losses.append(loss)
            train_rates.append(train)
            valid_rates.append(valid)
    if not losses:
        raise RuntimeError(
            f"Halide's trainer printed no epoch lines (too few pipelines with >= 8 schedules?); see {log_path}"
        )
    return HalideTrainerResult(tuple(losses), tuple(train_rates), tuple(valid_rates), weights_path, log_path, distinct)


def _halide_float(text: str) -> float:
    return math.nan if text.lstrip("-+").lower() == "nan" else float(text)
