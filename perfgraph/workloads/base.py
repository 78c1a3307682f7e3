"""What a workload is: a readable URI that rebuilds the same Halide pipeline in any process.

Workloads are addressed by URIs so that an isolated worker process (or another machine) can rebuild
exactly the pipeline the collector means:

* ``zoo:conv2d?c_in=16&h=28`` -- a layer or block of the DL zoo with parameters,
* ``random:42`` -- the seeded random pipeline number 42,
* ``dlrandom:42`` -- the seeded random DL pipeline number 42 (convolutions, attention ...),
* ``file:/abs/path/model.py:build`` -- a user's own pipeline function.

Every builder returns the output ``hl.Func`` s; inputs are ``hl.ImageParam`` / ``hl.Param`` with
estimates. :func:`build_pipeline` records the output estimates while the builder runs (Halide's
Python API cannot read them back), so that run-time buffers can be sized like the autoscheduler
assumed.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode

import halide as hl
import numpy as np


class WorkloadError(ValueError):
    """A workload URI, builder or pipeline that perfgraph cannot use; the message says why."""


@dataclass(frozen=True)
class BufferSpec:
    """An input or output buffer: Halide dimension order (x first), with estimated mins and extents."""

    name: str
    dtype: str  # numpy dtype name, e.g. "float32"
    mins: tuple[int, ...]
    extents: tuple[int, ...]


@dataclass(frozen=True)
class ScalarSpec:
    """A scalar ``hl.Param`` input and the estimate used as its value, of the Param's own type.

    ``value`` is an ``int`` for integer Params (exact up to 64 bits), a ``bool`` for ``hl.Bool()`` ones
    and a ``float`` for floating-point ones: Halide's compiled pipelines accept no other.
    """

    name: str
    dtype: str
    value: int | float | bool


@dataclass
class BuiltPipeline:
    """A freshly built Halide pipeline and the buffers needed to run it."""

    uri: str
    pipeline: hl.Pipeline
    outputs: list[hl.Func]
    input_buffers: list[BufferSpec]
    input_scalars: list[ScalarSpec]
    output_buffers: list[BufferSpec]


Builder = Callable[[], "list[hl.Func] | hl.Func | hl.Pipeline"]


def parse_uri(uri: str) -> tuple[str, str, dict[str, str]]:
    """Split a workload URI into ``(kind, target, params)``.

    >>> parse_uri("zoo:conv2d?c_in=16&h=28")
    ('zoo', 'conv2d', {'c_in': '16', 'h': '28'})
    >>> parse_uri("random:7")
    ('random', '7', {})
    """
    kind, sep, rest = uri.partition(":")
    if not sep or kind not in ("zoo", "random", "dlrandom", "file"):
        raise WorkloadError(
            f"workload {uri!r}: expected 'zoo:NAME[?k=v&...]', 'random:SEED', 'dlrandom:SEED' "
            "or 'file:PATH.py:FUNCTION'"
        )
    target, _, query = rest.partition("?")
    return kind, target, dict(parse_qsl(query, keep_blank_values=True))


def zoo_uri(name: str, **params: object) -> str:
    """The canonical URI of a zoo workload (parameters sorted, so equal workloads get equal URIs)."""
    query = urlencode(sorted((k, str(v)) for k, v in params.items()))
    return f"zoo:{name}?{query}" if query else f"zoo:{name}"


def family_of(uri: str) -> str:
    """The workload family used for the family split (``random``, ``dlrandom``, ``user`` or the zoo's family)."""
    kind, target, _ = parse_uri(uri)
    if kind in ("random", "dlrandom"):
        return kind
    if kind == "file":
        return "user"
    from perfgraph.workloads.zoo import ZOO

    return ZOO[target].family if target in ZOO else "unknown"


def resolve_builder(uri: str) -> Builder:
    """The function that builds the pipeline a URI names; raises :class:`WorkloadError` if unknown."""
    kind, target, params = parse_uri(uri)
    if kind == "zoo":
        from perfgraph.workloads.zoo import ZOO

        if target not in ZOO:
            raise WorkloadError(f"workload {uri!r}: no zoo entry {target!r}; known: {', '.join(sorted(ZOO))}")
        return ZOO[target].builder(params)
    if kind in ("random", "dlrandom"):
        try:
            seed = int(target)
        except ValueError:
            raise WorkloadError(f"workload {uri!r}: the random seed must be an integer, got {target!r}") from None
        if kind == "dlrandom":
            from perfgraph.workloads.dl_random import dl_random_pipeline

            return lambda: dl_random_pipeline(seed)
        from perfgraph.workloads.random_pipeline import random_pipeline

        return lambda: random_pipeline(seed)
    from perfgraph.workloads.user import load_user_builder

    return load_user_builder(target)


@contextlib.contextmanager
def _recording_output_estimates() -> Iterator[dict[str, list[tuple[int, int]]]]:
    """Record ``Func.set_estimates`` / ``set_estimate`` calls made while the block runs."""
    recorded: dict[str, list[tuple[int, int]]] = {}
    original_set_estimates = hl.Func.set_estimates
    original_set_estimate = hl.Func.set_estimate

    def set_estimates(func: hl.Func, estimates, *args, **kwargs):  # type: ignore[no-untyped-def]
        recorded[func.name()] = [(int(_int_of(lo)), int(_int_of(ext))) for lo, ext in estimates]
        return original_set_estimates(func, estimates, *args, **kwargs)

    def set_estimate(func: hl.Func, var, lo, ext, *args, **kwargs):  # type: ignore[no-untyped-def]
        # Per-dimension estimates: remember by variable name; resolved against func.args() later.
        recorded.setdefault(f"{func.name()}#vars", []).append((str(var), int(_int_of(lo)), int(_int_of(ext))))  # type: ignore[arg-type]
        return original_set_estimate(func, var, lo, ext, *args, **kwargs)

    hl.Func.set_estimates = set_estimates
    hl.Func.set_estimate = set_estimate
    try:
        yield recorded
    finally:
        hl.Func.set_estimates = original_set_estimates
        hl.Func.set_estimate = original_set_estimate


def _constant_text(value: object) -> str:
    """The printed constant of an ``hl.Expr`` such as ``<halide.Expr of type int32: 16>`` or ``(uint8)3``."""
    text = str(value)
    if text.startswith("<halide.Expr") and ": " in text:
        text = text.rsplit(": ", 1)[1].rstrip(">")
    if text.startswith("(") and ")" in text:
        text = text.split(")", 1)[1]
    return re.sub(r"[a-z]+$", "", text.strip())


def _int_of(value: object) -> int:
    """An int from a Python number or a constant ``hl.Expr`` (which has no ``__int__``)."""
    if isinstance(value, int | float):
        return int(value)
    return int(float(_constant_text(value)))


def _scalar_of(value: object, dtype: str) -> int | float | bool:
    """A Param's constant estimate as a Python value of its numpy ``dtype`` (exact for 64-bit integers).

    >>> _scalar_of(2, "int32"), _scalar_of(1, "bool"), _scalar_of(0.5, "float32")
    (2, True, 0.5)
    """
    text = str(value) if isinstance(value, int | float) else _constant_text(value)
    if dtype == "bool":
        return bool(int(float(text)))
    if dtype.startswith(("int", "uint")):
        return int(text) if re.fullmatch(r"-?\d+", text) else int(float(text))
    return float(text)


def _output_estimate(func: hl.Func, recorded: dict[str, list]) -> list[tuple[int, int]] | None:
    if func.name() in recorded:
        return recorded[func.name()]
    per_var = recorded.get(f"{func.name()}#vars")
    if not per_var:
        return None
    by_var = {var: (lo, ext) for var, lo, ext in per_var}
    dims = [by_var.get(str(arg)) for arg in func.args()]
    return None if any(d is None for d in dims) else dims  # type: ignore[return-value]


def numpy_dtype(t: hl.Type) -> str:
    """The numpy dtype name of a Halide scalar type (``bool`` for ``UInt(1)``)."""
    if t.is_bool():
        return "bool"
    kind = "float" if t.is_float() else ("uint" if t.is_uint() else "int")
    return f"{kind}{t.bits()}"


def _name_as_written(func: hl.Func) -> str:
    """The name the user gave a Func: Halide appends ``$N`` when a process already made one of that name."""
    return func.name().split("$")[0]


def build_pipeline(uri: str, builder: Builder | None = None) -> BuiltPipeline:
    """Build the pipeline a URI names and describe its input and output buffers.

    Raises :class:`WorkloadError` naming the URI when the builder fails, returns the wrong type or
    leaves an input or output without estimates.
    """
    builder = builder or resolve_builder(uri)
    with _recording_output_estimates() as recorded:
        try:
            result = builder()
        except WorkloadError:
            raise
        except Exception as error:  # the user's code: report which workload raised what
            raise WorkloadError(
                f"workload {uri!r}: building the pipeline raised {type(error).__name__}: {error}"
            ) from error
    if isinstance(result, hl.Pipeline):
        outputs = list(result.outputs())
    elif isinstance(result, hl.Func):
        outputs = [result]
    elif isinstance(result, list | tuple) and result and all(isinstance(f, hl.Func) for f in result):
        outputs = list(result)
    else:
        raise WorkloadError(
            f"workload {uri!r}: the builder must return an hl.Pipeline or a list of output hl.Func, "
            f"got {type(result).__name__}"
        )
    pipeline = hl.Pipeline(outputs)
    output_buffers = []
    for func in outputs:
        estimate = _output_estimate(func, recorded)
        if estimate is None:
            raise WorkloadError(
                f"workload {uri!r}: output {_name_as_written(func)!r} has no estimates; call set_estimates on it"
            )
        output_buffers.append(
            BufferSpec(
                func.name(),
                numpy_dtype(func.type()),
                tuple(lo for lo, _ in estimate),
                tuple(e for _, e in estimate),
            )
        )
    input_buffers, input_scalars = [], []
    for arg in pipeline.infer_arguments():
        estimates = arg.argument_estimates
        if arg.kind == hl.ArgumentKind.InputScalar:
            if not estimates.scalar_estimate.defined():
                raise WorkloadError(
                    f"workload {uri!r}: scalar input {arg.name!r} has no estimate; call set_estimate on it"
                )
            dtype = numpy_dtype(arg.type)
            input_scalars.append(ScalarSpec(arg.name, dtype, _scalar_of(estimates.scalar_estimate, dtype)))
            continue
        bounds = estimates.buffer_estimates
        if len(bounds) != arg.dimensions or not all(r.min.defined() and r.extent.defined() for r in bounds):
            raise WorkloadError(f"workload {uri!r}: input {arg.name!r} has no estimates; call set_estimates on it")
        input_buffers.append(
            BufferSpec(
                arg.name,
                numpy_dtype(arg.type),
                tuple(_int_of(r.min) for r in bounds),
                tuple(_int_of(r.extent) for r in bounds),
            )
        )
    return BuiltPipeline(uri, pipeline, outputs, input_buffers, input_scalars, output_buffers)


def random_input(spec: BufferSpec, seed: int) -> np.ndarray:
    """Deterministic random data for an input buffer, in numpy order (last axis = Halide's x).

    Floats are uniform in [-1, 1); integers cover a small range so that arithmetic rarely overflows.
    """
    rng = np.random.default_rng(seed)
    shape = tuple(reversed(spec.extents))
    dtype = np.dtype(spec.dtype)
    if dtype.kind == "f":
        return rng.uniform(-1.0, 1.0, size=shape).astype(dtype)
    if dtype.kind == "b":
        return rng.integers(0, 2, size=shape).astype(bool)
    high = min(np.iinfo(dtype).max, 255) + 1
    low = 0 if dtype.kind == "u" else -min(128, high)
    return rng.integers(low, high, size=shape).astype(dtype)
