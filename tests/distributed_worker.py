"""One rank of the 2-process training that ``tests/test_distributed_training.py`` starts with torchrun.

``python -m torch.distributed.run --standalone --nproc-per-node 2 tests/distributed_worker.py DB OUT``:

1. trains a small GNN with :func:`~perfgraph.models.training.train_network` directly, its network
   wrapped in a module that records which samples each forward pass sees (training or validating),
   and writes ``OUT/rank-R.json``: the graphs' order, those records, the returned log and a digest of
   the final weights;
2. runs what users run, ``python -m perfgraph.models.train --db DB --out OUT/gnn.pt ...``
   (:func:`perfgraph.models.train.main`), in the same process group.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch import nn
from torch_geometric.data import Batch

from perfgraph.data.store import Store
from perfgraph.features.graphs import as_graphs
from perfgraph.features.normalization import FeatureNormalizer
from perfgraph.models.checkpoint import payload_digest
from perfgraph.models.distributed import process_group
from perfgraph.models.losses import make_loss
from perfgraph.models.stage_gnn import StageGNN
from perfgraph.models.train import main as train_main
from perfgraph.models.training import train_network

BATCH_SIZE = 4  # 3 pipelines x 8 schedules: 6 batches, 3 per rank
EPOCHS = 2


class RecordingNetwork(nn.Module):
    """A :class:`StageGNN` that notes the ``(pipeline_id, schedule_id)`` of every graph it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.network = StageGNN("gin", hidden=8, layers=1)
        self.calls: list[dict] = []

    def forward(self, batch: Batch) -> torch.Tensor:
        keys = torch.stack([batch.pipeline_id, batch.schedule_id], dim=1).tolist()
        self.calls.append({"training": self.training, "samples": keys})
        return self.network(batch)


def record_training(db: Path, out: Path, rank: int) -> None:
    with Store(db) as store:
        raw = as_graphs(store.samples())
    graphs = FeatureNormalizer().fit(raw).transform_all(raw)
    torch.manual_seed(0)
    network = RecordingNetwork()
    initial = payload_digest(network.state_dict())
    log = train_network(
        network,
        graphs,
        graphs[:8],
        make_loss("mse+rank"),
        epochs=EPOCHS,
        lr=1e-2,
        patience=10,
        batch_size=BATCH_SIZE,
        seed=0,
        device="cpu",
        progress=False,
    )
    record = {
        "order": [[int(g.pipeline_id), int(g.schedule_id)] for g in graphs],
        "calls": network.calls,
        "log": log,
        "initial_digest": initial,
        "final_digest": payload_digest(network.state_dict()),
    }
    (out / f"rank-{rank}.json").write_text(json.dumps(record))


def main(db: Path, out: Path) -> int:
    torch.set_num_threads(1)
    with process_group("cpu") as ranks:
        assert ranks.world_size == 2, ranks
        record_training(db, out, ranks.rank)
        argv = ["--db", str(db), "--model", "gnn", "--out", str(out / "gnn.pt"), "--epochs", "2", "--device", "cpu"]
        return train_main(argv)


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
