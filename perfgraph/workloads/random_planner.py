"""Draws the plan of random pipeline number ``seed``: a seeded DAG of 2-20 Halide stages.

Like Halide's ``apps/random_pipeline`` generator, stages are drawn one at a time from a menu of
image-processing and DL building blocks: stencils, convolutions, pooling, down/up-sampling,
channel mixes, pointwise maths, binary ops joining two branches, scans and casts between types.
Two things differ. The input size is chosen *after* the stages, from a cost model, so heavy
stage mixes get small images and cheap ones large images and run times stay within a narrow band
(about 0.5-30 ms on one core) instead of spanning five decades. And every value bound is tracked,
so floats stay finite and integer arithmetic never overflows for inputs in [-1, 1].

>>> plan = plan_random_pipeline(7)
>>> plan == plan_random_pipeline(7), MIN_ROWS <= plan.rows <= MAX_ROWS, plan.stages[0].name
(True, True, 's0_input')
"""

from __future__ import annotations

import math
import random
from typing import Any

from perfgraph.workloads.random_plan import (
    INT_DTYPES,
    MAC_NS,
    TAP_NS,
    UNARY_NS,
    PipelinePlan,
    StagePlan,
    float_result,
    is_float,
)

MIN_ROWS, MAX_ROWS = 2, 20  # Halide stages (featurization rows) per pipeline
MIN_LEVEL, MAX_LEVEL = -1, 4  # spatial levels: size = input size * 2**-level
MIN_DIM, MAX_DIM = 64, 2048  # input width/height, multiples of 2**MAX_LEVEL
MAX_STAGE_POINTS = 2_000_000  # values in one stage (8 MB as float32)
MAX_FOOTPRINT_BYTES = 24 * 2**20  # all stages together, so compute_root schedules still fit in L3
MIN_TARGET_MS, MAX_TARGET_MS = 0.5, 8.0  # the cost model's run time, drawn log-uniformly
FLOAT_RESCALE_ABOVE = 1e4  # float results with a larger bound are multiplied back to bound 1
INT_SAFE = 2**30  # integer intermediates stay below this, so int32 arithmetic cannot overflow
MAX_SCAN_EXTENT = MAX_DIM << -MIN_LEVEL
CHANNEL_CHOICES = (4, 8, 16, 24, 32, 48, 64)
# The |value| bound a quantizing cast produces, and the offset it adds (unsigned types are centred).
QUANTIZED = {
    "uint8": (127.0, 128.0),
    "uint16": (32767.0, 32768.0),
    "int16": (32767.0, 0.0),
    "int32": (2.0**20, 0.0),
}
OP_WEIGHTS: tuple[tuple[str, float], ...] = (
    ("stencil", 3.0),
    ("conv", 3.0),
    ("pool", 1.5),
    ("downsample", 1.0),
    ("upsample", 1.0),
    ("mix", 1.5),
    ("unary", 2.5),
    ("binary", 2.5),
    ("scan", 1.0),
    ("cast", 1.5),
)


def plan_random_pipeline(seed: int) -> PipelinePlan:
    """The plan of random pipeline ``seed``; the same seed always gives an equal plan."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {seed!r} ({type(seed).__name__})")
    return _Planner(seed).plan()


class _Planner:
    """Draws stages until a random row budget is spent, then sizes the input to a random time target."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.target_ns = 1e6 * math.exp(self.rng.uniform(math.log(MIN_TARGET_MS), math.log(MAX_TARGET_MS)))
        # Per-pixel limits that keep even the smallest input within the time and memory targets.
        self.max_ns_per_pixel = self.target_ns / MIN_DIM**2
        self.max_bytes_per_pixel = MAX_FOOTPRINT_BYTES / MIN_DIM**2
        self.row_budget = self.rng.randint(MIN_ROWS, MAX_ROWS) - 1  # one row kept for a final cast
        self.input_channels = self.rng.choice((1, 3, 3, 4, 8, 16))
        first = StagePlan(0, "s0_input", "input", "", (), "float32", 0, 0, self.input_channels, 1.0, 1, 0.05)
        self.stages: list[StagePlan] = [first]
        self.heads: list[int] = [0]  # stages that no later stage reads yet

    # -- bookkeeping ---------------------------------------------------------------------------
    def _total(self, attribute: str) -> float:
        return sum(getattr(stage, attribute) for stage in self.stages)

    def _heads_after(self, inputs: tuple[int, ...]) -> list[int]:
        return [h for h in self.heads if h not in inputs] + [len(self.stages)]

    def _fits(self, stage: StagePlan) -> bool:
        joins_needed = len(self._heads_after(stage.inputs)) - 1
        return (
            self._total("rows") + stage.rows + joins_needed <= self.row_budget
            and self._total("ns_per_pixel") + stage.ns_per_pixel <= self.max_ns_per_pixel
            and self._total("bytes_per_pixel") + stage.bytes_per_pixel <= self.max_bytes_per_pixel
        )

    def _add(self, stage: StagePlan) -> None:
        self.heads = self._heads_after(stage.inputs)
        self.stages.append(stage)

    def _stage(
        self, op: str, variant: str, inputs: tuple[int, ...], like: StagePlan, **fields: Any
    ) -> StagePlan:
        """A new stage named after its index and op, shaped like ``like`` unless ``fields`` say otherwise."""
        index = len(self.stages)
        label = fields.pop("label", op)
        values: dict[str, Any] = dict(
            dtype=like.dtype,
            level_x=like.level_x,
            level_y=like.level_y,
            channels=like.channels,
            bound=like.bound,
            rows=1,
            ns_per_point=TAP_NS,
            params={},
        )
        values.update(fields)
        return StagePlan(index, f"s{index}_{label}", op, variant, inputs, **values)

    # -- the plan ------------------------------------------------------------------------------
    def plan(self) -> PipelinePlan:
        while self._draw_stage():
            pass
        while len(self.heads) > 1:  # join dangling branches so that every stage reaches the output
            self._add(self._binary(self.stages[self.heads[-1]], self.stages[self.heads[-2]]))
        if len(self.stages) == 1:
            self._add(self._unary(self.stages[0]))
        if self.stages[-1].dtype != "float32":
            self._add(self._cast(self.stages[-1], "float32"))
        width, height = self._input_size()
        boundary = self.rng.choice(("repeat_edge", "zero"))
        return PipelinePlan(self.seed, width, height, self.input_channels, boundary, tuple(self.stages))

    def _draw_stage(self) -> bool:
        """Add one random stage that fits the budgets; False when none does."""
        kinds = list(OP_WEIGHTS)
        while kinds:
            op = self.rng.choices([k for k, _ in kinds], weights=[w for _, w in kinds])[0]
            kinds = [(k, w) for k, w in kinds if k != op]
            stage = self._propose(op, self._pick_source())
            if stage is not None and self._fits(stage):
                self._add(stage)
                return True
        return False

    def _pick_source(self) -> StagePlan:
        """Usually the newest stage (a chain); sometimes an older one, which starts a branch."""
        if len(self.stages) > 1 and self.rng.random() < 0.25:
            return self.stages[self.rng.randrange(len(self.stages) - 1)]
        return self.stages[-1]

    def _propose(self, op: str, src: StagePlan) -> StagePlan | None:
        if op == "binary":
            others = [s for s in self.stages if s.index != src.index]
            if not others:
                return None
            dangling = [self.stages[h] for h in self.heads if h != src.index]
            pool = dangling if dangling and self.rng.random() < 0.5 else others
            return self._binary(src, self.rng.choice(pool))
        if op == "cast":
            return self._cast(src, None)
        return getattr(self, f"_{op}")(src)

    def _input_size(self) -> tuple[int, int]:
        """Width and height that bring the estimated run time near the drawn target."""
        step = 2**MAX_LEVEL
        largest = max(stage.relative_points for stage in self.stages)
        max_pixels = min(
            MAX_DIM**2, MAX_STAGE_POINTS / largest, MAX_FOOTPRINT_BYTES / self._total("bytes_per_pixel")
        )
        pixels = min(max(self.target_ns / self._total("ns_per_pixel"), MIN_DIM**2), max_pixels)
        aspect = self.rng.uniform(0.5, 2.0)

        def snap(size: float) -> int:
            return int(min(max(round(size / step) * step, MIN_DIM), MAX_DIM))

        width = snap(math.sqrt(pixels * aspect))
        return width, snap(pixels / width)

    # -- helpers for the stage kinds -----------------------------------------------------------
    def _int_fits(self, src: StagePlan, factor: float) -> bool:
        """Whether integer values of ``src`` times ``factor`` still fit the int32 accumulator."""
        return not is_float(src.dtype) and src.bound * factor < INT_SAFE

    def _float_bound(self, bound: float, params: dict[str, Any]) -> float:
        """Rescale a float result whose bound grew too large; the factor goes into ``params``."""
        if bound > FLOAT_RESCALE_ABOVE:
            params["scale"] = 1.0 / bound
            return 1.0
        return bound

    def _weighted_sum(self, bound: float, terms: int) -> tuple[float, float]:
        """The factor for a sum of ``terms`` products with weights in [-1, 1], and the result's bound.

        ``1/sqrt(terms)`` keeps typical magnitudes steady through chains of convolutions (no drift
        into denormals, which would make run times data-dependent); ``1/terms`` takes over when the
        worst-case bound would grow too large.
        """
        if bound * math.sqrt(terms) <= FLOAT_RESCALE_ABOVE:
            return 1.0 / math.sqrt(terms), bound * math.sqrt(terms)
        return 1.0 / terms, bound

    def _channels_out(self, src: StagePlan, ns_per_point: float) -> int | None:
        """A random output channel count whose cost still fits the budget, or None."""
        per_channel = ns_per_point * 2.0 ** -(src.level_x + src.level_y)
        room = self.max_ns_per_pixel - self._total("ns_per_pixel")
        fitting = [c for c in CHANNEL_CHOICES if c * per_channel <= room]
        return self.rng.choice(fitting) if fitting else None

    # -- the stage kinds -----------------------------------------------------------------------
    def _stencil(self, src: StagePlan) -> StagePlan:
        """A depthwise stencil, unrolled: 1-D along x or y, or 2-D."""
        shape = self.rng.choice(("x", "y", "xy"))
        k = self.rng.choice((3, 5, 7)) if shape != "xy" else self.rng.choice((3, 3, 5))
        offsets = range(-(k // 2), k // 2 + 1)
        taps = [(dx, 0) for dx in offsets] if shape == "x" else [(0, dy) for dy in offsets]
        if shape == "xy":
            taps = [(dx, dy) for dy in offsets for dx in offsets]
        integer = self._int_fits(src, 3 * len(taps))
        if integer:  # small positive integer weights, normalized by their sum: a blur in the source type
            weights = [float(self.rng.randint(1, 3)) for _ in taps]
            bound, dtype = src.bound, src.dtype
        else:
            raw = [self.rng.gauss(0.0, 1.0) for _ in taps]
            norm = sum(abs(w) for w in raw) or 1.0
            weights = [round(w / norm, 4) for w in raw]
            bound, dtype = src.bound * sum(abs(w) for w in weights), float_result(src.dtype)
        variant = f"{k}x{k}" if shape == "xy" else f"{k}-tap along {shape}"
        params = {"taps": tuple(taps), "weights": tuple(weights), "integer": integer}
        return self._stage(
            "stencil",
            variant,
            (src.index,),
            src,
            dtype=dtype,
            bound=bound,
            ns_per_point=TAP_NS * len(taps),
            params=params,
        )

    def _conv(self, src: StagePlan) -> StagePlan | None:
        """A dense KxK convolution over all input channels, with a weight input; an RDom reduction."""
        k = self.rng.choice((3, 3, 5))
        cost = MAC_NS * k * k * src.channels
        out = self._channels_out(src, cost)
        if out is None:
            return None
        scale, bound = self._weighted_sum(src.bound, k * k * src.channels)
        return self._stage(
            "conv",
            f"{k}x{k} {src.channels}->{out}",
            (src.index,),
            src,
            dtype=float_result(src.dtype),
            channels=out,
            bound=bound,
            rows=2,
            ns_per_point=cost,
            params={"kernel": k, "scale": scale},
        )

    def _mix(self, src: StagePlan) -> StagePlan | None:
        """A channel all-to-all (1x1 convolution): a matmul over c, unrolled for few channels."""
        if src.channels < 2:
            return None
        cost = MAC_NS * src.channels
        out = self._channels_out(src, cost)
        if out is None:
            return None
        unrolled = src.channels <= 8 and self.rng.random() < 0.5
        scale, bound = self._weighted_sum(src.bound, src.channels)
        return self._stage(
            "mix",
            f"{'unrolled' if unrolled else 'rdom'} {src.channels}->{out}",
            (src.index,),
            src,
            dtype=float_result(src.dtype),
            channels=out,
            bound=bound,
            rows=1 if unrolled else 2,
            ns_per_point=cost,
            params={"unrolled": unrolled, "scale": scale},
        )

    def _pool(self, src: StagePlan) -> StagePlan | None:
        """Max or average pooling with stride 2, unrolled or as an RDom reduction."""
        if max(src.level_x, src.level_y) >= MAX_LEVEL:
            return None
        kind = self.rng.choice(("max", "avg"))
        window = self.rng.choice((2, 3))
        integer_avg = kind == "avg" and not is_float(src.dtype)
        if integer_avg and not self._int_fits(src, window * window):
            return None
        rdom = not integer_avg and self.rng.random() < 0.5
        dtype = src.dtype if kind == "max" or integer_avg else float_result(src.dtype)
        return self._stage(
            "pool",
            f"{kind} {window}x{window} stride 2{' rdom' if rdom else ''}",
            (src.index,),
            src,
            label=f"{kind}pool",
            dtype=dtype,
            level_x=src.level_x + 1,
            level_y=src.level_y + 1,
            rows=2 if rdom else 1,
            ns_per_point=TAP_NS * window**2,
            params={"kind": kind, "window": window, "rdom": rdom},
        )

    def _axes(self, src: StagePlan, step: int) -> tuple[bool, bool] | None:
        """Which of x and y to resample (by ``step`` levels), or None when neither may."""
        allowed = [MIN_LEVEL <= level + step <= MAX_LEVEL for level in (src.level_x, src.level_y)]
        choices = [
            axes
            for axes in ((True, False), (False, True), (True, True))
            if all(allowed[i] or not axes[i] for i in (0, 1))
        ]
        return self.rng.choice(choices) if choices else None

    def _downsample(self, src: StagePlan) -> StagePlan | None:
        axes = self._axes(src, +1)
        if axes is None:
            return None
        box = self.rng.random() < 0.5 and (is_float(src.dtype) or self._int_fits(src, 4))
        return self._resample("downsample", "box" if box else "nearest", src, axes, +1)

    def _upsample(self, src: StagePlan) -> StagePlan | None:
        axes = self._axes(src, -1)
        if axes is None:
            return None
        linear = self.rng.random() < 0.5 and (is_float(src.dtype) or self._int_fits(src, 4))
        return self._resample("upsample", "linear" if linear else "nearest", src, axes, -1)

    def _resample(self, op: str, mode: str, src: StagePlan, axes: tuple[bool, bool], step: int) -> StagePlan:
        names = "".join(name for name, on in zip("xy", axes, strict=True) if on)
        taps = 1 if mode == "nearest" else 2 ** sum(axes)
        return self._stage(
            op,
            f"2x {mode} along {names}",
            (src.index,),
            src,
            label="down" if step > 0 else "up",
            level_x=src.level_x + step * axes[0],
            level_y=src.level_y + step * axes[1],
            ns_per_point=TAP_NS * taps,
            params={"mode": mode, "axes": axes},
        )

    def _unary(self, src: StagePlan) -> StagePlan:
        """Pointwise maths, in floating point (integer sources are converted)."""
        fn = self.rng.choice(sorted(UNARY_NS))
        params: dict[str, Any] = {"fn": fn}
        b = src.bound
        if fn in ("exp", "sin"):  # bounded arguments: no overflow, and sin stays on libm's fast path
            params["input_scale"] = min(1.0, (8.0 if fn == "exp" else math.pi) / b)
        if fn == "exp":
            bound = math.exp(b * params["input_scale"])
        else:
            bound = {
                "log": math.log1p(b),
                "sqrt": math.sqrt(b),
                "sin": 1.0,
                "tanh": 1.0,
                "relu": b,
                "abs": b,
                "square": b * b,
            }[fn]
        bound = self._float_bound(bound, params)
        return self._stage(
            "unary",
            fn,
            (src.index,),
            src,
            label=fn,
            dtype=float_result(src.dtype),
            bound=bound,
            ns_per_point=UNARY_NS[fn],
            params=params,
        )

    def _binary(self, f: StagePlan, g: StagePlan) -> StagePlan:
        """Combine two stages at the finer resolution and the larger channel count of the two.

        The coarser operand is upsampled (nearest) and the one with fewer channels repeats them, so
        every value either operand computes is used: no dead work hides from the cost model.
        """
        same_int = f.dtype == g.dtype and not is_float(f.dtype)
        fn = self.rng.choice(
            ("add", "sub", "max", "min") if same_int else ("add", "sub", "mul", "max", "min")
        )
        params: dict[str, Any] = {"fn": fn}
        if same_int:  # computed in the integer type, saturating
            dtype = f.dtype
            bound = max(f.bound, g.bound) if fn in ("max", "min") else f.bound + g.bound
        else:
            dtype = float_result(f.dtype, g.dtype)
            bound = {"add": f.bound + g.bound, "sub": f.bound + g.bound, "mul": f.bound * g.bound}.get(
                fn, max(f.bound, g.bound)
            )
            bound = self._float_bound(bound, params)
        return self._stage(
            "binary",
            fn,
            (f.index, g.index),
            f,
            label=fn,
            dtype=dtype,
            bound=bound,
            level_x=min(f.level_x, g.level_x),
            level_y=min(f.level_y, g.level_y),
            channels=max(f.channels, g.channels),
            ns_per_point=0.05,
            params=params,
        )

    def _scan(self, src: StagePlan) -> StagePlan:
        """A running sum along one axis: an integral image in int32, or a decaying (IIR) float sum."""
        axis = self.rng.choice(("x", "y", "c") if src.channels > 1 else ("x", "y"))
        extent = src.channels if axis == "c" else MAX_SCAN_EXTENT
        if self._int_fits(src, extent):
            return self._stage(
                "scan",
                f"cumulative sum along {axis}",
                (src.index,),
                src,
                dtype="int32",
                bound=src.bound * extent,
                rows=2,
                ns_per_point=0.5,
                params={"axis": axis, "decay": None},
            )
        decay = self.rng.choice((0.5, 0.8, 0.9, 0.95))
        return self._stage(
            "scan",
            f"decaying sum along {axis} ({decay})",
            (src.index,),
            src,
            dtype=float_result(src.dtype),
            rows=2,
            ns_per_point=0.5,
            params={"axis": axis, "decay": decay},
        )

    def _cast(self, src: StagePlan, dtype: str | None) -> StagePlan:
        """Quantize floats to an integer type (scaled to its range), widen to float64, or come back."""
        if dtype is None:
            floats = [t for t in (*INT_DTYPES, "float32", "float64") if t != src.dtype]
            choices = floats if is_float(src.dtype) else ["float32"]
            dtype = self.rng.choice(choices)
        if dtype in QUANTIZED:
            half_range, offset = QUANTIZED[dtype]
            params: dict[str, Any] = {"scale": half_range / src.bound, "offset": offset}
            bound = half_range + offset
        elif is_float(src.dtype):
            params, bound = {"scale": 1.0, "offset": 0.0}, src.bound
        else:  # back from integers to floats, normalized to bound 1
            params, bound = {"scale": 1.0 / src.bound, "offset": 0.0}, 1.0
        return self._stage(
            "cast",
            f"{src.dtype}->{dtype}",
            (src.index,),
            src,
            label=f"to_{dtype}",
            dtype=dtype,
            bound=bound,
            ns_per_point=0.1,
            params=params,
        )
