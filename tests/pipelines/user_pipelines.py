"""User pipeline files for the tests: good ones, broken ones, and ones that misbehave when measured."""

import os

import halide as hl


def _blur(size: int, name: str = "blur") -> hl.Func:
    inp = hl.ImageParam(hl.Float(32), 2, "input")
    inp.set_estimates([(0, size), (0, size)])
    x, y = hl.Var("x"), hl.Var("y")
    clamped = hl.BoundaryConditions.repeat_edge(inp)
    blur_x = hl.Func("blur_x")
    blur_x[x, y] = (clamped[x - 1, y] + clamped[x, y] + clamped[x + 1, y]) / 3
    out = hl.Func(name)
    out[x, y] = (blur_x[x, y - 1] + blur_x[x, y] + blur_x[x, y + 1]) / 3
    out.set_estimates([(0, size), (0, size)])
    return out


def blur():
    """A good pipeline: a separable 3x3 blur."""
    return [_blur(256)]


def blur_pipeline():
    """A good pipeline returned as an hl.Pipeline."""
    return hl.Pipeline([_blur(128)])


def not_a_pipeline():
    return 42


def raises():
    raise RuntimeError("boom in user code")


def output_without_estimates():
    inp = hl.ImageParam(hl.Float(32), 1, "input")
    inp.set_estimates([(0, 16)])
    x = hl.Var("x")
    out = hl.Func("out")
    out[x] = inp[x] * 2
    return [out]


def input_without_estimates():
    inp = hl.ImageParam(hl.Float(32), 1, "input")
    x = hl.Var("x")
    out = hl.Func("out")
    out[x] = inp[x] * 2
    out.set_estimates([(0, 16)])
    return [out]


def _measuring(counter_env: str) -> bool:
    """True from the third build on: the analysis builds twice (autoscheduler, reference), candidates after."""
    # One byte appended per build: O_APPEND makes concurrent builds (two workers) count correctly,
    # where read-increment-write could read a file another worker had just truncated.
    with open(os.environ[counter_env], "a") as counter:
        counter.write(".")
        counter.flush()
        builds = counter.tell() - 1
    return builds >= 2


def crashes_when_measured():
    """Builds fine for the analysis, then every candidate's worker dies of a segmentation fault."""
    if _measuring("PERFGRAPH_TEST_CRASH_COUNTER"):
        import ctypes

        ctypes.string_at(0)  # SIGSEGV
    return [_blur(64, "crashy")]


def hangs_when_measured():
    """Analysed at a tiny size, then every candidate's run cannot finish: ~10^13 iterations on any CPU.

    The reduction's extent is 4 for the analysis (its two builds), 2**30 per output point once measured:
    the run time limit, not the CPU's speed, decides the outcome.
    """
    extent = 2**30 if _measuring("PERFGRAPH_TEST_HANG_COUNTER") else 4
    x, y = hl.Var("x"), hl.Var("y")
    r = hl.RDom([(0, extent)])
    out = hl.Func("hangs")
    out[x, y] = 0.0
    out[x, y] += hl.sin(hl.f32(r.x + x * y))
    out.set_estimates([(0, 64), (0, 64)])
    return [out]


def allocates_too_much_when_measured():
    """Analysed at a tiny size, then every candidate's run must allocate a 1.5 GiB intermediate.

    ``spread`` reads ``wide`` 3 * 2**27 points apart, and ``wide`` has an update, so that no schedule can
    inline it: whatever Adams2019 picks, ``wide`` is stored over at least 3 * 2**27 floats (1.5 GiB; 2 GiB
    or more would need Halide's ``large_buffers``), which a worker under a smaller memory limit cannot
    allocate. The analysis (its two builds) reads 64 points apart.
    """
    distance = 3 * 2**27 if _measuring("PERFGRAPH_TEST_MEMORY_COUNTER") else 64
    x = hl.Var("x")
    wide = hl.Func("wide")
    wide[x] = hl.f32(x)
    wide[x] += 1.0
    out = hl.Func("spread")
    out[x] = wide[x] + wide[x + distance]
    out.set_estimates([(0, 64)])
    return [out]


def big_output():
    """One pointwise stage whose estimated output is 2 GiB of float32: more than a limited worker can allocate."""
    x = hl.Var("x")
    out = hl.Func("big")
    out[x] = hl.f32(x)
    out.set_estimates([(0, 2**29)])
    return [out]


def conv_relu():
    """A reduction (pure + update stage) feeding a pointwise stage, with a boundary condition."""
    inp = hl.ImageParam(hl.Float(32), 3, "input")
    inp.set_estimates([(0, 32), (0, 32), (0, 4)])
    x, y, c = hl.Var("x"), hl.Var("y"), hl.Var("c")
    clamped = hl.BoundaryConditions.repeat_edge(inp)
    r = hl.RDom([(0, 3), (0, 3)])
    conv = hl.Func("conv")
    conv[x, y, c] = 0.0
    conv[x, y, c] += clamped[x + r.x - 1, y + r.y - 1, c]
    relu = hl.Func("relu")
    relu[x, y, c] = hl.max(conv[x, y, c], 0.0)
    relu.set_estimates([(0, 32), (0, 32), (0, 4)])
    return [relu]


def typed_params():
    """Scalar Params of their own types (int32, int64, uint8, bool, float32), each with an estimate."""
    inp = hl.ImageParam(hl.Float(32), 2, "input")
    inp.set_estimates([(0, 64), (0, 64)])
    radius = hl.Param(hl.Int(32), "radius", 2)
    radius.set_estimate(2)
    offset = hl.Param(hl.Int(64), "offset", 2**40 + 3)
    offset.set_estimate(2**40 + 3)
    gain = hl.Param(hl.UInt(8), "gain", 200)
    gain.set_estimate(200)
    invert = hl.Param(hl.Bool(), "invert", True)
    invert.set_estimate(True)
    scale = hl.Param(hl.Float(32), "scale", 0.5)
    scale.set_estimate(0.5)
    x, y = hl.Var("x"), hl.Var("y")
    clamped = hl.BoundaryConditions.repeat_edge(inp)
    r = hl.RDom([hl.Range(-radius, 2 * radius + 1)])
    box = hl.Func("box")
    box[x, y] = 0.0
    box[x, y] += clamped[x + r.x, y]
    out = hl.Func("typed")
    value = box[x, y] * scale * hl.f32(gain) / 255 + hl.f32(offset % 7)
    # Not hl.select(invert, ...): Halide 21's Python set_estimate(True) stores an int32 estimate, on which
    # Adams2019 fails ("First argument to Select is not a bool").
    out[x, y] = value * (1 - 2 * hl.f32(invert))
    out.set_estimates([(0, 64), (0, 64)])
    return [out]


def tone_curve_u8():
    """An 8-bit image through a gamma curve and a blur computed in float, rounded back to 8 bits."""
    inp = hl.ImageParam(hl.UInt(8), 2, "input")
    inp.set_estimates([(0, 128), (0, 128)])
    x, y = hl.Var("x"), hl.Var("y")
    clamped = hl.BoundaryConditions.repeat_edge(inp)
    curve = hl.Func("curve")
    curve[x, y] = hl.pow(hl.f32(clamped[x, y]) / 255.0, 1.0 / 2.2) * 255.0
    blur = hl.Func("blur_x")
    blur[x, y] = (curve[x - 1, y] + 2.0 * curve[x, y] + curve[x + 1, y]) * 0.25
    out = hl.Func("toned")
    out[x, y] = hl.u8(hl.clamp(blur[x, y] + 0.5, 0.0, 255.0))
    out.set_estimates([(0, 128), (0, 128)])
    return [out]


def aborts_the_autoscheduler():
    """Estimates of extent 0: Adams2019 (Halide 21) throws where nothing catches it, and its process aborts."""
    inp = hl.ImageParam(hl.Float(32), 1, "input")
    inp.set_estimates([(0, 0)])
    x = hl.Var("x")
    out = hl.Func("empty")
    out[x] = inp[x] + 1
    out.set_estimates([(0, 0)])
    return [out]
