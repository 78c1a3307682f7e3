"""Deep-learning layers written as Halide Funcs: the building blocks of the zoo's workloads.

Every layer takes :class:`~perfgraph.workloads.zoo.tensor.Tensor` s and a ``name``, creates its own
weight inputs (``ImageParam`` s named ``{name}_w``, ``{name}_b``, ``{name}_scale`` ...), and returns
a new Tensor whose Func carries ``name``: those names become the stage names of the program graph
the performance model sees, so ``conv1`` / ``bn1`` / ``relu1`` read like the network they come from.
(Halide keeps Func names unique per process: a second ``relu`` built in the same process is named
``relu$1``; ImageParam names are kept as given. Build in a fresh process for stable stage names.)

Reductions are written as explicit update definitions over a named ``RDom`` rather than with
``hl.sum`` / ``hl.maximum``, whose hidden anonymous Funcs would make stages with meaningless names.
Layers count their work with :func:`~perfgraph.workloads.zoo.work.count_work` for shape selection.

Layouts (Halide order, x first; numpy order is the reverse):

* images ``(width, height, channels)``; conv weights ``(kx, ky, c_in, c_out)`` (numpy OIHW);
  depthwise weights ``(kx, ky, channels)``; pointwise weights ``(c_in, c_out)``;
* matrices ``(columns, rows)``; dense weights ``(d_out, d_in)`` so that numpy computes ``x @ W``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import halide as hl

from perfgraph.workloads.base import WorkloadError
from perfgraph.workloads.zoo.tensor import F32, Tensor, check_positive, dims, weight
from perfgraph.workloads.zoo.work import count_work

#: The cost of an ``exp`` (vectorized polynomial) in multiply-accumulates, as measured for softmax and GELU.
TRANSCENDENTAL_MACS = 2


def _expect_rank(layer: str, tensor: Tensor, rank: int) -> None:
    if tensor.rank != rank:
        raise WorkloadError(f"layer {layer!r}: needs a {rank}-d input, got {tensor.name!r} of {tensor.shape}")


def _window_extent(layer: str, size: int, kernel: int, stride: int, padding: int) -> int:
    """Output extent of a sliding window, raising if the window does not fit the padded input."""
    check_positive(layer, kernel=kernel, stride=stride)
    if padding < 0 or padding > kernel // 2:
        raise WorkloadError(
            f"layer {layer!r}: padding must be between 0 and kernel // 2 = {kernel // 2}, got {padding}"
        )
    if size + 2 * padding < kernel:
        extent = size + 2 * padding
        raise WorkloadError(f"layer {layer!r}: kernel {kernel} exceeds the padded input extent {extent}")
    return (size + 2 * padding - kernel) // stride + 1


def pad(tensor: Tensor, padding: int, name: str) -> Tensor:
    """Zero-pad an image by ``padding`` in x and y, shifted so that the result starts at 0 again."""
    _expect_rank(name, tensor, 3)
    if padding == 0:
        return tensor
    x, y, c = dims(3)
    width, height, channels = tensor.shape
    inside = (x >= padding) & (x < width + padding) & (y >= padding) & (y < height + padding)
    clamped = tensor[hl.clamp(x - padding, 0, width - 1), hl.clamp(y - padding, 0, height - 1), c]
    padded = hl.Func(name)
    padded[x, y, c] = hl.select(inside, clamped, hl.f32(0))
    return Tensor(padded, (width + 2 * padding, height + 2 * padding, channels))


def conv2d(
    tensor: Tensor,
    c_out: int,
    *,
    kernel: int,
    stride: int = 1,
    padding: int = 0,
    bias: bool = False,
    name: str,
) -> Tensor:
    """A 2-D convolution (cross-correlation, like PyTorch) with a square kernel, stride and zero padding."""
    _expect_rank(name, tensor, 3)
    check_positive(name, c_out=c_out)
    width, height, c_in = tensor.shape
    out_w = _window_extent(name, width, kernel, stride, padding)
    out_h = _window_extent(name, height, kernel, stride, padding)
    weights = weight(f"{name}_w", (kernel, kernel, c_in, c_out))
    source = pad(tensor, padding, f"{name}_pad")
    x, y, c = dims(3)
    r = hl.RDom([(0, c_in), (0, kernel), (0, kernel)], f"{name}_r")
    conv = hl.Func(name)
    conv[x, y, c] = weight(f"{name}_b", (c_out,))[c] if bias else hl.f32(0)
    conv[x, y, c] += source[x * stride + r.y, y * stride + r.z, r.x] * weights[r.y, r.z, r.x, c]
    count_work(macs=out_w * out_h * c_out * c_in * kernel * kernel, elements=out_w * out_h * c_out)
    return Tensor(conv, (out_w, out_h, c_out))


def depthwise_conv2d(tensor: Tensor, *, kernel: int, stride: int = 1, padding: int = 0, name: str) -> Tensor:
    """A depthwise convolution: one ``kernel x kernel`` filter per channel (channel multiplier 1)."""
    _expect_rank(name, tensor, 3)
    width, height, channels = tensor.shape
    out_w = _window_extent(name, width, kernel, stride, padding)
    out_h = _window_extent(name, height, kernel, stride, padding)
    weights = weight(f"{name}_w", (kernel, kernel, channels))
    source = pad(tensor, padding, f"{name}_pad")
    x, y, c = dims(3)
    r = hl.RDom([(0, kernel), (0, kernel)], f"{name}_r")
    conv = hl.Func(name)
    conv[x, y, c] = hl.f32(0)
    conv[x, y, c] += source[x * stride + r.x, y * stride + r.y, c] * weights[r.x, r.y, c]
    count_work(macs=out_w * out_h * channels * kernel * kernel, elements=out_w * out_h * channels)
    return Tensor(conv, (out_w, out_h, channels))


def pointwise_conv2d(tensor: Tensor, c_out: int, *, name: str) -> Tensor:
    """A 1x1 convolution: a per-pixel linear map of the channels, weights ``(c_in, c_out)``."""
    _expect_rank(name, tensor, 3)
    check_positive(name, c_out=c_out)
    width, height, c_in = tensor.shape
    weights = weight(f"{name}_w", (c_in, c_out))
    x, y, c = dims(3)
    r = hl.RDom([(0, c_in)], f"{name}_r")
    conv = hl.Func(name)
    conv[x, y, c] = hl.f32(0)
    conv[x, y, c] += tensor[x, y, r.x] * weights[r.x, c]
    count_work(macs=width * height * c_in * c_out, elements=width * height * c_out)
    return Tensor(conv, (width, height, c_out))


def matmul(a: Tensor, b: Tensor, *, name: str, bias: Tensor | None = None) -> Tensor:
    """numpy's ``a @ b``: in Halide order ``a`` is ``(k, m)``, ``b`` ``(n, k)`` and the result ``(n, m)``."""
    _expect_rank(name, a, 2)
    _expect_rank(name, b, 2)
    (k, m), (n, k_b) = a.shape, b.shape
    if k != k_b:
        raise WorkloadError(f"layer {name!r}: {a.name!r} has {k} columns but {b.name!r} has {k_b} rows")
    j, i = dims(2)
    r = hl.RDom([(0, k)], f"{name}_r")
    product = hl.Func(name)
    product[j, i] = bias[j] if bias is not None else hl.f32(0)
    product[j, i] += a[r.x, i] * b[j, r.x]
    count_work(macs=m * n * k, elements=m * n)
    return Tensor(product, (n, m))


def dense(tensor: Tensor, d_out: int, *, bias: bool = True, name: str) -> Tensor:
    """A fully connected layer on rows: ``(d_in, rows) -> (d_out, rows)``, numpy ``x @ W + b``."""
    _expect_rank(name, tensor, 2)
    check_positive(name, d_out=d_out)
    weights = weight(f"{name}_w", (d_out, tensor.shape[0]))
    return matmul(tensor, weights, name=name, bias=weight(f"{name}_b", (d_out,)) if bias else None)


def _map(tensor: Tensor, name: str, expression: Callable[[hl.Expr], hl.Expr], macs_per_element: int = 0) -> Tensor:
    """An elementwise stage computing ``expression(value)`` at every point of ``tensor``."""
    args = tuple(dims(tensor.rank))
    mapped = hl.Func(name)
    mapped[args] = expression(tensor[args])
    count_work(macs=macs_per_element * tensor.size, elements=tensor.size)
    return Tensor(mapped, tensor.shape)


def _per_channel(tensor: Tensor, axis: int, name: str, which: str) -> Tensor:
    if not 0 <= axis < tensor.rank:
        raise WorkloadError(f"layer {name!r}: axis must be in [0, {tensor.rank}), got {axis}")
    return weight(f"{name}_{which}", (tensor.shape[axis],))


def bias_add(tensor: Tensor, *, axis: int = 2, name: str) -> Tensor:
    """Add a per-channel bias (``{name}_b``) along Halide dimension ``axis`` (an image's channels)."""
    bias = _per_channel(tensor, axis, name, "b")
    args = dims(tensor.rank)
    return _map(tensor, name, lambda value: value + bias[args[axis]])


def batch_norm(tensor: Tensor, *, axis: int = 2, name: str) -> Tensor:
    """Inference batch normalization, folded like deployed networks do: ``value * scale[c] + shift[c]``.

    Taking the folded per-channel ``{name}_scale`` and ``{name}_shift`` rather than mean and variance
    also keeps random test inputs meaningful: a variance drawn from [-1, 1) would give NaNs.
    """
    scale = _per_channel(tensor, axis, name, "scale")
    shift = _per_channel(tensor, axis, name, "shift")
    args = dims(tensor.rank)
    return _map(tensor, name, lambda value: value * scale[args[axis]] + shift[args[axis]])


def relu(tensor: Tensor, *, name: str) -> Tensor:
    return _map(tensor, name, lambda value: hl.max(value, hl.f32(0)))


def relu6(tensor: Tensor, *, name: str) -> Tensor:
    """ReLU clipped at 6, MobileNet's activation."""
    return _map(tensor, name, lambda value: hl.clamp(value, hl.f32(0), hl.f32(6)))


def gelu(tensor: Tensor, *, name: str) -> Tensor:
    """GELU with the tanh approximation, ``0.5 v (1 + tanh(u))`` with ``u = sqrt(2/pi) (v + 0.044715 v^3)``.

    Computed as the identical ``v / (1 + exp(-2u))``: Halide's ``exp`` vectorizes, while its ``tanh``
    ran about ten times slower, which would make the layer's time mostly one library call.
    """
    k = -2 * math.sqrt(2 / math.pi)
    return _map(
        tensor,
        name,
        lambda v: v / (hl.f32(1) + hl.exp(hl.f32(k) * (v + hl.f32(0.044715) * v * v * v))),
        macs_per_element=TRANSCENDENTAL_MACS,
    )


def _pool(tensor: Tensor, kernel: int, stride: int, name: str, reducer: str) -> Tensor:
    _expect_rank(name, tensor, 3)
    width, height, channels = tensor.shape
    out_w = _window_extent(name, width, kernel, stride, 0)
    out_h = _window_extent(name, height, kernel, stride, 0)
    x, y, c = dims(3)
    r = hl.RDom([(0, kernel), (0, kernel)], f"{name}_r")
    value = tensor[x * stride + r.x, y * stride + r.y, c]
    pooled = hl.Func(name)
    if reducer == "max":
        pooled[x, y, c] = F32.min()
        pooled[x, y, c] = hl.max(pooled[x, y, c], value)
    else:
        pooled[x, y, c] = hl.f32(0)
        pooled[x, y, c] += value * hl.f32(1 / (kernel * kernel))
    count_work(macs=out_w * out_h * channels * kernel * kernel, elements=out_w * out_h * channels)
    return Tensor(pooled, (out_w, out_h, channels))


def max_pool(tensor: Tensor, *, kernel: int, stride: int, name: str) -> Tensor:
    """Max pooling over ``kernel x kernel`` windows (no padding)."""
    return _pool(tensor, kernel, stride, name, "max")


def avg_pool(tensor: Tensor, *, kernel: int, stride: int, name: str) -> Tensor:
    """Average pooling over ``kernel x kernel`` windows (no padding)."""
    return _pool(tensor, kernel, stride, name, "avg")


def global_avg_pool(tensor: Tensor, *, name: str) -> Tensor:
    """The mean of every channel over the whole image: ``(width, height, channels) -> (channels,)``."""
    _expect_rank(name, tensor, 3)
    width, height, channels = tensor.shape
    c = hl.Var("c")
    r = hl.RDom([(0, width), (0, height)], f"{name}_r")
    pooled = hl.Func(name)
    pooled[c] = hl.f32(0)
    pooled[c] += tensor[r.x, r.y, c] * hl.f32(1 / (width * height))
    count_work(elements=channels)  # a memory-bound reduction: the input's reads were counted with it
    return Tensor(pooled, (channels,))


def softmax(tensor: Tensor, *, axis: int = 0, name: str) -> Tensor:
    """Softmax along Halide dimension ``axis`` (0: numpy's last axis), subtracting the maximum first.

    Four stages: ``{name}_max``, ``{name}_exp``, ``{name}_sum`` and the normalized ``{name}``.
    """
    if not 0 <= axis < tensor.rank:
        raise WorkloadError(f"layer {name!r}: axis must be in [0, {tensor.rank}), got {axis}")
    args = dims(tensor.rank)
    rest = tuple(a for i, a in enumerate(args) if i != axis)
    r = hl.RDom([(0, tensor.shape[axis])], f"{name}_r")
    along = tuple(r.x if i == axis else a for i, a in enumerate(args))
    maximum, exp, total, normalized = (hl.Func(f"{name}{suffix}") for suffix in ("_max", "_exp", "_sum", ""))
    maximum[rest] = F32.min()
    maximum[rest] = hl.max(maximum[rest], tensor[along])
    exp[tuple(args)] = hl.exp(tensor[tuple(args)] - maximum[rest])
    total[rest] = hl.f32(0)
    total[rest] += exp[along]
    normalized[tuple(args)] = exp[tuple(args)] / total[rest]
    count_work(macs=TRANSCENDENTAL_MACS * tensor.size, elements=tensor.size)
    return Tensor(normalized, tensor.shape)


def add(a: Tensor, b: Tensor, *, name: str) -> Tensor:
    """Elementwise sum of two tensors of equal shape (a residual connection)."""
    if a.shape != b.shape:
        raise WorkloadError(f"layer {name!r}: cannot add {a.name!r} of {a.shape} to {b.name!r} of {b.shape}")
    args = tuple(dims(a.rank))
    total = hl.Func(name)
    total[args] = a[args] + b[args]
    count_work(elements=a.size)
    return Tensor(total, a.shape)


def concat(tensors: Sequence[Tensor], *, name: str) -> Tensor:
    """Concatenate images along channels, in order.

    Each source is read at a channel clamped into its own range, so bounds inference never asks an
    input for channels it does not have (``select`` evaluates both sides' bounds).
    """
    if len(tensors) < 2:
        raise WorkloadError(f"layer {name!r}: concat needs at least two tensors, got {len(tensors)}")
    for tensor in tensors:
        _expect_rank(name, tensor, 3)
        if tensor.shape[:2] != tensors[0].shape[:2]:
            raise WorkloadError(
                f"layer {name!r}: cannot concatenate {tensor.name!r} of shape {tensor.shape} "
                f"with {tensors[0].name!r} of shape {tensors[0].shape}: width and height differ"
            )
    x, y, c = dims(3)
    offsets = [0]
    for tensor in tensors:
        offsets.append(offsets[-1] + tensor.shape[2])
    value = tensors[-1][x, y, hl.clamp(c - offsets[-2], 0, tensors[-1].shape[2] - 1)]
    for tensor, start in zip(reversed(tensors[:-1]), reversed(offsets[:-2]), strict=True):
        channels = tensor.shape[2]
        value = hl.select(c < start + channels, tensor[x, y, hl.clamp(c - start, 0, channels - 1)], value)
    joined = hl.Func(name)
    joined[x, y, c] = value
    shape = (*tensors[0].shape[:2], offsets[-1])
    count_work(elements=shape[0] * shape[1] * shape[2])
    return Tensor(joined, shape)


def upsample2x(tensor: Tensor, *, name: str) -> Tensor:
    """Nearest-neighbour upsampling by 2 in x and y."""
    _expect_rank(name, tensor, 3)
    x, y, c = dims(3)
    upsampled = hl.Func(name)
    upsampled[x, y, c] = tensor[x // 2, y // 2, c]
    width, height, channels = tensor.shape
    count_work(elements=4 * tensor.size)
    return Tensor(upsampled, (2 * width, 2 * height, channels))
