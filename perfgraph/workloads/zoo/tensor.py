"""Shaped Halide values: the small vocabulary the zoo's layers are written in.

Halide Funcs carry no shape, yet every layer needs its input's extents (a convolution to size its
output and its padding, a softmax to bound its reduction). A :class:`Tensor` pairs a Func (or an
``ImageParam``) with its extents in Halide order, x first, so that images are ``(width, height,
channels)`` -- numpy ``(C, H, W)`` -- and matrices are ``(columns, rows)`` -- numpy ``(rows,
columns)``. Everything is float32 and starts at 0.

>>> image = image_input("input", 32, 16, 8)
>>> image.shape, image.name
((32, 16, 8), 'input')
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import halide as hl

from perfgraph.workloads.base import WorkloadError
from perfgraph.workloads.zoo.work import count_work

#: Type of every zoo tensor.
F32 = hl.Float(32)


@dataclass(frozen=True)
class Tensor:
    """A Halide Func or ImageParam with its extents in Halide dimension order (x first)."""

    source: hl.Func | hl.ImageParam
    shape: tuple[int, ...]

    @property
    def name(self) -> str:
        return self.source.name()

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        """Number of elements."""
        size = 1
        for extent in self.shape:
            size *= extent
        return size

    def __getitem__(self, index: hl.Expr | Sequence[hl.Expr]) -> hl.Expr:
        return self.source[index]


def dims(rank: int) -> list[hl.Var]:
    """Pure variables for a Func of ``rank`` dimensions: x, y, c for images, then d3, d4, ..."""
    names = ["x", "y", "c"][:rank] + [f"d{i}" for i in range(3, rank)]
    return [hl.Var(name) for name in names]


def check_positive(layer: str, **extents: int) -> None:
    """Raise a :class:`WorkloadError` naming the layer and the shape parameter that is not positive."""
    for key, value in extents.items():
        if value < 1:
            raise WorkloadError(f"layer {layer!r}: {key} must be a positive integer, got {value}")


def input_tensor(name: str, shape: Sequence[int]) -> Tensor:
    """A float32 ``ImageParam`` input with estimates covering ``shape`` (Halide order)."""
    check_positive(name, **{f"extent{i}": e for i, e in enumerate(shape)})
    param = hl.ImageParam(F32, len(shape), name)
    param.set_estimates([(0, extent) for extent in shape])
    tensor = Tensor(param, tuple(shape))
    count_work(elements=tensor.size)
    return tensor


def image_input(name: str, width: int, height: int, channels: int) -> Tensor:
    """An image input of Halide dims (x, y, c) -- numpy ``(channels, height, width)``."""
    return input_tensor(name, (width, height, channels))


def weight(name: str, shape: Sequence[int]) -> Tensor:
    """A weight input; the same as :func:`input_tensor`, named for readability at call sites."""
    return input_tensor(name, shape)


def as_output(tensor: Tensor) -> hl.Func:
    """The tensor's Func with output estimates set, ready to be returned by a workload builder."""
    if not isinstance(tensor.source, hl.Func):
        raise WorkloadError(f"tensor {tensor.name!r}: an input cannot be a pipeline output; compute from it")
    tensor.source.set_estimates([(0, extent) for extent in tensor.shape])
    return tensor.source
