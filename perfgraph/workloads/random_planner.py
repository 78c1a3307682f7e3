"""Draws the plan of random pipeline number ``seed``: a seeded DAG of 2-20 Halide stages.

Like Halide's ``apps/random_pipeline`` generator, stages are drawn one at a time from a menu
(:mod:`.random_stages`): stencils, convolutions, pooling, down/up-sampling, channel mixes,
pointwise maths, binary ops joining two branches, scans and casts between types. Two things
differ. The input size is chosen *after* the stages, from a cost model, so heavy stage mixes
get small images and cheap ones large images, and run times stay within a narrow band instead
of spanning five decades. And every stage reaches the output: branches left dangling are joined
before the end, so the featurization has exactly one row per planned Halide stage.

>>> plan = plan_random_pipeline(7)
>>> plan == plan_random_pipeline(7), MIN_ROWS <= plan.rows <= MAX_ROWS, plan.stages[0].name
(True, True, 's0_input')
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

from perfgraph.workloads import random_stages as kinds
from perfgraph.workloads.random_plan import MAX_DIM, MAX_LEVEL, MIN_DIM, PipelinePlan, StagePlan
from perfgraph.workloads.random_stages import UNIFORM_RMS, Draw

MIN_ROWS, MAX_ROWS = 2, 20  # Halide stages (featurization rows) per pipeline
MAX_STAGE_POINTS = 2_000_000  # values in one stage (8 MB as float32)
MAX_FOOTPRINT_BYTES = 24 * 2**20  # all stages together, so compute_root schedules still fit in L3
MIN_TARGET_MS, MAX_TARGET_MS = 0.8, 8.0  # the cost model's run time, drawn log-uniformly
BRANCH_PROBABILITY = 0.25  # a stage reads an older stage instead of the newest one
INPUT_CHANNELS = (1, 3, 3, 4, 8, 16)

# How often each kind is drawn; binary ops are handled apart (they need a second source).
SINGLE_SOURCE_KINDS: dict[str, Callable[[Draw, StagePlan], StagePlan | None]] = {
    "stencil": kinds.stencil,
    "conv": kinds.conv,
    "pool": kinds.pool,
    "downsample": kinds.downsample,
    "upsample": kinds.upsample,
    "mix": kinds.mix,
    "unary": kinds.unary,
    "scan": kinds.scan,
    "cast": kinds.cast,
}
KIND_WEIGHTS: dict[str, float] = {
    "stencil": 3.0,
    "conv": 3.0,
    "pool": 1.5,
    "downsample": 1.0,
    "upsample": 1.0,
    "mix": 1.5,
    "unary": 2.5,
    "binary": 2.5,
    "scan": 1.0,
    "cast": 1.5,
}


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
        self.input_channels = self.rng.choice(INPUT_CHANNELS)
        first = StagePlan(
            0, "s0_input", "input", "", (), "float32", 0, 0, self.input_channels, 1.0, UNIFORM_RMS, 1, 0.05
        )
        self.stages: list[StagePlan] = [first]
        self.heads: list[int] = [0]  # stages that no later stage reads yet

    def plan(self) -> PipelinePlan:
        while self._draw_stage():
            pass
        while len(self.heads) > 1:  # join dangling branches so that every stage reaches the output
            self._add(kinds.binary(self._draw(), self.stages[self.heads[-1]], self.stages[self.heads[-2]]))
        if len(self.stages) == 1:
            self._add(kinds.unary(self._draw(), self.stages[0]))
        if self.stages[-1].dtype != "float32":
            self._add(kinds.cast(self._draw(), self.stages[-1], "float32"))
        width, height = self._input_size()
        boundary = self.rng.choice(("repeat_edge", "zero"))
        return PipelinePlan(self.seed, width, height, self.input_channels, boundary, tuple(self.stages))

    # -- bookkeeping ---------------------------------------------------------------------------
    def _total(self, attribute: str) -> float:
        return sum(getattr(stage, attribute) for stage in self.stages)

    def _draw(self) -> Draw:
        return Draw(self.rng, len(self.stages), self.max_ns_per_pixel - self._total("ns_per_pixel"))

    def _heads_after(self, inputs: tuple[int, ...]) -> list[int]:
        return [h for h in self.heads if h not in inputs] + [len(self.stages)]

    def _fits(self, stage: StagePlan) -> bool:
        """Whether the stage, and the joins it would make necessary, fit all budgets."""
        joins_needed = len(self._heads_after(stage.inputs)) - 1
        return (
            self._total("rows") + stage.rows + joins_needed <= self.row_budget
            and self._total("ns_per_pixel") + stage.ns_per_pixel <= self.max_ns_per_pixel
            and self._total("bytes_per_pixel") + stage.bytes_per_pixel <= self.max_bytes_per_pixel
        )

    def _add(self, stage: StagePlan) -> None:
        self.heads = self._heads_after(stage.inputs)
        self.stages.append(stage)

    # -- drawing -------------------------------------------------------------------------------
    def _draw_stage(self) -> bool:
        """Add one random stage that fits the budgets; False when no kind does."""
        weights = dict(KIND_WEIGHTS)
        while weights:
            kind = self.rng.choices(list(weights), weights=list(weights.values()))[0]
            del weights[kind]
            stage = self._propose(kind, self._pick_source())
            if stage is not None and self._fits(stage):
                self._add(stage)
                return True
        return False

    def _pick_source(self) -> StagePlan:
        """Usually the newest stage (a chain); sometimes an older one, which starts a branch."""
        if len(self.stages) > 1 and self.rng.random() < BRANCH_PROBABILITY:
            return self.stages[self.rng.randrange(len(self.stages) - 1)]
        return self.stages[-1]

    def _propose(self, kind: str, src: StagePlan) -> StagePlan | None:
        if kind != "binary":
            return SINGLE_SOURCE_KINDS[kind](self._draw(), src)
        others = [s for s in self.stages if s.index != src.index]
        if not others:
            return None
        dangling = [self.stages[h] for h in self.heads if h != src.index]
        candidates = dangling if dangling and self.rng.random() < 0.5 else others
        return kinds.binary(self._draw(), src, self.rng.choice(candidates))

    def _input_size(self) -> tuple[int, int]:
        """Width and height that bring the estimated run time near the drawn target."""
        step = 2**MAX_LEVEL
        largest = max(stage.relative_points for stage in self.stages)
        max_pixels = min(MAX_DIM**2, MAX_STAGE_POINTS / largest, MAX_FOOTPRINT_BYTES / self._total("bytes_per_pixel"))
        pixels = min(max(self.target_ns / self._total("ns_per_pixel"), MIN_DIM**2), max_pixels)
        aspect = self.rng.uniform(0.5, 2.0)

        def snap(size: float) -> int:
            return int(min(max(round(size / step) * step, MIN_DIM), MAX_DIM))

        width = snap(math.sqrt(pixels * aspect))
        return width, snap(pixels / width)
