"""The plan of a ``dlrandom:`` pipeline as plain data: DL layers, their shapes and their work.

A :class:`DLPlan` lists layer ops in definition order; :mod:`.dl_random_planner` draws one per
seed and :mod:`.dl_random` writes it with the zoo's layers. Plans are pure Python: drawing one
builds no Halide Func, so the Funcs a worker builds later get their names without Halide's ``$N``
suffixes, and plans are cheap to compare and describe.

:class:`OpGraph` appends ops and computes each one's output shape and the work its zoo layer will
count with :func:`~perfgraph.workloads.zoo.work.count_work` (multiply-accumulates, and elements
written, weights included), so a plan is sized by the same estimate as the zoo's shape variants
(the tests check that both agree). Shapes are in Halide order, x first (see
:mod:`perfgraph.workloads.zoo.layers`).

>>> graph = OpGraph()
>>> image = graph.input((28, 28, 16))
>>> conv = graph.conv(image, 32, kernel=3, stride=2, name="b0_conv")
>>> graph.ops[conv].shape, graph.ops[conv].funcs, graph.ops[conv].rows
((14, 14, 32), 2, 3)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from perfgraph.workloads.zoo.layers import TRANSCENDENTAL_MACS
from perfgraph.workloads.zoo.work import Work

#: Activations the plans draw from; each is one elementwise Func named after its kind.
ACTIVATIONS = ("relu", "relu6", "gelu", "sigmoid", "silu")
#: Activations computed with an ``exp`` (counted as :data:`TRANSCENDENTAL_MACS` per element).
_TRANSCENDENTAL = ("gelu", "sigmoid", "silu")


@dataclass(frozen=True)
class DLOp:
    """One layer: its kind, the ops it reads (indices), its output shape and the work it adds.

    ``name`` is the Func that holds the result; ``funcs`` counts the Funcs the layer adds (a padded
    convolution adds ``{name}_pad``, a softmax four) and ``rows`` the Halide stages, update
    definitions included: the rows of Adams2019's featurization.
    """

    index: int
    name: str
    kind: str
    inputs: tuple[int, ...]
    shape: tuple[int, ...]
    macs: int
    elements: int
    funcs: int
    rows: int
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class DLPlan:
    """A whole ``dlrandom:`` pipeline: its seed, its family of network and its ops (op 0 is the input)."""

    seed: int
    family: str  # "cnn", "transformer" or "vit"
    ops: tuple[DLOp, ...]

    @property
    def output(self) -> DLOp:
        return self.ops[-1]

    @property
    def stages(self) -> int:
        """Halide Funcs in the pipeline (inputs excluded)."""
        return sum(op.funcs for op in self.ops)

    @property
    def rows(self) -> int:
        """Halide stages, update definitions included: the rows of Adams2019's featurization."""
        return sum(op.rows for op in self.ops)

    @property
    def kinds(self) -> tuple[str, ...]:
        """The layer kinds used, in order of first use (the input excluded)."""
        return tuple(dict.fromkeys(op.kind for op in self.ops[1:]))

    @property
    def work(self) -> Work:
        """Multiply-accumulates and elements written, as the zoo's layers count them."""
        return Work(sum(op.macs for op in self.ops), sum(op.elements for op in self.ops))

    def describe(self) -> list[str]:
        """One readable line per op, e.g. ``b1_conv = conv 3x3/2 (b0_relu) : 14x14x32``."""
        lines = []
        for op in self.ops:
            sources = ", ".join(self.ops[i].name for i in op.inputs)
            detail = " ".join(f"{k}={v}" for k, v in op.params.items())
            shape = "x".join(map(str, op.shape))
            lines.append(f"{op.name} = {op.kind}{' ' + detail if detail else ''} ({sources}) : {shape}")
        return lines


class OpGraph:
    """Appends ops, computing their shapes and work; every method returns the new op's index."""

    def __init__(self) -> None:
        self.ops: list[DLOp] = []

    def _add(
        self,
        kind: str,
        inputs: tuple[int, ...],
        shape: tuple[int, ...],
        *,
        name: str,
        macs: int = 0,
        elements: int = 0,
        weights: int = 0,
        funcs: int = 1,
        updates: int = 0,
        **params: Any,
    ) -> int:
        rows = funcs + updates
        op = DLOp(len(self.ops), name, kind, inputs, shape, macs, elements + weights, funcs, rows, params)
        self.ops.append(op)
        return op.index

    def shape(self, index: int) -> tuple[int, ...]:
        return self.ops[index].shape

    def input(self, shape: tuple[int, ...]) -> int:
        return self._add("input", (), shape, name="input", elements=math.prod(shape), funcs=0)

    # -- images (width, height, channels) ------------------------------------------------------
    def conv(self, src: int, c_out: int, *, kernel: int, stride: int = 1, bias: bool = False, name: str) -> int:
        """A ``kernel x kernel`` convolution with "same" zero padding ``kernel // 2`` (none for patches)."""
        width, height, c_in = self.shape(src)
        padding = 0 if kernel == stride else kernel // 2
        out_w, out_h = ((e + 2 * padding - kernel) // stride + 1 for e in (width, height))
        return self._add(
            "conv",
            (src,),
            (out_w, out_h, c_out),
            name=name,
            macs=out_w * out_h * c_out * c_in * kernel * kernel,
            elements=out_w * out_h * c_out,
            weights=kernel * kernel * c_in * c_out + (c_out if bias else 0),
            funcs=2 if padding else 1,
            updates=1,
            kernel=kernel,
            stride=stride,
            padding=padding,
            bias=bias,
        )

    def depthwise(self, src: int, *, kernel: int, stride: int = 1, name: str) -> int:
        width, height, channels = self.shape(src)
        padding = kernel // 2
        out_w, out_h = ((e + 2 * padding - kernel) // stride + 1 for e in (width, height))
        return self._add(
            "depthwise",
            (src,),
            (out_w, out_h, channels),
            name=name,
            macs=out_w * out_h * channels * kernel * kernel,
            elements=out_w * out_h * channels,
            weights=kernel * kernel * channels,
            funcs=2 if padding else 1,
            updates=1,
            kernel=kernel,
            stride=stride,
            padding=padding,
        )

    def pointwise(self, src: int, c_out: int, *, name: str) -> int:
        width, height, c_in = self.shape(src)
        points = width * height * c_out
        return self._add(
            "pointwise",
            (src,),
            (width, height, c_out),
            name=name,
            macs=points * c_in,
            elements=points,
            weights=c_in * c_out,
            updates=1,
        )

    def batch_norm(self, src: int, *, name: str) -> int:
        """Folded inference batch norm over an image's channels."""
        shape = self.shape(src)
        return self._add("batch_norm", (src,), shape, name=name, elements=math.prod(shape), weights=2 * shape[2])

    def pool(self, src: int, kind: str, *, name: str) -> int:
        """``max_pool`` or ``avg_pool`` over 2x2 windows with stride 2."""
        width, height, channels = self.shape(src)
        out = (width // 2, height // 2, channels)
        points = math.prod(out)
        return self._add(kind, (src,), out, name=name, macs=4 * points, elements=points, updates=1)

    def global_avg_pool(self, src: int, *, name: str) -> int:
        channels = self.shape(src)[2]
        return self._add("global_avg_pool", (src,), (channels,), name=name, elements=channels, updates=1)

    def vector_dense(self, src: int, d_out: int, *, name: str) -> int:
        (d_in,) = self.shape(src)
        return self._add(
            "vector_dense", (src,), (d_out,), name=name, macs=d_in * d_out, elements=d_out, weights=d_in * d_out + d_out
        )

    def scale_channels(self, image: int, gate: int, *, name: str) -> int:
        shape = self.shape(image)
        return self._add("scale_channels", (image, gate), shape, name=name, elements=math.prod(shape))

    def flatten(self, src: int, *, name: str) -> int:
        width, height, channels = self.shape(src)
        return self._add("flatten", (src,), (channels, width * height), name=name, elements=width * height * channels)

    # -- any rank ------------------------------------------------------------------------------
    def activation(self, src: int, kind: str, *, name: str) -> int:
        """One of :data:`ACTIVATIONS`, elementwise."""
        size = math.prod(self.shape(src))
        macs = TRANSCENDENTAL_MACS * size if kind in _TRANSCENDENTAL else 0
        return self._add(kind, (src,), self.shape(src), name=name, macs=macs, elements=size)

    def add(self, a: int, b: int, *, name: str) -> int:
        """A residual connection: the elementwise sum of two ops of equal shape."""
        assert self.shape(a) == self.shape(b), (self.ops[a].name, self.ops[b].name)
        return self._add("add", (a, b), self.shape(a), name=name, elements=math.prod(self.shape(a)))

    # -- token matrices (features, tokens) -------------------------------------------------------
    def dense(self, src: int, d_out: int, *, bias: bool = True, name: str) -> int:
        """A linear layer on every token; without bias it is a plain ``matmul`` with a weight matrix."""
        d_in, tokens = self.shape(src)
        return self._add(
            "dense" if bias else "matmul",
            (src,),
            (d_out, tokens),
            name=name,
            macs=tokens * d_out * d_in,
            elements=tokens * d_out,
            weights=d_out * d_in + (d_out if bias else 0),
            updates=1,
        )

    def layer_norm(self, src: int, *, name: str) -> int:
        shape = self.shape(src)
        size = math.prod(shape)
        return self._add(
            "layer_norm",
            (src,),
            shape,
            name=name,
            macs=2 * size,
            elements=size,
            weights=2 * shape[0],
            funcs=3,
            updates=2,
        )

    def attention_scores(
        self, q: int, k: int, *, heads: int, head_dim: int, q_offset: int, k_offset: int, name: str
    ) -> int:
        tokens = self.shape(q)[1]
        return self._add(
            "attention_scores",
            (q, k),
            (tokens, tokens, heads),
            name=name,
            macs=tokens * tokens * heads * head_dim,
            elements=tokens * tokens * heads,
            updates=1,
            heads=heads,
            head_dim=head_dim,
            q_offset=q_offset,
            k_offset=k_offset,
        )

    def softmax(self, src: int, *, name: str) -> int:
        """Softmax over Halide dimension 0 (the keys of attention scores): four Funcs."""
        size = math.prod(self.shape(src))
        return self._add(
            "softmax",
            (src,),
            self.shape(src),
            name=name,
            macs=TRANSCENDENTAL_MACS * size,
            elements=size,
            funcs=4,
            updates=2,
        )

    def attention_context(self, probabilities: int, v: int, *, head_dim: int, v_offset: int, name: str) -> int:
        tokens, _, heads = self.shape(probabilities)
        model_dim = heads * head_dim
        return self._add(
            "attention_context",
            (probabilities, v),
            (model_dim, tokens),
            name=name,
            macs=tokens * tokens * model_dim,
            elements=tokens * model_dim,
            updates=1,
            head_dim=head_dim,
            v_offset=v_offset,
        )
