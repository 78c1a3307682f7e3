"""Single-layer workloads: one zoo layer on an input image or matrix, as the zoo registry builds them.

Each builder takes keyword-only integer shapes (the parameters of a ``zoo:`` URI) and returns the
output Funcs with estimates. Images are ``w x h`` with ``c`` (or ``c_in``) channels.
"""

from __future__ import annotations

import halide as hl

from perfgraph.workloads.zoo import layers
from perfgraph.workloads.zoo.tensor import as_output, image_input, input_tensor


def conv2d(*, w: int, h: int, c_in: int, c_out: int, kernel: int, stride: int, padding: int) -> list[hl.Func]:
    image = image_input("input", w, h, c_in)
    conv = layers.conv2d(image, c_out, kernel=kernel, stride=stride, padding=padding, bias=True, name="conv")
    return [as_output(conv)]


def depthwise_conv2d(*, w: int, h: int, c: int, kernel: int, stride: int, padding: int) -> list[hl.Func]:
    image = image_input("input", w, h, c)
    conv = layers.depthwise_conv2d(image, kernel=kernel, stride=stride, padding=padding, name="dwconv")
    return [as_output(conv)]


def pointwise_conv2d(*, w: int, h: int, c_in: int, c_out: int) -> list[hl.Func]:
    image = image_input("input", w, h, c_in)
    return [as_output(layers.pointwise_conv2d(image, c_out, name="pwconv"))]


def dense(*, batch: int, d_in: int, d_out: int) -> list[hl.Func]:
    rows = input_tensor("input", (d_in, batch))
    return [as_output(layers.dense(rows, d_out, name="dense"))]


def matmul(*, m: int, k: int, n: int) -> list[hl.Func]:
    """``A @ B`` with numpy shapes ``A: (m, k)``, ``B: (k, n)``."""
    a = input_tensor("a", (k, m))
    b = input_tensor("b", (n, k))
    return [as_output(layers.matmul(a, b, name="matmul"))]


def bias_add(*, w: int, h: int, c: int) -> list[hl.Func]:
    return [as_output(layers.bias_add(image_input("input", w, h, c), name="bias"))]


def batch_norm(*, w: int, h: int, c: int) -> list[hl.Func]:
    return [as_output(layers.batch_norm(image_input("input", w, h, c), name="bn"))]


def relu(*, w: int, h: int, c: int) -> list[hl.Func]:
    return [as_output(layers.relu(image_input("input", w, h, c), name="relu"))]


def relu6(*, w: int, h: int, c: int) -> list[hl.Func]:
    return [as_output(layers.relu6(image_input("input", w, h, c), name="relu6"))]


def gelu(*, w: int, h: int, c: int) -> list[hl.Func]:
    return [as_output(layers.gelu(image_input("input", w, h, c), name="gelu"))]


def max_pool(*, w: int, h: int, c: int, kernel: int, stride: int) -> list[hl.Func]:
    image = image_input("input", w, h, c)
    return [as_output(layers.max_pool(image, kernel=kernel, stride=stride, name="maxpool"))]


def avg_pool(*, w: int, h: int, c: int, kernel: int, stride: int) -> list[hl.Func]:
    image = image_input("input", w, h, c)
    return [as_output(layers.avg_pool(image, kernel=kernel, stride=stride, name="avgpool"))]


def global_avg_pool(*, w: int, h: int, c: int) -> list[hl.Func]:
    return [as_output(layers.global_avg_pool(image_input("input", w, h, c), name="gap"))]


def softmax(*, rows: int, cols: int) -> list[hl.Func]:
    """Softmax of every row of a numpy ``(rows, cols)`` matrix (over its last axis)."""
    return [as_output(layers.softmax(input_tensor("input", (cols, rows)), axis=0, name="softmax"))]


def channel_softmax(*, w: int, h: int, c: int) -> list[hl.Func]:
    """Softmax over the channels of every pixel, as in a segmentation head."""
    return [as_output(layers.softmax(image_input("input", w, h, c), axis=2, name="softmax"))]


def residual_add(*, w: int, h: int, c: int) -> list[hl.Func]:
    a, b = image_input("a", w, h, c), image_input("b", w, h, c)
    return [as_output(layers.add(a, b, name="add"))]


def concat(*, w: int, h: int, c_a: int, c_b: int) -> list[hl.Func]:
    a, b = image_input("a", w, h, c_a), image_input("b", w, h, c_b)
    return [as_output(layers.concat([a, b], name="concat"))]


def upsample2x(*, w: int, h: int, c: int) -> list[hl.Func]:
    return [as_output(layers.upsample2x(image_input("input", w, h, c), name="upsample"))]
