"""The DL layers the zoo does not have, written like :mod:`perfgraph.workloads.zoo.layers`.

The ``dlrandom:`` pipelines (:mod:`perfgraph.workloads.dl_random`) build from the zoo's layers and
these: layer normalization, sigmoid and SiLU, attention split into its score and context products
(so that a fused QKV projection can feed it), a squeeze-and-excitation gate, and the flattening of
a patch-embedded image into tokens (ViT). Like the zoo's, every layer takes
:class:`~perfgraph.workloads.zoo.tensor.Tensor` s and a ``name``, names its weights ``{name}_w``,
``{name}_b``, ``{name}_gamma`` ..., reduces over named ``RDom`` s, and counts its work with
:func:`~perfgraph.workloads.zoo.work.count_work`.

Layouts (Halide order, x first): images ``(width, height, channels)``; token matrices
``(features, tokens)`` -- numpy ``(tokens, features)``; attention scores ``(key, query, head)``.
"""

from __future__ import annotations

import math

import halide as hl

from perfgraph.workloads.base import WorkloadError
from perfgraph.workloads.zoo.layers import TRANSCENDENTAL_MACS, _map
from perfgraph.workloads.zoo.tensor import Tensor, check_positive, dims, weight
from perfgraph.workloads.zoo.work import count_work

#: Added to the variance in :func:`layer_norm`, as PyTorch's ``nn.LayerNorm`` does.
LAYER_NORM_EPS = 1e-5


def _expect_rank(layer: str, tensor: Tensor, rank: int) -> None:
    if tensor.rank != rank:
        raise WorkloadError(f"layer {layer!r}: needs a {rank}-d input, got {tensor.name!r} of {tensor.shape}")


def sigmoid(tensor: Tensor, *, name: str) -> Tensor:
    """The logistic function ``1 / (1 + exp(-v))``, elementwise, any rank."""
    return _map(tensor, name, lambda v: hl.f32(1) / (hl.f32(1) + hl.exp(-v)), macs_per_element=TRANSCENDENTAL_MACS)


def silu(tensor: Tensor, *, name: str) -> Tensor:
    """SiLU (swish), ``v * sigmoid(v)``: EfficientNet's and MobileNetV3's activation."""
    return _map(tensor, name, lambda v: v / (hl.f32(1) + hl.exp(-v)), macs_per_element=TRANSCENDENTAL_MACS)


def layer_norm(tensor: Tensor, *, name: str) -> Tensor:
    """LayerNorm over the features of every token: ``(x - mean) / sqrt(var + eps) * gamma + beta``.

    Three Funcs: ``{name}_mean`` and ``{name}_var`` (biased, as PyTorch) per token, and the
    normalized ``{name}``; weights ``{name}_gamma`` and ``{name}_beta`` of shape ``(features,)``.
    """
    _expect_rank(name, tensor, 2)
    features, _ = tensor.shape
    gamma = weight(f"{name}_gamma", (features,))
    beta = weight(f"{name}_beta", (features,))
    f, t = dims(2)
    inverse = hl.f32(1 / features)
    r = hl.RDom([(0, features)], f"{name}_mean_r")
    mean = hl.Func(f"{name}_mean")
    mean[t] = hl.f32(0)
    mean[t] += tensor[r.x, t] * inverse
    r = hl.RDom([(0, features)], f"{name}_var_r")
    var = hl.Func(f"{name}_var")
    var[t] = hl.f32(0)
    centred = tensor[r.x, t] - mean[t]
    var[t] += centred * centred * inverse
    normalized = hl.Func(name)
    normalized[f, t] = (tensor[f, t] - mean[t]) / hl.sqrt(var[t] + hl.f32(LAYER_NORM_EPS)) * gamma[f] + beta[f]
    count_work(macs=2 * tensor.size, elements=tensor.size)
    return Tensor(normalized, tensor.shape)


def attention_scores(
    q: Tensor, k: Tensor, *, heads: int, head_dim: int, q_offset: int = 0, k_offset: int = 0, name: str
) -> Tensor:
    """Per-head ``Q K^T / sqrt(head_dim)``: ``(key, query, head)`` from token matrices ``(features, tokens)``.

    Head ``h`` reads features ``offset + h * head_dim ...`` of ``q`` and ``k``, so one fused QKV
    projection (``q``, ``k`` the same tensor, offsets 0 and ``heads * head_dim``) works as well as
    separate ones.
    """
    check_positive(name, heads=heads, head_dim=head_dim)
    _expect_rank(name, q, 2)
    _expect_rank(name, k, 2)
    model_dim, tokens = heads * head_dim, q.shape[1]
    for tensor, offset in ((q, q_offset), (k, k_offset)):
        if offset < 0 or offset + model_dim > tensor.shape[0] or tensor.shape[1] != tokens:
            raise WorkloadError(
                f"layer {name!r}: {tensor.name!r} of {tensor.shape} has no {tokens} tokens of features "
                f"{offset}..{offset + model_dim - 1}"
            )
    key, query, head = hl.Var("key"), hl.Var("query"), hl.Var("head")
    r = hl.RDom([(0, head_dim)], f"{name}_r")
    scores = hl.Func(name)
    scores[key, query, head] = hl.f32(0)
    feature = head * head_dim + r.x
    scale = hl.f32(1 / math.sqrt(head_dim))
    scores[key, query, head] += q[q_offset + feature, query] * k[k_offset + feature, key] * scale
    count_work(macs=tokens * tokens * model_dim, elements=tokens * tokens * heads)
    return Tensor(scores, (tokens, tokens, heads))


def attention_context(probabilities: Tensor, v: Tensor, *, head_dim: int, v_offset: int = 0, name: str) -> Tensor:
    """The attention-weighted sum of values, heads concatenated: ``(heads * head_dim, tokens)``.

    ``probabilities`` is ``(key, query, head)`` (a softmax over keys); feature ``f`` of the result
    belongs to head ``f // head_dim`` and reads feature ``v_offset + f`` of ``v``.
    """
    check_positive(name, head_dim=head_dim)
    _expect_rank(name, probabilities, 3)
    _expect_rank(name, v, 2)
    tokens, _, heads = probabilities.shape
    model_dim = heads * head_dim
    if v_offset < 0 or v_offset + model_dim > v.shape[0] or v.shape[1] != tokens:
        raise WorkloadError(f"layer {name!r}: {v.name!r} of {v.shape} does not hold {heads} heads of {tokens} tokens")
    feature, query = hl.Var("feature"), hl.Var("query")
    r = hl.RDom([(0, tokens)], f"{name}_r")
    context = hl.Func(name)
    context[feature, query] = hl.f32(0)
    context[feature, query] += probabilities[r.x, query, feature // head_dim] * v[v_offset + feature, r.x]
    count_work(macs=tokens * tokens * model_dim, elements=tokens * model_dim)
    return Tensor(context, (model_dim, tokens))


def vector_dense(vector: Tensor, d_out: int, *, name: str) -> Tensor:
    """A fully connected layer on one vector, ``(d_in,) -> (d_out,)``: numpy ``x @ W + b``.

    Weights ``{name}_w`` are ``(d_out, d_in)`` in Halide order, like the zoo's ``dense``.
    """
    _expect_rank(name, vector, 1)
    check_positive(name, d_out=d_out)
    (d_in,) = vector.shape
    weights = weight(f"{name}_w", (d_out, d_in))
    bias = weight(f"{name}_b", (d_out,))
    j = hl.Var("x")
    r = hl.RDom([(0, d_in)], f"{name}_r")
    dense = hl.Func(name)
    dense[j] = bias[j]
    dense[j] += vector[r.x] * weights[j, r.x]
    count_work(macs=d_in * d_out, elements=d_out)
    return Tensor(dense, (d_out,))


def scale_channels(image: Tensor, gate: Tensor, *, name: str) -> Tensor:
    """Every channel of an image times its gate value (squeeze-and-excitation's last step)."""
    _expect_rank(name, image, 3)
    if gate.shape != (image.shape[2],):
        raise WorkloadError(f"layer {name!r}: gate {gate.name!r} of {gate.shape} does not match {image.shape}")
    x, y, c = dims(3)
    scaled = hl.Func(name)
    scaled[x, y, c] = image[x, y, c] * gate[c]
    count_work(elements=image.size)
    return Tensor(scaled, image.shape)


def flatten_patches(image: Tensor, *, name: str) -> Tensor:
    """Patch embeddings ``(width, height, channels)`` as tokens ``(channels, width * height)``, row-major.

    Token ``t`` is the pixel ``(t % width, t // width)``, as ViT's ``x.flatten(2).transpose(1, 2)``.
    """
    _expect_rank(name, image, 3)
    width, height, channels = image.shape
    feature, token = dims(2)
    tokens = hl.Func(name)
    tokens[feature, token] = image[token % width, token // width, feature]
    count_work(elements=image.size)
    return Tensor(tokens, (channels, width * height))
