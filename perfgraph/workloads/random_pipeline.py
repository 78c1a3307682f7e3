"""Seeded random Halide pipelines, in the spirit of Halide's ``apps/random_pipeline`` generator.

Adams2019's cost model was trained on pipelines drawn by such a generator; we draw ours the same
way so that the learned models see a wide variety of stage graphs next to the DL zoo.
:mod:`perfgraph.workloads.random_planner` draws the plan (pure Python, seeded); this module
writes it as Halide Funcs named ``s<i>_<op>`` (``s0_input``, ``s3_conv``, ``s7_maxpool`` ...).

Every Func is defined on all of Z^3 and the float input is read through a clamped boundary
condition, so any stage may be read wherever its consumers need it.

>>> [f.name() for f in random_pipeline(3)] == [plan_random_pipeline(3).output.name]
True
"""

from __future__ import annotations

from collections.abc import Callable

import halide as hl

from perfgraph.workloads.random_plan import PipelinePlan, StagePlan, is_float
from perfgraph.workloads.random_planner import plan_random_pipeline

HALIDE_TYPES: dict[str, hl.Type] = {
    "float32": hl.Float(32),
    "float64": hl.Float(64),
    "uint8": hl.UInt(8),
    "uint16": hl.UInt(16),
    "int16": hl.Int(16),
    "int32": hl.Int(32),
}
# Resampling along one axis: (source coordinate, integer weight) pairs and the weights' denominator.
AxisTaps = tuple[list[tuple[hl.Expr, hl.Expr | int]], int]


def random_pipeline(seed: int) -> list[hl.Func]:
    """The output Funcs of random pipeline ``seed`` (a fresh, unscheduled copy on every call).

    Inputs are a float32 ``input`` (x, y, c) and, for convolutions and channel mixes, float32
    ``s<i>_<op>_weights``; all carry estimates, and so does the output.
    """
    return build_random_pipeline(plan_random_pipeline(seed))


def describe_random_pipeline(seed: int) -> list[str]:
    """A header line and one line per stage: what random pipeline ``seed`` computes, for humans."""
    plan = plan_random_pipeline(seed)
    header = (
        f"random:{seed}: input {plan.width}x{plan.height}x{plan.channels} ({plan.boundary}), "
        f"{plan.rows} Halide stages, ~{plan.estimated_ms:.1f} ms estimated"
    )
    return [header, *plan.describe()]


def build_random_pipeline(plan: PipelinePlan, all_at_root: bool = False) -> list[hl.Func]:
    """Write a plan as Halide Funcs and return the outputs, with estimates set.

    ``all_at_root`` schedules every stage ``compute_root``: a simple schedule that compiles and
    runs any plan in reasonable time (Halide's default inlines everything, which recomputes
    chains of stencils exponentially often). Leave it off for the autoschedulers.
    """
    return _Emitter(plan).build(all_at_root)


def _const(dtype: str, value: float) -> hl.Expr:
    """A constant of a stage's type (explicit, so Halide does not warn about float64 literals)."""
    if dtype == "float64":
        return hl.f64(value)
    if dtype == "float32":
        return hl.f32(value)
    return hl.cast(HALIDE_TYPES[dtype], hl.Expr(int(value)))


def _cast(dtype: str, value: hl.Expr) -> hl.Expr:
    return hl.cast(HALIDE_TYPES[dtype], value)


class _Emitter:
    """Writes one Func per planned stage, reading earlier stages by index."""

    def __init__(self, plan: PipelinePlan) -> None:
        self.plan = plan
        self.x, self.y, self.c = hl.Var("x"), hl.Var("y"), hl.Var("c")
        self.input = hl.ImageParam(hl.Float(32), 3, "input")
        self.input.set_estimates([(0, plan.width), (0, plan.height), (0, plan.channels)])
        self.funcs: list[hl.Func] = []

    def build(self, all_at_root: bool) -> list[hl.Func]:
        for stage in self.plan.stages:
            func = hl.Func(stage.name)
            getattr(self, f"_{stage.op}")(func, stage)
            if all_at_root:
                func.compute_root()
            self.funcs.append(func)
        output = self.funcs[-1]
        output.set_estimates([(0, extent) for extent in self.plan.extent(self.plan.output)])
        return [output]

    @property
    def xyc(self) -> tuple[hl.Var, hl.Var, hl.Var]:
        return self.x, self.y, self.c

    def load(self, index: int, x: hl.Expr, y: hl.Expr, c: hl.Expr, dtype: str | None = None) -> hl.Expr:
        """Stage ``index`` at (x, y, c), cast to ``dtype`` when given."""
        value = self.funcs[index][x, y, c]
        return value if dtype is None else _cast(dtype, value)

    def weights(self, stage: StagePlan, extents: list[int]) -> hl.ImageParam:
        param = hl.ImageParam(hl.Float(32), len(extents), f"{stage.name}_weights")
        param.set_estimates([(0, extent) for extent in extents])
        return param

    def src(self, stage: StagePlan) -> StagePlan:
        return self.plan.stages[stage.inputs[0]]

    # -- one method per op ---------------------------------------------------------------------
    def _input(self, func: hl.Func, stage: StagePlan) -> None:
        """The input read through a boundary condition: edge pixels repeat, or zeros outside."""
        x, y, c = self.xyc
        w, h, channels = self.plan.width, self.plan.height, self.plan.channels
        value = self.input[hl.clamp(x, 0, w - 1), hl.clamp(y, 0, h - 1), hl.clamp(c, 0, channels - 1)]
        if self.plan.boundary == "zero":
            value = hl.select((x >= 0) & (x < w) & (y >= 0) & (y < h), value, hl.f32(0))
        func[x, y, c] = value

    def _stencil(self, func: hl.Func, stage: StagePlan) -> None:
        x, y, c = self.xyc
        p, src = stage.params, stage.inputs[0]
        taps = list(zip(p["taps"], p["weights"], strict=True))
        if p["integer"]:
            terms = [self.load(src, x + dx, y + dy, c, "int32") * int(w) for (dx, dy), w in taps]
            func[x, y, c] = _cast(stage.dtype, _total(terms) / int(sum(p["weights"])))
        else:
            terms = [self.load(src, x + dx, y + dy, c, stage.dtype) * _const(stage.dtype, w) for (dx, dy), w in taps]
            func[x, y, c] = _total(terms)

    def _conv(self, func: hl.Func, stage: StagePlan) -> None:
        x, y, c = self.xyc
        src, k = self.src(stage), stage.params["kernel"]
        weights = self.weights(stage, [k, k, src.channels, stage.channels])
        r = hl.RDom([hl.Range(0, k), hl.Range(0, k), hl.Range(0, src.channels)], f"{stage.name}_r")
        scale = _const(stage.dtype, stage.params["scale"])
        func[x, y, c] = _const(stage.dtype, 0)
        tap = self.load(src.index, x + r.x - k // 2, y + r.y - k // 2, r.z, stage.dtype)
        func[x, y, c] = func[x, y, c] + _cast(stage.dtype, weights[r.x, r.y, r.z, c]) * tap * scale

    def _mix(self, func: hl.Func, stage: StagePlan) -> None:
        x, y, c = self.xyc
        src = self.src(stage)
        weights = self.weights(stage, [src.channels, stage.channels])
        scale = _const(stage.dtype, stage.params["scale"])

        def term(channel: hl.Expr | int) -> hl.Expr:
            return _cast(stage.dtype, weights[channel, c]) * self.load(src.index, x, y, channel, stage.dtype)

        if stage.params["unrolled"]:
            func[x, y, c] = _total([term(i) for i in range(src.channels)]) * scale
        else:
            r = hl.RDom([hl.Range(0, src.channels)], f"{stage.name}_r")
            func[x, y, c] = _const(stage.dtype, 0)
            func[x, y, c] = func[x, y, c] + term(r.x) * scale

    def _pool(self, func: hl.Func, stage: StagePlan) -> None:
        x, y, c = self.xyc
        p, src = stage.params, stage.inputs[0]
        window = p["window"]
        first = 0 if window == 2 else -1  # 2x2 windows start at 2x; 3x3 windows are centred on it
        if p["rdom"]:
            r = hl.RDom([hl.Range(first, window), hl.Range(first, window)], f"{stage.name}_r")
            if p["kind"] == "max":
                func[x, y, c] = HALIDE_TYPES[stage.dtype].min()
                func[x, y, c] = hl.max(func[x, y, c], self.load(src, 2 * x + r.x, 2 * y + r.y, c))
            else:
                func[x, y, c] = _const(stage.dtype, 0)
                tap = self.load(src, 2 * x + r.x, 2 * y + r.y, c, stage.dtype)
                func[x, y, c] = func[x, y, c] + tap * _const(stage.dtype, 1.0 / window**2)
            return
        offsets = [(dx, dy) for dy in range(first, first + window) for dx in range(first, first + window)]
        if p["kind"] == "max":
            values = [self.load(src, 2 * x + dx, 2 * y + dy, c) for dx, dy in offsets]
            result = values[0]
            for value in values[1:]:
                result = hl.max(result, value)
            func[x, y, c] = result
        elif is_float(stage.dtype):
            taps = [self.load(src, 2 * x + dx, 2 * y + dy, c, stage.dtype) for dx, dy in offsets]
            func[x, y, c] = _total(taps) * _const(stage.dtype, 1.0 / len(offsets))
        else:
            taps = [self.load(src, 2 * x + dx, 2 * y + dy, c, "int32") for dx, dy in offsets]
            func[x, y, c] = _cast(stage.dtype, _total(taps) / len(offsets))

    def _downsample(self, func: hl.Func, stage: StagePlan) -> None:
        box = stage.params["mode"] == "box"

        def axis(v: hl.Var) -> AxisTaps:
            return ([(2 * v, 1), (2 * v + 1, 1)], 2) if box else ([(2 * v, 1)], 1)

        self._resampled(func, stage, axis)

    def _upsample(self, func: hl.Func, stage: StagePlan) -> None:
        linear = stage.params["mode"] == "linear"

        def axis(v: hl.Var) -> AxisTaps:
            if not linear:
                return [(v / 2, 1)], 1
            odd = v % 2
            return [(v / 2, 2 - odd), (v / 2 + 1, odd)], 2

        self._resampled(func, stage, axis)

    def _resampled(self, func: hl.Func, stage: StagePlan, axis: Callable[[hl.Var], AxisTaps]) -> None:
        """The weighted sum of taps of a separable resampling, in integers for integer stages."""
        x, y, c = self.xyc
        on_x, on_y = stage.params["axes"]
        xs, dx = axis(x) if on_x else ([(x, 1)], 1)
        ys, dy = axis(y) if on_y else ([(y, 1)], 1)
        denominator, src = dx * dy, stage.inputs[0]
        if denominator == 1:
            func[x, y, c] = self.load(src, xs[0][0], ys[0][0], c)
            return
        compute = stage.dtype if is_float(stage.dtype) else "int32"
        terms = [self.load(src, cx, cy, c, compute) * _cast(compute, _expr(wx * wy)) for cx, wx in xs for cy, wy in ys]
        if is_float(stage.dtype):
            func[x, y, c] = _total(terms) * _const(stage.dtype, 1.0 / denominator)
        else:
            func[x, y, c] = _cast(stage.dtype, _total(terms) / denominator)

    def _unary(self, func: hl.Func, stage: StagePlan) -> None:
        x, y, c = self.xyc
        p = stage.params
        v = self.load(stage.inputs[0], x, y, c, stage.dtype)
        fn = p["fn"]
        if "input_scale" in p:
            v = v * _const(stage.dtype, p["input_scale"])
        if fn == "exp":
            value = hl.exp(-hl.abs(v))
        elif fn == "log":
            value = hl.log(hl.abs(v) + _const(stage.dtype, 1))
        elif fn == "sqrt":
            value = hl.sqrt(hl.abs(v))
        elif fn == "relu":
            value = hl.max(v, _const(stage.dtype, 0))
        elif fn == "square":
            value = v * v
        else:
            value = {"sin": hl.sin, "tanh": hl.tanh, "abs": hl.abs}[fn](v)
        func[x, y, c] = value * _const(stage.dtype, p["scale"]) if "scale" in p else value

    def _binary(self, func: hl.Func, stage: StagePlan) -> None:
        """``f op g`` at the finer resolution and larger channel count of the two operands."""
        x, y, c = self.xyc
        f, g = (self.plan.stages[i] for i in stage.inputs)
        compute = None if f.dtype == g.dtype else stage.dtype
        a, b = (
            self.load(
                s.index,
                _coarser(x, s.level_x - stage.level_x),
                _coarser(y, s.level_y - stage.level_y),
                c if s.channels == stage.channels else c % s.channels,
                compute,
            )
            for s in (f, g)
        )
        fn = stage.params["fn"]
        if fn in ("max", "min"):
            value = (hl.max if fn == "max" else hl.min)(a, b)
        elif not is_float(stage.dtype):  # integers saturate rather than wrap
            value = (hl.saturating_add if fn == "add" else hl.saturating_sub)(a, b)
        else:
            a, b = _cast(stage.dtype, a), _cast(stage.dtype, b)
            value = {"add": a + b, "sub": a - b, "mul": a * b}[fn]
        scale = stage.params.get("scale")
        func[x, y, c] = value * _const(stage.dtype, scale) if scale is not None else value

    def _scan(self, func: hl.Func, stage: StagePlan) -> None:
        """A running sum along one axis, over the stage's own extent; outside it the pure value."""
        x, y, c = self.xyc
        axis, decay = stage.params["axis"], stage.params["decay"]
        src = self.src(stage)
        w, h, channels = self.plan.extent(stage)
        extent = {"x": w, "y": h, "c": channels}[axis]
        r = hl.RDom([hl.Range(1, extent - 1)], f"{stage.name}_r")
        here: list[hl.Expr] = [x, y, c]
        before: list[hl.Expr] = [x, y, c]
        position = "xyc".index(axis)
        here[position], before[position] = r.x, r.x - 1
        value = self.load(src.index, x, y, c, stage.dtype)
        if decay is None:
            func[x, y, c] = value
            func[here] = func[here] + func[before]
        else:
            func[x, y, c] = value * _const(stage.dtype, 1.0 - decay)
            func[here] = func[here] + func[before] * _const(stage.dtype, decay)

    def _cast(self, func: hl.Func, stage: StagePlan) -> None:
        """Saturating quantization of floats into an integer type, or a scaled conversion to float."""
        x, y, c = self.xyc
        src = self.src(stage)
        v = self.load(src.index, x, y, c)
        scale, offset = stage.params["scale"], stage.params["offset"]
        if not is_float(stage.dtype):  # quantize a float stage
            compute = src.dtype
            scaled_value = v * _const(compute, scale) + _const(compute, offset)
            func[x, y, c] = hl.saturating_cast(HALIDE_TYPES[stage.dtype], scaled_value)
        elif scale == 1.0:
            func[x, y, c] = _cast(stage.dtype, v)
        else:
            func[x, y, c] = _cast(stage.dtype, v) * _const(stage.dtype, scale)


def _total(terms: list[hl.Expr]) -> hl.Expr:
    """The sum of a non-empty list of Exprs (``sum()`` would add a spurious ``0 +``)."""
    result = terms[0]
    for term in terms[1:]:
        result = result + term
    return result


def _expr(value: hl.Expr | int) -> hl.Expr:
    return value if isinstance(value, hl.Expr) else hl.Expr(value)


def _coarser(v: hl.Var, levels: int) -> hl.Expr:
    """The coordinate in a stage ``levels`` coarser than the reader's (nearest-neighbour upsampling)."""
    return v / (2**levels) if levels > 0 else v
