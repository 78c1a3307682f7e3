"""Halide's Adams2019 ``.weights`` file format, so that Halide's own beam search runs on our network.

The format, as written by ``Weights::save`` and read by ``Weights::load`` in Halide's
``src/autoschedulers/adams2019/Weights.cpp`` (all values little-endian)::

    uint32  signature                   0x68776631 ('hwf1')
    uint32  PipelineFeatures::version()
    uint32  ScheduleFeatures::version()
    uint32  buffer count                always 6
    6 x     uint32  dimension count
            uint32  extent of each dimension, innermost (fastest-varying) first
            float32 data, innermost dimension fastest

in the order ``head1_filter, head1_bias, head2_filter, head2_bias, conv1_filter, conv1_bias``.
Halide's ``head1_filter(c, x, y)`` has extents ``(8, 40, 7)`` with ``c`` innermost; the arrays here are
shaped like :class:`perfgraph.models.halide_net.AdamsNetwork`'s parameters, ``[c, x, y]`` with ``y``
fastest in memory, so the extents written are the array's shape and the data is its transpose.

What the exported file means (``cost_model_generator.cpp``, ``DefaultCostModel.cpp``):

* The network reads the same inputs in both: raw pipeline features (the 40 x 7 rows after
  ``types_in_use``), ``log(x + 1)`` of the 39 raw schedule features, a sigmoid on ``head1_filter``.
  ``halide_net`` adds no input normalisation of its own, so nothing needs folding into the weights.
  Halide computes the log with ``fast_log`` (accurate to all but the last 5 bits of the float32
  mantissa, per Halide's documentation) where we call ``log1p``.
* Halide's cost for a schedule equals :meth:`HalideCostModel.predict_halide_units
  <perfgraph.models.halide_net.HalideCostModel.predict_halide_units>` when the autoscheduler's
  ``parallelism`` equals the model's ``num_cores``: both are the ``num_cores`` of the hand-designed
  idle-core term, and the file does not record it.
* :meth:`HalideCostModel.predict <perfgraph.models.halide_net.HalideCostModel.predict>` (milliseconds)
  is that cost times ``exp(log_scale_)``, a calibration the file does not carry: Halide's search only
  compares costs, so a common factor changes nothing it decides.
* Halide opens ``weights_path`` as a file only when it ends in ``.weights`` (anything else is read as
  a directory of raw buffers), and a file it cannot read makes it print a warning on **stdout** and
  silently use random weights. :func:`write_halide_weights` therefore insists on the suffix.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from perfgraph.models.checkpoint import CheckpointError, load_checkpoint
from perfgraph.models.halide_terms import CONV1_CHANNELS, HEAD1_CHANNELS, HEAD1_H, HEAD1_W, HEAD2_CHANNELS, HEAD2_W

SIGNATURE = 0x68776631  # 'hwf1'
#: ``PipelineFeatures::version()`` and ``ScheduleFeatures::version()`` of the halide 21 wheel.
HALIDE_FEATURE_VERSIONS = (3, 3)
#: Buffer names in file order, with their shapes (= Halide's extents, innermost first).
WEIGHT_SHAPES: dict[str, tuple[int, ...]] = {
    "head1_filter": (HEAD1_CHANNELS, HEAD1_W, HEAD1_H),
    "head1_bias": (HEAD1_CHANNELS,),
    "head2_filter": (HEAD2_CHANNELS, HEAD2_W),
    "head2_bias": (HEAD2_CHANNELS,),
    "conv1_filter": (CONV1_CHANNELS, HEAD1_CHANNELS + HEAD2_CHANNELS),
    "conv1_bias": (CONV1_CHANNELS,),
}
_HALIDE_MODEL_KIND = "halide"


class WeightsFormatError(ValueError):
    """A file that is not a Halide Adams2019 ``.weights`` file of the expected layout."""


@dataclass(frozen=True)
class HalideWeights:
    """The contents of a ``.weights`` file: six float32 arrays and the feature versions they were made for."""

    arrays: dict[str, np.ndarray]  # name -> float32 array of WEIGHT_SHAPES[name]
    pipeline_features_version: int = HALIDE_FEATURE_VERSIONS[0]
    schedule_features_version: int = HALIDE_FEATURE_VERSIONS[1]


def write_halide_weights(path: str | Path, weights: HalideWeights) -> Path:
    """Write ``weights`` as a Halide ``.weights`` file; returns the path.

    Raises ``ValueError`` when ``path`` does not end in ``.weights`` (Halide would read it as a
    directory) or an array is missing or has the wrong shape (naming the buffer and both shapes).

    >>> import tempfile
    >>> arrays = {name: np.zeros(shape, np.float32) for name, shape in WEIGHT_SHAPES.items()}
    >>> path = write_halide_weights(Path(tempfile.mkdtemp()) / "zero.weights", HalideWeights(arrays))
    >>> path.stat().st_size
    17136
    """
    path = Path(path)
    if path.suffix != ".weights":
        raise ValueError(
            f"{path}: a Halide weights file must end in '.weights' (Halide reads anything else as a folder)"
        )
    missing = sorted(set(WEIGHT_SHAPES) - set(weights.arrays))
    if missing:
        raise ValueError(f"weights: missing buffers {missing}; expected {list(WEIGHT_SHAPES)}")
    header = (SIGNATURE, weights.pipeline_features_version, weights.schedule_features_version, len(WEIGHT_SHAPES))
    chunks = [struct.pack("<4I", *header)]
    for name, shape in WEIGHT_SHAPES.items():
        array = np.asarray(weights.arrays[name])
        if array.shape != shape:
            raise ValueError(f"weights: buffer {name} must have shape {shape}, got {array.shape}")
        chunks.append(struct.pack(f"<{len(shape) + 1}I", len(shape), *shape))
        chunks.append(np.ascontiguousarray(array.transpose(), dtype="<f4").tobytes())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(chunks))
    return path


def read_halide_weights(path: str | Path) -> HalideWeights:
    """Read a Halide ``.weights`` file into float32 arrays shaped like ``AdamsNetwork``'s parameters.

    Raises :class:`WeightsFormatError` naming the file when its signature, buffer count, a buffer's
    extents or its length do not match what Halide's ``Weights::load`` accepts.
    """
    path = Path(path)
    data = path.read_bytes()
    offset = 0

    def unpack(count: int, what: str) -> tuple[int, ...]:
        nonlocal offset
        if offset + 4 * count > len(data):
            raise WeightsFormatError(f"{path}: file ends inside the {what} (at byte {len(data)})")
        values = struct.unpack_from(f"<{count}I", data, offset)
        offset += 4 * count
        return values

    signature, pipeline_version, schedule_version, count = unpack(4, "header")
    if signature != SIGNATURE:
        raise WeightsFormatError(
            f"{path}: not a Halide .weights file (signature {signature:#x}, expected {SIGNATURE:#x})"
        )
    if count != len(WEIGHT_SHAPES):
        raise WeightsFormatError(f"{path}: {count} buffers, Adams2019 weights have {len(WEIGHT_SHAPES)}")
    arrays = {}
    for name, shape in WEIGHT_SHAPES.items():
        (dims,) = unpack(1, f"{name} header")
        extents = unpack(dims, f"{name} header")
        if extents != shape:
            raise WeightsFormatError(f"{path}: buffer {name} has extents {extents}, expected {shape}")
        size = math.prod(shape)
        if offset + 4 * size > len(data):
            raise WeightsFormatError(f"{path}: file ends inside buffer {name}")
        flat = np.frombuffer(data, "<f4", size, offset)
        offset += 4 * size
        arrays[name] = np.ascontiguousarray(flat.reshape(shape[::-1]).transpose(), dtype=np.float32)
    if offset != len(data):
        raise WeightsFormatError(f"{path}: {len(data) - offset} bytes after the last buffer")
    return HalideWeights(arrays, pipeline_version, schedule_version)


@dataclass(frozen=True)
class ExportedWeights:
    """Where a checkpoint's network went, and what Halide must be told to reproduce its predictions."""

    path: Path
    num_cores: int  # pass as the autoscheduler's ``parallelism`` for Halide's cost to equal ours
    ms_per_halide_unit: float  # exp(log_scale): HalideCostModel.predict = Halide's cost x this


def export_checkpoint_weights(checkpoint: str | Path, out: str | Path) -> ExportedWeights:
    """Write the network of a ``halide`` checkpoint (``perfgraph train --model halide``) as ``out``.

    The arrays are the checkpoint's parameters bit for bit; the calibration ``log_scale`` and the
    ``num_cores`` the model was trained for are not part of the format (see the module docstring)
    and are returned instead. Raises :class:`~perfgraph.models.checkpoint.CheckpointError` naming the
    file when ``checkpoint`` is missing, unreadable or holds another kind of model, and
    ``ValueError`` when ``out`` does not end in ``.weights``.
    """
    try:
        payload = load_checkpoint(checkpoint, _HALIDE_MODEL_KIND)
    except CheckpointError as error:
        raise CheckpointError(
            f"{error}; only a Halide Adams2019-network checkpoint ('perfgraph train --model halide') "
            "can be exported as Halide .weights"
        ) from None
    state = payload.get("state", {})
    if set(state) != set(WEIGHT_SHAPES):
        raise CheckpointError(f"{checkpoint}: holds parameters {sorted(state)}, expected {list(WEIGHT_SHAPES)}")
    arrays = {name: state[name].detach().cpu().numpy().astype(np.float32) for name in WEIGHT_SHAPES}
    path = write_halide_weights(out, HalideWeights(arrays))
    return ExportedWeights(path, int(payload["params"]["num_cores"]), math.exp(float(payload["log_scale"])))
