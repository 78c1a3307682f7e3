"""The one interface every perfgraph cost model implements.

Training, evaluation and (later) schedule search treat the GNN, Halide's Adams2019 network and the
XGBoost models alike through these methods, in the spirit of TVM MetaSchedule's ``CostModel``
(``update`` / ``predict``) and scikit-learn's estimators (``fit`` / ``predict``).
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Sequence
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
        """Fine-tune on newly measured samples (what a search loop calls after each batch)."""

    @abstractmethod
    def save(self, path: str | Path) -> None:
        """Write a checkpoint that :meth:`load` reads back without executing code."""

    @classmethod
    @abstractmethod
    def load(cls, path: str | Path) -> CostModel:
        """Read a checkpoint; raises :class:`SchemaMismatchError` for another schema version."""


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
