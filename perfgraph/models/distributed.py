"""Training in several processes: ``torchrun`` and DistributedDataParallel around the one training loop.

``torchrun --nproc-per-node G -m perfgraph.models.train ARGS`` starts G processes, each running
``perfgraph train ARGS``. They join one process group (gloo on CPU, NCCL on CUDA, one GPU per process)
and :func:`~perfgraph.models.training.train_network` runs its usual loop with the network wrapped in
:class:`~torch.nn.parallel.DistributedDataParallel`: every rank builds the same shuffled pipeline
batches from the same seed and trains on its share of them (:func:`shard_batches`), and DDP averages
the gradients, so the ranks hold identical weights after every step. Rank 0 alone validates, shows
progress and writes the checkpoint, in the format a single process writes.

Outside ``torchrun`` (no ``WORLD_SIZE`` in the environment) everything here is a no-op:

>>> with process_group("cpu") as ranks:
...     ranks
Ranks(rank=0, world_size=1)
>>> shard_batches([[0, 1], [2], [3, 4], [5]], rank=1, world_size=2)
[[2], [5]]
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import distributed as dist

T = TypeVar("T")


@dataclass(frozen=True)
class Ranks:
    """This process's place among the training processes: ``Ranks(0, 1)`` when training alone."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that validates, logs and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def sum(self, values: Sequence[float], device: torch.device) -> list[float]:
        """``values`` summed over the ranks, element-wise (float64; on ``device``, as NCCL needs)."""
        if not self.distributed:
            return [float(v) for v in values]
        total = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(total)
        return total.tolist()

    def from_main(self, value: T) -> T:
        """Rank 0's ``value`` on every rank (any picklable value)."""
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def current_ranks() -> Ranks:
    """The ranks of the process group this process has joined, or ``Ranks(0, 1)`` when none."""
    if dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size())
    return Ranks()


def shard_batches(batches: Sequence[T], rank: int, world_size: int) -> list[T]:
    """This rank's share of ``batches``: every ``world_size``-th one, starting at ``rank``.

    Whole batches are handed out, so a pipeline's schedules stay together as they do in one process
    (the ranking loss compares schedules within a batch). Every rank gets the same number of batches:
    DDP synchronises the gradients at every step, and a rank with one step more would wait for ever.
    When the batches do not divide evenly, the first ones are used again to make up the count, as
    :class:`torch.utils.data.DistributedSampler` pads; without padding every batch goes to exactly one
    rank.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size), got rank {rank} of world_size {world_size}")
    if world_size == 1 or not batches:
        return list(batches)
    per_rank = -(-len(batches) // world_size)
    padded = [batches[i % len(batches)] for i in range(per_rank * world_size)]
    return padded[rank::world_size]


def backend_for(device: torch.device) -> str:
    """The process-group backend for training on ``device``: NCCL for CUDA, gloo for the CPU."""
    return "nccl" if device.type == "cuda" else "gloo"


def wrap(network: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``network`` inside DistributedDataParallel when this process is one of several, else itself."""
    if not current_ranks().distributed:
        return network
    from torch.nn.parallel import DistributedDataParallel

    if device.type != "cuda":
        return DistributedDataParallel(network)
    return DistributedDataParallel(
        network, device_ids=[torch.cuda.current_device() if device.index is None else device.index]
    )


@contextmanager
def process_group(device: str) -> Iterator[Ranks]:
    """Join the process group that ``torchrun`` describes in the environment, and leave it at the end.

    ``device`` is the training device (``auto``, ``cpu``, ``cuda``): it picks the backend, and on CUDA
    each process takes the GPU of its ``LOCAL_RANK``. Outside ``torchrun``, or when this process has
    joined a group already (which it then keeps), this only yields the current :class:`Ranks`.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1 or (dist.is_available() and dist.is_initialized()):
        yield current_ranks()
        return
    from perfgraph.models.training import resolve_device

    resolved = resolve_device(device)
    if resolved.type == "cuda":
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if local_rank >= torch.cuda.device_count():
            raise ValueError(
                f"local rank {local_rank} needs a GPU of its own, but torch sees {torch.cuda.device_count()}: "
                "start at most that many processes per node"
            )
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend_for(resolved))
    try:
        yield current_ranks()
    finally:
        dist.destroy_process_group()
