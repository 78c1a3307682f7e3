"""The same schedules on two machine kinds: how their run times compare in scale and in order.

For every schedule with a first measurement on both kinds: the ratio of run times (B / A), and per
pipeline (at least 4 such schedules) the Kendall tau between the two machines' run times, averaged.

    python benchmarks/cross_machine.py --a amd-epyc/znver4-avx2 --b intel-xeon-2.50ghz/avx2
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np
from scipy.stats import kendalltau

from perfgraph.cli import open_store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", type=Path)
    parser.add_argument("--a", required=True, help="machine kind A")
    parser.add_argument("--b", required=True, help="machine kind B")
    args = parser.parse_args()
    store = open_store(args.db)
    a = {s.schedule_id: s for s in store.samples(machine=args.a)}
    b = {s.schedule_id: s for s in store.samples(machine=args.b)}
    both = sorted(set(a) & set(b))
    ratio = np.array([b[i].runtime_ms / a[i].runtime_ms for i in both])
    by_pipeline: dict[int, list[int]] = defaultdict(list)
    for i in both:
        by_pipeline[a[i].pipeline_id].append(i)
    taus = [
        kendalltau([a[i].runtime_ms for i in ids], [b[i].runtime_ms for i in ids])[0]
        for ids in by_pipeline.values()
        if len(ids) >= 4
    ]
    low, high = np.percentile(ratio, [25, 75])
    print(f"schedules measured on both: {len(both)} of {len(by_pipeline)} pipelines")
    print(f"run time {args.b} / {args.a}: median {np.median(ratio):.3f}, IQR {low:.3f}-{high:.3f}")
    print(f"within-pipeline Kendall tau between the machines: mean {np.nanmean(taus):.3f} over {len(taus)} pipelines")


if __name__ == "__main__":
    main()
