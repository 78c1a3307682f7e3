"""Memory layout as a source of measurement noise: quiet-v2 against quiet-v3, and run time across layouts.

N stored schedules of this machine kind (beam size 1, so that re-autoscheduling is quick) are each
measured in fresh worker processes (autoschedule, compile, benchmark), all in one shuffled order, two
workers at a time as ``perfgraph collect --workers 2`` runs them:

* twice under ``quiet-v2`` (address-space layout randomised, as every measurement before quiet-v3);
* twice under ``quiet-v3`` at layout offset 0 (the collector's default): does a re-measurement agree?
* once under ``quiet-v3`` at each other ``--offsets`` value: another fixed layout (the initial stack
  moved by that many bytes). How far these move the run time is the part of the noise that fixing
  the layout hides but does not remove: a model cannot know which layout a schedule will meet.

Random-weight configs are not picked (seeded from the clock, they give another schedule each time;
the collector never re-measures them), and a measurement counts only when the worker's schedule has
the stored schedule's features; how many did not, and how many schedules that did still came with
several schedule sources (loop order, unrolling: what the features do not see), is printed.

With ``--aligned``, every quiet-v3 arm is repeated under ``quiet-v4`` (the same, with every buffer
aligned to 128 bytes as Halide's allocator aligns it; the quiet-v3 arms keep NumPy's alignment), and
the report adds quiet-v4's agreement and the aligned against the unaligned run time of each schedule.

Prints, per comparison, the share of schedules whose two measurements differ by more than 10 % and
20 %, the median |ln| gap, and the noise ceiling those log ratios give (every sample of this machine
kind re-measured with them: :func:`perfgraph.evaluate.noise.noise_ceiling`, within-pipeline Kendall
tau). Nothing is written to the store.

    python benchmarks/noise_layout.py --db data/perfgraph.db --schedules 24 [--offsets 1024[,2048...]] [--json OUT]
    python benchmarks/noise_layout.py --db data/perfgraph.db --schedule-ids 16587,16593 --repeats 4 --json OUT
    python benchmarks/noise_layout.py --db data/perfgraph.db --schedules 24 --offsets 1024 --aligned --json OUT
    python benchmarks/noise_layout.py --db data/perfgraph.db --summarize OUT   # the report again
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import random

import numpy as np
from noise_protocols import add_run_arguments, pick_schedules, run_shuffled, summarize_and_save

from perfgraph.data.store import Store
from perfgraph.evaluate.noise import noise_ceiling
from perfgraph.measure.collector import CollectOptions, Collector
from perfgraph.measure.runner import JobResult
from perfgraph.measure.timing import TimingPolicy

LOG_10PCT, LOG_20PCT = float(np.log(1.1)), float(np.log(1.2))
FIXED = ("quiet-v3", "quiet-v4")  # the fixed-layout arms: NumPy's buffer alignment, and 128 bytes


def agreement(ratios: np.ndarray, runtimes: np.ndarray, pipelines: np.ndarray) -> dict:
    """Share of |ln| gaps above 10 % and 20 %, the median gap, and the noise ceiling of these ratios."""
    gaps = np.abs(ratios)
    return {
        "pairs": int(len(gaps)),
        "share_over_10pct": float(np.mean(gaps > LOG_10PCT)),
        "share_over_20pct": float(np.mean(gaps > LOG_20PCT)),
        "median_gap": float(np.median(gaps)),
        "noise_ceiling_kendall_tau": noise_ceiling(runtimes, pipelines, ratios).kendall_tau,
    }


def summarize(store: Store, raw: dict) -> dict:
    """Re-measurement agreement under quiet-v2 and each fixed-layout arm, and that arm across layouts."""
    samples = store.samples(machine=raw["machine"])
    runtimes = np.array([s.runtime_ms for s in samples])
    pipelines = np.array([s.pipeline_id for s in samples])
    by: dict[tuple[str, int], list[float]] = {}
    configs = store.execute("SELECT schedule_id, config FROM schedules").fetchall()
    random_weights = {
        sid for sid, config in configs if json.loads(config).get("random_weights")
    }  # older runs picked some
    kept = [
        m
        for m in raw["measurements"]
        if m.get("same_features", True)
        and m["schedule_id"] not in random_weights
        and (m["fixed"] or not m["condition"].startswith(FIXED))  # a fixed-layout arm whose layout was not fixed
    ]
    sources: dict[int, set[str]] = {}
    for m in kept:
        sources.setdefault(m["schedule_id"], set()).add(m.get("source", ""))
    for m in kept:
        by.setdefault((m["condition"], m["schedule_id"]), []).append(m["min_ms"])

    def pair_ratios(condition: str) -> np.ndarray:  # the first two measurements of each schedule
        return np.array([np.log(v[1] / v[0]) for (c, _), v in by.items() if c == condition and len(v) >= 2])

    schedules = sorted({sid for _, sid in by})
    report: dict = {"quiet-v2 re-measured": agreement(pair_ratios("quiet-v2"), runtimes, pipelines)}
    for arm in FIXED:
        if not any(c.startswith(arm) for c, _ in by):
            continue
        across = []  # each other layout against the first measurement at layout 0
        spread = []  # max/min over every fixed layout of a schedule
        for sid in schedules:
            # The first measurement of the schedule at each of the arm's layouts.
            layouts = {c: v[0] for (c, s), v in by.items() if s == sid and c.startswith(f"{arm}@")}
            base = layouts.get(f"{arm}@0")
            if base is not None:
                across += [np.log(ms / base) for c, ms in layouts.items() if c != f"{arm}@0"]
            if len(layouts) >= 2:
                spread.append(float(np.log(max(layouts.values()) / min(layouts.values()))))
        report[f"{arm} re-measured (same layout)"] = agreement(pair_ratios(f"{arm}@0"), runtimes, pipelines)
        report[f"{arm} another layout"] = agreement(np.array(across), runtimes, pipelines)
        report[f"{arm} median ln(max/min) over the layouts of a schedule"] = (
            float(np.median(spread)) if spread else None
        )
    aligned = [  # the first aligned against the first unaligned measurement, layout 0
        float(np.log(by[("quiet-v4@0", sid)][0] / by[("quiet-v3@0", sid)][0]))
        for sid in schedules
        if ("quiet-v4@0", sid) in by and ("quiet-v3@0", sid) in by
    ]
    if aligned:
        gaps = np.abs(aligned)
        report["aligned / unaligned"] = {
            "schedules": len(aligned),
            "median_ln_ratio": float(np.median(aligned)),
            "share_over_10pct": float(np.mean(gaps > LOG_10PCT)),
            "share_faster_aligned_by_10pct": float(np.mean(np.array(aligned) < -LOG_10PCT)),
            "share_slower_aligned_by_10pct": float(np.mean(np.array(aligned) > LOG_10PCT)),
        }
    return {
        "machine": raw["machine"],
        "schedules": len(schedules),
        **report,
        "mean_job_s": float(np.mean([m["job_s"] for m in raw["measurements"]])),
        "measurements_left_out": len(raw["measurements"]) - len(kept),  # random weights, or another schedule
        "schedules_with_several_sources": sum(1 for found in sources.values() if len(found) > 1),
        "not_fixed": sum(1 for m in raw["measurements"] if m["condition"].startswith(FIXED) and not m["fixed"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_run_arguments(parser, schedules=24)
    parser.add_argument("--offsets", type=lambda s: [int(x) for x in s.split(",")], default=[1024])
    parser.add_argument(
        "--schedule-ids",
        type=lambda s: [int(x) for x in s.split(",")],
        help="these stored schedules, not a random pick",
    )
    parser.add_argument(
        "--repeats", type=int, default=2, help="measurements per schedule under quiet-v2 and each arm at layout 0"
    )
    parser.add_argument("--aligned", action="store_true", help="repeat every quiet-v3 arm under quiet-v4")
    args = parser.parse_args()
    if args.repeats < 2:
        parser.error(f"--repeats must be at least 2 (agreement needs two measurements), got {args.repeats}")
    store = Store(args.db)
    if args.summarize:
        with open(args.summarize) as saved:
            print(json.dumps(summarize(store, json.load(saved)["raw"]), indent=2))
        return
    policies = {"quiet-v2": TimingPolicy(fixed_layout=False, aligned_buffers=False)}
    for arm in FIXED if args.aligned else FIXED[:1]:
        for offset in [0, *args.offsets]:
            policies[f"{arm}@{offset}"] = TimingPolicy(layout_offset=offset, aligned_buffers=arm == "quiet-v4")
    collectors = {name: Collector(store, CollectOptions(show_progress=False, timing=p)) for name, p in policies.items()}
    machine = collectors["quiet-v2"].machine_kind
    if args.schedule_ids:
        query = "SELECT p.uri, p.pipeline_id, s.schedule_id, s.config FROM schedules s JOIN pipelines p "
        query += "USING (pipeline_id) "
        rows = [store.execute(query + "WHERE s.schedule_id = ?", (sid,)).fetchone() for sid in args.schedule_ids]
        chosen = [(uri, pid, sid, json.loads(config)) for uri, pid, sid, config in rows]
    else:
        chosen = pick_schedules(store, machine, args.schedules, args.seed)
    twice = ("quiet-v2", "quiet-v3@0", "quiet-v4@0")
    jobs = [(name, row) for row in chosen for name in policies for _ in range(args.repeats if name in twice else 1)]
    random.Random(args.seed + 1).shuffle(jobs)
    measurements: list[dict] = []
    by_condition: dict[tuple[int, str], list[float]] = {}

    def record(name: str, schedule_id: int, result: JobResult, measured: dict, same: bool, job_s: float) -> str:
        how = measured.get("conditions") or {}
        scheduled = result.events["scheduled"]
        measurements.append(
            {
                "condition": name,
                "schedule_id": schedule_id,
                "min_ms": measured["min_ms"],
                "protocol": measured.get("protocol"),
                "fixed": bool(how.get("fixed_layout")),
                "same_features": same,
                "source": hashlib.sha1(scheduled["schedule_source"].encode()).hexdigest()[:12],
                "job_s": job_s,
            }
        )
        if args.schedule_ids:
            by_condition.setdefault((schedule_id, name), []).append(round(measured["min_ms"], 4))
        return "" if same else " (another schedule: not counted)"

    run_shuffled(jobs, collectors, record)
    for (schedule_id, name), times in sorted(by_condition.items()):
        print(f"#{schedule_id} {name}: {times} ms")
    raw = {"machine": machine, "offsets": args.offsets, "measurements": measurements}
    settings = {"policies": {name: dataclasses.asdict(policy) for name, policy in policies.items()}}
    summarize_and_save(raw, lambda measured: summarize(store, measured), args.json, settings)


if __name__ == "__main__":
    main()
