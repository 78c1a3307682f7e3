"""The embedded dataset: one SQLite file, crash-safe, resumable.

Every candidate is committed in its own transaction the moment it ends, in WAL mode, so that
``kill -9`` of the collector loses at most the candidates in flight and never corrupts the file.
Pipelines are keyed by URI *and* identity: a URI whose Halide definition changed is refused, because
two different pipelines sharing an id silently corrupt training (Halide's trainer included).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

import numpy as np

from perfgraph.data.records import Sample
from perfgraph.features.layout import FEATURE_SCHEMA_VERSION, FEATURES_PER_STAGE, PIPELINE_SLICE
from perfgraph.measure.host import MachineInfo
from perfgraph.schedules.schedule_source import schedule_edge_features
from perfgraph.schedules.stage_graph import StageGraph

STORE_SCHEMA_VERSION = 1
# Timing protocols a measurement can be taken under (perfgraph.measure.timing explains them).
WINDOW_PROTOCOL = "window-v1"
QUIET_PROTOCOL = "quiet-v2"
FIXED_LAYOUT_PROTOCOL = "quiet-v3"
ALIGNED_PROTOCOL = "quiet-v4"
MEASUREMENT_PROTOCOLS = (WINDOW_PROTOCOL, QUIET_PROTOCOL, FIXED_LAYOUT_PROTOCOL, ALIGNED_PROTOCOL)


def label_measurements_sql(n_machine_ids: int, one_schedule: bool = False) -> str:
    """SQL for the table ``(schedule_id, runtime_ms, protocol, measurement_id)`` of each schedule's label on one kind.

    Bind ``n_machine_ids`` machine ids (the kind's), then, with ``one_schedule``, a schedule id (the
    table then holds that schedule's label only, without reading every measurement). A schedule's label
    is its first measurement on the kind, unless it was measured again under a newer timing protocol
    (later in :data:`MEASUREMENT_PROTOCOLS`; ``perfgraph collect --upgrade-labels`` does that on purpose,
    but any re-measurement counts): then the earliest measurement under the newest protocol. A
    re-measurement under the same protocol (for the noise floor) never replaces the label.
    """
    newest_first = " ".join(f"WHEN '{protocol}' THEN {rank}" for rank, protocol in enumerate(MEASUREMENT_PROTOCOLS))
    return (
        "(SELECT schedule_id, runtime_ms, protocol, measurement_id FROM (SELECT schedule_id, runtime_ms, protocol, "
        "measurement_id, ROW_NUMBER() "
        f"OVER (PARTITION BY schedule_id ORDER BY CASE protocol {newest_first} ELSE -1 END DESC, is_repeat, "
        "measured_at, measurement_id) AS label_rank FROM measurements "
        f"WHERE machine_id IN ({','.join('?' * n_machine_ids)}){' AND schedule_id = ?' if one_schedule else ''}) "
        "WHERE label_rank = 1)"
    )


class StoreError(RuntimeError):
    """The store cannot be used as asked; the message names the file and the conflict."""


@dataclass(frozen=True)
class PipelineRecord:
    pipeline_id: int
    uri: str
    identity: str
    family: str
    num_stages: int
    graph: StageGraph
    algorithm_hash: str


@dataclass(frozen=True)
class MeasurementRecord:
    """One benchmark of one schedule: every repeat, its summary, and how it was compiled and run."""

    runtime_ms: float
    median_ms: float
    cv: float
    repeats_ms: tuple[float, ...]
    threads: int
    compile_s: float
    protocol: str = WINDOW_PROTOCOL  # one of MEASUREMENT_PROTOCOLS
    conditions: dict | None = None  # how the benchmark ran: slow bursts rejected, calibration, steal time


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def features_hash(featurization: bytes) -> str:
    return hashlib.sha256(featurization).hexdigest()


def algorithm_hash(featurization: bytes) -> str:
    """Hash of the pipeline-feature columns, which do not depend on the schedule.

    Every candidate of a pipeline must reproduce it: a mismatch means the workload's code changed.
    """
    rows = np.frombuffer(featurization, dtype=np.float32).reshape(-1, FEATURES_PER_STAGE)
    return hashlib.sha256(np.ascontiguousarray(rows[:, PIPELINE_SLICE]).tobytes()).hexdigest()


class FeaturizationError(ValueError):
    """Stored featurization bytes that are not zlib-compressed rows of ``FEATURES_PER_STAGE`` float32s."""


def decode_featurization(blob: bytes) -> np.ndarray:
    """The ``(n_stages, FEATURES_PER_STAGE)`` float32 rows of a stored (zlib-compressed) featurization.

    >>> decode_featurization(zlib.compress(bytes(4 * FEATURES_PER_STAGE))).shape
    (1, 326)
    >>> decode_featurization(zlib.compress(bytes(7)))
    Traceback (most recent call last):
    ...
    perfgraph.data.store.FeaturizationError: featurization: 7 bytes, not a whole number of 326-float32 stage rows
    """
    try:
        raw = zlib.decompress(blob)
    except (zlib.error, TypeError) as error:
        raise FeaturizationError(f"featurization: not zlib-compressed ({error})") from error
    if len(raw) % (4 * FEATURES_PER_STAGE):
        raise FeaturizationError(
            f"featurization: {len(raw)} bytes, not a whole number of {FEATURES_PER_STAGE}-float32 stage rows"
        )
    return np.frombuffer(raw, dtype=np.float32).reshape(-1, FEATURES_PER_STAGE)


class Store:
    """A perfgraph dataset in one SQLite file.

    >>> import tempfile, os
    >>> store = Store(os.path.join(tempfile.mkdtemp(), "demo.db"))
    >>> store.counts()["pipelines"]
    0
    """

    def __init__(self, path: str | Path) -> None:
        """Open the store at ``path``, creating it when the file is missing or empty.

        Any other file (another application's SQLite database, a directory, not SQLite at all) is
        refused with :class:`StoreError` before anything in it is changed.
        """
        self.path = Path(path)
        if self.path.is_dir():
            raise StoreError(f"{self.path}: is a directory, not a perfgraph store file")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as error:
            raise StoreError(f"{self.path}: cannot open the store ({error})") from error
        try:
            self._init_schema()
        except BaseException as error:
            self._db.close()
            if isinstance(error, sqlite3.Error):
                raise StoreError(f"{self.path}: cannot open the store ({error})") from error
            raise

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _init_schema(self) -> None:
        # Reads first: switching to WAL or adding our tables would change another application's file.
        try:
            tables = [row[0] for row in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        except sqlite3.DatabaseError as error:
            raise StoreError(f"{self.path}: not a perfgraph store: not an SQLite database ({error})") from error
        found = self._meta("schema_version")
        if tables and found is None:
            shown = ", ".join(sorted(tables)[:8]) + (", ..." if len(tables) > 8 else "")
            raise StoreError(
                f"{self.path}: not a perfgraph store (an SQLite database with tables {shown} but no perfgraph "
                "schema version); refusing to change it"
            )
        if found is not None and int(found) != STORE_SCHEMA_VERSION:
            raise StoreError(f"{self.path}: store schema version {found}, this perfgraph reads {STORE_SCHEMA_VERSION}")
        feature_version = self._meta("feature_schema_version")
        if feature_version is not None and int(feature_version) != FEATURE_SCHEMA_VERSION:
            raise StoreError(
                f"{self.path}: feature-schema version {feature_version}, this perfgraph reads {FEATURE_SCHEMA_VERSION}"
            )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        schema = resources.files("perfgraph.data").joinpath("schema.sql").read_text()
        self._db.executescript(schema)  # idempotent: every statement is IF NOT EXISTS
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(measurements)")}
        if "protocol" not in columns:  # a store from before the timing protocols: window-v1 throughout
            self._db.execute("ALTER TABLE measurements ADD COLUMN protocol TEXT NOT NULL DEFAULT 'window-v1'")
            self._db.execute("ALTER TABLE measurements ADD COLUMN conditions TEXT")
        with self.transaction() as db:
            db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(STORE_SCHEMA_VERSION),))
            db.execute(
                "INSERT OR IGNORE INTO meta VALUES ('feature_schema_version', ?)",
                (str(FEATURE_SCHEMA_VERSION),),
            )

    def _meta(self, key: str) -> str | None:
        try:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        except sqlite3.OperationalError:
            return None
        except sqlite3.DatabaseError as error:
            raise StoreError(f"{self.path}: not a perfgraph SQLite store ({error})") from error
        return row[0] if row else None

    # -- writing -------------------------------------------------------------------------------

    def machine_id(self, machine: MachineInfo) -> int:
        with self.transaction() as db:
            db.execute(
                "INSERT OR IGNORE INTO machines (fingerprint, info) VALUES (?, ?)",
                (machine.fingerprint, json.dumps(machine.to_json())),
            )
            return db.execute(
                "SELECT machine_id FROM machines WHERE fingerprint = ?", (machine.fingerprint,)
            ).fetchone()[0]

    def add_pipeline(
        self, uri: str, identity: str, family: str, graph: StageGraph, buffers: dict, algorithm: str
    ) -> int:
        """Insert a pipeline (or return the id of the same one); refuses a URI with another definition."""
        existing = self.pipeline_by_uri(uri)
        if existing is not None:
            if existing.identity != identity:
                raise StoreError(
                    f"{self.path}: pipeline {uri!r} is stored with identity {existing.identity[:12]}, but it now "
                    f"builds to {identity[:12]}: its Halide definition changed. Collect it into a new store."
                )
            return existing.pipeline_id
        with self.transaction() as db:
            cursor = db.execute(
                "INSERT INTO pipelines (uri, identity, family, num_stages, graph, buffers, algorithm_hash) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    uri,
                    identity,
                    family,
                    graph.num_stages,
                    json.dumps(graph.to_json()),
                    json.dumps(buffers),
                    algorithm,
                ),
            )
            db.execute("DELETE FROM failures WHERE pipeline_uri = ? AND candidate_index = -1", (uri,))  # retried
            return int(cursor.lastrowid)

    def add_schedule(
        self,
        pipeline_id: int,
        candidate_index: int,
        config: dict,
        featurization: bytes,
        schedule_source: str,
        autoschedule_s: float,
        machine_id: int,
        measurement: MeasurementRecord | None,
        duplicate_of: int | None = None,
    ) -> int:
        """Commit one schedule with its measurement (or as a duplicate of a measured one) atomically."""
        with self.transaction() as db:
            cursor = db.execute(
                "INSERT INTO schedules (pipeline_id, candidate_index, config, features_hash, featurization, "
                "schedule_source, autoschedule_s, duplicate_of) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    pipeline_id,
                    candidate_index,
                    json.dumps(config),
                    features_hash(featurization),
                    zlib.compress(featurization, 6),
                    schedule_source,
                    autoschedule_s,
                    duplicate_of,
                ),
            )
            schedule_id = int(cursor.lastrowid)
            if measurement is not None:
                self._insert_measurement(db, schedule_id, machine_id, measurement, is_repeat=False)
        return schedule_id

    def add_repeat_measurement(self, schedule_id: int, machine_id: int, measurement: MeasurementRecord) -> None:
        self.add_measurement(schedule_id, machine_id, measurement, is_repeat=True)

    def add_measurement(
        self, schedule_id: int, machine_id: int, measurement: MeasurementRecord, is_repeat: bool = False
    ) -> None:
        """Commit one measurement of a stored schedule: a re-measurement, or its first on another machine."""
        with self.transaction() as db:
            self._insert_measurement(db, schedule_id, machine_id, measurement, is_repeat=is_repeat)

    @staticmethod
    def _insert_measurement(
        db: sqlite3.Connection, schedule_id: int, machine_id: int, m: MeasurementRecord, is_repeat: bool
    ) -> None:
        db.execute(
            "INSERT INTO measurements (schedule_id, machine_id, runtime_ms, median_ms, cv, repeats_ms, threads, "
            "compile_s, is_repeat, measured_at, protocol, conditions) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                schedule_id,
                machine_id,
                m.runtime_ms,
                m.median_ms,
                m.cv,
                json.dumps(list(m.repeats_ms)),
                m.threads,
                m.compile_s,
                int(is_repeat),
                now(),
                m.protocol,
                None if m.conditions is None else json.dumps(m.conditions),
            ),
        )

    def add_failure(
        self,
        uri: str,
        candidate_index: int,
        config: dict | None,
        kind: str,
        phase: str,
        message: str,
        machine_id: int | None,
    ) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO failures (pipeline_uri, candidate_index, config, kind, phase, message, "
                "machine_id, failed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    uri,
                    candidate_index,
                    json.dumps(config) if config else None,
                    kind,
                    phase,
                    message[-4000:],
                    machine_id,
                    now(),
                ),
            )

    # -- reading -------------------------------------------------------------------------------

    def pipeline_by_uri(self, uri: str) -> PipelineRecord | None:
        row = self._db.execute(
            "SELECT pipeline_id, uri, identity, family, num_stages, graph, algorithm_hash FROM pipelines WHERE uri = ?",
            (uri,),
        ).fetchone()
        return None if row is None else _pipeline_record(row)

    def pipelines(self) -> list[PipelineRecord]:
        rows = self._db.execute(
            "SELECT pipeline_id, uri, identity, family, num_stages, graph, algorithm_hash FROM pipelines "
            "ORDER BY pipeline_id"
        ).fetchall()
        return [_pipeline_record(row) for row in rows]

    def done_candidates(self, uri: str) -> set[int]:
        """Candidate indices of a pipeline that already ended (measured, duplicate or failed)."""
        done = {
            r[0]
            for r in self._db.execute(
                "SELECT s.candidate_index FROM schedules s JOIN pipelines p USING (pipeline_id) WHERE p.uri = ?",
                (uri,),
            )
        }
        done |= {r[0] for r in self._db.execute("SELECT candidate_index FROM failures WHERE pipeline_uri = ?", (uri,))}
        return done

    def failed_candidates(self, uri: str, machine: str) -> set[int]:
        """Candidate indices of a pipeline whose last failure was recorded on machine kind ``machine``."""
        kinds = {machine_id: info.kind for machine_id, info in self.machines().items()}
        return {
            index
            for index, machine_id in self._db.execute(
                "SELECT candidate_index, machine_id FROM failures WHERE pipeline_uri = ?", (uri,)
            )
            if kinds.get(machine_id) == machine
        }

    def pipeline_failed(self, uri: str) -> bool:
        return (
            self._db.execute(
                "SELECT 1 FROM failures WHERE pipeline_uri = ? AND candidate_index = -1", (uri,)
            ).fetchone()
            is not None
        )

    def candidate_outcomes(self, pipeline_id: int, count: int) -> list[bool]:
        """For candidates ``0..count-1`` of a pipeline: whether each gave a newly measured schedule."""
        new = {
            r[0]
            for r in self._db.execute(
                "SELECT candidate_index FROM schedules WHERE pipeline_id = ? AND duplicate_of IS NULL",
                (pipeline_id,),
            )
        }
        return [index in new for index in range(count)]

    def candidate_outcome(
        self, uri: str, candidate_index: int, machine: str
    ) -> tuple[int | None, float | None, str | None, str | None]:
        """``(schedule id, run time ms on machine kind, schedule source, failure)`` of one candidate.

        A duplicate's run time is its measured twin's; ``failure`` is ``"kind: message"`` or ``None``.
        """
        row = self._db.execute(
            "SELECT s.schedule_id, COALESCE(s.duplicate_of, s.schedule_id), s.schedule_source FROM schedules s "
            "JOIN pipelines p USING (pipeline_id) WHERE p.uri = ? AND s.candidate_index = ?",
            (uri, candidate_index),
        ).fetchone()
        if row is None:
            failure = self._db.execute(
                "SELECT kind, message FROM failures WHERE pipeline_uri = ? AND candidate_index = ?",
                (uri, candidate_index),
            ).fetchone()
            reason = f"{failure[0]}: {failure[1].strip()}" if failure else "not run (interrupted)"
            return None, None, None, reason
        schedule_id, measured_id, source = row
        ids = self.machine_ids(machine)
        row = self._db.execute(
            f"SELECT runtime_ms FROM {label_measurements_sql(len(ids), one_schedule=True)}", (*ids, measured_id)
        ).fetchone()
        runtime = None if row is None else row[0]
        return schedule_id, runtime, source, None

    def measured_hashes(self, pipeline_id: int) -> dict[str, int]:
        """Features hash -> schedule id of every measured schedule of a pipeline (for de-duplication)."""
        rows = self._db.execute(
            "SELECT features_hash, schedule_id FROM schedules WHERE pipeline_id = ? AND duplicate_of IS NULL",
            (pipeline_id,),
        )
        return {h: sid for h, sid in rows}

    def machines(self) -> dict[int, MachineInfo]:
        """Every machine the store has measurements or failures from, by id."""
        return {
            machine_id: MachineInfo.from_json(json.loads(info))
            for machine_id, info in self._db.execute("SELECT machine_id, info FROM machines ORDER BY machine_id")
        }

    def samples_by_machine_kind(self) -> dict[str, int]:
        """Machine kind -> number of first measurements taken on it, most first."""
        kinds: dict[str, int] = {}
        machines = self.machines()
        for machine_id, count in self._db.execute(
            "SELECT machine_id, COUNT(*) FROM measurements WHERE is_repeat = 0 GROUP BY machine_id"
        ):
            kind = machines[machine_id].kind if machine_id in machines else "unknown"
            kinds[kind] = kinds.get(kind, 0) + count
        return dict(sorted(kinds.items(), key=lambda item: (-item[1], item[0])))

    def default_machine_kind(self) -> str | None:
        """The machine kind with the most samples (``None`` for an empty store)."""
        return next(iter(self.samples_by_machine_kind()), None)

    def machine_ids(self, kind: str) -> list[int]:
        """Ids of the machines of one kind (empty when the store has none)."""
        return [machine_id for machine_id, info in self.machines().items() if info.kind == kind]

    def known_machine_ids(self, kind: str) -> list[int]:
        """:meth:`machine_ids`, or a :class:`StoreError` naming the kinds the store has when it has none of ``kind``."""
        ids = self.machine_ids(kind)
        if not ids:
            known = ", ".join(self.samples_by_machine_kind()) or "none"
            raise StoreError(f"{self.path}: no measurements from machine kind {kind!r}; the store has: {known}")
        return ids

    def samples(self, measured_only: bool = True, machine: str | None = None) -> list[Sample]:
        """Every measured schedule, with its label (:func:`label_measurements_sql`), as a :class:`Sample`.

        Run times come from one machine kind only (``machine``; default: the kind with the most
        samples), so that measurements of different CPUs are never mixed. With ``measured_only=False``,
        schedules not measured on that kind come with ``runtime_ms=None``. Every sample carries the
        kind and its machine's :meth:`~perfgraph.measure.host.MachineInfo.feature_vector`.
        """
        graphs = {p.pipeline_id: p for p in self.pipelines()}
        kind = machine or self.default_machine_kind()
        ids = self.known_machine_ids(kind) if kind is not None else [-1]
        machine_features = self.machines()[ids[0]].feature_vector() if kind is not None else None
        query = (
            "SELECT s.pipeline_id, s.schedule_id, s.featurization, s.schedule_source, m.runtime_ms FROM schedules s "
            f"{'JOIN' if measured_only else 'LEFT JOIN'} {label_measurements_sql(len(ids))} m "
            "ON m.schedule_id = s.schedule_id WHERE s.duplicate_of IS NULL ORDER BY s.pipeline_id, s.schedule_id"
        )
        samples = []
        for pipeline_id, schedule_id, blob, source, runtime_ms in self._db.execute(query, ids):
            pipeline = graphs[pipeline_id]
            edges = pipeline.graph.edge_array()
            samples.append(
                Sample(
                    pipeline_id=pipeline_id,
                    schedule_id=schedule_id,
                    pipeline_name=pipeline.uri,
                    family=pipeline.family,
                    features=decode_featurization(blob),
                    edges=edges,
                    edge_features=pipeline.graph.edge_feature_array(),
                    stage_names=pipeline.graph.stage_names,
                    runtime_ms=runtime_ms,
                    schedule_edge_features=schedule_edge_features(source, pipeline.graph.stage_names, edges),
                    machine_kind=kind,
                    machine_features=machine_features,
                )
            )
        return samples

    def repeat_pairs(
        self,
        repeated_from: str | None = None,
        repeated_before: str | None = None,
        machine: str | None = None,
        protocol: str | None = None,
    ) -> list[tuple[int, int, float, float]]:
        """``(pipeline_id, schedule_id, first_ms, repeat_ms)`` for schedules measured twice, independently.

        Both measurements come from one machine kind (``machine``; default: the kind with the most
        samples) and were taken under one timing protocol (``protocol``, if given): a re-measurement under
        a newer protocol (an upgraded label) is not a pair. ``repeated_from`` /
        ``repeated_before`` (times as stored in ``measured_at``) keep the pairs whose re-measurement was
        taken in that window, to compare collection settings over time.
        """
        kind = machine or self.default_machine_kind()
        if kind is None:
            return []
        ids = self.known_machine_ids(kind)
        inside = ",".join(str(int(i)) for i in ids)
        return [
            tuple(r)
            for r in self._db.execute(
                "SELECT s.pipeline_id, s.schedule_id, a.runtime_ms, b.runtime_ms FROM measurements a "
                "JOIN measurements b ON a.schedule_id = b.schedule_id AND a.is_repeat = 0 AND b.is_repeat = 1 "
                "AND a.protocol = b.protocol "
                f"AND a.machine_id IN ({inside}) AND b.machine_id IN ({inside}) "
                "JOIN schedules s ON s.schedule_id = a.schedule_id "
                "WHERE (?1 IS NULL OR b.measured_at >= ?1) AND (?2 IS NULL OR b.measured_at < ?2) "
                "AND (?3 IS NULL OR (a.protocol = ?3 AND b.protocol = ?3)) "
                "ORDER BY s.schedule_id",
                (repeated_from, repeated_before, protocol),
            )
        ]

    def label_protocols(self, machine: str | None = None, pipeline_id: int | None = None) -> dict[int, str]:
        """Schedule id -> the timing protocol its label was taken under on one kind (of one pipeline).

        The kind is ``machine`` (default: the kind with the most samples), as in :meth:`samples`; the
        label as :func:`label_measurements_sql` chooses it.
        """
        kind = machine or self.default_machine_kind()
        if kind is None:
            return {}
        ids = self.known_machine_ids(kind)
        return dict(
            self._db.execute(
                f"SELECT l.schedule_id, l.protocol FROM {label_measurements_sql(len(ids))} l "
                "JOIN schedules s ON s.schedule_id = l.schedule_id WHERE ? IS NULL OR s.pipeline_id = ?",
                (*ids, pipeline_id, pipeline_id),
            )
        )

    def stale_labels(self, pipeline_id: int, machine: str, protocol: str) -> list[int]:
        """Schedules of a pipeline whose label on kind ``machine`` was taken under a protocol older than ``protocol``.

        Those are the labels ``perfgraph collect --upgrade-labels`` re-measures: only schedules that can be
        rebuilt (not those whose Adams2019 weights were random, drawn from the clock). The collector
        records an upgrade that fails, or whose worker could not reach ``protocol``, as a failure of the
        candidate, so that it is not tried again (:meth:`failed_candidates`).
        """
        return [row[1] for row in self._stale_labels(machine, protocol, pipeline_id)]

    def stale_label_pipelines(self, machine: str, protocol: str) -> list[str]:
        """URIs of the pipelines with :meth:`stale_labels` not failed on ``machine``, the oldest labels' first."""
        stale: dict[int, list[tuple[int, int]]] = {}  # pipeline id -> (candidate index, protocol rank)
        for pipeline_id, _, label_protocol, index in self._stale_labels(machine, protocol):
            stale.setdefault(pipeline_id, []).append((index, MEASUREMENT_PROTOCOLS.index(label_protocol)))
        uris = {p.pipeline_id: p.uri for p in self.pipelines() if p.pipeline_id in stale}
        oldest = {}
        for pipeline_id, labels in stale.items():
            failed = self.failed_candidates(uris[pipeline_id], machine)
            ranks = [rank for index, rank in labels if index not in failed]
            if ranks:
                oldest[pipeline_id] = min(ranks)
        return [uris[pipeline_id] for pipeline_id in sorted(oldest, key=lambda i: (oldest[i], i))]

    def _stale_labels(
        self, machine: str, protocol: str, pipeline_id: int | None = None
    ) -> list[tuple[int, int, str, int]]:
        """``(pipeline_id, schedule_id, label protocol, candidate_index)`` of every stale label."""
        ids = self.machine_ids(machine)
        if not ids or protocol not in MEASUREMENT_PROTOCOLS:
            return []
        older = MEASUREMENT_PROTOCOLS[: MEASUREMENT_PROTOCOLS.index(protocol)]
        if not older:
            return []
        return self._db.execute(
            "SELECT s.pipeline_id, l.schedule_id, l.protocol, s.candidate_index "
            f"FROM {label_measurements_sql(len(ids))} l JOIN schedules s ON s.schedule_id = l.schedule_id "
            "WHERE (? IS NULL OR s.pipeline_id = ?) "
            "AND NOT COALESCE(json_extract(s.config, '$.random_weights'), 0) "
            f"AND l.protocol IN ({','.join('?' * len(older))}) ORDER BY l.schedule_id",
            (*ids, pipeline_id, pipeline_id, *older),
        ).fetchall()

    def measured_on(self, pipeline_id: int, machine: str) -> set[int]:
        """Schedule ids of a pipeline that have a first measurement on machine kind ``machine``."""
        ids = self.machine_ids(machine)
        if not ids:
            return set()
        return {
            r[0]
            for r in self._db.execute(
                "SELECT s.schedule_id FROM schedules s JOIN measurements m ON m.schedule_id = s.schedule_id "
                f"AND m.is_repeat = 0 AND m.machine_id IN ({','.join('?' * len(ids))}) WHERE s.pipeline_id = ?",
                (*ids, pipeline_id),
            )
        }

    def measured_schedules(self, pipeline_id: int) -> list[tuple[int, int, dict]]:
        """``(schedule_id, candidate_index, config)`` of every measured (non-duplicate) schedule of a pipeline."""
        return [
            (schedule_id, index, json.loads(config))
            for schedule_id, index, config in self._db.execute(
                "SELECT schedule_id, candidate_index, config FROM schedules WHERE pipeline_id = ? "
                "AND duplicate_of IS NULL ORDER BY candidate_index",
                (pipeline_id,),
            )
        ]

    def counts(self) -> dict[str, int]:
        def one(sql: str) -> int:
            return int(self._db.execute(sql).fetchone()[0])

        return {
            "pipelines": one("SELECT COUNT(*) FROM pipelines"),
            "schedules": one("SELECT COUNT(*) FROM schedules"),
            "samples": one("SELECT COUNT(*) FROM measurements WHERE is_repeat = 0"),
            "failures": one("SELECT COUNT(*) FROM failures"),
        }

    def execute(self, sql: str, params: tuple = ()) -> sqlite3.Cursor:
        """Read-only queries for statistics and exports."""
        return self._db.execute(sql, params)


def _pipeline_record(row: tuple) -> PipelineRecord:
    pipeline_id, uri, identity, family, num_stages, graph, algorithm = row
    return PipelineRecord(
        pipeline_id, uri, identity, family, num_stages, StageGraph.from_json(json.loads(graph)), algorithm
    )
