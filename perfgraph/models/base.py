"""The one interface every perfgraph cost model implements.

Training, evaluation and (later) schedule search treat the GNN, Halide's Adams2019 network and the
XGBoost models alike through these methods, in the spirit of TVM MetaSchedule's ``CostModel``
(``update`` / ``predict``) and scikit-learn's estimators (``fit`` / ``predict``).
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from perfgraph.data.records import Sample
from perfgraph.features.layout import FEATURE_SCHEMA_VERSION


class SchemaMismatchError(ValueError):
    """A checkpoint was written for another feature-schema version than this code reads."""

    def __init__(self, path: str | Path, found: int, expected: int = FEATURE_SCHEMA_VERSION) -> None:
        super().__init__(
            f"{path}: checkpoint has feature-schema version {found}, but this perfgraph reads "
            f"version {expected}; retrain the model on a dataset of version {expected}"
        )
        self.found = found
        self.expected = expected


class NotFittedError(RuntimeError):
    """``predict``, ``update``, ``save`` or per-stage costs were asked of a model that was neither fitted nor loaded."""


class CostModel(ABC):
    """Predicts pipeline run times (milliseconds) from :class:`Sample` records."""

    #: Short name used in reports and on the command line (``gnn``, ``halide``, ``xgboost`` ...).
    name: str = "model"
    #: The machine kinds whose measurements trained the model (saved in its checkpoint; empty: unknown).
    machine_kinds: tuple[str, ...] = ()
    #: Whether ``predict(samples, return_std=True)`` also gives a standard deviation of the log run time.
    gives_uncertainty: bool = False

    def get_params(self) -> dict[str, Any]:
        """The constructor arguments as plain values (what a checkpoint stores; ``load`` passes them back)."""
        return {name: getattr(self, name) for name in constructor_params(type(self))}

    @abstractmethod
    def fit(self, train: Sequence[Sample], valid: Sequence[Sample]) -> CostModel:
        """Train from scratch on ``train``, using ``valid`` for early stopping; returns ``self``."""

    @abstractmethod
    def predict(self, samples: Sequence[Sample]) -> np.ndarray:
        """Predicted run time in milliseconds, one float per sample."""

    @abstractmethod
    def update(self, samples: Sequence[Sample]) -> None:
        """Fine-tune on newly measured samples (what a search loop calls after each batch).

        Every model replays samples it was trained on before (since ``fit``, or since ``load``) beside
        the new ones, so that an update does not make it forget (:class:`ReplayBuffer`).
        """

    @abstractmethod
    def save(self, path: str | Path) -> None:
        """Write a checkpoint that :meth:`load` reads back without executing code."""

    @classmethod
    @abstractmethod
    def load(cls, path: str | Path) -> CostModel:
        """Read a checkpoint; raises :class:`SchemaMismatchError` for another schema version."""


class ReplayBuffer:
    """A uniform sample of at most ``capacity`` items among all those added (reservoir sampling).

    What a model's :meth:`~CostModel.update` replays beside the new samples so that fine-tuning on a
    few new measurements does not overwrite what it learned before (experience replay; reservoir
    sampling is Vitter's Algorithm R, ACM TOMS 1985). Kept in memory only: a loaded model starts
    with an empty buffer.

    >>> buffer = ReplayBuffer(capacity=3, seed=0)
    >>> buffer.add(range(10)); len(buffer), buffer.seen
    (3, 10)
    >>> len(buffer.draw(2)), len(buffer.draw(5))
    (2, 3)
    """

    def __init__(self, capacity: int, seed: int = 0) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 0:
            raise ValueError(f"capacity (replay) must be a non-negative int, got {capacity!r}")
        self.capacity = capacity
        self.seen = 0
        self._items: list[Any] = []
        self._rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self._items)

    def add(self, items: Iterable[Any]) -> None:
        for item in items:
            self.seen += 1
            if len(self._items) < self.capacity:
                self._items.append(item)
            else:
                slot = int(self._rng.integers(self.seen))
                if slot < self.capacity:
                    self._items[slot] = item

    def draw(self, count: int) -> list[Any]:
        """Up to ``count`` distinct items, uniformly at random."""
        count = min(count, len(self._items))
        return [self._items[i] for i in self._rng.choice(len(self._items), size=count, replace=False)]


def reads_machines(model: CostModel) -> bool:
    """Whether ``model`` (or every member of an ensemble) reads each sample's machine (``machine_features``).

    Ask this rather than ``get_params()["machine_features"]``: an ensemble whose members have
    configurations of their own (``member_configs``) keeps the flag in each member's.
    """
    parts = getattr(model, "members_", None) or [model]
    return all(getattr(part, "machine_features", False) for part in parts)


def predict_with_uncertainty(model: CostModel, samples: Sequence[Sample]) -> tuple[np.ndarray, np.ndarray | None]:
    """Run times in ms and, for a model that gives one, the standard deviation of the log run time (else ``None``)."""
    if model.gives_uncertainty:
        predicted, sd = model.predict(samples, return_std=True)  # type: ignore[call-arg]
        return np.asarray(predicted, dtype=np.float64), np.asarray(sd, dtype=np.float64)
    return np.asarray(model.predict(samples), dtype=np.float64), None


def constructor_params(cls: type) -> list[str]:
    """Names of the keyword arguments ``cls(...)`` accepts, following ``**kwargs`` up to the base classes.

    A subclass declares only its own hyper-parameters and forwards the rest (``**training``) to its
    base, so each default is written once.

    >>> class Base:
    ...     def __init__(self, a=1, b=2): ...
    >>> class Child(Base):
    ...     def __init__(self, c=3, **rest): super().__init__(**rest)
    >>> constructor_params(Child)
    ['c', 'a', 'b']
    """
    names: list[str] = []
    for klass in cls.__mro__:
        if "__init__" not in vars(klass) or klass is object:
            continue
        parameters = list(inspect.signature(klass.__init__).parameters.values())[1:]  # without self
        names += [p.name for p in parameters if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            break
    return list(dict.fromkeys(names))


def measured_runtimes(samples: Sequence[Sample]) -> np.ndarray:
    """Run times of measured samples as a float64 array; raises if any sample is unmeasured."""
    missing = [(s.pipeline_id, s.schedule_id) for s in samples if s.runtime_ms is None]
    if missing:
        raise ValueError(f"{len(missing)} samples have no measured run time, e.g. {missing[:3]}")
    return np.array([s.runtime_ms for s in samples], dtype=np.float64)
