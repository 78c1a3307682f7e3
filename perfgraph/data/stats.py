"""Dataset statistics: what ``perfgraph stats`` prints."""

from __future__ import annotations

import collections
import json
import math
import statistics
from dataclasses import asdict, dataclass

from perfgraph.data.store import Store

# Shown by ``perfgraph stats``: how many pipelines reach each count (32 is the dataset target).
SCHEDULE_THRESHOLDS = (8, 16, 32)


@dataclass(frozen=True)
class DatasetStats:
    pipelines: int
    samples: int
    failures: int
    failures_by_kind: dict[str, int]
    duplicates: int
    repeat_measurements: int  # independent re-measurements under their first measurement's protocol
    upgraded_labels: int  # re-measurements under a newer protocol than the first: the label now
    min_schedules_per_pipeline: int
    median_schedules_per_pipeline: float
    pipelines_with_at_least: dict[int, int]  # N -> pipelines with at least N measured schedules
    min_runtime_ms: float | None
    max_runtime_ms: float | None
    median_cv: float | None
    families: dict[str, int]
    machines: list[dict]
    by_machine_kind: dict[str, dict]  # kind -> samples, pipelines, run-time range, noise, timing protocols

    def to_json(self) -> dict:
        return asdict(self)

    def to_text(self) -> str:
        runtime = (
            f"{self.min_runtime_ms:.3g} .. {self.max_runtime_ms:.4g} ms" if self.min_runtime_ms is not None else "-"
        )
        failures = ", ".join(f"{k} {v}" for k, v in sorted(self.failures_by_kind.items())) or "none"
        families = ", ".join(f"{k} {v}" for k, v in sorted(self.families.items())) or "-"
        lines = [
            f"pipelines            {self.pipelines}",
            f"samples (measured)   {self.samples}",
            f"schedules/pipeline   min {self.min_schedules_per_pipeline}, "
            f"median {self.median_schedules_per_pipeline:g}",
            "pipelines reaching   "
            + ", ".join(f"{count} with >= {n} schedules" for n, count in self.pipelines_with_at_least.items()),
            f"duplicates skipped   {self.duplicates}",
            f"failures             {self.failures} ({failures})",
            f"run time             {runtime}",
            f"median CV of repeats {self.median_cv:.3%}" if self.median_cv is not None else "median CV of repeats -",
            f"re-measured          {self.repeat_measurements}"
            + (f" (and {self.upgraded_labels} labels upgraded to a newer protocol)" if self.upgraded_labels else ""),
            f"families             {families}",
        ]
        for machine in self.machines:
            lines.append(
                f"machine              {machine['cpu_model']}, {machine['logical_cores']} cores, "
                f"{machine['target']}, halide {machine['halide_version']}"
            )
        if self.by_machine_kind:
            header = f"{'by machine kind':<26} samples  pipelines  run time ms        median CV  re-measured  |ln gap|"
            lines.append(header)
        for kind, k in self.by_machine_kind.items():
            gap = f"{k['median_repeat_gap']:.3f}" if k["median_repeat_gap"] is not None else "-"
            cv = f"{k['median_cv']:.1%}" if k["median_cv"] is not None else "-"
            lines.append(
                f"  {kind:<24} {k['samples']:>7}  {k['pipelines']:>9}  {k['min_runtime_ms']:.3g} .. "
                f"{k['max_runtime_ms']:<8.4g}  {cv:>9}  {k['repeat_pairs']:>11}  {gap:>8}"
            )
            for protocol, p in k.get("protocols", {}).items():
                apart = f", {p['share_over_10pct']:.0%} > 10% apart" if p["share_over_10pct"] is not None else ""
                noisy = f" ({p['not_quiet'] / p['measurements']:.0%} found no quiet core)" if p.get("not_quiet") else ""
                labels = f", {p['labels']} labels" if p.get("labels") is not None else ""
                lines.append(
                    f"    timing {protocol:<10} {p['measurements']:>7} measurements{noisy}{labels}, "
                    f"{p['repeat_pairs']} re-measured{apart}"
                )
        return "\n".join(lines)


def dataset_stats(store: Store) -> DatasetStats:
    q = store.execute
    per_pipeline = [
        r[0]
        for r in q(
            "SELECT COUNT(DISTINCT m.schedule_id) FROM pipelines p "
            "LEFT JOIN schedules s ON s.pipeline_id = p.pipeline_id "
            "LEFT JOIN measurements m ON m.schedule_id = s.schedule_id AND m.is_repeat = 0 GROUP BY p.pipeline_id"
        )
    ]
    cvs = [r[0] for r in q("SELECT cv FROM measurements WHERE is_repeat = 0")]
    repeats, upgraded = q(
        "SELECT COALESCE(SUM(b.protocol = a.protocol), 0), COALESCE(SUM(b.protocol != a.protocol), 0) "
        "FROM measurements b JOIN measurements a ON a.schedule_id = b.schedule_id AND a.machine_id = b.machine_id "
        "AND a.is_repeat = 0 WHERE b.is_repeat = 1"
    ).fetchone()
    low, high = q("SELECT MIN(runtime_ms), MAX(runtime_ms) FROM measurements WHERE is_repeat = 0").fetchone()
    counts = store.counts()
    return DatasetStats(
        pipelines=counts["pipelines"],
        samples=counts["samples"],
        failures=counts["failures"],
        failures_by_kind=dict(q("SELECT kind, COUNT(*) FROM failures GROUP BY kind").fetchall()),
        duplicates=q("SELECT COUNT(*) FROM schedules WHERE duplicate_of IS NOT NULL").fetchone()[0],
        repeat_measurements=repeats,
        upgraded_labels=upgraded,
        min_schedules_per_pipeline=min(per_pipeline, default=0),
        median_schedules_per_pipeline=statistics.median(per_pipeline) if per_pipeline else 0,
        pipelines_with_at_least={n: sum(count >= n for count in per_pipeline) for n in SCHEDULE_THRESHOLDS},
        min_runtime_ms=low,
        max_runtime_ms=high,
        median_cv=statistics.median(cvs) if cvs else None,
        families=dict(q("SELECT family, COUNT(*) FROM pipelines GROUP BY family").fetchall()),
        machines=[json.loads(r[0]) for r in q("SELECT info FROM machines ORDER BY machine_id")],
        by_machine_kind=_by_machine_kind(store),
    )


def _by_machine_kind(store: Store) -> dict[str, dict]:
    """Counts, run-time range, noise (median CV, median |ln| gap of re-measurements) per machine kind,
    and per timing protocol the measurements, the labels taken under it (``labels``), how many of them
    found no quiet core (``not_quiet``: kept, marked ``quiet: false``; ``None`` under ``window-v1``) and
    the share of re-measurements more than 10 % apart."""
    out = {}
    for kind in store.samples_by_machine_kind():
        ids = ",".join(str(i) for i in store.machine_ids(kind))
        samples, pipelines, low, high = store.execute(
            "SELECT COUNT(*), COUNT(DISTINCT s.pipeline_id), MIN(m.runtime_ms), MAX(m.runtime_ms) FROM measurements m "
            f"JOIN schedules s USING (schedule_id) WHERE m.is_repeat = 0 AND m.machine_id IN ({ids})"
        ).fetchone()
        query = f"SELECT cv FROM measurements WHERE is_repeat = 0 AND machine_id IN ({ids})"
        cvs = [r[0] for r in store.execute(query)]
        gaps = [abs(math.log(b / a)) for _, _, a, b in store.repeat_pairs(machine=kind)]
        labels = collections.Counter(store.label_protocols(machine=kind).values())
        protocols = {}
        for protocol, count, not_quiet in store.execute(
            "SELECT protocol, COUNT(*), SUM(json_extract(conditions, '$.quiet') = 0) FROM measurements "
            f"WHERE machine_id IN ({ids}) GROUP BY protocol ORDER BY 1"
        ):
            pairs = store.repeat_pairs(machine=kind, protocol=protocol)
            apart = [abs(math.log(b / a)) > math.log(1.1) for _, _, a, b in pairs]
            protocols[protocol] = {
                "measurements": count,
                "labels": labels[protocol],  # samples whose label was taken under this protocol
                "not_quiet": not_quiet,  # None where the protocol does not judge the core (window-v1)
                "repeat_pairs": len(pairs),
                "share_over_10pct": sum(apart) / len(apart) if apart else None,
            }
        out[kind] = {
            "samples": samples,
            "pipelines": pipelines,
            "min_runtime_ms": low,
            "max_runtime_ms": high,
            "median_cv": statistics.median(cvs) if cvs else None,
            "repeat_pairs": len(gaps),
            "median_repeat_gap": statistics.median(gaps) if gaps else None,
            "protocols": protocols,
        }
    return out
