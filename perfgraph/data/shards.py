"""Immutable, compressed shards: how the dataset is shipped in git and rebuilt into SQLite.

``export_new_shard`` writes every row not yet in a shard into one new ``shard-NNNN-HASH.jsonl.gz``
file and never touches older shards, so the repository grows by new data only. Rows are keyed by
natural keys (pipeline URI, candidate index, machine fingerprint), so ``rebuild_store`` can replay all
shards, in name order, into a fresh SQLite store.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import zlib
from collections.abc import Iterator
from pathlib import Path

from perfgraph.data.store import MeasurementRecord, Store
from perfgraph.measure.host import MachineInfo
from perfgraph.schedules.stage_graph import StageGraph

SHARD_GLOB = "shard-*.jsonl.gz"


class ShardError(ValueError):
    """A shard file that cannot be replayed; the message names the file and the line."""


def _rows(store: Store) -> Iterator[dict]:
    q = store.execute
    for fingerprint, info in q("SELECT fingerprint, info FROM machines"):
        yield {"type": "machine", "fingerprint": fingerprint, "info": json.loads(info)}
    for uri, identity, family, graph, buffers, algorithm in q(
        "SELECT uri, identity, family, graph, buffers, algorithm_hash FROM pipelines WHERE shard IS NULL "
        "ORDER BY pipeline_id"
    ):
        yield {
            "type": "pipeline",
            "uri": uri,
            "identity": identity,
            "family": family,
            "graph": json.loads(graph),
            "buffers": json.loads(buffers),
            "algorithm_hash": algorithm,
        }
    for row in q(
        "SELECT p.uri, s.candidate_index, s.config, s.featurization, s.schedule_source, s.autoschedule_s, "
        "(SELECT d.candidate_index FROM schedules d WHERE d.schedule_id = s.duplicate_of) FROM schedules s "
        "JOIN pipelines p USING (pipeline_id) WHERE s.shard IS NULL ORDER BY s.schedule_id"
    ):
        uri, index, config, blob, source, autoschedule_s, duplicate_of = row
        yield {
            "type": "schedule",
            "uri": uri,
            "candidate_index": index,
            "config": json.loads(config),
            "featurization_zlib": base64.b64encode(blob).decode(),
            "schedule_source": source,
            "autoschedule_s": autoschedule_s,
            "duplicate_of_candidate": duplicate_of,
        }
    for row in q(
        "SELECT p.uri, s.candidate_index, k.fingerprint, m.runtime_ms, m.median_ms, m.cv, m.repeats_ms, m.threads, "
        "m.compile_s, m.is_repeat, m.measured_at FROM measurements m JOIN schedules s USING (schedule_id) "
        "JOIN pipelines p USING (pipeline_id) JOIN machines k USING (machine_id) WHERE m.shard IS NULL "
        "ORDER BY m.measurement_id"
    ):
        uri, index, fingerprint, runtime, median, cv, repeats, threads, compile_s, is_repeat, at = row
        yield {
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
        }
    for row in q(
        "SELECT f.pipeline_uri, f.candidate_index, f.config, f.kind, f.phase, f.message, k.fingerprint "
        "FROM failures f LEFT JOIN machines k USING (machine_id) WHERE f.shard IS NULL ORDER BY failure_id"
    ):
        uri, index, config, kind, phase, message, fingerprint = row
        yield {
            "type": "failure",
            "uri": uri,
            "candidate_index": index,
            "config": json.loads(config) if config else None,
            "kind": kind,
            "phase": phase,
            "message": message,
            "machine": fingerprint,
        }


def export_new_shard(store: Store, shards_dir: str | Path) -> Path | None:
    """Write the rows that are in no shard yet into a new shard; ``None`` when there is nothing new."""
    shards_dir = Path(shards_dir)
    shards_dir.mkdir(parents=True, exist_ok=True)
    with store.transaction():  # writers wait while the rows are read and marked
        lines = [json.dumps(row, sort_keys=True) for row in _rows(store)]
        if all(json.loads(line)["type"] == "machine" for line in lines):
            return None
        payload = ("\n".join(lines) + "\n").encode()
        number = len(list(shards_dir.glob(SHARD_GLOB))) + 1
        path = shards_dir / f"shard-{number:04d}-{hashlib.sha256(payload).hexdigest()[:10]}.jsonl.gz"
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(gzip.compress(payload, mtime=0))
        tmp.replace(path)
        for table in ("pipelines", "schedules", "measurements", "failures"):
            store.execute(f"UPDATE {table} SET shard = ? WHERE shard IS NULL", (path.name,))
    return path


def rebuild_store(shards_dir: str | Path, db_path: str | Path) -> Store:
    """Replay every shard (in name order) into a fresh store at ``db_path`` (replacing it atomically)."""
    shards = sorted(Path(shards_dir).glob(SHARD_GLOB))
    if not shards:
        raise ShardError(f"{shards_dir}: no {SHARD_GLOB} files to rebuild from")
    db_path = Path(db_path)
    tmp = db_path.with_name(db_path.name + ".rebuild")
    for suffix in ("", "-wal", "-shm"):
        Path(str(tmp) + suffix).unlink(missing_ok=True)
    store = Store(tmp)
    for shard in shards:
        for number, line in enumerate(gzip.decompress(shard.read_bytes()).decode().splitlines(), start=1):
            try:
                _replay(store, json.loads(line), shard.name)
            except (KeyError, ValueError, TypeError) as error:
                raise ShardError(f"{shard}: line {number}: {error}") from error
    store.close()
    for suffix in ("-wal", "-shm"):
        Path(str(db_path) + suffix).unlink(missing_ok=True)
    tmp.replace(db_path)
    return Store(db_path)


def _replay(store: Store, row: dict, shard: str) -> None:
    kind = row["type"]
    if kind == "machine":
        info = {k: v for k, v in row["info"].items() if k != "fingerprint"}
        store.machine_id(MachineInfo(**info))
        return
    machine = None
    if row.get("machine"):
        machine = store.execute("SELECT machine_id FROM machines WHERE fingerprint = ?", (row["machine"],)).fetchone()[
            0
        ]
    if kind == "pipeline":
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
        pipeline = store.pipeline_by_uri(row["uri"])
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
        pipeline = store.pipeline_by_uri(row["uri"])
        schedule_id = _schedule_id(store, pipeline.pipeline_id, row["candidate_index"])
        record = MeasurementRecord(
            row["runtime_ms"],
            row["median_ms"],
            row["cv"],
            tuple(row["repeats_ms"]),
            row["threads"],
            row["compile_s"],
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


def _schedule_id(store: Store, pipeline_id: int, candidate_index: int) -> int:
    return store.execute(
        "SELECT schedule_id FROM schedules WHERE pipeline_id = ? AND candidate_index = ?",
        (pipeline_id, candidate_index),
    ).fetchone()[0]
