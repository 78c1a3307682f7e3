"""Exports: Halide's ``.sample`` files (for Halide's own trainer) and Parquet tables."""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from perfgraph.data.store import Store, StoreError, label_measurements_sql
from perfgraph.features.layout import FEATURES_PER_STAGE


def sample_bytes(featurization: bytes, runtime_ms: float, pipeline_id: int, schedule_id: int) -> bytes:
    """One ``.sample`` file: featurization, float32 run time (ms), int32 pipeline id, int32 schedule id."""
    return (
        featurization
        + np.float32(runtime_ms).tobytes()
        + np.int32(pipeline_id).tobytes()
        + np.int32(schedule_id).tobytes()
    )


class SampleFileError(ValueError):
    """Bytes that are not one ``.sample`` file (as :func:`sample_bytes` writes them)."""


@dataclass(frozen=True)
class SampleFile:
    """What one ``.sample`` file holds, in the units Halide's trainer reads."""

    features: np.ndarray  # (n_stages, FEATURES_PER_STAGE) float32, Halide's featurization rows
    runtime_ms: float
    pipeline_id: int
    schedule_id: int


def parse_sample_bytes(data: bytes) -> SampleFile:
    """Read one ``.sample`` file's bytes back (the inverse of :func:`sample_bytes`).

    >>> parse_sample_bytes(sample_bytes(bytes(4 * FEATURES_PER_STAGE), 2.5, 7, 9)).runtime_ms
    2.5
    >>> parse_sample_bytes(b"short")
    Traceback (most recent call last):
    ...
    perfgraph.data.export.SampleFileError: 5 bytes: a .sample file is 1304*N + 12 bytes (N >= 1 stages)
    """
    row_bytes = 4 * FEATURES_PER_STAGE
    body = len(data) - 12
    if body < row_bytes or body % row_bytes:
        raise SampleFileError(f"{len(data)} bytes: a .sample file is {row_bytes}*N + 12 bytes (N >= 1 stages)")
    features = np.frombuffer(data, np.float32, body // 4).reshape(-1, FEATURES_PER_STAGE)
    runtime_ms = float(np.frombuffer(data, np.float32, 1, body)[0])
    pipeline_id, schedule_id = (int(v) for v in np.frombuffer(data, np.int32, 2, body + 4))
    return SampleFile(features, runtime_ms, pipeline_id, schedule_id)


class ExportError(ValueError):
    """An export that would overwrite or mix with files already there; the message names the folder."""


def export_samples(
    store: Store, out_dir: str | Path, pipeline_ids: set[int] | None = None, machine: str | None = None
) -> list[Path]:
    """Write one ``.sample`` per schedule measured on one machine kind; pipeline ids are the store's.

    ``machine``: the kind whose run times are written (default: the kind with the most samples), so that
    a schedule measured on two kinds gives one file, never two CPUs' times mixed in one training set.
    ``out_dir`` must be new or empty: Halide's trainer reads a whole folder, and another store's samples
    there would carry other pipelines under the same ids. Raises :class:`~perfgraph.data.store.StoreError`
    naming the known kinds when the store has no measurement of ``machine``.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out}: is a file, not a folder to write .sample files into")
    if out.is_dir() and any(out.iterdir()):
        count = sum(1 for _ in out.iterdir())
        raise ExportError(
            f"{out}: folder not empty ({count} entries); give a new or empty folder, so that these samples "
            "are not mixed with others (pipeline ids are only unique within one store)"
        )
    kind = machine or store.default_machine_kind()
    measured_kinds = store.samples_by_machine_kind()
    if kind is not None and kind not in measured_kinds:
        known = ", ".join(measured_kinds) or "none"
        raise StoreError(f"{store.path}: no measurements from machine kind {kind!r}; the store has: {known}")
    machine_ids = store.machine_ids(kind) if kind is not None else []
    out.mkdir(parents=True, exist_ok=True)
    written = []
    rows = store.execute(
        "SELECT s.pipeline_id, s.schedule_id, s.featurization, m.runtime_ms FROM schedules s "
        f"JOIN {label_measurements_sql(len(machine_ids))} m ON m.schedule_id = s.schedule_id "
        "WHERE s.duplicate_of IS NULL ORDER BY s.schedule_id",
        machine_ids,
    )
    for pipeline_id, schedule_id, blob, runtime_ms in rows:
        if pipeline_ids is not None and pipeline_id not in pipeline_ids:
            continue
        path = out / f"p{pipeline_id:05d}_s{schedule_id:07d}.sample"
        path.write_bytes(sample_bytes(zlib.decompress(blob), runtime_ms, pipeline_id, schedule_id))
        written.append(path)
    return written


def export_parquet(store: Store, out_dir: str | Path) -> list[Path]:
    """``samples.parquet`` (one row per measurement, featurization as a float32 list; ``protocol`` its
    timing protocol, ``is_label`` whether it is its schedule's label on its machine kind), ``pipelines.parquet``,
    ``failures.parquet``."""
    import pyarrow as pa  # here, so that the command line can catch ExportError without loading pyarrow
    import pyarrow.parquet as pq

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    samples = store.execute(
        "SELECT s.pipeline_id, p.uri, p.family, s.schedule_id, s.candidate_index, s.config, m.runtime_ms, "
        "m.median_ms, m.cv, m.repeats_ms, m.is_repeat, m.machine_id, m.protocol, s.featurization, m.measurement_id "
        "FROM schedules s JOIN pipelines p USING (pipeline_id) JOIN measurements m ON m.schedule_id = s.schedule_id "
        "ORDER BY m.measurement_id"
    ).fetchall()
    labels = set()  # measurement ids of every kind's labels (label_measurements_sql)
    for kind in store.samples_by_machine_kind():
        ids = store.machine_ids(kind)
        labels |= {r[0] for r in store.execute(f"SELECT measurement_id FROM {label_measurements_sql(len(ids))}", ids)}
    columns = [
        "pipeline_id",
        "uri",
        "family",
        "schedule_id",
        "candidate_index",
        "config",
        "runtime_ms",
        "median_ms",
        "cv",
        "repeats_ms",
        "is_repeat",
        "machine_id",
        "protocol",
        "featurization",
    ]
    table = {c: [r[i] for r in samples] for i, c in enumerate(columns)}
    table["is_label"] = [r[-1] in labels for r in samples]  # the run time Store.samples trains on
    table["repeats_ms"] = [json.loads(v) for v in table["repeats_ms"]]
    table["featurization"] = [np.frombuffer(zlib.decompress(b), np.float32).tolist() for b in table["featurization"]]
    paths = [out / "samples.parquet", out / "pipelines.parquet", out / "failures.parquet"]
    pq.write_table(pa.table(table) if samples else pa.table({c: [] for c in [*columns, "is_label"]}), paths[0])
    pipelines = store.execute("SELECT pipeline_id, uri, identity, family, num_stages, graph FROM pipelines").fetchall()
    pq.write_table(
        pa.table(
            {
                c: [r[i] for r in pipelines]
                for i, c in enumerate(["pipeline_id", "uri", "identity", "family", "num_stages", "graph"])
            }
        ),
        paths[1],
    )
    failures = store.execute(
        "SELECT pipeline_uri, candidate_index, config, kind, phase, message FROM failures"
    ).fetchall()
    pq.write_table(
        pa.table(
            {
                c: [r[i] for r in failures]
                for i, c in enumerate(["pipeline_uri", "candidate_index", "config", "kind", "phase", "message"])
            }
        ),
        paths[2],
    )
    return paths
