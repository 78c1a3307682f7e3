"""Training in two processes under torchrun (gloo on the CPU): one loop, sharded batches, one checkpoint.

One torchrun launch (``tests/distributed_worker.py``, about half a minute: most of it is two
processes importing torch on one core) serves every test of the module.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import distributed as dist

from perfgraph.data.store import Store
from perfgraph.models.distributed import shard_batches
from perfgraph.models.gnn import GNNCostModel
from perfgraph.models.registry import load_model
from perfgraph.models.training import pipeline_batches

WORKER = Path(__file__).with_name("distributed_worker.py")


@pytest.fixture(scope="module")
def two_ranks(tiny_db: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Run the worker on 2 ranks; its output folder, stdout and each rank's record."""
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("this torch has no gloo backend")
    out = tmp_path_factory.mktemp("ddp")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    done = subprocess.run([*command, str(WORKER), str(tiny_db), str(out)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ranks = [json.loads((out / f"rank-{rank}.json").read_text()) for rank in (0, 1)]
    return {"out": out, "stdout": done.stdout, "ranks": ranks}


def training_batches(record: dict, epoch: int) -> list[list[tuple[int, int]]]:
    """The batches (lists of ``(pipeline_id, schedule_id)``) a rank trained on in ``epoch`` (from 1)."""
    batches = [[tuple(key) for key in call["samples"]] for call in record["calls"] if call["training"]]
    per_epoch = len(batches) // len(record["log"])
    return batches[(epoch - 1) * per_epoch : epoch * per_epoch]


def test_the_checkpoint_of_a_two_process_run_loads_with_the_normal_loader_and_predicts(two_ranks, tiny_db):
    path = two_ranks["out"] / "gnn.pt"
    record = torch.load(path, map_location="cpu", weights_only=True)
    model = load_model(path)
    with Store(tiny_db) as store:
        predicted = model.predict(store.samples())
    assert record["format"] == "perfgraph-checkpoint" and record["model_kind"] == "gnn"
    assert len(predicted) == 24 and np.isfinite(predicted).all() and (predicted > 0).all()
    assert [entry["epoch"] for entry in model.log_] == [1, 2]


def test_only_rank_0_prints_and_writes_the_log(two_ranks):
    assert two_ranks["stdout"].count("wrote ") == 1
    log = json.loads((two_ranks["out"] / "gnn.pt.log.json").read_text())
    assert len(log["epochs"]) == 2 and math.isfinite(log["metrics"]["test"]["rmse_log"])


def test_every_batch_of_an_epoch_goes_whole_to_exactly_one_rank(two_ranks):
    first, second = two_ranks["ranks"]
    groups = [pipeline for pipeline, _ in first["order"]]
    # Both ranks shuffle alike (seed 0), as one process would; a batch holds indices into the graphs.
    expected = [
        [tuple(first["order"][i]) for i in batch] for batch in pipeline_batches(groups, 4, np.random.default_rng(0))
    ]
    seen = [training_batches(first, 1), training_batches(second, 1)]
    assert len(expected) == 6 and len(seen[0]) == len(seen[1]) == 3
    assert sorted(seen[0] + seen[1]) == sorted(expected)
    assert {key for batch in seen[0] for key in batch}.isdisjoint(key for batch in seen[1] for key in batch)


def test_the_ranks_end_with_identical_trained_weights_and_logs(two_ranks):
    first, second = two_ranks["ranks"]
    assert first["final_digest"] == second["final_digest"] != first["initial_digest"]
    assert first["log"] == second["log"] and len(first["log"]) == 2
    assert all(entry["valid_loss"] is not None for entry in second["log"])  # rank 0's validation, shared


def test_only_rank_0_validates(two_ranks):
    first, second = two_ranks["ranks"]
    valid_groups = [pipeline for pipeline, _ in first["order"][:8]]  # the worker validates on the first 8 graphs
    assert sum(not call["training"] for call in first["calls"]) == 2 * len(pipeline_batches(valid_groups, 4))
    assert all(call["training"] for call in second["calls"])


@pytest.mark.parametrize("batches", [6, 7, 1])
def test_shards_have_equal_length_and_cover_every_batch(batches):
    shards = [shard_batches(list(range(batches)), rank, 4) for rank in range(4)]
    padded = math.ceil(batches / 4) * 4
    assert {len(shard) for shard in shards} == {padded // 4}
    assert sorted(b for shard in shards for b in shard) == sorted(i % batches for i in range(padded))


def test_one_process_gets_every_batch_in_order():
    assert shard_batches([[3, 1], [2]], rank=0, world_size=1) == [[3, 1], [2]]


def test_a_rank_outside_the_world_is_refused():
    with pytest.raises(ValueError, match="rank must be in"):
        shard_batches([[0]], rank=2, world_size=2)


@pytest.mark.skipif(torch.cuda.is_available(), reason="about machines without CUDA")
def test_a_model_trained_on_cuda_loads_and_predicts_on_a_machine_without_it(real_samples, tmp_path):
    model = GNNCostModel(hidden=8, layers=1, epochs=1, device="cpu", progress=False).fit(real_samples, [])
    expected = model.predict(real_samples)
    model.device = "cuda"  # as 'perfgraph train --device cuda' saves it on a GPU machine
    model.save(tmp_path / "gnn.pt")
    loaded = load_model(tmp_path / "gnn.pt")
    assert loaded.device == "auto" and np.array_equal(loaded.predict(real_samples), expected)
