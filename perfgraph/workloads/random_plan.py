"""The plan of a random pipeline as plain data: stages, their shapes, types, value bounds and costs.

Halide's own ``apps/random_pipeline`` generator (which produced the Adams2019 training set) draws
stages while it writes Halide code. We keep three steps apart: :mod:`.random_planner` draws a
:class:`PipelinePlan` with :class:`random.Random` only, this module defines what a plan is (and
the rough cost model that sizes it), and :mod:`.random_pipeline` writes a plan as Halide Funcs.
Plans are cheap to build, compare and describe without compiling anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MIN_LEVEL, MAX_LEVEL = -1, 4  # spatial levels: a stage's size is the input size times 2**-level
MIN_DIM, MAX_DIM = 64, 2048  # input width and height, multiples of 2**MAX_LEVEL
FLOAT_DTYPES = ("float32", "float64")
INT_DTYPES = ("uint8", "uint16", "int16", "int32")
ITEMSIZE = {"float32": 4, "float64": 8, "uint8": 1, "uint16": 2, "int16": 2, "int32": 4}

# The cost model: estimated nanoseconds per computed value under a decent single-core schedule on
# the 2-core AMD EPYC machine we measure on (32 MiB L3). Calibrated with small Halide benchmarks:
# vectorized taps and multiply-adds cost a few hundredths of a ns, exp/log a few tenths, while
# sin and tanh call scalar libm (about 3 and 12-110 ns). Only used to size inputs.
MEMORY_NS_PER_BYTE = 0.025
TAP_NS = 0.03
MAC_NS = 0.08
FLOAT64_SLOWDOWN = 2.0
UNARY_NS = {
    "exp": 0.3,
    "log": 0.3,
    "sqrt": 0.2,
    "sin": 3.0,
    "tanh": 40.0,
    "relu": 0.05,
    "abs": 0.05,
    "square": 0.05,
}


@dataclass(frozen=True)
class StagePlan:
    """One stage: what it computes from which earlier stages, and the shape and type of its values.

    ``level_x``/``level_y`` give the size relative to the input (``width * 2**-level_x``).
    ``bound`` is an upper bound on ``|value|`` when inputs and weights lie in [-1, 1] (as
    :func:`perfgraph.workloads.base.random_input` draws them): it keeps floats finite and
    integers from overflowing. ``rms`` is a rough typical magnitude: it scales quantization and
    the arguments of exp and sin, so that values neither collapse to a constant nor drift into
    denormals (whose slow arithmetic would make run times depend on the data).
    ``rows`` counts the Halide stages the Func adds (1 + its update definitions): the rows of
    Adams2019's featurization. ``params`` holds the op's own choices (taps, weights, axes...).
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
    rms: float
    rows: int
    ns_per_point: float
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def relative_points(self) -> float:
        """Values computed per input pixel."""
        return self.channels * 2.0 ** -(self.level_x + self.level_y)

    @property
    def bytes_per_pixel(self) -> float:
        """Bytes of this stage's values per input pixel, if it is stored whole."""
        return ITEMSIZE[self.dtype] * self.relative_points

    @property
    def ns_per_pixel(self) -> float:
        """Estimated time per input pixel: arithmetic plus storing the values once."""
        slowdown = FLOAT64_SLOWDOWN if self.dtype == "float64" else 1.0
        return (self.ns_per_point * slowdown + MEMORY_NS_PER_BYTE * ITEMSIZE[self.dtype]) * self.relative_points


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
    def estimated_ms(self) -> float:
        """The cost model's run time for a decent schedule (the quantity the input was sized by)."""
        return self.width * self.height * sum(stage.ns_per_pixel for stage in self.stages) / 1e6

    @property
    def footprint_bytes(self) -> float:
        """Bytes of all stages stored whole, as in an all-``compute_root`` schedule."""
        return self.width * self.height * sum(stage.bytes_per_pixel for stage in self.stages)

    def extent(self, stage: StagePlan) -> tuple[int, int, int]:
        """Width, height and channels of a stage, in Halide dimension order."""
        return scaled(self.width, stage.level_x), scaled(self.height, stage.level_y), stage.channels

    def describe(self) -> list[str]:
        """One readable line per stage, e.g. ``s3_conv = conv 3x3 16->32 (s2_maxpool) : float32 64x64x32``."""
        lines = []
        for stage in self.stages:
            w, h, c = self.extent(stage)
            what = f"{stage.op} {stage.variant}".strip()
            sources = ", ".join(self.stages[i].name for i in stage.inputs)
            lines.append(f"{stage.name} = {what} ({sources}) : {stage.dtype} {w}x{h}x{c}")
        return lines


def scaled(size: int, level: int) -> int:
    """The size of a dimension at a spatial level (input sizes are multiples of the coarsest step)."""
    return size >> level if level >= 0 else size << -level


def is_float(dtype: str) -> bool:
    return dtype in FLOAT_DTYPES


def float_result(*dtypes: str) -> str:
    """The float type to compute in when mixing these types: float64 if any is, else float32."""
    return "float64" if "float64" in dtypes else "float32"
