"""The DL zoo: deep-learning layers and blocks as Halide pipelines, addressed by ``zoo:`` URIs.

Every entry has default shapes, tiny shapes for tests, and a space of shape choices from which
:func:`zoo_variants` draws workloads whose estimated single-core run time suits measurement.

>>> ZOO["conv2d"].family
'conv'
>>> zoo_variants("relu", 2, seed=0) == zoo_variants("relu", 2, seed=0)
True
"""

from __future__ import annotations

import functools
import math
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import halide as hl
import numpy as np

from perfgraph.workloads.base import WorkloadError, zoo_uri
from perfgraph.workloads.zoo import blocks, layer_workloads
from perfgraph.workloads.zoo.work import estimating_work

#: Estimated single-core milliseconds a variant may take. The estimate is rough (within about 2x for
#: the defaults), so this is narrower than the 0.5 ms (timer noise) to 30 ms (collection time) that
#: measurements should fall in.
VARIANT_MS = (1.0, 12.0)


@dataclass(frozen=True)
class ZooEntry:
    """A zoo layer or block: how to build it, its family (for held-out splits) and its shapes."""

    name: str
    family: str
    build: Callable[..., list[hl.Func]]  # keyword-only integer shapes -> output Funcs with estimates
    defaults: dict[str, int]
    small: dict[str, int]  # tiny shapes that realize in milliseconds under Halide's default schedule
    choices: dict[str, tuple[int, ...]] = field(default_factory=dict)  # values zoo_variants draws from
    #: Measured run time over the work estimate: Adams2019 fuses chained convolutions and dense layers
    #: with much recomputation or poor vectorization, so blocks run slower than their layers would.
    schedule_slowdown: float = 1.0

    def builder(self, params: Mapping[str, str]) -> Callable[[], list[hl.Func]]:
        """The builder for URI parameters: strings to ints, merged over the defaults.

        >>> ZOO["relu"].builder({"channels": "8"})
        Traceback (most recent call last):
        ...
        perfgraph.workloads.base.WorkloadError: zoo entry 'relu': unknown parameter 'channels'; known: c, h, w
        """
        shapes = dict(self.defaults)
        for key, text in params.items():
            if key not in self.defaults:
                known = ", ".join(sorted(self.defaults))
                raise WorkloadError(f"zoo entry {self.name!r}: unknown parameter {key!r}; known: {known}")
            try:
                shapes[key] = int(text)
            except ValueError:
                raise WorkloadError(
                    f"zoo entry {self.name!r}: parameter {key!r} must be an integer, got {text!r}"
                ) from None
        return functools.partial(self.build, **shapes)

    def estimated_ms(self, shapes: Mapping[str, int]) -> float:
        """Rough single-core run time of these shapes (see :mod:`perfgraph.workloads.zoo.work`)."""
        with estimating_work() as work:
            self.build(**{**self.defaults, **shapes})
        return work.estimated_ms * self.schedule_slowdown


_SIDES = (14, 28, 56, 112)
_LARGE_SIDES = (112, 160, 192, 224, 256, 320)
_CHANNELS = (16, 32, 64, 128, 256)
_FEATURES = (128, 256, 512, 1024, 2048)
# Memory-bound layers need tensors larger than the L3 cache to run for a measurable time.
_LARGE_IMAGE = {"w": _LARGE_SIDES, "h": _LARGE_SIDES, "c": (24, 32, 48, 64, 96, 128)}
_LARGE_DEFAULTS = {"w": 224, "h": 224, "c": 64}
_MATRIX_SIDES = (256, 512, 768, 1024, 1536, 2048, 3072, 4096)
_TINY = {"w": 7, "h": 5, "c": 3}
_WINDOW_CHOICES = {"kernel": (2, 3), "stride": (1, 2)}


def _entry(
    name: str,
    family: str,
    build: Callable[..., list[hl.Func]],
    defaults: dict[str, int],
    small: dict[str, int],
    schedule_slowdown: float = 1.0,
    **choices: tuple[int, ...],
) -> ZooEntry:
    # Copies, because entries share the preset dicts.
    return ZooEntry(name, family, build, dict(defaults), dict(small), choices, schedule_slowdown)


_LAYERS = [
    _entry(
        "conv2d",
        "conv",
        layer_workloads.conv2d,
        {"w": 56, "h": 56, "c_in": 32, "c_out": 32, "kernel": 3, "stride": 1, "padding": 1},
        {"w": 9, "h": 7, "c_in": 3, "c_out": 4, "kernel": 3, "stride": 2, "padding": 1},
        w=_SIDES,
        h=_SIDES,
        c_in=(3, *_CHANNELS),
        c_out=_CHANNELS,
        kernel=(1, 3, 5, 7),
        stride=(1, 2),
        padding=(0, 1, 2, 3),
    ),
    _entry(
        "depthwise_conv2d",
        "depthwise",
        layer_workloads.depthwise_conv2d,
        {"w": 112, "h": 112, "c": 64, "kernel": 3, "stride": 1, "padding": 1},
        {"w": 8, "h": 6, "c": 3, "kernel": 3, "stride": 1, "padding": 1},
        w=(56, 112, 224),
        h=(56, 112, 224),
        c=(32, 64, 128, 256),
        kernel=(3, 5, 7),
        stride=(1, 2),
        padding=(0, 1, 2, 3),
    ),
    _entry(
        "pointwise_conv2d",
        "pointwise",
        layer_workloads.pointwise_conv2d,
        {"w": 56, "h": 56, "c_in": 64, "c_out": 64},
        {"w": 5, "h": 4, "c_in": 6, "c_out": 3},
        w=_SIDES,
        h=_SIDES,
        c_in=_CHANNELS,
        c_out=_CHANNELS,
    ),
    _entry(
        "dense",
        "dense",
        layer_workloads.dense,
        {"batch": 64, "d_in": 512, "d_out": 512},
        {"batch": 3, "d_in": 7, "d_out": 5},
        batch=(16, 32, 64, 128, 256),
        d_in=_FEATURES,
        d_out=_FEATURES,
    ),
    _entry(
        "matmul",
        "dense",
        layer_workloads.matmul,
        {"m": 256, "k": 256, "n": 256},
        {"m": 4, "k": 6, "n": 5},
        m=(64, 128, 256, 512, 1024),
        k=(64, 128, 256, 512, 1024),
        n=(64, 128, 256, 512, 1024),
    ),
    _entry("bias_add", "elementwise", layer_workloads.bias_add, _LARGE_DEFAULTS, _TINY, **_LARGE_IMAGE),
    _entry("batch_norm", "norm", layer_workloads.batch_norm, _LARGE_DEFAULTS, _TINY, **_LARGE_IMAGE),
    _entry("relu", "activation", layer_workloads.relu, _LARGE_DEFAULTS, _TINY, **_LARGE_IMAGE),
    _entry("relu6", "activation", layer_workloads.relu6, _LARGE_DEFAULTS, _TINY, **_LARGE_IMAGE),
    _entry(
        "gelu",
        "activation",
        layer_workloads.gelu,
        {"w": 224, "h": 224, "c": 32},
        _TINY,
        w=_LARGE_SIDES,
        h=_LARGE_SIDES,
        c=(8, 16, 24, 32, 48, 64),
    ),
    _entry(
        "max_pool",
        "pool",
        layer_workloads.max_pool,
        {**_LARGE_DEFAULTS, "kernel": 2, "stride": 2},
        {"w": 9, "h": 8, "c": 2, "kernel": 3, "stride": 2},
        **_LARGE_IMAGE,
        **_WINDOW_CHOICES,
    ),
    _entry(
        "avg_pool",
        "pool",
        layer_workloads.avg_pool,
        {**_LARGE_DEFAULTS, "kernel": 3, "stride": 2},
        {"w": 9, "h": 8, "c": 2, "kernel": 3, "stride": 2},
        **_LARGE_IMAGE,
        **_WINDOW_CHOICES,
    ),
    _entry(
        "global_avg_pool",
        "pool",
        layer_workloads.global_avg_pool,
        {"w": 224, "h": 224, "c": 128},
        _TINY,
        w=_LARGE_SIDES,
        h=_LARGE_SIDES,
        c=(48, 64, 96, 128, 192, 256),
    ),
    _entry(
        "softmax",
        "softmax",
        layer_workloads.softmax,
        {"rows": 2048, "cols": 1024},
        {"rows": 3, "cols": 10},
        rows=_MATRIX_SIDES,
        cols=_MATRIX_SIDES,
    ),
    _entry(
        "channel_softmax",
        "softmax",
        layer_workloads.channel_softmax,
        {"w": 112, "h": 112, "c": 128},
        _TINY,
        w=_SIDES[2:] + (160, 224),
        h=_SIDES[2:] + (160, 224),
        c=(16, 32, 64, 128, 256),
    ),
    _entry("residual_add", "elementwise", layer_workloads.residual_add, _LARGE_DEFAULTS, _TINY, **_LARGE_IMAGE),
    _entry(
        "concat",
        "elementwise",
        layer_workloads.concat,
        {"w": 224, "h": 224, "c_a": 32, "c_b": 64},
        {"w": 5, "h": 4, "c_a": 2, "c_b": 3},
        w=_LARGE_SIDES,
        h=_LARGE_SIDES,
        c_a=(16, 32, 64, 128),
        c_b=(16, 32, 64, 128),
    ),
    _entry(
        "upsample2x",
        "upsample",
        layer_workloads.upsample2x,
        {"w": 112, "h": 112, "c": 128},
        _TINY,
        w=(56, 112, 160, 224),
        h=(56, 112, 160, 224),
        c=(32, 64, 128, 256),
    ),
]

# Blocks' schedule slowdowns: measured / estimated run time under greedy and small-beam Adams2019
# schedules on one core, rounded across a few shapes (the ratio varies with shape by up to 10x; single
# layers matched their estimates within about 2x).
_BLOCKS = [
    _entry(
        "resnet_basic_block",
        "resnet",
        blocks.resnet_basic_block,
        {"w": 28, "h": 28, "c_in": 32, "c_out": 32, "stride": 1},
        {"w": 6, "h": 5, "c_in": 4, "c_out": 4, "stride": 1},
        schedule_slowdown=2.0,
        w=(7, 14, 28, 56),
        h=(7, 14, 28, 56),
        c_in=_CHANNELS,
        c_out=_CHANNELS,
        stride=(1, 2),
    ),
    _entry(
        "resnet_bottleneck_block",
        "resnet",
        blocks.resnet_bottleneck_block,
        {"w": 14, "h": 14, "c_in": 256, "c_mid": 64, "c_out": 256, "stride": 1},
        {"w": 6, "h": 5, "c_in": 8, "c_mid": 3, "c_out": 8, "stride": 1},
        schedule_slowdown=2.0,
        w=(7, 14, 28, 56),
        h=(7, 14, 28, 56),
        c_in=(64, 128, 256, 512),
        c_mid=(16, 32, 64, 128),
        c_out=(64, 128, 256, 512),
        stride=(1, 2),
    ),
    _entry(
        "mobilenet_inverted_residual",
        "mobilenet",
        blocks.mobilenet_inverted_residual,
        {"w": 28, "h": 28, "c_in": 32, "c_out": 32, "expand": 6, "stride": 1},
        {"w": 6, "h": 5, "c_in": 3, "c_out": 3, "expand": 2, "stride": 1},
        schedule_slowdown=2.5,
        w=(14, 28, 56, 112),
        h=(14, 28, 56, 112),
        c_in=(16, 24, 32, 64, 96),
        c_out=(16, 24, 32, 64, 96),
        expand=(1, 4, 6),
        stride=(1, 2),
    ),
    _entry(
        "vgg",
        "vgg",
        blocks.vgg,
        {"w": 48, "h": 48, "c_in": 3, "width": 16, "depth": 3},
        {"w": 8, "h": 6, "c_in": 2, "width": 3, "depth": 2},
        schedule_slowdown=5.0,
        w=(32, 48, 64, 96, 128),
        h=(32, 48, 64, 96, 128),
        c_in=(1, 3, 8),
        width=(8, 16, 32, 64),
        depth=(1, 2, 3),
    ),
    _entry(
        "mlp",
        "mlp",
        blocks.mlp,
        {"batch": 32, "d_in": 256, "hidden": 256, "d_out": 128, "depth": 2},
        {"batch": 3, "d_in": 6, "hidden": 5, "d_out": 4, "depth": 2},
        schedule_slowdown=3.0,
        batch=(16, 32, 64, 128, 256),
        d_in=(128, 256, 512, 1024),
        hidden=(128, 256, 512, 1024),
        d_out=(10, 128, 512),
        depth=(1, 2, 3),
    ),
    _entry(
        "attention",
        "attention",
        blocks.attention,
        {"tokens": 128, "heads": 4, "head_dim": 32},
        {"tokens": 5, "heads": 2, "head_dim": 3},
        schedule_slowdown=1.5,
        tokens=(49, 64, 96, 128, 196, 256, 384),
        heads=(1, 2, 3, 4, 6, 8),
        head_dim=(16, 32, 48, 64),
    ),
]

#: Every zoo entry by name.
ZOO: dict[str, ZooEntry] = {entry.name: entry for entry in _LAYERS + _BLOCKS}


def zoo_variants(name: str, count: int, seed: int) -> list[str]:
    """``count`` distinct URIs of zoo entry ``name`` with shapes drawn from its choices.

    Shapes are visited in a seeded random order of the whole choice space, and only those that
    build and whose estimated run time lies in :data:`VARIANT_MS` are kept. The result depends only
    on ``(name, count, seed)``, and a larger ``count`` extends a smaller one's list.
    """
    if name not in ZOO:
        raise WorkloadError(f"zoo_variants: no zoo entry {name!r}; known: {', '.join(sorted(ZOO))}")
    if count < 0 or seed < 0:
        raise ValueError(f"zoo_variants: count and seed must be non-negative, got count={count}, seed={seed}")
    entry = ZOO[name]
    keys, options = list(entry.choices), list(entry.choices.values())
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    uris: list[str] = []
    for index in rng.permutation(math.prod(len(values) for values in options)):
        if len(uris) == count:
            break
        shapes = dict(entry.defaults)
        for key, values in zip(keys, options, strict=True):  # index in mixed radix: one digit per parameter
            index, digit = divmod(int(index), len(values))
            shapes[key] = values[digit]
        if _fits_measurement(entry, shapes):
            uris.append(zoo_uri(name, **shapes))
    if len(uris) < count:
        raise WorkloadError(
            f"zoo_variants: {name!r} has only {len(uris)} shapes estimated to run "
            f"{VARIANT_MS[0]}-{VARIANT_MS[1]} ms, fewer than count={count}"
        )
    return uris


def _fits_measurement(entry: ZooEntry, shapes: Mapping[str, int]) -> bool:
    try:
        estimate = entry.estimated_ms(shapes)
    except WorkloadError:  # e.g. a kernel that does not fit the image
        return False
    return VARIANT_MS[0] <= estimate <= VARIANT_MS[1]


def all_zoo_variants(count_per_entry: int, seed: int = 0) -> list[str]:
    """:func:`zoo_variants` of every zoo entry, in registry order."""
    return [uri for name in ZOO for uri in zoo_variants(name, count_per_entry, seed)]
