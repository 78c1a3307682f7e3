"""Checkpoints that load without executing code and refuse other feature-schema versions.

A checkpoint is a ``torch.save`` of plain containers, numbers, strings and tensors only, so that
``torch.load(..., weights_only=True)`` can read it: no pickled classes, no code.

``torch.load`` does not check the CRC-32 that ``torch.save`` writes for every record of its zip
container, so a damaged file loads and predicts garbage. Loading therefore checks those CRCs first,
and then the sha256 of the payload that checkpoints carry since it was added (older ones have none).
"""

from __future__ import annotations

import hashlib
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from perfgraph.features.layout import FEATURE_SCHEMA_VERSION
from perfgraph.models.base import SchemaMismatchError


class CheckpointError(ValueError):
    """A file that is not a perfgraph checkpoint of the expected model kind."""


def save_checkpoint(
    path: str | Path, model_kind: str, payload: dict[str, Any], machine_kinds: Sequence[str] = ()
) -> None:
    """Write ``payload`` (plain values and tensors) tagged with its model kind and schema version.

    ``machine_kinds`` names the machine kinds whose measurements trained the model (``perfgraph
    stats`` lists them); loading a model to predict for another kind warns.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "format": "perfgraph-checkpoint",
        "model_kind": model_kind,
        "feature_schema_version": FEATURE_SCHEMA_VERSION,
        "payload": payload,
        "payload_sha256": payload_digest(payload),
        "machine_kinds": list(machine_kinds),
    }
    tmp = path.with_name(path.name + ".tmp")
    _save_with_crcs(record, tmp)
    tmp.replace(path)  # never leave a half-written checkpoint under the real name


def _save_with_crcs(record: dict[str, Any], path: Path) -> None:
    """``torch.save`` with the CRC-32s that loading checks, whatever torch's global setting says."""
    try:
        from torch.utils.serialization import config
    except ImportError:  # before torch 2.5 every record always got its CRC
        torch.save(record, path)
        return
    previous = config.save.compute_crc32
    config.save.compute_crc32 = True
    try:
        torch.save(record, path)
    finally:
        config.save.compute_crc32 = previous


def read_checkpoint_header(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint safely and return it whole; checks the format and the schema version."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    _check_container(path)
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(f"{path}: not a readable perfgraph checkpoint ({error})") from error
    if not isinstance(record, dict) or record.get("format") != "perfgraph-checkpoint":
        raise CheckpointError(f"{path}: not a perfgraph checkpoint (no 'format' tag)")
    expected = record.get("payload_sha256")
    if expected is not None and payload_digest(record.get("payload")) != expected:
        raise CheckpointError(f"{path}: corrupt checkpoint: its payload does not match the sha256 saved with it")
    version = record.get("feature_schema_version", -1)
    if not isinstance(version, int) or isinstance(version, bool):
        raise CheckpointError(f"{path}: not a perfgraph checkpoint (feature_schema_version {version!r:.40})")
    if version != FEATURE_SCHEMA_VERSION:
        raise SchemaMismatchError(path, version)
    _check_header_types(path, record)
    return record


def _check_header_types(path: Path, record: dict[str, Any]) -> None:
    """The fields that loading reads have the types :func:`save_checkpoint` writes."""
    kinds = record.get("machine_kinds", [])
    if not isinstance(record.get("model_kind"), str):
        raise CheckpointError(f"{path}: not a perfgraph checkpoint (model_kind {record.get('model_kind')!r:.40})")
    if not isinstance(record.get("payload"), dict):
        raise CheckpointError(f"{path}: not a perfgraph checkpoint (its payload is no dict)")
    if not isinstance(kinds, list | tuple) or not all(isinstance(kind, str) for kind in kinds):
        raise CheckpointError(f"{path}: not a perfgraph checkpoint (machine_kinds {kinds!r:.40})")


def _check_container(path: Path) -> None:
    """Every record of the zip container must match the CRC-32 that ``torch.save`` wrote for it."""
    try:
        with zipfile.ZipFile(path) as container:
            damaged = container.testzip()
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError) as error:
        raise CheckpointError(
            f"{path}: not a readable perfgraph checkpoint (damaged or not a torch file: {error})"
        ) from error
    if damaged is not None:
        raise CheckpointError(f"{path}: corrupt checkpoint: record {damaged!r} fails its CRC-32 check")


def payload_digest(value: Any) -> str:
    """sha256 over a payload's structure, strings, numbers and tensor bytes (dtype and shape included)."""
    digest = hashlib.sha256()

    def feed(item: Any) -> None:
        if isinstance(item, torch.Tensor):
            data = item.detach().cpu().contiguous().reshape(-1)
            digest.update(f"tensor {item.dtype} {tuple(item.shape)}:".encode())
            digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
        elif isinstance(item, dict):
            digest.update(f"dict {len(item)}:".encode())
            for key in sorted(item, key=repr):
                feed(key)
                feed(item[key])
        elif isinstance(item, list | tuple):
            digest.update(f"{type(item).__name__} {len(item)}:".encode())
            for element in item:
                feed(element)
        else:
            digest.update(f"{type(item).__name__} {item!r};".encode())

    feed(value)
    return digest.hexdigest()


def load_checkpoint(path: str | Path, model_kind: str) -> dict[str, Any]:
    """The payload of a checkpoint of ``model_kind``; raises a clear error for anything else."""
    record = read_checkpoint_header(path)
    if record["model_kind"] != model_kind:
        raise CheckpointError(f"{path}: a {record['model_kind']!r} checkpoint, expected {model_kind!r}")
    return record["payload"]
