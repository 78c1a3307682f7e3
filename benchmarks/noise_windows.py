"""Measurement noise of the store, window by window of collection time.

Collection settings (worker count, compiling on the benchmark core) trade samples/min against noise.
The trade is read from the store itself: each measurement records when it was taken, its repeats'
coefficient of variation, and a share of schedules is measured twice independently. For each window
of ``measured_at`` this prints, per run-time band, the median CV of the repeats and the median
|ln(second / first)| between the two independent measurements of a re-measured schedule (the
re-measurement's time decides its window):

    python benchmarks/noise_windows.py [--db D] [--machine KIND] --window LABEL=START[,END] [--window ...] [--json]

Measurements of one machine kind only (``--machine``; default: the kind with most samples). Besides the
median gap, the share of re-measured schedules whose two measurements differ by more than 10 % and 20 %
(|ln| > ln 1.1, ln 1.2): the labels-and-data issue's agreement goal is <= 5 % above 10 %.

START and END are ISO times as stored (``2026-11-22T09:48``); END is exclusive and may be left out.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from perfgraph.cli import CliError, open_store
from perfgraph.data.store import Store

# Run-time bands in ms: short schedules are the ones whose timing suffers from a busy neighbour.
BANDS: dict[str, tuple[float, float]] = {"<1 ms": (0.0, 1.0), "1-10 ms": (1.0, 10.0), ">=10 ms": (10.0, float("inf"))}


@dataclass(frozen=True)
class Window:
    label: str
    start: str
    end: str | None


@dataclass(frozen=True)
class BandNoise:
    schedules: int
    median_cv: float | None
    repeat_pairs: int
    median_repeat_gap: float | None
    share_over_10pct: float | None
    share_over_20pct: float | None


def parse_window(text: str) -> Window:
    """``LABEL=START[,END]`` -> Window; a malformed value is an error that quotes it."""
    label, sep, span = text.partition("=")
    start, _, end = span.partition(",")
    if not sep or not label or not start:
        raise argparse.ArgumentTypeError(f"--window {text!r}: expected LABEL=START[,END], e.g. opt=2026-11-22T11:57")
    return Window(label, start, end or None)


def _median(values: list[float]) -> float | None:
    return float(np.median(values)) if values else None


def window_noise(store: Store, window: Window, machine: str | None = None) -> dict[str, BandNoise]:
    """Per run-time band, the noise of the measurements taken in ``window`` on machine kind ``machine``."""
    kind = machine or store.default_machine_kind()
    ids = ",".join(str(i) for i in store.machine_ids(kind)) or "NULL"
    firsts = store.execute(
        "SELECT runtime_ms, cv FROM measurements WHERE is_repeat = 0 AND measured_at >= ?1 "
        f"AND (?2 IS NULL OR measured_at < ?2) AND machine_id IN ({ids})",
        (window.start, window.end),
    ).fetchall()
    pairs = [(first, repeat) for _, _, first, repeat in store.repeat_pairs(window.start, window.end, machine=kind)]
    noise = {}
    for band, (low, high) in BANDS.items():
        cvs = [cv for runtime_ms, cv in firsts if low <= runtime_ms < high]
        gaps = [abs(float(np.log(repeat / first))) for first, repeat in pairs if low <= first < high]
        over10 = float(np.mean([g > np.log(1.1) for g in gaps])) if gaps else None
        over20 = float(np.mean([g > np.log(1.2) for g in gaps])) if gaps else None
        noise[band] = BandNoise(len(cvs), _median(cvs), len(gaps), _median(gaps), over10, over20)
    return noise


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", type=Path, help="store (default: the shipped one, rebuilt from the shards if missing)")
    parser.add_argument("--machine", help="machine kind (default: the one with most samples)")
    parser.add_argument("--window", type=parse_window, action="append", required=True, metavar="LABEL=START[,END]")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args()
    try:
        store = open_store(args.db)
    except CliError as error:
        parser.error(str(error))
    noise = {window.label: window_noise(store, window, args.machine) for window in args.window}
    if args.json:
        print(json.dumps({w: {b: asdict(n) for b, n in bands.items()} for w, bands in noise.items()}, indent=2))
        return
    print("| window | band | schedules | median CV | repeat pairs | median repeat gap (ln) | > 10 % | > 20 % |")
    print("|---|---|---|---|---|---|---|---|")
    for label, bands in noise.items():
        for band, n in bands.items():
            print(
                f"| {label} | {band} | {n.schedules} | {_cell(n.median_cv)} | {n.repeat_pairs} | "
                f"{_cell(n.median_repeat_gap)} | {_cell(n.share_over_10pct)} | {_cell(n.share_over_20pct)} |"
            )


if __name__ == "__main__":
    main()
