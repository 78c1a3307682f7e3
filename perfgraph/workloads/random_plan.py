"""Seeded plans for random pipelines: which stages, of which shapes and types, as plain data.

Halide's own ``apps/random_pipeline`` generator (which produced the Adams2019 training set) draws
stages one at a time while it writes Halide code. We split that in two: this module draws a
:class:`PipelinePlan` using only :class:`random.Random` -- no Halide -- so that a plan can be
described, compared and tested cheaply; :mod:`perfgraph.workloads.random_pipeline` turns a plan
into ``hl.Func`` s. Planning first also lets the input size be chosen *after* the stages are
known: stage mixes with heavy convolutions get small images, cheap ones get large images, which
keeps the run times of decent schedules within a narrow band instead of spanning five decades.

>>> plan = plan_random_pipeline(7)
>>> plan == plan_random_pipeline(7), 2 <= plan.rows <= 20
(True, True)
>>> plan.stages[0].name
's0_input'
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

MIN_ROWS, MAX_ROWS = 2, 20  # Halide stages (featurization rows) per pipeline
MIN_LEVEL, MAX_LEVEL = -1, 4  # spatial levels: size = input size * 2**-level
MIN_DIM, MAX_DIM = 64, 2048  # input width/height; multiples of 2**MAX_LEVEL
MAX_STAGE_POINTS = 8_000_000  # values in one stage (32 MB as float32)
# Arithmetic per pipeline, drawn log-uniformly; calibrated so that beam-1 Adams2019 schedules
# run in about 0.5-30 ms on one core (see the report in the commit that added this module).
MIN_TARGET_OPS, MAX_TARGET_OPS = 4e6, 8e7
FLOAT_RESCALE_ABOVE = 1e4  # float results with a larger bound get multiplied back to bound 1
INT_SAFE = 2**30  # integer intermediates stay below this, so int32 arithmetic cannot overflow
MAX_SCAN_EXTENT = MAX_DIM << -MIN_LEVEL

FLOAT_DTYPES = ("float32", "float64")
INT_DTYPES = ("uint8", "uint16", "int16", "int32")
# The |value| bound a quantizing cast produces, and the offset it adds (unsigned types are centred).
QUANTIZED = {"uint8": (127.0, 128.0), "uint16": (32767.0, 32768.0), "int16": (32767.0, 0.0), "int32": (2.0**20, 0.0)}

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
UNARY_OPS_PER_POINT = {"exp": 10, "log": 10, "sqrt": 4, "sin": 10, "tanh": 12, "relu": 1, "abs": 1, "square": 1}
CHANNEL_CHOICES = (4, 8, 16, 24, 32, 48, 64)


@dataclass(frozen=True)
class StagePlan:
    """One stage: what it computes from which earlier stages, and the shape and type of its values.

    ``level_x``/``level_y`` give the size relative to the input (``width * 2**-level_x``);
    ``bound`` is an upper bound on ``|value|`` for the input data ``random_input`` draws (uniform
    in [-1, 1)), used to keep floats finite and to pick quantization scales.
    ``rows`` counts the Halide stages the Func adds: 1 for the pure definition plus its updates.
    """

    index: int
    name: str
    op: str
    variant: str
    inputs: tuple[int, ...]
    dtype: str
    level_x: int
    level_y: int
    channels: int
    bound: float
    rows: int
    ops_per_point: float
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def relative_points(self) -> float:
        """Values computed per input pixel."""
        return self.channels * 2.0 ** -(self.level_x + self.level_y)


@dataclass(frozen=True)
class PipelinePlan:
    """A whole random pipeline: input size, boundary condition and stages in definition order."""

    seed: int
    width: int
    height: int
    channels: int
    boundary: str  # "repeat_edge" or "zero"
    stages: tuple[StagePlan, ...]

    @property
    def output(self) -> StagePlan:
        return self.stages[-1]

    @property
    def rows(self) -> int:
        """Halide stages in the pipeline: the rows of Adams2019's featurization."""
        return sum(stage.rows for stage in self.stages)

    @property
    def total_ops(self) -> float:
        """Rough arithmetic of the whole pipeline, the quantity the input size was chosen by."""
        return self.width * self.height * sum(s.ops_per_point * s.relative_points for s in self.stages)

    def extent(self, stage: StagePlan) -> tuple[int, int, int]:
        """Width, height and channels of a stage, in Halide dimension order."""
        return scaled(self.width, stage.level_x), scaled(self.height, stage.level_y), stage.channels

    def describe(self) -> list[str]:
        """One readable line per stage, e.g. ``s3_conv = conv 3x3 16->32 (s2) : float32 64x64x32``."""
        lines = []
        for stage in self.stages:
            w, h, c = self.extent(stage)
            sources = ", ".join(self.stages[i].name for i in stage.inputs)
            lines.append(f"{stage.name} = {stage.op} {stage.variant} ({sources}) : {stage.dtype} {w}x{h}x{c}")
        return lines


def scaled(size: int, level: int) -> int:
    """The size of a dimension at a spatial level (input sizes are multiples of ``2**MAX_LEVEL``)."""
    return size >> level if level >= 0 else size << -level


def is_float(dtype: str) -> bool:
    return dtype in FLOAT_DTYPES


def float_result(*dtypes: str) -> str:
    """The float type to compute in when mixing these types: float64 if any is, else float32."""
    return "float64" if "float64" in dtypes else "float32"


def plan_random_pipeline(seed: int) -> PipelinePlan:
    """The plan of random pipeline ``seed``; the same seed always gives an equal plan."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {seed!r} ({type(seed).__name__})")
    return _Planner(seed).plan()


class _Planner:
    """Draws stages until a random row budget is spent, then sizes the input to a random work target."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.target_ops = math.exp(self.rng.uniform(math.log(MIN_TARGET_OPS), math.log(MAX_TARGET_OPS)))
        # Upper bound on arithmetic per input pixel, so that even the smallest input stays on target.
        self.max_ops_per_pixel = self.target_ops / (MIN_DIM * MIN_DIM)
        # One row stays in reserve for a final cast back to float32.
        self.row_budget = self.rng.randint(MIN_ROWS, MAX_ROWS) - 1
        self.input_channels = self.rng.choice((1, 3, 3, 4, 8, 16))
        first = StagePlan(0, "s0_input", "input", "", (), "float32", 0, 0, self.input_channels, 1.0, 1, 1.0)
        self.stages: list[StagePlan] = [first]
        self.heads: list[int] = [0]  # stages no later stage reads yet

    # -- bookkeeping ---------------------------------------------------------------------------
    @property
    def rows_used(self) -> int:
        return sum(stage.rows for stage in self.stages)

    @property
    def ops_per_pixel(self) -> float:
        return sum(stage.ops_per_point * stage.relative_points for stage in self.stages)

    def _heads_after(self, inputs: tuple[int, ...]) -> list[int]:
        return [h for h in self.heads if h not in inputs] + [len(self.stages)]

    def _fits(self, stage: StagePlan) -> bool:
        joins_needed = len(self._heads_after(stage.inputs)) - 1
        cost = stage.ops_per_point * stage.relative_points
        return (
            self.rows_used + stage.rows + joins_needed <= self.row_budget
            and self.ops_per_pixel + cost <= self.max_ops_per_pixel
        )

    def _add(self, stage: StagePlan) -> None:
        self.heads = self._heads_after(stage.inputs)
        self.stages.append(stage)

    def _stage(self, op: str, variant: str, inputs: tuple[int, ...], like: StagePlan, **fields: Any) -> StagePlan:
        """A new stage named after its index and op, shaped like ``like`` unless ``fields`` say otherwise."""
        index = len(self.stages)
        label = fields.pop("label", op)
        defaults: dict[str, Any] = dict(
            dtype=like.dtype, level_x=like.level_x, level_y=like.level_y, channels=like.channels,
            bound=like.bound, rows=1, ops_per_point=1.0, params={},
        )
        defaults.update(fields)
        return StagePlan(index, f"s{index}_{label}", op, variant, inputs, **defaults)

    # -- the plan ------------------------------------------------------------------------------
    def plan(self) -> PipelinePlan:
        while self._draw_stage():
            pass
        while len(self.heads) > 1:  # join dangling branches so that every stage reaches the output
            self._add(self._binary(self.stages[self.heads[-1]], self.stages[self.heads[-2]]))
        if len(self.stages) == 1:
            self._add(self._unary(self.stages[0], force_float32=True))
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
            source = self._pick_source()
            stage = self._propose(op, source)
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
        if op == "unary":
            return self._unary(src)
        return getattr(self, f"_{op}")(src)

    def _input_size(self) -> tuple[int, int]:
        """Width and height putting the planned arithmetic near the drawn target."""
        step = 2**MAX_LEVEL
        largest = max(stage.relative_points for stage in self.stages)
        max_pixels = min(MAX_DIM * MAX_DIM, MAX_STAGE_POINTS / largest)
        pixels = min(max(self.target_ops / self.ops_per_pixel, MIN_DIM * MIN_DIM), max_pixels)
        aspect = self.rng.uniform(0.5, 2.0)

        def snap(size: float) -> int:
            return int(min(max(round(size / step) * step, MIN_DIM), MAX_DIM))

        width = snap(math.sqrt(pixels * aspect))
        return width, snap(pixels / width)

    # -- stage kinds ---------------------------------------------------------------------------
    def _int_fits(self, src: StagePlan, factor: float) -> bool:
        """Whether integer values of ``src`` times ``factor`` still fit the int32 accumulator."""
        return not is_float(src.dtype) and src.bound * factor < INT_SAFE

    def _float_bound(self, bound: float, params: dict[str, Any]) -> float:
        """Rescale a float result whose bound grew too large; the factor goes into ``params``."""
        if bound > FLOAT_RESCALE_ABOVE:
            params["scale"] = 1.0 / bound
            return 1.0
        return bound

    def _stencil(self, src: StagePlan) -> StagePlan:
        shape = self.rng.choice(("x", "y", "xy"))
        k = self.rng.choice((3, 5, 7)) if shape != "xy" else self.rng.choice((3, 3, 5))
        offsets = range(-(k // 2), k // 2 + 1)
        taps = [(dx, 0) for dx in offsets] if shape == "x" else [(0, dy) for dy in offsets]
        if shape == "xy":
            taps = [(dx, dy) for dy in offsets for dx in offsets]
        integer = self._int_fits(src, 3 * len(taps))
        if integer:
            weights = [float(self.rng.randint(1, 3)) for _ in taps]
            bound, dtype = src.bound, src.dtype
        else:
            raw = [self.rng.gauss(0.0, 1.0) for _ in taps]
            norm = sum(abs(w) for w in raw) or 1.0
            weights = [round(w / norm, 4) for w in raw]
            bound, dtype = src.bound * sum(abs(w) for w in weights), float_result(src.dtype)
        variant = f"{k}x{k}" if shape == "xy" else f"{k}-tap along {shape}"
        params = {"taps": tuple(taps), "weights": tuple(weights), "integer": integer}
        return self._stage("stencil", variant, (src.index,), src, dtype=dtype, bound=bound,
                           ops_per_point=2.0 * len(taps), params=params)

    def _conv(self, src: StagePlan) -> StagePlan | None:
        k = self.rng.choice((3, 3, 5))
        per_out = 2.0 * k * k * src.channels
        fitting = [c for c in CHANNEL_CHOICES if self._cost_fits(per_out, c, src)]
        if not fitting:
            return None
        out = self.rng.choice(fitting)
        return self._stage("conv", f"{k}x{k} {src.channels}->{out}", (src.index,), src,
                           dtype=float_result(src.dtype), channels=out, rows=2, ops_per_point=per_out,
                           params={"kernel": k})

    def _mix(self, src: StagePlan) -> StagePlan | None:
        """A channel all-to-all (1x1 convolution): a matmul over c, unrolled for few channels."""
        if src.channels < 2:
            return None
        per_out = 2.0 * src.channels
        fitting = [c for c in CHANNEL_CHOICES if self._cost_fits(per_out, c, src)]
        if not fitting:
            return None
        out = self.rng.choice(fitting)
        unrolled = src.channels <= 8 and self.rng.random() < 0.5
        return self._stage("mix", f"{'unrolled' if unrolled else 'rdom'} {src.channels}->{out}", (src.index,), src,
                           dtype=float_result(src.dtype), channels=out, rows=1 if unrolled else 2,
                           ops_per_point=per_out, params={"unrolled": unrolled})

    def _cost_fits(self, ops_per_point: float, channels: int, like: StagePlan) -> bool:
        relative = channels * 2.0 ** -(like.level_x + like.level_y)
        return self.ops_per_pixel + ops_per_point * relative <= self.max_ops_per_pixel

    def _pool(self, src: StagePlan) -> StagePlan | None:
        if max(src.level_x, src.level_y) >= MAX_LEVEL:
            return None
        kind = self.rng.choice(("max", "avg"))
        window = self.rng.choice((2, 3))
        n = window * window
        integer_avg = kind == "avg" and not is_float(src.dtype)
        if integer_avg and not self._int_fits(src, n):
            return None
        rdom = not integer_avg and self.rng.random() < 0.5
        dtype = src.dtype if kind == "max" or integer_avg else float_result(src.dtype)
        return self._stage("pool", f"{kind} {window}x{window} stride 2{' rdom' if rdom else ''}", (src.index,), src,
                           label=f"{kind}pool", dtype=dtype, level_x=src.level_x + 1, level_y=src.level_y + 1,
                           rows=2 if rdom else 1, ops_per_point=float(n),
                           params={"kind": kind, "window": window, "rdom": rdom})

    def _axes(self, src: StagePlan, step: int) -> tuple[bool, bool] | None:
        """Which of x and y to resample (by ``step`` levels), or None when neither may."""
        ok = [MIN_LEVEL <= level + step <= MAX_LEVEL for level in (src.level_x, src.level_y)]
        choices = [axes for axes in ((True, False), (False, True), (True, True)) if all(ok[i] or not axes[i] for i in (0, 1))]
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
        return self._stage(op, f"2x {mode} along {names}", (src.index,), src, label="down" if step > 0 else "up",
                           level_x=src.level_x + step * axes[0], level_y=src.level_y + step * axes[1],
                           ops_per_point=1.0 if mode == "nearest" else 3.0 * sum(axes),
                           params={"mode": mode, "axes": axes})

    def _unary(self, src: StagePlan, force_float32: bool = False) -> StagePlan:
        fn = self.rng.choice(sorted(UNARY_OPS_PER_POINT))
        dtype = "float32" if force_float32 else float_result(src.dtype)
        params: dict[str, Any] = {"fn": fn}
        b = src.bound
        if fn == "exp":
            params["input_scale"] = min(1.0, 8.0 / b)  # exp's argument stays below 8
            bound = math.exp(b * params["input_scale"])
        else:
            bound = {"log": math.log1p(b), "sqrt": math.sqrt(b), "sin": 1.0, "tanh": 1.0,
                     "relu": b, "abs": b, "square": b * b}[fn]
        bound = self._float_bound(bound, params)
        return self._stage("unary", fn, (src.index,), src, label=fn, dtype=dtype, bound=bound,
                           ops_per_point=float(UNARY_OPS_PER_POINT[fn]), params=params)

    def _binary(self, f: StagePlan, g: StagePlan) -> StagePlan:
        """Combine two stages at ``f`` 's shape; ``g`` is resampled and its channels sliced or repeated."""
        same_int = f.dtype == g.dtype and not is_float(f.dtype)
        fn = self.rng.choice(("add", "sub", "max", "min") if same_int else ("add", "sub", "mul", "max", "min"))
        params: dict[str, Any] = {"fn": fn}
        if same_int:
            dtype = f.dtype
            bound = max(f.bound, g.bound) if fn in ("max", "min") else f.bound + g.bound
        else:
            dtype = float_result(f.dtype, g.dtype)
            bound = {"add": f.bound + g.bound, "sub": f.bound + g.bound, "mul": f.bound * g.bound}.get(
                fn, max(f.bound, g.bound))
            bound = self._float_bound(bound, params)
        return self._stage("binary", fn, (f.index, g.index), f, label=fn, dtype=dtype, bound=bound,
                           ops_per_point=2.0, params=params)

    def _scan(self, src: StagePlan) -> StagePlan | None:
        axis = self.rng.choice(("x", "y", "c") if src.channels > 1 else ("x", "y"))
        extent = src.channels if axis == "c" else MAX_SCAN_EXTENT
        if self._int_fits(src, extent):  # an integral image in int32
            return self._stage("scan", f"cumulative sum along {axis}", (src.index,), src, dtype="int32",
                               bound=src.bound * extent, rows=2, ops_per_point=3.0,
                               params={"axis": axis, "decay": None})
        decay = self.rng.choice((0.5, 0.8, 0.9, 0.95))  # an IIR filter keeps float sums bounded
        return self._stage("scan", f"decaying sum along {axis} ({decay})", (src.index,), src,
                           dtype=float_result(src.dtype), rows=2, ops_per_point=3.0,
                           params={"axis": axis, "decay": decay})

    def _cast(self, src: StagePlan, dtype: str | None) -> StagePlan:
        if dtype is None:
            choices = [t for t in (*INT_DTYPES, "float64") if t != src.dtype] if is_float(src.dtype) else ["float32"]
            dtype = self.rng.choice(choices)
        if dtype in QUANTIZED:
            half_range, offset = QUANTIZED[dtype]
            params: dict[str, Any] = {"scale": half_range / src.bound, "offset": offset}
            bound = half_range + offset
        elif is_float(src.dtype):
            params, bound = {"scale": 1.0, "offset": 0.0}, src.bound
        else:  # back from integers to floats, normalized to bound 1
            params, bound = {"scale": 1.0 / src.bound, "offset": 0.0}, 1.0
        return self._stage("cast", f"{src.dtype}->{dtype}", (src.index,), src, label=f"to_{dtype}",
                           dtype=dtype, bound=bound, ops_per_point=3.0, params=params)

