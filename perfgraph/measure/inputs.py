"""Input and output buffers for running a pipeline: sized by its estimates, widened where a schedule reads more.

Inputs hold deterministic random data over their estimated region, the same for every candidate of a
pipeline and for its reference output. Some Adams2019 schedules read an input outside its estimates:
a split whose factor exceeds the loop's extent is shifted inwards and starts below zero (a 3x3
convolution over 32 channels split by 37 reads ``scale[-5]``). Halide's own benchmarking tool
(RunGen, ``estimate_then_auto``) sizes such inputs by bounds inference; :func:`widen_input` does the
same from the error the pipeline raises, keeping the estimated region's data and zero-filling the rest,
so that the output, and the check against the reference, are unchanged.

Every buffer's data is NumPy memory aligned to :data:`BUFFER_ALIGNMENT` bytes, as Halide's own allocator
aligns the buffers it allocates: code Halide generates may load an output buffer with aligned vector
instructions, which fault on the 16-byte alignment ``malloc`` gives NumPy (``perfgraph.measure.timing``,
protocol ``quiet-v4``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import halide as hl
import numpy as np

from perfgraph.workloads.base import BuiltPipeline, ScalarSpec, WorkloadError, random_input

MAX_INPUT_WIDENINGS = 16  # Halide reports one violated input bound per call
#: Bytes buffer data is aligned to: Halide's runtime allocator, ``halide_malloc``, aligns to 128 on x86
#: (Halide ``src/runtime/alignment_128.cpp``), a multiple of every vector width it targets.
BUFFER_ALIGNMENT = 128
T = TypeVar("T")

# Halide's runtime check, e.g. "Input buffer w is accessed at -5, which is before the min (0) in dimension 0".
_OUT_OF_BOUNDS = re.compile(
    r"Input buffer (?P<name>\S+) is accessed at (?P<at>-?\d+), which is (?P<side>before the min|beyond the max)"
    r" \((?P<bound>-?\d+)\) in dimension (?P<dim>\d+)"
)


@dataclass
class RunBuffers:
    """What one call of a compiled pipeline takes: inputs by argument name, then the outputs."""

    inputs: dict[str, Any]
    outputs: list[hl.Buffer]
    alignment: int | None = BUFFER_ALIGNMENT  # bytes; None: where NumPy puts the data


def aligned_zeros(shape: tuple[int, ...], dtype: Any, alignment: int | None = BUFFER_ALIGNMENT) -> np.ndarray:
    """A C-ordered array of zeros whose data starts at a multiple of ``alignment`` bytes (None: anywhere).

    Raises ``MemoryError`` when it cannot be allocated.

    >>> array = aligned_zeros((3, 5), np.float32)
    >>> array.ctypes.data % BUFFER_ALIGNMENT, array.shape, array.flags.c_contiguous, float(array.sum())
    (0, (3, 5), True, 0.0)
    """
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if alignment is None or nbytes == 0:  # an empty array's data is never read
        return np.zeros(shape, dtype=dtype)
    raw = np.zeros(nbytes + alignment, dtype=np.uint8)
    start = -raw.ctypes.data % alignment
    return raw[start : start + nbytes].view(dtype).reshape(shape)


def _aligned_copy(array: np.ndarray, alignment: int | None) -> np.ndarray:
    """``array`` itself without ``alignment`` (NumPy's placement, as before quiet-v4), else an aligned copy."""
    if alignment is None:
        return array
    copy = aligned_zeros(array.shape, array.dtype, alignment)
    copy[...] = array
    return copy


def make_buffers(built: BuiltPipeline, input_seed: int, alignment: int | None = BUFFER_ALIGNMENT) -> RunBuffers:
    """Inputs with deterministic random data over their estimates, and outputs of the estimated size.

    Every buffer's data starts at a multiple of ``alignment`` bytes (``None``: where NumPy puts it, as
    before protocol ``quiet-v4``). Raises ``MemoryError`` when a buffer cannot be allocated (under a
    worker's memory limit).
    """
    inputs: dict[str, Any] = {}
    for index, spec in enumerate(built.input_buffers):
        buffer = hl.Buffer(_aligned_copy(random_input(spec, seed=input_seed * 1009 + index), alignment))
        if any(spec.mins):
            buffer.set_min(list(spec.mins))
        inputs[spec.name] = buffer
    for spec in built.input_scalars:
        try:
            inputs[spec.name] = scalar_argument(spec)
        except WorkloadError as error:
            raise WorkloadError(f"workload {built.uri!r}: {error}") from None
    outputs = []
    for spec in built.output_buffers:
        # Allocated by NumPy, not by hl.Buffer(type, extents), which does not check its allocation: an
        # output too big for the worker's memory limit is then a MemoryError (out_of_memory), not a crash.
        buffer = hl.Buffer(aligned_zeros(tuple(reversed(spec.extents)), spec.dtype, alignment))
        if any(spec.mins):
            buffer.set_min(list(spec.mins))
        outputs.append(buffer)
    return RunBuffers(inputs, outputs, alignment)


def scalar_argument(spec: ScalarSpec) -> int | float | bool:
    """The value to pass for a scalar Param: a Python value of its own type, which it must fit.

    A compiled pipeline refuses a ``float`` for an integer Param (pybind's "Unable to cast Python instance
    of type <class 'float'>"), and an ``int`` outside the Param's range.

    >>> scalar_argument(ScalarSpec("radius", "int32", 2.0))
    2
    >>> scalar_argument(ScalarSpec("gain", "uint8", 300))
    Traceback (most recent call last):
    perfgraph.workloads.base.WorkloadError: scalar input 'gain' (uint8): its value 300 does not fit
    """
    value, dtype = spec.value, np.dtype(spec.dtype)
    if dtype.kind == "f":
        return float(value)
    if dtype.kind == "b":
        if value not in (0, 1):
            raise WorkloadError(f"scalar input {spec.name!r} (bool): its value {value!r} does not fit")
        return bool(value)
    info = np.iinfo(dtype)
    whole = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    if not whole or not info.min <= int(value) <= info.max:
        raise WorkloadError(f"scalar input {spec.name!r} ({spec.dtype}): its value {value!r} does not fit")
    return int(value)


def widen_input(buffers: RunBuffers, error: Exception) -> bool:
    """Widen the input that ``error`` (Halide's out-of-bounds input check) names; False if it names none.

    The widened buffer covers the accessed coordinate, keeps every value it held and is zero elsewhere.
    Halide reports one violated bound per call, so a caller retries until the run succeeds.
    """
    match = _OUT_OF_BOUNDS.search(str(error))
    if match is None or not isinstance(buffers.inputs.get(match["name"]), hl.Buffer):
        return False
    old: hl.Buffer = buffers.inputs[match["name"]]
    dim, at = int(match["dim"]), int(match["at"])
    mins = [old.dim(d).min() for d in range(old.dimensions())]
    extents = [old.dim(d).extent() for d in range(old.dimensions())]
    if dim >= len(mins):
        return False
    if match["side"] == "before the min":
        extents[dim] += mins[dim] - at
        shift = mins[dim] - at
        mins[dim] = at
    else:
        extents[dim] = at - mins[dim] + 1
        shift = 0
    data = np.array(old, copy=True)  # numpy order: Halide's dimension d is axis -1 - d
    widened = aligned_zeros(tuple(reversed(extents)), data.dtype, buffers.alignment)
    region = [slice(0, n) for n in data.shape]
    axis = data.ndim - 1 - dim
    region[axis] = slice(shift, shift + data.shape[axis])
    widened[tuple(region)] = data
    buffer = hl.Buffer(widened)
    buffer.set_min(mins)
    buffers.inputs[match["name"]] = buffer
    return True


def call_widening_inputs(call: Callable[[], T], buffers: RunBuffers) -> tuple[T, int]:
    """``call()``, retried after widening an input each time it reads outside the estimates.

    Returns its result and how many widenings it took; any other Halide error propagates.
    """
    for widenings in range(MAX_INPUT_WIDENINGS + 1):
        try:
            return call(), widenings
        except hl.HalideError as error:
            if not widen_input(buffers, error):
                raise
    raise RuntimeError(f"inputs still too small after {MAX_INPUT_WIDENINGS + 1} widenings")
