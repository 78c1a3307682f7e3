"""The menu of stage kinds a random pipeline is drawn from, each as a pure function returning a plan.

Every kind takes a :class:`Draw` (the seeded generator, the new stage's index and the time budget
left) and its source stage(s), and returns a :class:`StagePlan` -- or ``None`` when it does not
apply (pooling an already tiny stage, a convolution too expensive for the budget). Each kind also
keeps the books on values: a bound on ``|value|`` and a typical magnitude, from which it picks the
scale factors that keep floats finite and lively and integers from overflowing, for inputs and
weights in [-1, 1].
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

from perfgraph.workloads.random_plan import (
    INT_DTYPES,
    MAC_NS,
    MAX_DIM,
    MAX_LEVEL,
    MIN_LEVEL,
    TAP_NS,
    UNARY_NS,
    StagePlan,
    float_result,
    is_float,
)

# Float results with a larger bound get normalized; products of two smaller bounds stay far below
# float32's 3.4e38, so no intermediate can overflow.
FLOAT_RESCALE_ABOVE = 1e12
FLOAT_RESCALE_BELOW = 1e-3  # typical magnitudes below this are normalized too, far from denormals
INT_SAFE = 2**30  # integer intermediates stay below this, so int32 arithmetic cannot overflow
UNIFORM_RMS = 1 / math.sqrt(3)  # of values uniform in [-1, 1]: the inputs and the weights
QUANTIZE_SPREAD = 4.0  # quantization maps +-4 rms onto the integer range (outliers saturate)
MAX_SCAN_EXTENT = MAX_DIM << -MIN_LEVEL
CHANNEL_CHOICES = (4, 8, 16, 24, 32, 48, 64)
# The |value| bound a quantizing cast produces, and the offset it adds (unsigned types are centred).
QUANTIZED = {"uint8": (127.0, 128.0), "uint16": (32767.0, 32768.0), "int16": (32767.0, 0.0), "int32": (2.0**20, 0)}
INT_MAX = {"uint8": 255.0, "uint16": 65535.0, "int16": 32768.0, "int32": 2.0**31}


@dataclass(frozen=True)
class Draw:
    """What a stage kind needs besides its sources: randomness, its index, the time left per pixel."""

    rng: random.Random
    index: int
    room_ns_per_pixel: float


def new_stage(draw: Draw, op: str, variant: str, sources: tuple[StagePlan, ...], **fields: Any) -> StagePlan:
    """A stage named ``s<index>_<label>``, shaped and typed like its first source unless overridden."""
    like = sources[0]
    label = fields.pop("label", op)
    values: dict[str, Any] = {
        "dtype": like.dtype,
        "level_x": like.level_x,
        "level_y": like.level_y,
        "channels": like.channels,
        "bound": like.bound,
        "rms": like.rms,
        "rows": 1,
        "ns_per_point": TAP_NS,
        "params": {},
    }
    values.update(fields)
    inputs = tuple(s.index for s in sources)
    return StagePlan(draw.index, f"s{draw.index}_{label}", op, variant, inputs, **values)


def int_fits(src: StagePlan, factor: float) -> bool:
    """Whether integer values of ``src`` times ``factor`` still fit an int32 accumulator."""
    return not is_float(src.dtype) and src.bound * factor < INT_SAFE


def rescaled(bound: float, rms: float, params: dict[str, Any]) -> tuple[float, float]:
    """Normalize a float result whose bound grew too large or whose typical magnitude became tiny.

    The factor goes into ``params["scale"]``. Dividing by the typical magnitude brings values
    near 1; only when outliers are extreme is the bound itself used. Returns ``(bound, rms)``.
    """
    if bound <= FLOAT_RESCALE_ABOVE and rms >= FLOAT_RESCALE_BELOW:
        return bound, rms
    factor = 1.0 / rms if bound / rms <= FLOAT_RESCALE_ABOVE else 1.0 / bound
    params["scale"] = factor
    return bound * factor, rms * factor


def weighted_sum(bound: float, rms: float, terms: int) -> tuple[float, float, float]:
    """The factor for a sum of ``terms`` products with weights in [-1, 1]; and the new bound and rms.

    ``1/sqrt(terms)`` keeps typical magnitudes steady through chains of convolutions;
    ``1/terms`` takes over when the worst-case bound would grow too large.
    """
    factor = 1.0 / math.sqrt(terms) if bound * math.sqrt(terms) <= FLOAT_RESCALE_ABOVE else 1.0 / terms
    return factor, bound * terms * factor, rms * UNIFORM_RMS * math.sqrt(terms) * factor


def _channels_out(draw: Draw, src: StagePlan, ns_per_point: float) -> int | None:
    """A random output channel count whose cost fits the time left, or None."""
    per_channel = ns_per_point * 2.0 ** -(src.level_x + src.level_y)
    fitting = [c for c in CHANNEL_CHOICES if c * per_channel <= draw.room_ns_per_pixel]
    return draw.rng.choice(fitting) if fitting else None


def stencil(draw: Draw, src: StagePlan) -> StagePlan:
    """A depthwise stencil, unrolled: 1-D along x or y, or 2-D; a blur in the source's integer type."""
    rng = draw.rng
    shape = rng.choice(("x", "y", "xy"))
    k = rng.choice((3, 5, 7)) if shape != "xy" else rng.choice((3, 3, 5))
    offsets = range(-(k // 2), k // 2 + 1)
    taps = [(dx, 0) for dx in offsets] if shape == "x" else [(0, dy) for dy in offsets]
    if shape == "xy":
        taps = [(dx, dy) for dy in offsets for dx in offsets]
    integer = int_fits(src, 3 * len(taps))
    if integer:  # small positive weights, divided by their sum
        weights = [float(rng.randint(1, 3)) for _ in taps]
        bound, rms, dtype = src.bound, src.rms, src.dtype
    else:
        raw = [rng.gauss(0.0, 1.0) for _ in taps]
        norm = sum(abs(w) for w in raw) or 1.0
        weights = [round(w / norm, 4) for w in raw]
        bound, dtype = src.bound * sum(abs(w) for w in weights), float_result(src.dtype)
        rms = src.rms * max(math.sqrt(sum(w * w for w in weights)), abs(sum(weights)))
    variant = f"{k}x{k}" if shape == "xy" else f"{k}-tap along {shape}"
    params = {"taps": tuple(taps), "weights": tuple(weights), "integer": integer}
    return new_stage(
        draw,
        "stencil",
        variant,
        (src,),
        dtype=dtype,
        bound=bound,
        rms=rms,
        ns_per_point=TAP_NS * len(taps),
        params=params,
    )


def conv(draw: Draw, src: StagePlan) -> StagePlan | None:
    """A dense KxK convolution over all input channels with a weight input: an RDom reduction."""
    k = draw.rng.choice((3, 3, 5))
    cost = MAC_NS * k * k * src.channels
    out = _channels_out(draw, src, cost)
    if out is None:
        return None
    scale, bound, rms = weighted_sum(src.bound, src.rms, k * k * src.channels)
    return new_stage(
        draw,
        "conv",
        f"{k}x{k} {src.channels}->{out}",
        (src,),
        dtype=float_result(src.dtype),
        channels=out,
        bound=bound,
        rms=rms,
        rows=2,
        ns_per_point=cost,
        params={"kernel": k, "scale": scale},
    )


def mix(draw: Draw, src: StagePlan) -> StagePlan | None:
    """A channel all-to-all (1x1 convolution, a matmul over c), unrolled for few channels."""
    if src.channels < 2:
        return None
    cost = MAC_NS * src.channels
    out = _channels_out(draw, src, cost)
    if out is None:
        return None
    unrolled = src.channels <= 8 and draw.rng.random() < 0.5
    scale, bound, rms = weighted_sum(src.bound, src.rms, src.channels)
    variant = f"{'unrolled' if unrolled else 'rdom'} {src.channels}->{out}"
    return new_stage(
        draw,
        "mix",
        variant,
        (src,),
        dtype=float_result(src.dtype),
        channels=out,
        bound=bound,
        rms=rms,
        rows=1 if unrolled else 2,
        ns_per_point=cost,
        params={"unrolled": unrolled, "scale": scale},
    )


def pool(draw: Draw, src: StagePlan) -> StagePlan | None:
    """Max or average pooling with stride 2, unrolled or as an RDom reduction."""
    if max(src.level_x, src.level_y) >= MAX_LEVEL:
        return None
    kind = draw.rng.choice(("max", "avg"))
    window = draw.rng.choice((2, 3))
    integer_avg = kind == "avg" and not is_float(src.dtype)
    if integer_avg and not int_fits(src, window * window):
        return None
    rdom = not integer_avg and draw.rng.random() < 0.5
    dtype = src.dtype if kind == "max" or integer_avg else float_result(src.dtype)
    rms = src.rms if kind == "max" else src.rms / window**0.5  # neighbours are partly correlated
    variant = f"{kind} {window}x{window} stride 2{' rdom' if rdom else ''}"
    return new_stage(
        draw,
        "pool",
        variant,
        (src,),
        label=f"{kind}pool",
        dtype=dtype,
        rms=rms,
        level_x=src.level_x + 1,
        level_y=src.level_y + 1,
        rows=2 if rdom else 1,
        ns_per_point=TAP_NS * window**2,
        params={"kind": kind, "window": window, "rdom": rdom},
    )


def _axes(draw: Draw, src: StagePlan, step: int) -> tuple[bool, bool] | None:
    """Which of x and y to resample by ``step`` levels, or None when neither may."""
    allowed = [MIN_LEVEL <= level + step <= MAX_LEVEL for level in (src.level_x, src.level_y)]
    choices = [a for a in ((True, False), (False, True), (True, True)) if all(allowed[i] or not a[i] for i in (0, 1))]
    return draw.rng.choice(choices) if choices else None


def downsample(draw: Draw, src: StagePlan) -> StagePlan | None:
    """Stride-2 subsampling along x, y or both: nearest, or a 2-tap box filter."""
    axes = _axes(draw, src, +1)
    if axes is None:
        return None
    box = draw.rng.random() < 0.5 and (is_float(src.dtype) or int_fits(src, 4))
    return _resample(draw, "downsample", "box" if box else "nearest", src, axes, +1)


def upsample(draw: Draw, src: StagePlan) -> StagePlan | None:
    """2x upsampling along x, y or both: nearest, or linear interpolation."""
    axes = _axes(draw, src, -1)
    if axes is None:
        return None
    linear = draw.rng.random() < 0.5 and (is_float(src.dtype) or int_fits(src, 4))
    return _resample(draw, "upsample", "linear" if linear else "nearest", src, axes, -1)


def _resample(draw: Draw, op: str, mode: str, src: StagePlan, axes: tuple[bool, bool], step: int) -> StagePlan:
    names = "".join(name for name, on in zip("xy", axes, strict=True) if on)
    taps = 1 if mode == "nearest" else 2 ** sum(axes)
    return new_stage(
        draw,
        op,
        f"2x {mode} along {names}",
        (src,),
        label="down" if step > 0 else "up",
        level_x=src.level_x + step * axes[0],
        level_y=src.level_y + step * axes[1],
        ns_per_point=TAP_NS * taps,
        params={"mode": mode, "axes": axes},
    )


def unary(draw: Draw, src: StagePlan) -> StagePlan:
    """Pointwise maths in floating point (integer sources are converted).

    ``exp`` computes ``exp(-|v| s)`` and ``log`` and ``sqrt`` take ``|v|`` (+1), so that no input
    can overflow or leave the domain.
    """
    fn = draw.rng.choice(sorted(UNARY_NS))
    params: dict[str, Any] = {"fn": fn}
    b, r = src.bound, src.rms
    if fn in ("exp", "sin"):  # arguments of typical magnitude 1: exp(-|v|) and sin(v) stay lively
        params["input_scale"] = 1.0 / r
    bound, rms = {
        "exp": (1.0, 0.5),  # exp(-|v|): never overflows
        "log": (math.log1p(b), math.log1p(r)),  # log(|v| + 1)
        "sqrt": (math.sqrt(b), math.sqrt(r)),  # sqrt(|v|)
        "sin": (1.0, 0.7),
        "tanh": (1.0, min(r, 0.76)),
        "relu": (b, r / math.sqrt(2)),
        "abs": (b, r),
        "square": (b * b, r * r),
    }[fn]
    bound, rms = rescaled(bound, rms, params)
    return new_stage(
        draw,
        "unary",
        fn,
        (src,),
        label=fn,
        dtype=float_result(src.dtype),
        bound=bound,
        rms=rms,
        ns_per_point=UNARY_NS[fn],
        params=params,
    )


def binary(draw: Draw, f: StagePlan, g: StagePlan) -> StagePlan:
    """Combine two stages at the finer resolution and the larger channel count of the two.

    The coarser operand is upsampled (nearest) and the one with fewer channels repeats them, so
    every value either operand computes is used: no dead work hides from the cost model.
    """
    same_int = f.dtype == g.dtype and not is_float(f.dtype)
    fn = draw.rng.choice(("add", "sub", "max", "min") if same_int else ("add", "sub", "mul", "max", "min"))
    params: dict[str, Any] = {"fn": fn}
    bound, rms = {
        "add": (f.bound + g.bound, math.hypot(f.rms, g.rms)),
        "sub": (f.bound + g.bound, math.hypot(f.rms, g.rms)),
        "mul": (f.bound * g.bound, f.rms * g.rms),
    }.get(fn, (max(f.bound, g.bound), max(f.rms, g.rms)))
    if same_int:  # computed in the integer type, saturating
        dtype = f.dtype
        bound, rms = min(bound, INT_MAX[dtype]), min(rms, INT_MAX[dtype])
    else:
        dtype = float_result(f.dtype, g.dtype)
        bound, rms = rescaled(bound, rms, params)
    return new_stage(
        draw,
        "binary",
        fn,
        (f, g),
        label=fn,
        dtype=dtype,
        bound=bound,
        rms=rms,
        level_x=min(f.level_x, g.level_x),
        level_y=min(f.level_y, g.level_y),
        channels=max(f.channels, g.channels),
        ns_per_point=0.05,
        params=params,
    )


def scan(draw: Draw, src: StagePlan) -> StagePlan:
    """A running sum along one axis: an integral image in int32, or a decaying (IIR) float sum."""
    axis = draw.rng.choice(("x", "y", "c") if src.channels > 1 else ("x", "y"))
    extent = src.channels if axis == "c" else MAX_SCAN_EXTENT
    if int_fits(src, extent):
        return new_stage(
            draw,
            "scan",
            f"cumulative sum along {axis}",
            (src,),
            dtype="int32",
            bound=src.bound * extent,
            rms=src.rms * math.sqrt(extent),
            rows=2,
            ns_per_point=0.5,
            params={"axis": axis, "decay": None},
        )
    decay = draw.rng.choice((0.5, 0.8, 0.9, 0.95))
    rms = src.rms * math.sqrt((1 - decay) / (1 + decay))  # exact for independent inputs
    return new_stage(
        draw,
        "scan",
        f"decaying sum along {axis} ({decay})",
        (src,),
        dtype=float_result(src.dtype),
        rms=rms,
        rows=2,
        ns_per_point=0.5,
        params={"axis": axis, "decay": decay},
    )


def cast(draw: Draw, src: StagePlan, dtype: str | None = None) -> StagePlan:
    """Quantize floats to an integer type (scaled to its range), change float width, or come back."""
    if dtype is None:
        floats_to = [t for t in (*INT_DTYPES, "float32", "float64") if t != src.dtype]
        dtype = draw.rng.choice(floats_to if is_float(src.dtype) else ["float32"])
    if dtype in QUANTIZED:  # saturating, so the bound is the type's range whatever the source
        half_range, offset = QUANTIZED[dtype]
        params: dict[str, Any] = {"scale": half_range / (QUANTIZE_SPREAD * src.rms), "offset": offset}
        bound, rms = half_range + offset, math.hypot(half_range / QUANTIZE_SPREAD, offset)
    elif is_float(src.dtype):
        params, bound, rms = {"scale": 1.0, "offset": 0.0}, src.bound, src.rms
    else:  # back from integers to floats, normalized to typical magnitude 1
        params, bound, rms = {"scale": 1.0 / src.rms, "offset": 0.0}, src.bound / src.rms, 1.0
    return new_stage(
        draw,
        "cast",
        f"{src.dtype}->{dtype}",
        (src,),
        label=f"to_{dtype}",
        dtype=dtype,
        bound=bound,
        rms=rms,
        ns_per_point=0.1,
        params=params,
    )
