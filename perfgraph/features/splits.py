"""Train / validation / test splits by pipeline, never by sample.

Schedules of one pipeline share all pipeline features and most of their run-time behaviour; putting
one pipeline in two parts would let a model memorise it and report a test error it cannot reach on an
unseen pipeline. Every split here therefore assigns *pipelines* (identified by ``pipeline_name``, the
workload URI) to parts.

* ``"fixed"``: pipelines are ordered by a hash of their name; about 70 % go to train, 15 % to valid and
  15 % to test (at least one pipeline each). The order depends only on the names, so the split is the
  same in every process and on every machine, and a pipeline's part rarely changes as a dataset grows.
* ``"family"``: whole workload families (by default ``attention``, ``depthwise`` and ``mobilenet``)
  are held out as the test set: can the model predict a kind of layer it has never seen? Validation
  pipelines are drawn from the remaining ones by the same hash order.

Both work on anything with ``pipeline_name`` and ``family`` attributes: samples or cached graphs.

>>> import numpy as np
>>> from perfgraph.data.records import Sample
>>> def toy(name, family):
...     return Sample(0, 0, name, family, np.zeros((1, 326), np.float32), np.zeros((2, 0), np.int64),
...                   np.zeros((0, 9), np.float32))
>>> parts = split_samples([toy(f"zoo:layer{i}", "conv2d") for i in range(10)])
>>> len(parts.train), len(parts.valid), len(parts.test)  # each pipeline placed by its own hash
(7, 2, 1)
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

SPLITS = ("fixed", "family")
DEFAULT_HELD_OUT_FAMILIES: tuple[str, ...] = ("attention", "depthwise", "mobilenet")
VALID_FRACTION = 0.15
TEST_FRACTION = 0.15


class SplitError(ValueError):
    """A split that cannot be made from the given samples (too few pipelines, no held-out family...)."""


class HasPipeline(Protocol):
    pipeline_name: str
    family: str


T = TypeVar("T", bound=HasPipeline)


@dataclass(frozen=True)
class DatasetSplit(Generic[T]):
    """The three parts of a split; no pipeline appears in two of them."""

    train: list[T]
    valid: list[T]
    test: list[T]

    def pipelines(self, part: str) -> list[str]:
        """Sorted names of the pipelines in ``part`` (``"train"``, ``"valid"`` or ``"test"``)."""
        if part not in ("train", "valid", "test"):
            raise ValueError(f"part must be 'train', 'valid' or 'test', got {part!r}")
        return sorted({item.pipeline_name for item in getattr(self, part)})

    def describe(self) -> str:
        """One line with the number of samples and pipelines per part, for logs."""
        return ", ".join(
            f"{part}: {len(getattr(self, part))} samples / {len(self.pipelines(part))} pipelines"
            for part in ("train", "valid", "test")
        )


def pipeline_hash(pipeline_name: str) -> int:
    """A stable hash of a pipeline's identity (Python's ``hash`` of a string changes per process)."""
    return int.from_bytes(hashlib.sha256(pipeline_name.encode("utf-8")).digest()[:8], "big")


def _hash_fraction(name: str) -> float:
    return pipeline_hash(name) / 2**64


def _fixed_parts(names: list[str]) -> tuple[set[str], set[str]]:
    """Test and validation pipelines, each pipeline placed by its own hash alone.

    A pipeline whose hash falls in the top ``TEST_FRACTION`` of the hash range is a test pipeline,
    the next ``VALID_FRACTION`` validation, so adding pipelines to a dataset never moves a pipeline
    from one part to another (a model trained on an older dataset never saw a newer test pipeline).
    Only when that leaves a part empty (a handful of pipelines) are the last pipelines in hash order
    used instead; ``names`` is sorted by hash.
    """
    test = {n for n in names if _hash_fraction(n) >= 1 - TEST_FRACTION}
    valid = {n for n in names if 1 - TEST_FRACTION - VALID_FRACTION <= _hash_fraction(n) < 1 - TEST_FRACTION}
    if test and valid and len(test) + len(valid) < len(names):
        return test, valid
    num_test = max(1, round(TEST_FRACTION * len(names)))
    num_valid = max(1, round(VALID_FRACTION * len(names)))
    return set(names[len(names) - num_test :]), set(names[len(names) - num_test - num_valid : len(names) - num_test])


def split_samples(
    samples: Sequence[T], split: str = "fixed", *, held_out_families: Iterable[str] = DEFAULT_HELD_OUT_FAMILIES
) -> DatasetSplit[T]:
    """Split ``samples`` by pipeline, ``"fixed"`` (by hash) or ``"family"`` (held-out families as test).

    Raises :class:`SplitError` when a part would be empty.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    names = sorted({s.pipeline_name for s in samples}, key=lambda n: (pipeline_hash(n), n))
    if split == "fixed":
        if len(names) < 3:
            raise SplitError(f"split 'fixed' needs at least 3 pipelines (one per part), got {len(names)}")
        test, valid = _fixed_parts(names)
    else:
        held_out = frozenset(held_out_families)
        test = {s.pipeline_name for s in samples if s.family in held_out}
        if not test:
            present = sorted({s.family for s in samples})
            raise SplitError(
                f"split 'family': no samples of the held-out families {sorted(held_out)}; families present: {present}"
            )
        rest = [n for n in names if n not in test]
        if len(rest) < 2:
            raise SplitError(
                f"split 'family': {len(rest)} pipelines outside the held-out families "
                f"{sorted(held_out)}, need at least 2 (train and valid)"
            )
        num_valid = max(1, round(VALID_FRACTION / (1 - TEST_FRACTION) * len(rest)))
        valid = set(rest[len(rest) - num_valid :])
    return DatasetSplit(
        train=[s for s in samples if s.pipeline_name not in test and s.pipeline_name not in valid],
        valid=[s for s in samples if s.pipeline_name in valid],
        test=[s for s in samples if s.pipeline_name in test],
    )
