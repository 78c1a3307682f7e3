"""Draws the plan of ``dlrandom:SEED``: a seeded chain of DL blocks with residual branches.

Where ``random:`` pipelines draw image-processing stages, these draw the blocks DL models are made
of, at the channel counts and sizes of real networks:

* ``cnn``: convolution + batch norm + activation, ResNet basic and bottleneck blocks (with a
  projection shortcut when the shape changes), MobileNetV1 depthwise-separable and MobileNetV2
  inverted-residual blocks, squeeze-and-excitation gates (MobileNetV3, EfficientNet) and 2x2
  pooling, on 7x7 to 112x112 images of 16 to 256 channels;
* ``transformer``: pre- or post-LayerNorm multi-head self-attention (fused or separate Q, K, V
  projections, ``QK^T``, softmax, ``V``, output projection, residual add), MLP blocks (dense, GELU
  or ReLU, dense, residual add), dense layers and weight matmuls, on 16 to 256 tokens of 64 to 512
  features (heads of 16 to 64 features, as in BERT, ViT-Tiny/Small and GPT-2 small);
* ``vit``: a ViT patch embedding (a ``p x p`` convolution with stride ``p`` on a 3-channel image,
  flattened into tokens) followed by transformer blocks.

The family and the number of Funcs, 3 to :data:`MAX_STAGES`, are drawn first (at most
:data:`MAX_ROWS` featurization rows; a pipeline ends short when no block fits the rest). As for the
zoo's shape variants, its run time is estimated from the work its layers count
(:mod:`perfgraph.workloads.zoo.work`, times :data:`SCHEDULE_SLOWDOWN`); plans are redrawn (from
the same seeded stream) until the estimate lies in :data:`DLShapes.target_ms`, so that one run
takes about a millisecond to a few tens of milliseconds on one core.

>>> plan = plan_dl_random_pipeline(7)
>>> plan == plan_dl_random_pipeline(7), MIN_STAGES <= plan.stages <= MAX_STAGES, plan.ops[0].name
(True, True, 'input')
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

from perfgraph.workloads.dl_random_plan import ACTIVATIONS, DLPlan, OpGraph

MIN_STAGES, MAX_STAGES = 3, 20  # Halide Funcs per pipeline
MAX_ROWS = 32  # featurization rows (Funcs plus update definitions): keeps autoscheduling quick
#: Measured over estimated run time under Adams2019. The zoo's blocks measured 1.5-5x (zoo/__init__.py);
#: greedy (beam 1) schedules of the first ten ``dlrandom:`` seeds measured 1-40x, median about 15x, on a
#: core shared with a collector's compiles (so perhaps half that on an idle core). Chains of dense
#: layers and of convolutions fared worst.
SCHEDULE_SLOWDOWN = 5.0
MAX_ATTEMPTS = 200  # plans drawn per seed before the one closest to the target band is kept
MAX_TENSOR_ELEMENTS = 2_000_000  # one intermediate (8 MB of float32): compute_root schedules stay sane


@dataclass(frozen=True)
class DLShapes:
    """The shapes plans draw from, and the band of estimated milliseconds a plan must fall in."""

    image_sides: tuple[int, ...]
    channels: tuple[int, ...]
    vit_inputs: tuple[tuple[int, int], ...]  # (image side, patch side)
    tokens: tuple[int, ...]
    heads: tuple[int, ...]
    head_dims: tuple[int, ...]
    model_dims: tuple[int, int]  # smallest and largest heads * head_dim
    target_ms: tuple[float, float] | None  # None: any run time (tiny test shapes)


#: Shapes of real networks (ResNet, MobileNet, EfficientNet, BERT, ViT), sized for measurement.
REALISTIC = DLShapes(
    image_sides=(7, 14, 28, 56, 112),
    channels=(16, 24, 32, 48, 64, 96, 128, 160, 256),
    vit_inputs=((32, 4), (64, 8), (96, 8), (112, 16), (224, 16), (224, 32)),
    tokens=(16, 32, 49, 64, 96, 128, 196, 256),
    heads=(1, 2, 3, 4, 6, 8),
    head_dims=(16, 32, 64),
    model_dims=(64, 512),
    target_ms=(1.0, 15.0),
)
#: Tiny shapes that realize in milliseconds under Halide's default schedule (tests, NumPy references).
TINY = DLShapes(
    image_sides=(6, 8, 9),
    channels=(2, 3, 4, 5),
    vit_inputs=((8, 2), (8, 4), (6, 3)),
    tokens=(3, 5, 7),
    heads=(1, 2),
    head_dims=(2, 3),
    model_dims=(2, 6),
    target_ms=None,
)

FAMILY_WEIGHTS = {"cnn": 0.5, "transformer": 0.3, "vit": 0.2}


def plan_dl_random_pipeline(seed: int, shapes: DLShapes = REALISTIC) -> DLPlan:
    """The plan of ``dlrandom:SEED``; the same seed (and shapes) always gives an equal plan."""
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"dlrandom: the seed must be an int, got {seed!r}")
    rng = random.Random(f"dlrandom:{seed}")
    family = rng.choices(list(FAMILY_WEIGHTS), weights=list(FAMILY_WEIGHTS.values()))[0]
    target = rng.randint(MIN_STAGES, MAX_STAGES)
    best: tuple[float, DLPlan] | None = None
    for _ in range(MAX_ATTEMPTS):
        plan = _Planner(rng, shapes).draw(seed, family, target)
        if plan is None:
            continue
        distance = _distance_to_band(estimated_ms(plan), shapes.target_ms)
        if distance == 0:
            return plan
        if best is None or distance < best[0]:
            best = (distance, plan)
    if best is None:
        raise RuntimeError(f"dlrandom:{seed}: no plan of {MIN_STAGES}-{MAX_STAGES} stages in {MAX_ATTEMPTS} draws")
    return best[1]


def estimated_ms(plan: DLPlan) -> float:
    """Rough single-core run time of a decent Adams2019 schedule, in milliseconds."""
    return plan.work.estimated_ms * SCHEDULE_SLOWDOWN


def _distance_to_band(ms: float, band: tuple[float, float] | None) -> float:
    if band is None or band[0] <= ms <= band[1]:
        return 0.0
    return math.log(band[0] / ms) if ms < band[0] else math.log(ms / band[1])


class _Planner:
    """One draw: a family, an input, then blocks until the drawn number of Funcs is reached."""

    def __init__(self, rng: random.Random, shapes: DLShapes) -> None:
        self.rng, self.shapes, self.graph = rng, shapes, OpGraph()
        self.block = 0
        self.current = 0

    def draw(self, seed: int, family: str, target: int) -> DLPlan | None:
        """A plan of ``family`` with ``target`` Funcs, or fewer where no block fits; None below 3."""
        rng, shapes = self.rng, self.shapes
        if family == "cnn":
            side = rng.choice(shapes.image_sides)
            self.current = self.graph.input((side, side, rng.choice(shapes.channels)))
            blocks = self._cnn_blocks()
        else:
            self.heads, self.head_dim = self._heads()
            model_dim = self.heads * self.head_dim
            if family == "vit":
                side, patch = rng.choice(shapes.vit_inputs)
                image = self.graph.input((side, side, 3))
                patches = self.graph.conv(image, model_dim, kernel=patch, stride=patch, bias=True, name="patch_embed")
                self.current = self.graph.flatten(patches, name="tokens")
            else:
                self.current = self.graph.input((model_dim, rng.choice(shapes.tokens)))
            blocks = self._token_blocks()
        failures = 0
        while self._stages() < target and failures < 20:
            mark = (len(self.graph.ops), self.current, self.block)
            names, weights = zip(*blocks.items(), strict=True)
            fitted = rng.choices(names, weights=[w for w, _ in weights])[0]
            if family != "cnn" and self.block == 0 and rng.random() < 0.7:
                fitted = "attention"  # most transformer stacks open with attention
            drawn = blocks[fitted][1]()
            ops = self.graph.ops
            too_big = any(op.size > MAX_TENSOR_ELEMENTS for op in ops[mark[0] :])
            if not drawn or too_big or self._stages() > target or sum(op.rows for op in ops) > MAX_ROWS:
                del ops[mark[0] :]
                self.current, self.block = mark[1], mark[2]
                failures += 1
                continue
            self.block += 1
        if self._stages() < MIN_STAGES:
            return None
        return DLPlan(seed, family, tuple(self.graph.ops))

    def _stages(self) -> int:
        return sum(op.funcs for op in self.graph.ops)

    def _heads(self) -> tuple[int, int]:
        low, high = self.shapes.model_dims
        pairs = [(h, d) for h in self.shapes.heads for d in self.shapes.head_dims if low <= h * d <= high]
        return self.rng.choice(pairs)

    def _name(self, role: str) -> str:
        return f"b{self.block}_{role}"

    # -- CNN blocks: each appends its ops after self.current and returns False if it cannot ------
    def _cnn_blocks(self) -> dict[str, tuple[float, Callable[[], bool]]]:
        return {
            "conv_bn_act": (3.0, self._conv_bn_act),
            "basic_residual": (1.5, self._basic_residual),
            "bottleneck": (1.0, self._bottleneck),
            "separable": (1.5, self._separable),
            "inverted_residual": (2.0, self._inverted_residual),
            "squeeze_excite": (1.0, self._squeeze_excite),
            "pool": (1.0, self._pool),
        }

    def _channels_near(self, channels: int, stride: int) -> int:
        """A channel count for the next layer: within 2x of ``channels``, doubling on downsampling."""
        low, high = (channels, 2 * channels) if stride == 2 else (max(1, channels // 2), 2 * channels)
        near = [c for c in self.shapes.channels if low <= c <= high]
        return self.rng.choice(near) if near else channels

    def _stride(self) -> int:
        side = min(self.graph.shape(self.current)[:2])
        return 2 if side >= 4 and self.rng.random() < 0.3 else 1

    def _act(self, src: int, role: str = "") -> int:
        kind = self.rng.choice(ACTIVATIONS)
        return self.graph.activation(src, kind, name=self._name(f"{kind}{role}"))

    def _conv_bn_act(self) -> bool:
        g, channels = self.graph, self.graph.shape(self.current)[2]
        stride = self._stride()
        kernel = self.rng.choice((1, 3, 3, 3, 5)) if stride == 1 else self.rng.choice((3, 3, 5))
        c_out = self._channels_near(channels, stride)
        if kernel == 1:
            out = g.pointwise(self.current, c_out, name=self._name("pwconv"))
        else:
            out = g.conv(self.current, c_out, kernel=kernel, stride=stride, name=self._name("conv"))
        if self.rng.random() < 0.8:
            out = g.batch_norm(out, name=self._name("bn"))
        self.current = self._act(out) if self.rng.random() < 0.85 else out
        return True

    def _shortcut(self, src: int, c_out: int, stride: int) -> int:
        """ResNet's identity, or a strided 1x1 conv + BN where the shape changes."""
        if stride == 1 and self.graph.shape(src)[2] == c_out:
            return src
        projected = self.graph.conv(src, c_out, kernel=1, stride=stride, name=self._name("down_conv"))
        return self.graph.batch_norm(projected, name=self._name("down_bn"))

    def _basic_residual(self) -> bool:
        g, src = self.graph, self.current
        stride = self._stride()
        c_out = self._channels_near(g.shape(src)[2], stride)
        out = g.conv(src, c_out, kernel=3, stride=stride, name=self._name("conv1"))
        out = self._act(g.batch_norm(out, name=self._name("bn1")), "1")
        out = g.batch_norm(g.conv(out, c_out, kernel=3, name=self._name("conv2")), name=self._name("bn2"))
        out = g.add(out, self._shortcut(src, c_out, stride), name=self._name("add"))
        self.current = self._act(out, "2")
        return True

    def _bottleneck(self) -> bool:
        g, src = self.graph, self.current
        stride = self._stride()
        c_out = self._channels_near(g.shape(src)[2], stride)
        c_mid = max(1, c_out // 4)
        out = self._act(g.batch_norm(g.pointwise(src, c_mid, name=self._name("conv1")), name=self._name("bn1")), "1")
        out = g.conv(out, c_mid, kernel=3, stride=stride, name=self._name("conv2"))
        out = self._act(g.batch_norm(out, name=self._name("bn2")), "2")
        out = g.batch_norm(g.pointwise(out, c_out, name=self._name("conv3")), name=self._name("bn3"))
        out = g.add(out, self._shortcut(src, c_out, stride), name=self._name("add"))
        self.current = self._act(out, "3")
        return True

    def _separable(self) -> bool:
        g = self.graph
        stride = self._stride()
        out = g.depthwise(self.current, kernel=self.rng.choice((3, 3, 5)), stride=stride, name=self._name("dwconv"))
        out = self._act(g.batch_norm(out, name=self._name("dw_bn")), "_dw")
        c_out = self._channels_near(g.shape(out)[2], stride)
        out = g.batch_norm(g.pointwise(out, c_out, name=self._name("pwconv")), name=self._name("pw_bn"))
        self.current = self._act(out, "_pw")
        return True

    def _inverted_residual(self) -> bool:
        g, src = self.graph, self.current
        stride, channels = self._stride(), g.shape(src)[2]
        out = g.pointwise(src, channels * self.rng.choice((2, 4, 6)), name=self._name("expand"))
        out = self._act(g.batch_norm(out, name=self._name("expand_bn")), "_expand")
        out = g.depthwise(out, kernel=self.rng.choice((3, 3, 5)), stride=stride, name=self._name("dwconv"))
        out = self._act(g.batch_norm(out, name=self._name("dw_bn")), "_dw")
        c_out = self._channels_near(channels, stride)
        out = g.batch_norm(g.pointwise(out, c_out, name=self._name("project")), name=self._name("project_bn"))
        if g.shape(out) == g.shape(src):
            out = g.add(out, src, name=self._name("add"))
        self.current = out
        return True

    def _squeeze_excite(self) -> bool:
        """Global average pool, FC reduce + ReLU, FC expand + sigmoid, channels scaled by the gate."""
        g, src = self.graph, self.current
        channels = g.shape(src)[2]
        squeezed = g.global_avg_pool(src, name=self._name("se_pool"))
        hidden = g.vector_dense(squeezed, max(1, channels // self.rng.choice((4, 8))), name=self._name("se_fc1"))
        hidden = g.activation(hidden, "relu", name=self._name("se_relu"))
        gate = g.activation(
            g.vector_dense(hidden, channels, name=self._name("se_fc2")), "sigmoid", name=self._name("se_gate")
        )
        self.current = g.scale_channels(src, gate, name=self._name("se_scale"))
        return True

    def _pool(self) -> bool:
        """2x2 max or average pooling, on images of at least 4x4 and not right after another pool."""
        if min(self.graph.shape(self.current)[:2]) < 4 or self.graph.ops[self.current].kind.endswith("_pool"):
            return False
        kind = self.rng.choice(("max_pool", "avg_pool"))
        self.current = self.graph.pool(self.current, kind, name=self._name(kind.split("_")[0] + "pool"))
        return True

    # -- transformer blocks on (features, tokens) -------------------------------------------------
    def _token_blocks(self) -> dict[str, tuple[float, Callable[[], bool]]]:
        return {
            "attention": (3.0, self._attention),
            "mlp": (2.0, self._mlp),
            "dense_act": (1.0, self._dense_act),
            "matmul": (0.5, self._matmul),
        }

    def _attention(self) -> bool:
        """Multi-head self-attention with a residual add, LayerNorm before (pre-LN) or after (post-LN)."""
        g, src = self.graph, self.current
        pre_norm = self.rng.random() < 0.6
        x = g.layer_norm(src, name=self._name("ln")) if pre_norm else src
        model_dim = g.shape(src)[0]
        if self.rng.random() < 0.5:
            q = k = v = g.dense(x, 3 * model_dim, name=self._name("qkv"))
            offsets = (0, model_dim, 2 * model_dim)
        else:
            q, k, v = (g.dense(x, model_dim, name=self._name(p)) for p in ("q", "k", "v"))
            offsets = (0, 0, 0)
        heads, head_dim = self.heads, self.head_dim
        scores = g.attention_scores(
            q, k, heads=heads, head_dim=head_dim, q_offset=offsets[0], k_offset=offsets[1], name=self._name("scores")
        )
        probabilities = g.softmax(scores, name=self._name("attn"))
        context = g.attention_context(
            probabilities, v, head_dim=head_dim, v_offset=offsets[2], name=self._name("context")
        )
        out = g.add(src, g.dense(context, model_dim, name=self._name("proj")), name=self._name("add"))
        self.current = out if pre_norm else g.layer_norm(out, name=self._name("ln"))
        return True

    def _mlp(self) -> bool:
        """The transformer MLP: LayerNorm, dense to ``ratio`` times the width, GELU/ReLU, dense back, add."""
        g, src = self.graph, self.current
        model_dim = g.shape(src)[0]
        out = g.layer_norm(src, name=self._name("ln"))
        out = g.dense(out, model_dim * self.rng.choice((2, 4)), name=self._name("fc1"))
        kind = self.rng.choice(("gelu", "gelu", "relu", "silu"))
        out = g.activation(out, kind, name=self._name(kind))
        out = g.dense(out, model_dim, name=self._name("fc2"))
        self.current = g.add(src, out, name=self._name("add"))
        return True

    def _dense_act(self) -> bool:
        out = self.graph.dense(self.current, self.graph.shape(self.current)[0], name=self._name("dense"))
        self.current = self._act(out)
        return True

    def _matmul(self) -> bool:
        self.current = self.graph.dense(
            self.current, self.graph.shape(self.current)[0], bias=False, name=self._name("matmul")
        )
        return True
