"""Benchmark timing: warm-up, then repeats until a minimum count and duration, with summary statistics.

Four measurement protocols (recorded with every measurement, ``MeasurementRecord.protocol``):

* ``window-v1`` — the minimum of the repeats of one window of ``min_duration_s`` (0.5 s). Every
  measurement before 2026-11-30 was taken so.
* ``quiet-v2`` — the repeats run in short bursts, each between two runs of a fixed
  calibration kernel (:class:`Calibration`); a burst counts only when both calibration runs are within
  ``quiet_tolerance`` of the fastest calibration ever seen on these benchmark cores. On the 2-core VMs
  of this project the host makes a benchmark core 30-85 % slower for periods of one to tens of
  seconds (another tenant on the physical core: see ``benchmarks/RESULTS.md``, "Measurement noise");
  one 0.5 s window inside such a period gives a run time that a re-measurement a minute later does not
  reproduce. The calibration kernel sees the same periods (log-slowdown correlation 0.97 with a
  matmul benchmark over 360 quarter-second windows), so the quiet protocol waits them out, up to
  ``max_wait_s``; a measurement that found no quiet period is kept, marked ``quiet: false``.
* ``quiet-v3`` (the default in sessions 10-14) — ``quiet-v2`` in a worker whose address space is laid
  out the same way every time (``fixed_layout``): started without address-space layout randomisation
  (Linux ``personality(ADDR_NO_RANDOMIZE)``, as ``setarch -R`` does), with ``PYTHONHASHSEED=0`` and
  its environment padded to a fixed page offset, since the environment's size moves the initial stack
  (Mytkowicz et al., "Producing Wrong Data Without Doing Anything Obviously Wrong!", ASPLOS 2009).
  Under randomisation one schedule re-measured in fresh processes lands in two or more stable modes
  (0.37 ms and 0.81 ms for one DL block, each with a coefficient of variation under 4 %), which the
  quiet protocol cannot see: every burst of one process is equally fast or slow. The runner
  (:func:`~perfgraph.measure.runner.run_job`) starts the worker so; a worker whose layout could not
  be fixed (a sandbox that forbids ``personality``) records ``quiet-v2`` and ``fixed_layout: false``.
* ``quiet-v4`` (the default, since session 15) — ``quiet-v3`` with every input and output buffer's data
  aligned to :data:`~perfgraph.measure.inputs.BUFFER_ALIGNMENT` (128) bytes, as Halide's own allocator
  (``halide_malloc``) aligns the buffers it allocates. Before, buffers were NumPy arrays, whose data
  ``malloc`` aligns to 16 bytes only: where a buffer started within a cache line then depended on the
  process's heap layout, and code that Halide generates with aligned vector loads (``vmovaps``) from an
  output buffer crashed with SIGSEGV when it landed off a 32- or 64-byte boundary (four stored
  ``global_avg_pool`` schedules, and the Mullapudi2016 reference of that pipeline; ``benchmarks/RESULTS.md``,
  session 15). Buffers are aligned whenever ``TimingPolicy.aligned_buffers`` is set (the default);
  the measurement records ``quiet-v4`` when the layout is fixed too, ``quiet-v2`` when it could not be.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from perfgraph.data.store import ALIGNED_PROTOCOL, FIXED_LAYOUT_PROTOCOL, QUIET_PROTOCOL, WINDOW_PROTOCOL


@dataclass(frozen=True)
class TimingPolicy:
    """How long to benchmark one candidate, and under which protocol (module docstring).

    Short run times repeat more (sub-millisecond timings are noisy); a very slow candidate is
    repeated only ``min_repeats`` times so that bad schedules do not dominate collection time.
    ``min_duration_s`` and ``max_duration_s`` count the time of the repeats kept.
    """

    warmup_runs: int = 1
    min_repeats: int = 5
    max_repeats: int = 200
    min_duration_s: float = 0.5
    max_duration_s: float = 10.0
    quiet: bool = True  # the quiet-v2 protocol; False: window-v1
    fixed_layout: bool = True  # quiet-v3: the worker runs without address-space randomisation
    layout_offset: int = 0  # with fixed_layout: which layout (bytes the initial stack moves, 0-4095)
    aligned_buffers: bool = True  # quiet-v4: buffers' data aligned as Halide's allocator aligns it
    burst_s: float = 0.1  # repeats between two calibration runs
    quiet_tolerance: float = 0.10  # a calibration run this much above the fastest marks the burst slow
    max_wait_s: float = 30.0  # seconds of slow bursts after which the measurement keeps them all

    def __post_init__(self) -> None:
        if isinstance(self.layout_offset, bool) or not isinstance(self.layout_offset, int):
            raise ValueError(f"layout_offset must be an int, got {self.layout_offset!r}")
        if not 0 <= self.layout_offset < 4096:
            raise ValueError(f"layout_offset must be in [0, 4096) bytes, got {self.layout_offset}")

    @property
    def protocol(self) -> str:
        """The protocol a measurement under this policy records when its worker's layout is fixed as asked."""
        return self.recorded_protocol(self.fixed_layout)

    def recorded_protocol(self, layout_fixed: bool) -> str:
        """The protocol a measurement under this policy records, given whether its worker's layout was fixed.

        >>> TimingPolicy().recorded_protocol(True), TimingPolicy().recorded_protocol(False)
        ('quiet-v4', 'quiet-v2')
        >>> TimingPolicy(aligned_buffers=False).recorded_protocol(True)
        'quiet-v3'
        """
        if not self.quiet:
            return WINDOW_PROTOCOL
        if not (self.fixed_layout and layout_fixed):
            return QUIET_PROTOCOL
        return ALIGNED_PROTOCOL if self.aligned_buffers else FIXED_LAYOUT_PROTOCOL


@dataclass(frozen=True)
class Timing:
    """Every repeat kept by one benchmark, in milliseconds, its summary, and the conditions it ran in.

    ``rejected_bursts`` counts the bursts dropped as slow and ``waited_s`` their seconds;
    ``calibration_ms`` is the reference calibration time the bursts were judged against (``None`` under
    ``window-v1``); ``quiet`` is False when no quiet period came within ``max_wait_s`` (``None`` under
    ``window-v1``).
    """

    repeats_ms: tuple[float, ...]
    protocol: str = WINDOW_PROTOCOL
    rejected_bursts: int = 0
    waited_s: float = 0.0
    calibration_ms: float | None = None
    quiet: bool | None = None  # None under window-v1, which does not judge the core

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

    def conditions(self) -> dict:
        """What the measurement record keeps about how this benchmark ran (JSON-ready)."""
        return {
            "rejected_bursts": self.rejected_bursts,
            "waited_s": round(self.waited_s, 3),
            "calibration_ms": self.calibration_ms,
            "quiet": self.quiet,
        }


class Calibration:
    """A fixed single-threaded kernel (30 products of 64x64 float32 matrices, about 0.17 ms on a
    2.5 GHz Xeon) whose speed tells a quiet benchmark core from one the host is sharing.

    ``reference_path`` keeps the fastest run seen on these cores across processes (a JSON file beside
    the benchmark lock; whoever holds the lock updates it). :meth:`measure_ms` is the best of three runs.

    >>> calibration = Calibration()
    >>> calibration.measure_ms() > 0 and calibration.reference_ms is not None
    True
    """

    def __init__(self, reference_path: Path | None = None) -> None:
        self.reference_path = reference_path
        rng = np.random.default_rng(0)
        self._matrix = rng.random((64, 64), dtype=np.float32)
        self._out = np.empty_like(self._matrix)
        self.reference_ms: float | None = self._load()

    def _load(self) -> float | None:
        if self.reference_path is None or not self.reference_path.is_file():
            return None
        try:
            value = float(json.loads(self.reference_path.read_text())["calibration_ms"])
        except (OSError, ValueError, KeyError, TypeError):
            return None  # a damaged reference is relearned
        return value if math.isfinite(value) and value > 0 else None

    def measure_ms(self) -> float:
        best = math.inf
        for _ in range(3):
            begin = time.perf_counter()
            for _ in range(30):
                np.matmul(self._matrix, self._matrix, out=self._out)
            best = min(best, (time.perf_counter() - begin) * 1e3)
        if self.reference_ms is None or best < self.reference_ms:
            self.reference_ms = best
        return best

    def save(self) -> None:
        if self.reference_path is None or self.reference_ms is None:
            return
        temporary = self.reference_path.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_text(json.dumps({"calibration_ms": self.reference_ms}))
        temporary.replace(self.reference_path)


@dataclass(frozen=True)
class _Burst:
    repeats_ms: list[float]
    calibration_ms: float  # the slower of the calibration runs around it
    seconds: float


def benchmark(
    run_once: Callable[[], object], policy: TimingPolicy = TimingPolicy(), calibration: Calibration | None = None
) -> Timing:
    """Time ``run_once`` under ``policy``; the caller pins the process to its benchmark cores first.

    >>> timing = benchmark(lambda: sum(range(1000)), TimingPolicy(min_duration_s=0.01, burst_s=0.005, max_wait_s=1))
    >>> timing.protocol, len(timing.repeats_ms) >= 5, timing.min_ms <= timing.median_ms
    ('quiet-v2', True, True)
    """
    for _ in range(policy.warmup_runs):
        run_once()
    if not policy.quiet:
        return Timing(tuple(_burst(run_once, policy.max_repeats, policy.min_repeats, policy.min_duration_s)))
    calibration = calibration or Calibration()
    bursts: list[_Burst] = []
    started = time.perf_counter()
    while True:
        before = calibration.measure_ms()
        begin = time.perf_counter()
        repeats = _burst(run_once, policy.max_repeats, 1, policy.burst_s)
        seconds = time.perf_counter() - begin
        bursts.append(_Burst(repeats, max(before, calibration.measure_ms()), seconds))
        limit = calibration.reference_ms * (1 + policy.quiet_tolerance)  # type: ignore[operator]
        kept = [burst for burst in bursts if burst.calibration_ms <= limit]
        count = sum(len(burst.repeats_ms) for burst in kept)
        kept_s = sum(burst.seconds for burst in kept)
        if count >= policy.max_repeats or (
            count >= policy.min_repeats and (kept_s >= policy.min_duration_s or kept_s >= policy.max_duration_s)
        ):
            quiet = True
            break
        slow_s = sum(burst.seconds for burst in bursts if burst.calibration_ms > limit)
        if time.perf_counter() - started - kept_s >= policy.max_wait_s and slow_s > 0:
            kept, quiet = bursts, False  # no quiet period came: keep every repeat, marked
            break
    calibration.save()
    return Timing(
        tuple(r for burst in kept for r in burst.repeats_ms),
        protocol=QUIET_PROTOCOL,
        rejected_bursts=len(bursts) - len(kept),
        waited_s=sum(burst.seconds for burst in bursts) - sum(burst.seconds for burst in kept),
        calibration_ms=calibration.reference_ms,
        quiet=quiet,
    )


def _burst(run_once: Callable[[], object], max_repeats: int, min_repeats: int, min_duration_s: float) -> list[float]:
    repeats: list[float] = []
    started = time.perf_counter()
    while True:
        begin = time.perf_counter()
        run_once()
        repeats.append((time.perf_counter() - begin) * 1e3)
        if len(repeats) >= max_repeats or (
            len(repeats) >= min_repeats and time.perf_counter() - started >= min_duration_s
        ):
            return repeats
