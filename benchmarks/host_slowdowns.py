"""How often, and for how long, the host slows this VM's benchmark core; and whether the calibration
kernel of the quiet-v2 timing protocol sees it.

Runs, on one core for ``--seconds``, three fixed single-threaded kernels in turn (each the best of three
runs): the protocol's :class:`~perfgraph.measure.timing.Calibration` kernel (64x64 float32 products), a
128x128 float32 matrix product standing in for a benchmark, and an L2-resident elementwise loop. Per
quarter-second window it takes each kernel's minimum and divides it by the kernel's 2nd-percentile
window: a slowdown of 1.0 is the quiet core. Prints the share of windows slowed by more than 10 % and
30 %, the longest run of slow windows, the correlation between the calibration's log slowdown and the
benchmark's, and how many of the benchmark's slow windows the protocol's 10 % threshold flags.

    taskset -c 1 python benchmarks/host_slowdowns.py [--seconds 90] [--json]

Run it pinned to the benchmark core (the last one), with nothing else on that core.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before NumPy loads its BLAS: one core, one thread
import numpy as np  # noqa: E402

from perfgraph.measure.timing import Calibration, TimingPolicy  # noqa: E402


def trace(seconds: float) -> np.ndarray:
    """Rows ``(t_s, calibration_ms, matmul_ms, elementwise_ms)``, one per round of the three kernels."""
    calibration = Calibration()
    rng = np.random.default_rng(0)
    big = rng.random((128, 128), dtype=np.float32)
    vector = rng.random(16384, dtype=np.float32)
    out = np.empty_like(vector)

    def best_ms(run) -> float:  # type: ignore[no-untyped-def]
        best = np.inf
        for _ in range(3):
            begin = time.perf_counter()
            run()
            best = min(best, (time.perf_counter() - begin) * 1e3)
        return best

    def matmul() -> None:
        for _ in range(10):
            big @ big

    def elementwise() -> None:
        for _ in range(20):
            np.multiply(vector, vector, out=out)
            np.add(out, vector, out=out)

    rows = []
    started = time.perf_counter()
    while (now := time.perf_counter() - started) < seconds:
        rows.append((now, calibration.measure_ms(), best_ms(matmul), best_ms(elementwise)))
    return np.array(rows)


def summarize(rows: np.ndarray, window_s: float = 0.25) -> dict:
    edges = np.arange(0.0, rows[-1, 0], window_s)
    windows = np.array([rows[(rows[:, 0] >= e) & (rows[:, 0] < e + window_s), 1:].min(0) for e in edges])
    slowdown = windows / np.percentile(windows, 2, axis=0)
    threshold = 1 + TimingPolicy().quiet_tolerance
    bench_slow = slowdown[:, 1] > 1.1
    flagged = slowdown[:, 0] > threshold
    longest, run = 0, 0
    for slow in bench_slow:
        run = run + 1 if slow else 0
        longest = max(longest, run)
    return {
        "cpu": os.sched_getaffinity(0).__repr__(),
        "windows": len(windows),
        "window_s": window_s,
        "benchmark_share_slower_10pct": float(bench_slow.mean()),
        "benchmark_share_slower_30pct": float((slowdown[:, 1] > 1.3).mean()),
        "longest_slow_period_s": longest * window_s,
        "corr_log_slowdown_calibration_benchmark": float(
            np.corrcoef(np.log(slowdown[:, 0]), np.log(slowdown[:, 1]))[0, 1]
        ),
        "corr_log_slowdown_elementwise_benchmark": float(
            np.corrcoef(np.log(slowdown[:, 2]), np.log(slowdown[:, 1]))[0, 1]
        ),
        "benchmark_slow_windows_flagged": f"{int((bench_slow & flagged).sum())} of {int(bench_slow.sum())}",
        "quiet_windows_flagged": f"{int((~bench_slow & flagged).sum())} of {int((~bench_slow).sum())}",
        "timeline": "".join("." if s < 1.1 else "o" if s < 1.3 else "X" for s in slowdown[:, 1]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=90.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    report = summarize(trace(args.seconds))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for key, value in report.items():
            print(f"{key}: {value}")


if __name__ == "__main__":
    main()
