"""Benchmark timing: warm-up, then repeats until a minimum count and duration, with summary statistics."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class TimingPolicy:
    """How long to benchmark one candidate.

    Short run times repeat more (sub-millisecond timings are noisy); a very slow candidate is
    repeated only ``min_repeats`` times so that bad schedules do not dominate collection time.
    """

    warmup_runs: int = 1
    min_repeats: int = 5
    max_repeats: int = 200
    min_duration_s: float = 0.5
    max_duration_s: float = 10.0


@dataclass(frozen=True)
class Timing:
    """Every repeat of one benchmark, in milliseconds, and its summary."""

    repeats_ms: tuple[float, ...]

    @property
    def min_ms(self) -> float:
        return min(self.repeats_ms)

    @property
    def median_ms(self) -> float:
        return statistics.median(self.repeats_ms)

    @property
    def cv(self) -> float:
        """Coefficient of variation (stdev / mean) of the repeats: the run-to-run noise."""
        if len(self.repeats_ms) < 2:
            return 0.0
        return statistics.stdev(self.repeats_ms) / statistics.fmean(self.repeats_ms)


def benchmark(run_once: Callable[[], object], policy: TimingPolicy = TimingPolicy()) -> Timing:
    """Time ``run_once`` under ``policy``; the caller pins the process to its benchmark cores first."""
    for _ in range(policy.warmup_runs):
        run_once()
    repeats: list[float] = []
    started = time.perf_counter()
    while True:
        begin = time.perf_counter()
        run_once()
        repeats.append((time.perf_counter() - begin) * 1e3)
        elapsed = time.perf_counter() - started
        if len(repeats) >= policy.max_repeats or (
            len(repeats) >= policy.min_repeats
            and (elapsed >= policy.min_duration_s or elapsed >= policy.max_duration_s)
        ):
            return Timing(tuple(repeats))
