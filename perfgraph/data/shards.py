"""Immutable, compressed shards: how the dataset is shipped in git and rebuilt into SQLite.

``export_new_shard`` writes every row not yet in a shard into one new ``shard-NNNN-HASH.jsonl.gz``
file and never touches older shards, so the repository grows by new data only. Rows are keyed by
natural keys (pipeline URI, candidate index, machine fingerprint), so ``rebuild_store`` can replay all
shards, in name order, into a fresh SQLite store.

HASH is the start of the sha256 of the uncompressed content: a rebuild checks it, so that a shard cut
short or edited is refused instead of silently giving a smaller dataset.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import re
import shutil
import sqlite3
import sys
import zlib
from collections.abc import Iterator
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

from perfgraph.data.store import (
    MEASUREMENT_PROTOCOLS,
    WINDOW_PROTOCOL,
    MeasurementRecord,
    PipelineRecord,
    Store,
    StoreError,
)
from perfgraph.measure.host import MachineInfo
from perfgraph.schedules.stage_graph import StageGraph

SHARD_GLOB = "shard-*.jsonl.gz"
SHARD_NAME = re.compile(r"shard-(\d{4,})-([0-9a-f]{10})\.jsonl\.gz")
TABLES = {
    "pipelines": "pipeline_id",
    "schedules": "schedule_id",
    "measurements": "measurement_id",
    "failures": "failure_id",
}


class ShardError(ValueError):
    """A shard file that cannot be replayed; the message names the file and the line."""


def _rows(store: Store) -> Iterator[tuple[str | None, int | None, dict]]:
    """``(table, primary key, record)`` of every row in no shard yet, after every machine (no table)."""
    q = store.execute
    for fingerprint, info in q("SELECT fingerprint, info FROM machines"):
        yield None, None, {"type": "machine", "fingerprint": fingerprint, "info": json.loads(info)}
    for key, uri, identity, family, graph, buffers, algorithm in q(
        "SELECT pipeline_id, uri, identity, family, graph, buffers, algorithm_hash FROM pipelines "
        "WHERE shard IS NULL ORDER BY pipeline_id"
    ):
        yield (
            "pipelines",
            key,
            {
                "type": "pipeline",
                "uri": uri,
                "identity": identity,
                "family": family,
                "graph": json.loads(graph),
                "buffers": json.loads(buffers),
                "algorithm_hash": algorithm,
            },
        )
    for row in q(
        "SELECT s.schedule_id, p.uri, s.candidate_index, s.config, s.featurization, s.schedule_source, "
        "s.autoschedule_s, (SELECT d.candidate_index FROM schedules d WHERE d.schedule_id = s.duplicate_of) "
        "FROM schedules s JOIN pipelines p USING (pipeline_id) WHERE s.shard IS NULL ORDER BY s.schedule_id"
    ):
        key, uri, index, config, blob, source, autoschedule_s, duplicate_of = row
        yield (
            "schedules",
            key,
            {
                "type": "schedule",
                "uri": uri,
                "candidate_index": index,
                "config": json.loads(config),
                "featurization_zlib": base64.b64encode(blob).decode(),
                "schedule_source": source,
                "autoschedule_s": autoschedule_s,
                "duplicate_of_candidate": duplicate_of,
            },
        )
    for row in q(
        "SELECT m.measurement_id, p.uri, s.candidate_index, k.fingerprint, m.runtime_ms, m.median_ms, m.cv, "
        "m.repeats_ms, m.threads, m.compile_s, m.is_repeat, m.measured_at, m.protocol, m.conditions "
        "FROM measurements m "
        "JOIN schedules s USING (schedule_id) JOIN pipelines p USING (pipeline_id) JOIN machines k USING (machine_id) "
        "WHERE m.shard IS NULL ORDER BY m.measurement_id"
    ):
        key, uri, index, fingerprint, runtime, median, cv, repeats, threads, compile_s, is_repeat, at = row[:12]
        protocol, how = row[12:]
        yield (
            "measurements",
            key,
            {
                "type": "measurement",
                "uri": uri,
                "candidate_index": index,
                "machine": fingerprint,
                "runtime_ms": runtime,
                "median_ms": median,
                "cv": cv,
                "repeats_ms": json.loads(repeats),
                "threads": threads,
                "compile_s": compile_s,
                "is_repeat": bool(is_repeat),
                "measured_at": at,
                "protocol": protocol,
                "conditions": None if how is None else json.loads(how),
            },
        )
    for row in q(
        "SELECT f.failure_id, f.pipeline_uri, f.candidate_index, f.config, f.kind, f.phase, f.message, "
        "k.fingerprint FROM failures f LEFT JOIN machines k USING (machine_id) WHERE f.shard IS NULL "
        "ORDER BY failure_id"
    ):
        key, uri, index, config, kind, phase, message, fingerprint = row
        yield (
            "failures",
            key,
            {
                "type": "failure",
                "uri": uri,
                "candidate_index": index,
                "config": json.loads(config) if config else None,
                "kind": kind,
                "phase": phase,
                "message": message,
                "machine": fingerprint,
            },
        )


def export_new_shard(store: Store, shards_dir: str | Path) -> Path | None:
    """Write the rows that are in no shard yet into a new shard; ``None`` when there is nothing new.

    Safe to run again after an interruption: the file is renamed into place before the rows are marked
    as exported, and a shard file that the store does not know yet but whose rows are all still unmarked
    (an export stopped between the two) is adopted instead of being written a second time.
    """
    shards_dir = Path(shards_dir)
    shards_dir.mkdir(parents=True, exist_ok=True)
    with store.transaction() as db:  # writers wait while the rows are read and marked
        machines: list[str] = []
        pending: dict[str, tuple[str, int]] = {}  # line -> (table, primary key)
        for table, key, row in _rows(store):
            line = json.dumps(row, sort_keys=True)
            if table is None:
                machines.append(line)
            else:
                pending[line] = (table, key)
        if not pending:
            return None
        path = None
        for orphan in _unknown_shards(store, shards_dir):
            lines = [line for line in read_shard(orphan) if json.loads(line)["type"] != "machine"]
            if lines and all(line in pending for line in lines):
                _mark(db, [pending.pop(line) for line in lines], orphan.name)
                path = orphan
        if not pending:
            return path
        payload = ("\n".join(machines + list(pending)) + "\n").encode()
        number = len(list(shards_dir.glob(SHARD_GLOB))) + 1
        path = shards_dir / f"shard-{number:04d}-{content_hash(payload)}.jsonl.gz"
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(gzip.compress(payload, mtime=0))
        tmp.replace(path)
        _mark(db, list(pending.values()), path.name)
    return path


def content_hash(payload: bytes) -> str:
    """The hash in a shard's name: the first 10 hex digits of the sha256 of its uncompressed content."""
    return hashlib.sha256(payload).hexdigest()[:10]


def read_shard(path: Path) -> list[str]:
    """The lines of a shard, after checking its content against the hash in its name."""
    name = SHARD_NAME.fullmatch(path.name)
    if name is None:
        raise ShardError(f"{path}: not a shard name (expected shard-NNNN-<10 hex digits>.jsonl.gz)")
    try:
        payload = gzip.decompress(path.read_bytes())
    except (OSError, EOFError, zlib.error) as error:
        raise ShardError(f"{path}: not a readable gzip file ({error or type(error).__name__})") from error
    if content_hash(payload) != name[2]:
        raise ShardError(
            f"{path}: content hash {content_hash(payload)} does not match the {name[2]} in its name: "
            "the shard was cut short or changed after it was written"
        )
    try:
        return payload.decode().splitlines()
    except UnicodeDecodeError as error:
        raise ShardError(f"{path}: not UTF-8 text ({error})") from error


def _unknown_shards(store: Store, shards_dir: Path) -> list[Path]:
    known = {
        name
        for table in TABLES
        for (name,) in store.execute(f"SELECT DISTINCT shard FROM {table} WHERE shard IS NOT NULL")
    }
    return [path for path in sorted(shards_dir.glob(SHARD_GLOB)) if path.name not in known]


def _mark(db: sqlite3.Connection, rows: list[tuple[str, int]], shard: str) -> None:
    for table, key_column in TABLES.items():
        keys = [(shard, key) for row_table, key in rows if row_table == table]
        db.executemany(f"UPDATE {table} SET shard = ? WHERE {key_column} = ?", keys)


def rows_outside_shards(db_path: str | Path, shard_names: set[str]) -> dict[str, int] | None:
    """Per table, the rows of the store at ``db_path`` that none of ``shard_names`` holds (read only).

    ``None`` when ``db_path`` is no perfgraph store; an empty dict when there is no file.
    """
    db_path = Path(db_path)
    if not db_path.exists() or db_path.stat().st_size == 0:
        return {}
    marks = ",".join("?" * len(shard_names))
    try:
        with closing(_read_only(db_path)) as db:
            return {
                table: db.execute(
                    f"SELECT COUNT(*) FROM {table} WHERE shard IS NULL OR shard NOT IN ({marks})", tuple(shard_names)
                ).fetchone()[0]
                for table in TABLES
            }
    except sqlite3.Error:
        return None


def _read_only(db_path: Path) -> sqlite3.Connection:
    return sqlite3.connect(db_path.resolve().as_uri() + "?mode=ro", uri=True)


def backup_store(db_path: str | Path) -> Path:
    """Copy the file at ``db_path`` (a store with its write-ahead log, or any file) to ``db_path.bak-<time>``."""
    db_path = Path(db_path)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    backup = db_path.with_name(f"{db_path.name}.bak-{stamp}")
    suffix = 1
    while backup.exists():
        suffix += 1
        backup = db_path.with_name(f"{db_path.name}.bak-{stamp}-{suffix}")
    try:
        with closing(_read_only(db_path)) as source, closing(sqlite3.connect(backup)) as target:
            source.backup(target)  # includes what is still in the write-ahead log
    except sqlite3.DatabaseError:  # not SQLite: a plain copy
        backup.unlink(missing_ok=True)
        shutil.copy2(db_path, backup)
    return backup


def rebuild_store(shards_dir: str | Path, db_path: str | Path, force: bool = False) -> Store:
    """Replay every shard (in name order) into a fresh store at ``db_path`` (replacing it atomically).

    A file at ``db_path`` that holds rows none of the shards holds (never exported, or exported
    elsewhere), or that is no perfgraph store, is not replaced: :class:`ShardError` names what is at
    stake. ``force=True`` replaces it anyway, after copying it to ``db_path.bak-<time>``.
    """
    shards = sorted(Path(shards_dir).glob(SHARD_GLOB))
    if not shards:
        raise ShardError(f"{shards_dir}: no {SHARD_GLOB} files to rebuild from")
    db_path = Path(db_path)
    if db_path.is_dir():
        raise ShardError(f"{db_path}: is a directory, not a store file")
    _refuse_duplicate_shards(shards)
    _refuse_to_lose_rows(db_path, Path(shards_dir), {shard.name for shard in shards}, force)
    tmp = db_path.with_name(db_path.name + ".rebuild")
    temporary = [Path(str(tmp) + suffix) for suffix in ("", "-wal", "-shm")]
    for path in temporary:
        path.unlink(missing_ok=True)
    store = Store(tmp)
    try:
        for shard in shards:
            _replay_shard(store, shard)
    except BaseException:
        store.close()
        for path in temporary:
            path.unlink(missing_ok=True)
        raise
    store.close()
    for suffix in ("-wal", "-shm"):
        Path(str(db_path) + suffix).unlink(missing_ok=True)
    tmp.replace(db_path)
    return Store(db_path)


def _replay_shard(store: Store, shard: Path) -> None:
    for number, line in enumerate(read_shard(shard), start=1):
        try:
            _replay(store, json.loads(line), shard.name)
        except sqlite3.IntegrityError as error:
            raise ShardError(
                f"{shard}: line {number}: a row that an earlier shard already holds ({error}); "
                "is this shard a second copy of one export?"
            ) from error
        except (KeyError, ValueError, TypeError, OverflowError, RecursionError, zlib.error, sqlite3.Error) as error:
            # A record edited or damaged with its hash recomputed: name the line, whatever gave way.
            raise ShardError(f"{shard}: line {number}: {type(error).__name__}: {error}") from error
        except StoreError as error:
            raise ShardError(f"{shard}: line {number}: {error}") from error


def _refuse_to_lose_rows(db_path: Path, shards_dir: Path, shard_names: set[str], force: bool) -> None:
    at_stake = rows_outside_shards(db_path, shard_names)
    if at_stake is not None and not any(at_stake.values()):
        return
    if at_stake is None:
        what = "is not a perfgraph store, and a rebuild would overwrite it"
        advice = "give another --db"
    else:
        counts = ", ".join(f"{count} {table}" for table, count in at_stake.items())
        what = f"holds rows that no shard in {shards_dir} holds ({counts}), and a rebuild would lose them"
        advice = f"export them first ('perfgraph shards export --db {db_path} --shards {shards_dir}')"
    if not force:
        raise ShardError(
            f"{db_path}: {what}: {advice}, or pass --force to replace it anyway (a copy is kept as "
            f"{db_path}.bak-<time>)"
        )
    backup = backup_store(db_path)
    print(f"perfgraph: replacing {db_path} under --force; kept a copy as {backup}", file=sys.stderr)


def _refuse_duplicate_shards(shards: list[Path]) -> None:
    """Two shards with one content hash are two copies of one export: replaying both would fail half-way."""
    by_hash: dict[str, Path] = {}
    for shard in shards:
        name = SHARD_NAME.fullmatch(shard.name)
        if name is None:
            raise ShardError(f"{shard}: not a shard name (expected shard-NNNN-<10 hex digits>.jsonl.gz)")
        digest = name[2]
        if digest in by_hash:
            raise ShardError(
                f"{shard}: the same content as {by_hash[digest]} (a second copy of one export); remove one of them"
            )
        by_hash[digest] = shard


def _replay(store: Store, row: dict, shard: str) -> None:
    if not isinstance(row, dict):
        raise ValueError(f"a JSON {type(row).__name__}, not a record")
    kind = row["type"]
    if kind == "machine":
        if not isinstance(row["info"], dict):
            raise ValueError("a machine record whose info is no JSON object")
        store.machine_id(MachineInfo.from_json(row["info"]))
        return
    machine = None
    if row.get("machine"):
        machine = store.execute("SELECT machine_id FROM machines WHERE fingerprint = ?", (row["machine"],)).fetchone()[
            0
        ]
    if kind == "pipeline":
        _refuse_second_copy(
            store, "SELECT shard FROM pipelines WHERE uri = ?", (row["uri"],), f"pipeline {row['uri']!r}"
        )
        store.add_pipeline(
            row["uri"],
            row["identity"],
            row["family"],
            StageGraph.from_json(row["graph"]),
            row["buffers"],
            row["algorithm_hash"],
        )
        store.execute("UPDATE pipelines SET shard = ? WHERE uri = ?", (shard, row["uri"]))
    elif kind == "schedule":
        pipeline = _pipeline(store, row["uri"])
        _refuse_second_copy(
            store,
            "SELECT shard FROM schedules WHERE pipeline_id = ? AND candidate_index = ?",
            (pipeline.pipeline_id, row["candidate_index"]),
            f"schedule {row['uri']!r} candidate {row['candidate_index']}",
        )
        duplicate_of = None
        if row["duplicate_of_candidate"] is not None:
            duplicate_of = _schedule_id(store, pipeline.pipeline_id, row["duplicate_of_candidate"])
        schedule_id = store.add_schedule(
            pipeline.pipeline_id,
            row["candidate_index"],
            row["config"],
            zlib.decompress(base64.b64decode(row["featurization_zlib"])),
            row["schedule_source"],
            row["autoschedule_s"],
            machine or 0,
            None,
            duplicate_of=duplicate_of,
        )
        store.execute("UPDATE schedules SET shard = ? WHERE schedule_id = ?", (shard, schedule_id))
    elif kind == "measurement":
        pipeline = _pipeline(store, row["uri"])
        schedule_id = _schedule_id(store, pipeline.pipeline_id, row["candidate_index"])
        protocol, conditions = row.get("protocol", WINDOW_PROTOCOL), row.get("conditions")  # older shards: window-v1
        if protocol not in MEASUREMENT_PROTOCOLS or not isinstance(conditions, dict | None):
            raise ValueError(f"measurement protocol {protocol!r} / conditions {conditions!r}: not one perfgraph writes")
        record = MeasurementRecord(
            row["runtime_ms"],
            row["median_ms"],
            row["cv"],
            tuple(row["repeats_ms"]),
            row["threads"],
            row["compile_s"],
            protocol,
            conditions,
        )
        _refuse_second_copy(
            store,
            "SELECT shard FROM measurements WHERE schedule_id = ? AND machine_id = ? AND is_repeat = ? "
            "AND measured_at = ?",
            (schedule_id, machine, int(row["is_repeat"]), row["measured_at"]),
            f"the measurement of {row['uri']!r} candidate {row['candidate_index']} taken at {row['measured_at']}",
        )
        with store.transaction() as db:
            Store._insert_measurement(db, schedule_id, machine, record, is_repeat=row["is_repeat"])
            db.execute(
                "UPDATE measurements SET measured_at = ?, shard = ? WHERE measurement_id = last_insert_rowid()",
                (row["measured_at"], shard),
            )
    elif kind == "failure":
        store.add_failure(
            row["uri"],
            row["candidate_index"],
            row["config"],
            row["kind"],
            row["phase"],
            row["message"],
            machine,
        )
        store.execute(
            "UPDATE failures SET shard = ? WHERE pipeline_uri = ? AND candidate_index = ?",
            (shard, row["uri"], row["candidate_index"]),
        )
    else:
        raise ValueError(f"unknown record type {kind!r}")


def _refuse_second_copy(store: Store, query: str, key: tuple, what: str) -> None:
    """A row replayed twice (pipelines and measurements have no constraint that would say so)."""
    found = store.execute(query, key).fetchone()
    if found is not None:
        raise ValueError(f"{what} is already in {found[0]}: is this shard a second copy of one export?")


def _pipeline(store: Store, uri: str) -> PipelineRecord:
    pipeline = store.pipeline_by_uri(uri)
    if pipeline is None:
        raise ValueError(f"pipeline {uri!r} is in no earlier line")
    return pipeline


def _schedule_id(store: Store, pipeline_id: int, candidate_index: int) -> int:
    return store.execute(
        "SELECT schedule_id FROM schedules WHERE pipeline_id = ? AND candidate_index = ?",
        (pipeline_id, candidate_index),
    ).fetchone()[0]
