"""Few-shot adaptation of a trained cost model to a new machine.

A model trained on one CPU ranks schedules of another CPU partly right (what is expensive is mostly
expensive everywhere) and gets the scale and some orderings wrong. Fine-tuning it on a few hundred
samples of the new machine, rather than training from scratch on them, is the idea of MTL-TLP
(Zhai et al., "TLP: A Deep Learning-based Cost Model for Tensor Program Tuning", ASPLOS 2023) and
HELP (Lee et al., NeurIPS 2021): the source machine's data acts as a prior.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from typing import TypeVar

from perfgraph.data.records import Sample
from perfgraph.features.graphs import as_graphs
from perfgraph.models.base import CostModel, ReplayBuffer, measured_runtimes, reads_machines
from perfgraph.models.neural import NeuralCostModel, require_machines

T = TypeVar("T", bound=Sample)


def few_shot_samples(samples: Sequence[T], n: int, seed: int = 0) -> list[T]:
    """``n`` samples spread over as many pipelines as possible: one per pipeline per pass, seeded.

    Spreading teaches the new machine's scale on many pipelines at once; ``n`` above the number of
    samples returns them all.

    >>> from types import SimpleNamespace
    >>> samples = [SimpleNamespace(pipeline_id=p) for p in (0, 0, 0, 1)]
    >>> sorted(x.pipeline_id for x in few_shot_samples(samples, 2))
    [0, 1]
    """
    if n < 0:
        raise ValueError(f"n (--samples) must be >= 0, got {n}")
    rng = random.Random(seed)
    by_pipeline: dict[int, list[T]] = defaultdict(list)
    for sample in samples:
        by_pipeline[sample.pipeline_id].append(sample)
    queues = [rng.sample(group, len(group)) for _, group in sorted(by_pipeline.items())]
    rng.shuffle(queues)
    picked: list[T] = []
    while len(picked) < n and any(queues):
        for queue in queues:
            if queue and len(picked) < n:
                picked.append(queue.pop())
    return picked


def adapt(
    model: CostModel, samples: Sequence[Sample], epochs: int | None = None, replay: Sequence[Sample] = ()
) -> CostModel:
    """Fine-tune ``model`` in place on ``samples`` of the new machine; returns it.

    ``epochs`` overrides the model's ``update_epochs`` (neural and Halide networks, each member of an
    ensemble); XGBoost models retrain on the samples, as their ``update`` does. The replay buffers
    of the neural and Halide networks are emptied first: run times of the old machine must not be
    replayed as labels of the new one. A machine-aware model (:func:`reads_machines`) can keep what
    it knows of its other machines: ``replay`` samples, measured on them and labelled with their own
    machine, refill its buffers, and every update trains on as many of them as on new samples
    (rehearsal). (An XGBoost model fitted in this process retrains on what it saw before too; one
    loaded from a checkpoint, the usual case, has seen nothing.)
    Raises ``ValueError`` for unmeasured samples, and for ``replay`` given to a model that does not
    read the machine (it would learn the other machines' run times as this one's).
    """
    measured_runtimes(samples)
    if epochs is not None and epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    replayed: list = []
    if replay:
        if not reads_machines(model):
            raise ValueError(
                f"replay: {model.name} does not read the machine (machine_features=False), so samples of "
                "other machines cannot be replayed to it; adapt it without replay"
            )
        measured_runtimes(replay)
        require_machines(replay, "replay", model.name)
        replayed = as_graphs(replay)
    for part in (model, *getattr(model, "members_", ())):
        if epochs is not None and hasattr(part, "update_epochs"):
            part.update_epochs = epochs
        if isinstance(getattr(part, "replay_", None), ReplayBuffer):
            part.replay_ = ReplayBuffer(part.replay_.capacity, part.seed)
            if isinstance(part, NeuralCostModel):  # graphs; only neural models read the machine
                part.replay_.add(replayed)
    if samples:
        model.update(samples)
    return model
