"""Our trained Adams2019 network, exported as Halide ``.weights``, drives Halide's own search.

The real check runs Halide's Adams2019 autoscheduler (beam 1) with the exported file and compares
the cost Halide prints for the schedule it chose with our network's prediction for the featurization
Halide returns for that schedule.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from perfgraph.cli import main
from perfgraph.data.records import Sample
from perfgraph.features.layout import FEATURES_PER_STAGE, NUM_EDGE_FEATURES
from perfgraph.models.checkpoint import CheckpointError
from perfgraph.models.halide_net import AdamsNetwork, HalideCostModel
from perfgraph.models.halide_weights import (
    WEIGHT_SHAPES,
    HalideWeights,
    WeightsFormatError,
    export_checkpoint_weights,
    read_halide_weights,
    write_halide_weights,
)
from perfgraph.paths import RETRAINED_WEIGHTS

from .conftest import USER_PIPELINES

REPO = Path(__file__).resolve().parents[1]
HALIDE_CHECKPOINT = REPO / "models" / "halide.pt"
# Halide prints the cost with the default 6 significant digits: agreement can only be checked to that.
PRINTED_RTOL = 1e-5

# Runs in a fresh process: Adams2019 aborts its process on some errors. Argv: uri, weights, out dir,
# then one "seed:dropout:subtiling:parallelism" per candidate.
AUTOSCHEDULE_SCRIPT = """
import sys
import halide as hl
from perfgraph.schedules.autoscheduler import AutoschedulerConfig, benchmark_target, load_adams2019
from perfgraph.workloads.base import build_pipeline

uri, weights, out = sys.argv[1:4]
load_adams2019()
for index, spec in enumerate(sys.argv[4:]):
    seed, dropout, subtiling, parallelism = (int(v) for v in spec.split(":"))
    config = AutoschedulerConfig(
        beam_size=1, random_dropout=dropout, random_dropout_seed=seed,
        disable_subtiling=not subtiling, parallelism=parallelism,
    )
    params = {**config.to_halide_params(), "weights_path": weights}
    built = build_pipeline(uri)
    result = built.pipeline.apply_autoscheduler(benchmark_target(), hl.AutoschedulerParams("Adams2019", params))
    with open(f"{out}/{index}.featurization", "wb") as f:
        f.write(bytes(result.featurization))
"""
# (seed, random_dropout, subtiling, parallelism): random and greedy searches, both search spaces, 1 and 4 cores.
CANDIDATES = ((1, 1, 1, 1), (2, 1, 0, 1), (3, 100, 1, 1), (4, 1, 1, 4))
_COST_LINE = re.compile(r"^Pass 0 of 1, cost: (\S+),", re.MULTILINE)


def random_weights(seed: int = 0) -> HalideWeights:
    rng = np.random.default_rng(seed)
    return HalideWeights({name: rng.standard_normal(shape).astype(np.float32) for name, shape in WEIGHT_SHAPES.items()})


def halide_costs(uri: str, weights: Path, workdir: Path) -> tuple[list[float], list[np.ndarray]]:
    """Halide's printed cost and its featurization (n_stages, 326) for each of CANDIDATES."""
    specs = [":".join(str(v) for v in candidate) for candidate in CANDIDATES]
    completed = subprocess.run(
        [sys.executable, "-c", AUTOSCHEDULE_SCRIPT, uri, str(weights), str(workdir), *specs],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HL_DEBUG_AUTOSCHEDULE": "1", "HL_NUM_THREADS": "1"},
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    # A weights file Halide cannot read is replaced by random weights, with a warning on stdout only.
    assert "WARNING" not in completed.stdout and "Randomizing" not in completed.stdout, completed.stdout
    assert completed.stderr.count(f"Loading weights from {weights} ...") == len(CANDIDATES)
    costs = [float(cost) for cost in _COST_LINE.findall(completed.stderr)]
    assert len(costs) == len(CANDIDATES), completed.stderr[-3000:]
    features = [
        np.fromfile(workdir / f"{index}.featurization", np.float32).reshape(-1, FEATURES_PER_STAGE)
        for index in range(len(CANDIDATES))
    ]
    return costs, features


def our_costs(model: HalideCostModel, features: list[np.ndarray]) -> list[float]:
    """``predict_halide_units`` for each featurization, with ``num_cores`` = the candidate's parallelism."""
    assert model.network_ is not None
    costs = []
    for (_, _, _, parallelism), rows in zip(CANDIDATES, features, strict=True):
        model.network_.num_cores = parallelism
        sample = Sample(
            0, 0, "p", "test", rows, np.zeros((2, 0), np.int64), np.zeros((0, NUM_EDGE_FEATURES), np.float32)
        )
        costs.append(float(model.predict_halide_units([sample])[0]))
    return costs


def test_round_trip_gives_the_same_tensors(tmp_path):
    weights = random_weights()
    read = read_halide_weights(write_halide_weights(tmp_path / "w.weights", weights))
    assert (read.pipeline_features_version, read.schedule_features_version) == (3, 3)
    for name, array in weights.arrays.items():
        np.testing.assert_array_equal(read.arrays[name], array, err_msg=name)


def test_buffers_are_stored_innermost_extent_first(tmp_path):
    # Halide's head1_filter(c, x, y): c varies fastest in memory, then x, then y.
    arrays = {name: np.zeros(shape, np.float32) for name, shape in WEIGHT_SHAPES.items()}
    arrays["head1_filter"][1, 0, 0] = 1.0  # c = 1
    arrays["head1_filter"][0, 1, 0] = 2.0  # x = 1
    data = write_halide_weights(tmp_path / "w.weights", HalideWeights(arrays)).read_bytes()
    head1 = np.frombuffer(data, "<f4", 8 * 40 * 7, offset=16 + 4 * 4)
    assert head1[1] == 1.0 and head1[8] == 2.0


def test_export_writes_the_checkpoint_parameters_bit_for_bit(tmp_path):
    exported = export_checkpoint_weights(HALIDE_CHECKPOINT, tmp_path / "halide.weights")
    model = HalideCostModel.load(HALIDE_CHECKPOINT)
    assert model.network_ is not None
    read = read_halide_weights(exported.path)
    for name, tensor in model.network_.state_dict().items():
        np.testing.assert_array_equal(read.arrays[name], tensor.numpy(), err_msg=name)
    assert exported.num_cores == model.num_cores
    assert exported.ms_per_halide_unit == pytest.approx(np.exp(model.log_scale_))


def test_another_kind_of_checkpoint_is_refused_by_name(tmp_path):
    with pytest.raises(CheckpointError, match=r"gnn\.pt: a 'gnn' checkpoint, expected 'halide'"):
        export_checkpoint_weights(REPO / "models" / "gnn.pt", tmp_path / "gnn.weights")


def test_a_path_halide_would_read_as_a_folder_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"must end in '\.weights'"):
        write_halide_weights(tmp_path / "w.bin", random_weights())


def test_a_truncated_file_is_refused_by_name(tmp_path):
    path = write_halide_weights(tmp_path / "w.weights", random_weights())
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(WeightsFormatError, match=r"w\.weights: file ends inside buffer head1_filter"):
        read_halide_weights(path)


def test_cli_exports_a_halide_checkpoint(tmp_path, capsys):
    out = tmp_path / "halide.weights"
    assert main(["export", "--model", str(HALIDE_CHECKPOINT), "--format", "weights", "--out", str(out)]) == 0
    assert "parallelism=1" in capsys.readouterr().out
    assert (
        out.read_bytes() == export_checkpoint_weights(HALIDE_CHECKPOINT, tmp_path / "again.weights").path.read_bytes()
    )


def test_the_shipped_retrained_weights_are_the_shipped_halide_network(tmp_path):
    """``models/halide.weights`` (the default beam seed of ``perfgraph schedule``) is not stale."""
    fresh = export_checkpoint_weights(HALIDE_CHECKPOINT, tmp_path / "halide.weights").path
    assert RETRAINED_WEIGHTS.read_bytes() == fresh.read_bytes(), (
        "models/halide.weights differs from models/halide.pt: rerun perfgraph export --format weights "
        "--model models/halide.pt --out models/halide.weights"
    )


def test_cli_refuses_weights_export_without_a_model(tmp_path, capsys):
    assert main(["export", "--format", "weights", "--out", str(tmp_path / "w.weights")]) == 2
    assert "--format weights needs --model" in capsys.readouterr().err


@pytest.mark.parametrize("uri", [f"file:{USER_PIPELINES}:blur", "random:4"])
def test_halide_search_with_exported_weights_costs_schedules_as_our_network_does(uri, tmp_path):
    weights = export_checkpoint_weights(HALIDE_CHECKPOINT, tmp_path / "halide.weights").path
    halide, features = halide_costs(uri, weights, tmp_path)
    ours = our_costs(HalideCostModel.load(HALIDE_CHECKPOINT), features)
    np.testing.assert_allclose(halide, ours, rtol=PRINTED_RTOL)


def test_agreement_is_not_an_accident_of_the_checkpoint(tmp_path):
    # Random weights of a fresh network: Halide's costs still equal ours, and differ from the checkpoint's.
    network = AdamsNetwork(generator=torch.Generator().manual_seed(7))
    arrays = {name: tensor.detach().numpy() for name, tensor in network.state_dict().items()}
    weights = write_halide_weights(tmp_path / "random.weights", HalideWeights(arrays))
    halide, features = halide_costs(f"file:{USER_PIPELINES}:blur", weights, tmp_path)
    model = HalideCostModel().load_halide_weights(arrays)
    assert min(halide) > 0  # not every coefficient is a dead ReLU
    np.testing.assert_allclose(halide, our_costs(model, features), rtol=PRINTED_RTOL)
    trained = our_costs(HalideCostModel.load(HALIDE_CHECKPOINT), features)
    assert not np.allclose(halide, trained, rtol=1e-3)
