"""The training loop every neural cost model uses, and its loss curve.

:func:`train_network` fits any :class:`~perfgraph.models.stage_network.StageCostNetwork` to graphs
with Adam, early stopping on the validation loss and a restore of the best weights (the rule of
:class:`~perfgraph.models.early_stopping.EarlyStopping`, which Halide's network shares).
Batches keep the schedules of one pipeline (on one machine kind) together, so that a ranking loss
always has pairs to compare; which pipelines share a batch is shuffled every epoch. The returned log
is a list of plain dicts, one per epoch, ready for JSON and for checkpoints.

Under ``torchrun`` the same loop trains one model in several processes: the network is wrapped in
DistributedDataParallel and each rank trains on its share of the batches
(:mod:`~perfgraph.models.distributed`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch_geometric.data import Batch, Data
from tqdm.auto import tqdm

from perfgraph.evaluate.metrics import mape, rmse_log
from perfgraph.models.distributed import Ranks, current_ranks, shard_batches, wrap
from perfgraph.models.early_stopping import EarlyStopping
from perfgraph.models.stage_network import StageCostNetwork

DEVICES = ("auto", "cpu", "cuda")
#: Learning-rate schedules of :func:`train_network`: ``constant``, or ``plateau`` (halve the rate once
#: more than a third of ``patience`` epochs pass without improvement:
#: ``torch.optim.lr_scheduler.ReduceLROnPlateau``, improvement judged as by the early stopping).
LR_SCHEDULES = ("constant", "plateau")
#: ``plateau``: the factor the learning rate is multiplied by when the watched loss stalls.
PLATEAU_FACTOR = 0.5
LossFunction = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def resolve_device(device: str) -> torch.device:
    """``"auto"`` is CUDA when available, else CPU; asking for CUDA without one is an error."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but torch sees no CUDA device; use 'auto' or 'cpu'")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def pipeline_batches(groups: Sequence[int], batch_size: int, rng: np.random.Generator | None = None) -> list[list[int]]:
    """Indices into ``groups`` cut into batches of at most ``batch_size`` that keep pipelines together.

    A pipeline with more schedules than ``batch_size`` is cut into chunks of ``batch_size``. With
    ``rng`` the pipelines, their schedules and the chunks are shuffled; without, the order is fixed.
    """
    by_group: dict[int, list[int]] = {}
    for index, group in enumerate(groups):
        by_group.setdefault(int(group), []).append(index)
    chunks = []
    for members in by_group.values():
        order = list(rng.permutation(members)) if rng is not None else members
        chunks.extend(order[start : start + batch_size] for start in range(0, len(order), batch_size))
    if rng is not None:
        chunks = [chunks[i] for i in rng.permutation(len(chunks))]
    batches: list[list[int]] = []
    current: list[int] = []
    for chunk in chunks:
        if current and len(current) + len(chunk) > batch_size:
            batches.append(current)
            current = []
        current.extend(int(i) for i in chunk)
    if current:
        batches.append(current)
    return batches


def collate_batches(
    graphs: Sequence[Data],
    batch_size: int,
    rng: np.random.Generator | None,
    device: torch.device,
    ranks: Ranks | None = None,
) -> Iterator[tuple[list[int], Batch]]:
    """``(indices, Batch)`` pairs following :func:`pipeline_batches`, moved to ``device``.

    With several ``ranks``, this rank's share of the batches (:func:`~perfgraph.models.distributed.shard_batches`).
    """
    groups = ranking_groups(graphs)
    batches = pipeline_batches(groups, batch_size, rng)
    if ranks is not None:
        batches = shard_batches(batches, ranks.rank, ranks.world_size)
    for indices in batches:
        batch = Batch.from_data_list([graphs[i] for i in indices])
        batch.group = torch.tensor([groups[i] for i in indices], dtype=torch.long)
        yield indices, batch.to(device)


def ranking_groups(graphs: Sequence[Data]) -> list[int]:
    """One integer per graph naming its (pipeline, machine kind): the schedules a ranking loss compares.

    Run times of two machines are never ranked against each other, so a pipeline measured on two
    machine kinds makes two groups.

    >>> from torch_geometric.data import Data
    >>> ranking_groups([Data(pipeline_id=torch.tensor([3]), machine_kind=k) for k in ("a", "b", "a")])
    [0, 1, 0]
    """
    codes: dict[tuple[int, str], int] = {}
    return [codes.setdefault((int(g.pipeline_id), getattr(g, "machine_kind", "")), len(codes)) for g in graphs]


@torch.no_grad()
def predict_log_runtimes(
    network: StageCostNetwork, graphs: Sequence[Data], batch_size: int = 256, device: torch.device | str = "cpu"
) -> np.ndarray:
    """Predicted natural-log run times (ms), in the order of ``graphs``."""
    device = torch.device(device)
    network.eval()
    out = np.empty(len(graphs), dtype=np.float64)
    for indices, batch in collate_batches(graphs, batch_size, None, device):
        out[indices] = network(batch).double().cpu().numpy()
    return out


@torch.no_grad()
def evaluate(network: StageCostNetwork, batches: Sequence[Batch], loss: LossFunction) -> dict[str, float]:
    """Loss (batched as in training), MAPE (%) and RMSE of the log run time."""
    network.eval()
    total, predicted, measured = 0.0, [], []
    for batch in batches:
        pred = network(batch)
        total += float(loss(pred, batch.y, batch.group)) * batch.num_graphs
        predicted.append(pred.double().cpu())
        measured.append(batch.y.double().cpu())
    predicted_ms, measured_ms = np.exp(torch.cat(predicted).numpy()), np.exp(torch.cat(measured).numpy())
    return {
        "loss": total / len(measured_ms),
        "mape": mape(predicted_ms, measured_ms),
        "rmse_log": rmse_log(predicted_ms, measured_ms),
    }


def train_network(
    network: StageCostNetwork,
    train_graphs: Sequence[Data],
    valid_graphs: Sequence[Data],
    loss: LossFunction,
    *,
    epochs: int,
    lr: float,
    patience: int,
    batch_size: int,
    seed: int,
    device: torch.device | str = "cpu",
    weight_decay: float = 0.0,
    lr_schedule: str = "constant",
    grad_clip: float = 5.0,
    progress: bool = True,
    desc: str = "training",
    first_epoch: int = 1,
) -> list[dict]:
    """Train ``network`` in place and return the per-epoch log; the best weights are restored.

    Early stopping watches the validation loss, or the training loss when ``valid_graphs`` is empty
    (as in fine-tuning); training stops after ``patience`` epochs without improvement. With
    ``lr_schedule="plateau"`` the learning rate is also halved whenever that loss has not improved (any
    decrease counts, as for the early stopping) for more than ``max(1, patience // 3)`` epochs
    (:data:`LR_SCHEDULES`); each epoch's rate is logged as ``lr``.

    In a process group (``torchrun``), every rank calls this with the same arguments: the network
    trains under DistributedDataParallel on this rank's share of the batches, rank 0 alone validates
    and shows progress, and every rank returns rank 0's log with the same weights.
    """
    if not train_graphs:
        raise ValueError("train_graphs: cannot train on an empty training set")
    if lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {lr_schedule!r}")
    device = torch.device(device)
    network.to(device)
    ranks = current_ranks()
    trained = wrap(network, device)  # the network itself when training alone
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    validate = ranks.is_main and bool(valid_graphs)  # rank 0 alone validates
    valid_batches = [batch for _, batch in collate_batches(valid_graphs, batch_size, None, device)] if validate else []
    optimizer = torch.optim.Adam(network.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = (
        torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, factor=PLATEAU_FACTOR, patience=max(1, patience // 3), threshold=0.0
        )
        if lr_schedule == "plateau"
        else None
    )
    stopper = EarlyStopping(network, patience)
    log: list[dict] = []
    shown = progress and ranks.is_main
    bar = tqdm(range(first_epoch, first_epoch + epochs), desc=desc, disable=not shown, leave=False)
    for epoch in bar:
        started = time.perf_counter()
        trained.train()
        total, count = 0.0, 0
        for _, batch in collate_batches(train_graphs, batch_size, rng, device, ranks):
            optimizer.zero_grad()
            value = loss(trained(batch), batch.y, batch.group)
            value.backward()
            torch.nn.utils.clip_grad_norm_(network.parameters(), grad_clip)
            optimizer.step()
            total += float(value.detach()) * batch.num_graphs
            count += batch.num_graphs
        total, count = ranks.sum([total, count], device)
        entry = {
            "epoch": epoch,
            "train_loss": total / count,
            "valid_loss": None,
            "valid_mape": None,
            "valid_rmse_log": None,
            "lr": optimizer.param_groups[0]["lr"],
        }
        if validate:
            metrics = evaluate(network, valid_batches, loss)
            entry.update(valid_loss=metrics["loss"], valid_mape=metrics["mape"], valid_rmse_log=metrics["rmse_log"])
        entry["seconds"] = time.perf_counter() - started
        entry = ranks.from_main(entry)  # so that every rank stops, and keeps its best weights, alike
        log.append(entry)
        score = entry["valid_loss"] if valid_graphs else entry["train_loss"]
        if not math.isfinite(score):
            raise FloatingPointError(f"epoch {epoch}: loss became {score}; lower lr (now {entry['lr']})")
        stop = stopper.step(score, network)
        if scheduler is not None:
            scheduler.step(score)
        bar.set_postfix(
            train=f"{entry['train_loss']:.4f}",
            valid="-" if entry["valid_loss"] is None else f"{entry['valid_loss']:.4f}",
        )
        if stop:
            break
    bar.close()
    stopper.restore(network)
    network.eval()
    return log


def plot_loss_curve(log: Sequence[dict], path_png: str | Path) -> Path:
    """Training and validation loss per epoch (log scale) as a PNG; returns the path written."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path_png = Path(path_png)
    path_png.parent.mkdir(parents=True, exist_ok=True)
    figure = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for key, label in (("train_loss", "train"), ("valid_loss", "validation")):
        points = [(e["epoch"], e[key]) for e in log if e.get(key) is not None]
        if points:
            axes.plot(*zip(*points, strict=True), label=label)
    axes.set_xlabel("epoch")
    axes.set_ylabel("loss")
    if all(e.get(k) is None or e[k] > 0 for e in log for k in ("train_loss", "valid_loss")) and log:
        axes.set_yscale("log")
    axes.legend()
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path_png)
    return path_png
