"""Network blocks built from the zoo's layers: ResNet, MobileNetV2, a small VGG, an MLP and attention.

Each builder takes keyword-only integer shapes (the parameters of a ``zoo:`` URI) and returns the
output Funcs with estimates. Blocks stay at about 15 stages or fewer so that autoscheduling and
featurizing them stays quick; stage names follow the usual PyTorch module names.
"""

from __future__ import annotations

import math

import halide as hl

from perfgraph.workloads.base import WorkloadError
from perfgraph.workloads.zoo.layers import (
    add,
    batch_norm,
    conv2d,
    dense,
    depthwise_conv2d,
    max_pool,
    pointwise_conv2d,
    relu,
    relu6,
    softmax,
)
from perfgraph.workloads.zoo.tensor import (
    Tensor,
    as_output,
    check_positive,
    image_input,
    input_tensor,
    weight,
)
from perfgraph.workloads.zoo.work import count_work


def _shortcut(image: Tensor, c_out: int, stride: int) -> Tensor:
    """The identity, or where the shape changes a strided 1x1 conv and BN (ResNet's ``downsample``)."""
    if stride == 1 and image.shape[2] == c_out:
        return image
    projected = conv2d(image, c_out, kernel=1, stride=stride, name="downsample_conv")
    return batch_norm(projected, name="downsample_bn")


def resnet_basic_block(*, w: int, h: int, c_in: int, c_out: int, stride: int) -> list[hl.Func]:
    """ResNet-18/34's block: two 3x3 conv + BN, ReLU between, residual add, ReLU."""
    image = image_input("input", w, h, c_in)
    out = conv2d(image, c_out, kernel=3, stride=stride, padding=1, name="conv1")
    out = relu(batch_norm(out, name="bn1"), name="relu1")
    out = batch_norm(conv2d(out, c_out, kernel=3, padding=1, name="conv2"), name="bn2")
    return [as_output(relu(add(out, _shortcut(image, c_out, stride), name="add"), name="relu2"))]


def resnet_bottleneck_block(*, w: int, h: int, c_in: int, c_mid: int, c_out: int, stride: int) -> list[hl.Func]:
    """ResNet-50's block: 1x1 reduce, 3x3 (strided, as in v1.5), 1x1 expand, each + BN; add, ReLU."""
    image = image_input("input", w, h, c_in)
    out = relu(batch_norm(pointwise_conv2d(image, c_mid, name="conv1"), name="bn1"), name="relu1")
    out = conv2d(out, c_mid, kernel=3, stride=stride, padding=1, name="conv2")
    out = relu(batch_norm(out, name="bn2"), name="relu2")
    out = batch_norm(pointwise_conv2d(out, c_out, name="conv3"), name="bn3")
    return [as_output(relu(add(out, _shortcut(image, c_out, stride), name="add"), name="relu3"))]


def mobilenet_inverted_residual(*, w: int, h: int, c_in: int, c_out: int, expand: int, stride: int) -> list[hl.Func]:
    """MobileNetV2's block: 1x1 expand + BN + ReLU6, 3x3 depthwise + BN + ReLU6, 1x1 project + BN.

    The expansion is skipped for ``expand == 1`` (as in the network's first block) and the input is
    added back when stride and channels leave the shape unchanged.
    """
    check_positive("mobilenet_inverted_residual", expand=expand)
    image = image_input("input", w, h, c_in)
    out = image
    if expand > 1:
        out = pointwise_conv2d(out, c_in * expand, name="expand")
        out = relu6(batch_norm(out, name="expand_bn"), name="expand_relu6")
    out = depthwise_conv2d(out, kernel=3, stride=stride, padding=1, name="dwconv")
    out = relu6(batch_norm(out, name="dwconv_bn"), name="dwconv_relu6")
    out = batch_norm(pointwise_conv2d(out, c_out, name="project"), name="project_bn")
    if stride == 1 and c_in == c_out:
        out = add(out, image, name="add")
    return [as_output(out)]


def vgg(*, w: int, h: int, c_in: int, width: int, depth: int) -> list[hl.Func]:
    """A small VGG-style CNN: ``depth`` times 3x3 conv (+bias) + ReLU + 2x2 max pool, doubling channels."""
    check_positive("vgg", width=width, depth=depth)
    if min(w, h) < 2**depth:
        raise WorkloadError(f"workload 'vgg': w={w}, h={h} is too small for depth={depth} (needs {2**depth})")
    out = image_input("input", w, h, c_in)
    for i in range(1, depth + 1):
        out = conv2d(out, width * 2 ** (i - 1), kernel=3, padding=1, bias=True, name=f"conv{i}")
        out = max_pool(relu(out, name=f"relu{i}"), kernel=2, stride=2, name=f"pool{i}")
    return [as_output(out)]


def mlp(*, batch: int, d_in: int, hidden: int, d_out: int, depth: int) -> list[hl.Func]:
    """A multi-layer perceptron on ``batch`` rows: ``depth`` times dense + ReLU, then a dense output."""
    check_positive("mlp", depth=depth)
    out = input_tensor("input", (d_in, batch))
    for i in range(1, depth + 1):
        out = relu(dense(out, hidden, name=f"fc{i}"), name=f"relu{i}")
    return [as_output(dense(out, d_out, name=f"fc{depth + 1}"))]


def attention(*, tokens: int, heads: int, head_dim: int) -> list[hl.Func]:
    """Multi-head self-attention: ``softmax(Q K^T / sqrt(head_dim)) V`` per head, then the output projection.

    The input is numpy ``(tokens, heads * head_dim)``; Q, K, V and the output projection are dense
    layers without bias. Per-head scores are ``(key, query, head)`` in Halide order, so the softmax
    runs over Halide dimension 0; the heads are merged inside the output projection's reduction.
    """
    check_positive("attention", tokens=tokens, heads=heads, head_dim=head_dim)
    model_dim = heads * head_dim
    tokens_in = input_tensor("input", (model_dim, tokens))
    q, k, v = (dense(tokens_in, model_dim, bias=False, name=f"{p}_proj") for p in "qkv")
    key, query, head = hl.Var("key"), hl.Var("query"), hl.Var("head")

    r = hl.RDom([(0, head_dim)], "scores_r")
    scores = hl.Func("scores")
    scores[key, query, head] = hl.f32(0)
    scale = hl.f32(1 / math.sqrt(head_dim))
    scores[key, query, head] += q[head * head_dim + r.x, query] * k[head * head_dim + r.x, key] * scale
    count_work(macs=tokens * tokens * model_dim, elements=tokens * tokens * heads)
    probabilities = softmax(Tensor(scores, (tokens, tokens, heads)), axis=0, name="attn")

    feature = hl.Var("feature")
    r = hl.RDom([(0, tokens)], "context_r")
    context = hl.Func("context")
    context[feature, query, head] = hl.f32(0)
    context[feature, query, head] += probabilities[r.x, query, head] * v[head * head_dim + feature, r.x]
    count_work(macs=tokens * tokens * model_dim, elements=tokens * model_dim)

    weights = weight("out_proj_w", (model_dim, model_dim))
    r = hl.RDom([(0, head_dim), (0, heads)], "out_proj_r")
    projected = hl.Func("out_proj")
    projected[feature, query] = hl.f32(0)
    projected[feature, query] += context[r.x, query, r.y] * weights[feature, r.y * head_dim + r.x]
    count_work(macs=tokens * model_dim * model_dim, elements=tokens * model_dim)
    return [as_output(Tensor(projected, (model_dim, tokens)))]
