"""How long should quiet-v3 wait for a quiet core? Agreement and collection time at two waits, in one run.

Under ``quiet-v2``/``quiet-v3`` a measurement waits up to ``max_wait_s`` (30 s) for bursts whose
calibration runs are within 10 % of the fastest ever seen (:func:`perfgraph.measure.timing.benchmark`);
a measurement that found none keeps every burst, marked ``quiet: false``. In the field (session 12) a
third of the measurements found no quiet period and so cost 30 s of waiting each, most of the
collector's time, while their re-measurements agreed as well as the quiet ones'. This script measures
the trade side by side: N stored schedules of this machine kind (beam size 1, not random weights, as
:func:`noise_protocols.pick_schedules` picks them) are each measured twice with the default wait and
twice with ``--wait`` seconds, in fresh worker processes, all in one shuffled order, two workers at a
time as ``perfgraph collect --workers 2`` runs them. Prints, per wait: the re-measurement agreement
(share of pairs more than 10 % and 20 % apart, median |ln| gap, the noise ceiling those ratios give:
:func:`noise_layout.agreement`), the mean job seconds (autoschedule, compile, benchmark and waiting)
and how many measurements were not quiet; and, across the waits, the median ln ratio of the short
wait's first measurement to the default's (does the short wait bias run times up?). Nothing is
written to the store.

    python benchmarks/noise_wait.py --db data/perfgraph.db --schedules 24 --wait 5 [--json OUT]
    python benchmarks/noise_wait.py --db data/perfgraph.db --summarize OUT   # the report again
"""

from __future__ import annotations

import argparse
import json
import random

import numpy as np
from noise_layout import agreement
from noise_protocols import add_run_arguments, pick_schedules, run_shuffled, summarize_and_save

from perfgraph.data.store import Store
from perfgraph.measure.collector import CollectOptions, Collector
from perfgraph.measure.runner import JobResult
from perfgraph.measure.timing import TimingPolicy


def summarize(store: Store, raw: dict) -> dict:
    """Per wait: agreement of each schedule's first two measurements, job time, waiting; and the bias across."""
    samples = store.samples(machine=raw["machine"])
    runtimes = np.array([s.runtime_ms for s in samples])
    pipelines = np.array([s.pipeline_id for s in samples])
    kept = [m for m in raw["measurements"] if m["same_features"]]
    by: dict[tuple[str, int], list[float]] = {}
    for m in kept:
        by.setdefault((m["condition"], m["schedule_id"]), []).append(m["min_ms"])
    report: dict = {"machine": raw["machine"], "measurements_left_out": len(raw["measurements"]) - len(kept)}
    for condition in raw["conditions"]:
        ratios = np.array([np.log(v[1] / v[0]) for (c, _), v in by.items() if c == condition and len(v) >= 2])
        rows = [m for m in kept if m["condition"] == condition]
        waited = [m["waited_s"] for m in rows if m.get("waited_s") is not None]  # quiet ones; older runs lack it
        report[condition] = {
            **(agreement(ratios, runtimes, pipelines) if len(ratios) else {"pairs": 0}),
            "mean_job_s": float(np.mean([m["job_s"] for m in rows])) if rows else None,  # lock waits included
            "not_quiet": sum(1 for m in rows if m["quiet"] is False),
            "mean_waited_s_of_the_quiet": float(np.mean(waited)) if waited else None,
            "measurements": len(rows),
        }
    default, short = raw["conditions"]
    across = [
        np.log(by[(short, sid)][0] / by[(default, sid)][0]) for (c, sid) in by if c == default and (short, sid) in by
    ]
    report["median ln(short / default), first measurements"] = float(np.median(across)) if across else None
    report["across the waits"] = agreement(np.array(across), runtimes, pipelines) if across else None
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_run_arguments(parser, schedules=24)
    parser.add_argument("--wait", type=float, default=5.0, help="the shorter max_wait_s to compare, in seconds")
    args = parser.parse_args()
    store = Store(args.db)
    if args.summarize:
        with open(args.summarize) as saved:
            print(json.dumps(summarize(store, json.load(saved)["raw"]), indent=2))
        return
    default_wait = TimingPolicy().max_wait_s
    if not 0 < args.wait < default_wait:
        parser.error(f"--wait must be in (0, {default_wait}) seconds, got {args.wait}")
    policies = {f"wait {default_wait:g} s": TimingPolicy(), f"wait {args.wait:g} s": TimingPolicy(max_wait_s=args.wait)}
    if len(policies) < 2:
        parser.error(f"--wait {args.wait} prints as the default wait; give a clearly shorter one")
    collectors = {name: Collector(store, CollectOptions(show_progress=False, timing=p)) for name, p in policies.items()}
    machine = next(iter(collectors.values())).machine_kind
    chosen = pick_schedules(store, machine, args.schedules, args.seed)
    jobs = [(name, row) for row in chosen for name in policies for _ in range(2)]
    random.Random(args.seed + 1).shuffle(jobs)
    measurements: list[dict] = []

    def record(name: str, schedule_id: int, _: JobResult, measured: dict, same: bool, job_s: float) -> str:
        how = measured.get("conditions") or {}
        measurements.append(
            {
                "condition": name,
                "schedule_id": schedule_id,
                "min_ms": measured["min_ms"],
                "quiet": how.get("quiet"),
                "waited_s": how.get("waited_s") if how.get("quiet") else None,  # a not-quiet one waited the limit
                "same_features": same,
                "job_s": job_s,
            }
        )
        return "" if same else " (another schedule: not counted)"

    run_shuffled(jobs, collectors, record)
    raw = {"machine": machine, "conditions": list(policies), "measurements": measurements}
    summarize_and_save(raw, lambda measured: summarize(store, measured), args.json)


if __name__ == "__main__":
    main()
