"""Checkpoints that load without executing code and refuse other feature-schema versions.

A checkpoint is a ``torch.save`` of plain containers, numbers, strings and tensors only, so that
``torch.load(..., weights_only=True)`` can read it: no pickled classes, no code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from perfgraph.features.layout import FEATURE_SCHEMA_VERSION
from perfgraph.models.base import SchemaMismatchError


class CheckpointError(ValueError):
    """A file that is not a perfgraph checkpoint of the expected model kind."""


def save_checkpoint(path: str | Path, model_kind: str, payload: dict[str, Any]) -> None:
    """Write ``payload`` (plain values and tensors) tagged with its model kind and schema version."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "format": "perfgraph-checkpoint",
        "model_kind": model_kind,
        "feature_schema_version": FEATURE_SCHEMA_VERSION,
        "payload": payload,
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(record, tmp)
    tmp.replace(path)  # never leave a half-written checkpoint under the real name


def read_checkpoint_header(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint safely and return it whole; checks the format and the schema version."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(f"{path}: not a readable perfgraph checkpoint ({error})") from error
    if not isinstance(record, dict) or record.get("format") != "perfgraph-checkpoint":
        raise CheckpointError(f"{path}: not a perfgraph checkpoint (no 'format' tag)")
    version = int(record.get("feature_schema_version", -1))
    if version != FEATURE_SCHEMA_VERSION:
        raise SchemaMismatchError(path, version)
    return record


def load_checkpoint(path: str | Path, model_kind: str) -> dict[str, Any]:
    """The payload of a checkpoint of ``model_kind``; raises a clear error for anything else."""
    record = read_checkpoint_header(path)
    if record["model_kind"] != model_kind:
        raise CheckpointError(f"{path}: a {record['model_kind']!r} checkpoint, expected {model_kind!r}")
    return record["payload"]
