"""Exports (Halide .sample, Parquet), shards, stats and the store's guards."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from perfgraph.cli import main
from perfgraph.data.export import ExportError, export_parquet, export_samples
from perfgraph.data.shards import ShardError, export_new_shard, read_shard, rebuild_store
from perfgraph.data.store import MeasurementRecord, Store, StoreError
from perfgraph.measure.host import MachineInfo
from perfgraph.schedules.stage_graph import StageGraph

pytestmark = pytest.mark.slow


def halide_tool(name: str):
    import halide as hl

    return Path(hl.install_dir()) / "bin" / name


def test_exported_samples_are_read_by_halides_own_trainer(tiny_db, tmp_path):
    with Store(tiny_db) as store:
        paths = export_samples(store, tmp_path / "samples")
        pipelines = store.counts()["pipelines"]
    trainer = subprocess.run(
        [
            str(halide_tool("adams2019_retrain_cost_model")),
            "--epochs=1",
            "--rates=0.0001",
            "--num_cores=1",
            "--randomize_weights=1",
            f"--weights_out={tmp_path / 'w.weights'}",
            f"--best_benchmark={tmp_path / 'best.txt'}",
            f"--best_schedule={tmp_path / 'best.h'}",
        ],
        input="\n".join(map(str, paths)) + "\n",
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = trainer.stdout + trainer.stderr
    assert f"Distinct pipelines: {pipelines}" in output
    assert len(re.findall(r"^Unique sample: ", output, re.MULTILINE)) == len(paths)
    # Halide parsed our run times: it names the fastest sample of the whole set. (Both lines print
    # 6 significant digits, so the values are compared, not a re-formatting of one.)
    fastest = min(float(m) for m in re.findall(r"^Unique sample: \S+ : ([0-9.]+)", output, re.MULTILINE))
    best = re.search(r"^Best runtime is ([0-9.]+) msec", output, re.MULTILINE)
    assert best is not None and float(best[1]) == fastest, output[-2000:]


def test_a_sample_file_is_featurization_then_runtime_and_ids(tiny_db, tmp_path):
    with Store(tiny_db) as store:
        path = export_samples(store, tmp_path)[0]
        sample = next(s for s in store.samples() if path.name == f"p{s.pipeline_id:05d}_s{s.schedule_id:07d}.sample")
    raw = path.read_bytes()
    n = sample.features.size * 4
    np.testing.assert_array_equal(np.frombuffer(raw[:n], np.float32), sample.features.ravel())
    assert np.frombuffer(raw[n : n + 4], np.float32)[0] == np.float32(sample.runtime_ms)
    assert list(np.frombuffer(raw[n + 4 :], np.int32)) == [sample.pipeline_id, sample.schedule_id]


def test_parquet_export_has_one_row_per_measurement(tiny_db, tmp_path):
    with Store(tiny_db) as store:
        samples_path, pipelines_path, _ = export_parquet(store, tmp_path)
        measurements = store.execute("SELECT COUNT(*) FROM measurements").fetchone()[0]
        stages = {p.pipeline_id: p.num_stages for p in store.pipelines()}
        labels = {s.schedule_id: s.runtime_ms for s in store.samples()}
    table = pq.read_table(samples_path).to_pylist()
    assert len(table) == measurements
    assert {row["schedule_id"]: row["runtime_ms"] for row in table if row["is_label"]} == labels
    assert all(len(row["featurization"]) == 326 * stages[row["pipeline_id"]] for row in table)
    assert pq.read_table(pipelines_path).num_rows == len(stages)


def test_shards_rebuild_the_same_dataset_and_are_never_rewritten(tiny_db, tmp_path):
    copy = tmp_path / "copy.db"
    with Store(tiny_db) as original:
        original.execute("VACUUM INTO ?", (str(copy),))
    with Store(copy) as store:
        first = export_new_shard(store, tmp_path / "shards")
        assert first is not None and export_new_shard(store, tmp_path / "shards") is None
        expected = [(s.pipeline_name, s.schedule_id, s.runtime_ms, s.features.tobytes()) for s in store.samples()]
        pairs = store.repeat_pairs()
        how = "SELECT protocol, conditions FROM measurements ORDER BY measurement_id"
        conditions = store.execute(how).fetchall()
    rebuilt = rebuild_store(tmp_path / "shards", tmp_path / "rebuilt.db")
    assert [(s.pipeline_name, s.schedule_id, s.runtime_ms, s.features.tobytes()) for s in rebuilt.samples()] == expected
    assert rebuilt.repeat_pairs() == pairs
    # Every measurement keeps its timing protocol and the conditions it ran in (calibration, steal time).
    parsed = [(protocol, json.loads(how)) for protocol, how in conditions]
    assert [(protocol, json.loads(how)) for protocol, how in rebuilt.execute(how).fetchall()] == parsed
    assert {protocol for protocol, _ in parsed} <= {"quiet-v2", "quiet-v4"}  # quiet-v2 where ASLR cannot be disabled
    assert all({"calibration_ms", "steal_ms", "quiet", "fixed_layout"} <= how.keys() for _, how in parsed)
    assert rebuilt.counts() == Store(copy).counts()


def test_stats_json_has_the_documented_keys(tiny_db):
    result = subprocess.run(
        [sys.executable, "-m", "perfgraph.cli", "stats", "--db", str(tiny_db), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    stats = json.loads(result.stdout)
    assert {"pipelines", "samples", "failures", "min_schedules_per_pipeline", "median_cv"} <= set(stats)
    assert stats["pipelines"] == 3 and stats["samples"] >= 3
    (kind,) = stats["by_machine_kind"]  # measurements break down by timing protocol
    protocols = stats["by_machine_kind"][kind]["protocols"]
    assert set(protocols) <= {"quiet-v2", "quiet-v4"}
    assert sum(protocol["measurements"] for protocol in protocols.values()) >= stats["samples"]
    with Store(tiny_db) as store:
        marked = store.execute("SELECT conditions FROM measurements").fetchall()
        per_pipeline = [sum(store.candidate_outcomes(p.pipeline_id, 100)) for p in store.pipelines()]
    assert sum(p["not_quiet"] for p in protocols.values()) == sum(not json.loads(c)["quiet"] for (c,) in marked)
    assert stats["pipelines_with_at_least"] == {str(n): sum(c >= n for c in per_pipeline) for n in (8, 16, 32)}


def test_a_uri_whose_definition_changed_is_refused(tmp_path):
    graph = StageGraph(("f",), (), (), ())
    with Store(tmp_path / "s.db") as store:
        store.add_pipeline("random:1", "a" * 64, "random", graph, {}, "h")
        with pytest.raises(StoreError, match="random:1.*definition changed"):
            store.add_pipeline("random:1", "b" * 64, "random", graph, {}, "h")


def test_a_store_of_another_schema_version_is_refused(tmp_path):
    db = tmp_path / "old.db"
    Store(db).close()
    with Store(db) as store:
        store.execute("UPDATE meta SET value = '999' WHERE key = 'schema_version'")
    with pytest.raises(StoreError, match="schema version 999"):
        Store(db)


def test_repeat_pairs_are_kept_by_when_the_re_measurement_was_taken(tiny_db):
    with Store(tiny_db) as store:
        pairs = store.repeat_pairs()
        taken = dict(store.execute("SELECT schedule_id, measured_at FROM measurements WHERE is_repeat = 1").fetchall())
        assert pairs, "the tiny dataset re-measures some schedules"
        middle = sorted(taken.values())[len(taken) // 2]
        early = store.repeat_pairs(repeated_before=middle)
        late = store.repeat_pairs(repeated_from=middle)
        assert sorted(early + late) == sorted(pairs)
        assert all(taken[schedule] < middle for _, schedule, _, _ in early)
        assert all(taken[schedule] >= middle for _, schedule, _, _ in late)
        assert store.repeat_pairs(repeated_from="9999") == []


# -- files that must not lose or corrupt data (issue 15) ------------------------------------------------------------

TEST_MACHINE = MachineInfo(
    cpu_model="test cpu", logical_cores=2, target="x86-64-linux", halide_version="21.0.0", hostname="h", os="linux"
)


def add_pipeline_rows(store: Store, seed: int, schedules: int = 3) -> None:
    """One single-stage pipeline with ``schedules`` measured schedules, without Halide (fast)."""
    machine = store.machine_id(TEST_MACHINE)
    pipeline = store.add_pipeline(f"random:{seed}", f"{seed:064d}", "random", StageGraph(("f",), (), (), ()), {}, "h")
    for index in range(schedules):
        runtime = 1.0 + seed + index / 10
        store.add_schedule(
            pipeline,
            index,
            {"seed": index},
            np.full(326, seed * 100 + index, np.float32).tobytes(),
            "// schedule",
            0.1,
            machine,
            MeasurementRecord(runtime, runtime, 0.01, (runtime,), 1, 0.5),
        )


def small_store(path: Path, pipelines: int = 2) -> Path:
    with Store(path) as store:
        for seed in range(pipelines):
            add_pipeline_rows(store, seed)
        store.add_failure("random:99", -1, None, "workload_error", "build", "boom", None)
    return path


def dataset(path: Path) -> list[tuple]:
    with Store(path) as store:
        return [(s.pipeline_name, s.runtime_ms, s.features.tobytes()) for s in store.samples()] + [store.counts()]


def write_shard(shards: Path, number: int, lines: list[str]) -> Path:
    payload = ("\n".join(lines) + "\n").encode()
    path = shards / f"shard-{number:04d}-{hashlib.sha256(payload).hexdigest()[:10]}.jsonl.gz"
    path.write_bytes(gzip.compress(payload, mtime=0))
    return path


def shard_lines(path: Path) -> list[str]:
    return gzip.decompress(path.read_bytes()).decode().splitlines()


def test_rebuild_refuses_to_replace_a_store_that_holds_rows_in_no_shard(tmp_path, capsys):
    db = small_store(tmp_path / "s.db")
    with Store(db) as store:
        export_new_shard(store, tmp_path / "shards")
        add_pipeline_rows(store, seed=7, schedules=2)  # collected after the export
    before = dataset(db)
    with pytest.raises(ShardError, match=r"1 pipelines, 2 schedules, 2 measurements, 0 failures"):
        rebuild_store(tmp_path / "shards", db)
    assert main(["shards", "rebuild", "--db", str(db), "--shards", str(tmp_path / "shards")]) == 2
    assert "--force" in capsys.readouterr().err
    assert dataset(db) == before and not list(tmp_path.glob("s.db.bak-*"))


def test_rebuild_with_force_keeps_a_backup_of_the_store_it_replaces(tmp_path):
    db = small_store(tmp_path / "s.db")
    with Store(db) as store:
        export_new_shard(store, tmp_path / "shards")
    exported = dataset(db)
    with Store(db) as store:
        add_pipeline_rows(store, seed=7, schedules=2)
    before = dataset(db)
    assert main(["shards", "rebuild", "--db", str(db), "--shards", str(tmp_path / "shards"), "--force"]) == 0
    (backup,) = tmp_path.glob("s.db.bak-*")
    assert dataset(backup) == before
    assert dataset(db) == exported


def test_rebuild_refuses_to_overwrite_a_file_that_is_no_perfgraph_store(tmp_path):
    with Store(small_store(tmp_path / "s.db")) as store:
        export_new_shard(store, tmp_path / "shards")
    other = tmp_path / "notes.txt"
    other.write_text("somebody's notes\n")
    with pytest.raises(ShardError, match=f"{other}: is not a perfgraph store"):
        rebuild_store(tmp_path / "shards", other)
    assert other.read_text() == "somebody's notes\n"


def test_rebuild_replaces_a_store_whose_rows_are_all_in_the_shards(tmp_path):
    db = small_store(tmp_path / "s.db")
    with Store(db) as store:
        export_new_shard(store, tmp_path / "shards")
    before = dataset(db)
    assert main(["shards", "rebuild", "--db", str(db), "--shards", str(tmp_path / "shards")]) == 0
    assert dataset(db) == before and not list(tmp_path.glob("s.db.bak-*"))


def test_a_shard_cut_at_a_line_and_recompressed_under_its_name_is_refused(tmp_path):
    with Store(small_store(tmp_path / "s.db")) as store:
        shard = export_new_shard(store, tmp_path / "shards")
    lines = shard_lines(shard)
    shard.write_bytes(gzip.compress(("\n".join(lines[:-3]) + "\n").encode(), mtime=0))
    with pytest.raises(ShardError, match=re.escape(str(shard)) + ".*content hash"):
        rebuild_store(tmp_path / "shards", tmp_path / "rebuilt.db")
    assert not list(tmp_path.glob("rebuilt.db*"))


def test_a_shard_cut_mid_stream_is_a_one_line_error_naming_it(tmp_path, capsys):
    with Store(small_store(tmp_path / "s.db")) as store:
        shard = export_new_shard(store, tmp_path / "shards")
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    code = main(["shards", "rebuild", "--db", str(tmp_path / "r.db"), "--shards", str(tmp_path / "shards")])
    error = capsys.readouterr().err
    assert code == 2 and error.startswith(f"perfgraph: error: {shard}: ") and error.count("\n") == 1


def interrupt_after_rename(monkeypatch):
    """Stop an export right after its shard file is renamed into place, before the store is updated."""
    real_replace = Path.replace

    def replace_then_stop(self, target):
        result = real_replace(self, target)
        if Path(target).name.startswith("shard-"):
            raise KeyboardInterrupt
        return result

    monkeypatch.setattr(Path, "replace", replace_then_stop)


@pytest.mark.parametrize("collected_meanwhile", [False, True])
def test_an_export_interrupted_after_its_rename_is_not_written_twice(tmp_path, monkeypatch, collected_meanwhile):
    db = small_store(tmp_path / "s.db")
    with Store(db) as store, monkeypatch.context() as patch:
        interrupt_after_rename(patch)
        with pytest.raises(KeyboardInterrupt):
            export_new_shard(store, tmp_path / "shards")
    (first,) = (tmp_path / "shards").glob("shard-*")
    with Store(db) as store:
        if collected_meanwhile:
            add_pipeline_rows(store, seed=7)
        again = export_new_shard(store, tmp_path / "shards")
        assert export_new_shard(store, tmp_path / "shards") is None
    shards = sorted((tmp_path / "shards").glob("shard-*"))
    assert shards == ([first, again] if collected_meanwhile else [first])
    assert shard_lines(first)[-1] in shard_lines(shards[0])
    assert dataset(rebuild_store(tmp_path / "shards", tmp_path / "rebuilt.db").path) == dataset(db)


def test_a_second_copy_of_a_shard_is_a_clear_error(tmp_path):
    with Store(small_store(tmp_path / "s.db")) as store:
        shard = export_new_shard(store, tmp_path / "shards")
    copy = tmp_path / "shards" / shard.name.replace("shard-0001", "shard-0002")
    copy.write_bytes(shard.read_bytes())
    with pytest.raises(ShardError, match=re.escape(str(copy)) + ".*same content as"):
        rebuild_store(tmp_path / "shards", tmp_path / "rebuilt.db")


@pytest.mark.parametrize("repeated", ["pipeline", "schedule"])
def test_a_shard_repeating_rows_of_an_earlier_one_is_a_clear_error(tmp_path, repeated):
    with Store(small_store(tmp_path / "s.db")) as store:
        shard = export_new_shard(store, tmp_path / "shards")
    # What the old export left after an interruption, once more rows had come: old rows in a new shard.
    kinds = ("schedule", "measurement") if repeated == "schedule" else ("pipeline", "schedule", "measurement")
    lines = [line for line in shard_lines(shard) if json.loads(line)["type"] in kinds]
    overlapping = write_shard(tmp_path / "shards", 2, lines)
    with pytest.raises(ShardError, match=re.escape(str(overlapping)) + rf": line 1: .*{repeated}.*already"):
        rebuild_store(tmp_path / "shards", tmp_path / "rebuilt.db")
    assert not list(tmp_path.glob("rebuilt.db*"))


def test_samples_are_not_exported_into_a_folder_that_holds_other_files(tmp_path, capsys):
    db = small_store(tmp_path / "s.db")
    out = tmp_path / "samples"
    out.mkdir()
    foreign = out / "p00001_s0000001.sample"
    foreign.write_bytes(b"another store's sample")
    with Store(db) as store, pytest.raises(ExportError, match=re.escape(str(out)) + ".*not empty"):
        export_samples(store, out)
    assert main(["export", "--db", str(db), "--format", "samples", "--out", str(out)]) == 2
    assert capsys.readouterr().err.startswith(f"perfgraph: error: {out}: folder not empty")
    assert sorted(out.iterdir()) == [foreign] and foreign.read_bytes() == b"another store's sample"
    with Store(db) as store:
        assert len(export_samples(store, tmp_path / "empty")) == 6


# -- kill -9 inside `perfgraph shards export` (issue 15 section 5) -------------------------------------------------


def wait_for_write_lock(db: Path, process: subprocess.Popen, timeout_s: float = 120.0) -> bool:
    """Poll until another process holds the store's write lock (the export's transaction); False if it ended first."""
    deadline = time.monotonic() + timeout_s
    with sqlite3.connect(db, timeout=0, isolation_level=None) as probe:
        while time.monotonic() < deadline and process.poll() is None:
            try:
                probe.execute("BEGIN IMMEDIATE")
                probe.execute("ROLLBACK")
            except sqlite3.OperationalError:  # "database is locked": the export is reading and marking rows
                return True
            time.sleep(0.005)
    return False


def check_store_and_shards(db: Path, shards: Path) -> None:
    """The store is intact, every shard file is whole, and every shard the store names exists."""
    with sqlite3.connect(db) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        named = {
            name
            for table in ("pipelines", "schedules", "measurements", "failures")
            for (name,) in connection.execute(f"SELECT DISTINCT shard FROM {table} WHERE shard IS NOT NULL")
        }
    files = sorted(shards.glob("shard-*.jsonl.gz"))
    for shard in files:
        read_shard(shard)  # the content hash in its name matches
    assert named <= {shard.name for shard in files}


def test_kill_9_inside_shards_export_loses_nothing_and_a_rerun_completes_it(tmp_path):
    db, shards = small_store(tmp_path / "s.db"), tmp_path / "shards"
    command = [sys.executable, "-m", "perfgraph.cli", "shards", "export", "--db", str(db), "--shards", str(shards)]
    rng = random.Random(15)
    killed_inside = 0
    for round_ in range(3):
        with Store(db) as store:  # rows collected since the last export, so that each round has work
            for seed in range(10 + 40 * round_, 50 + 40 * round_):
                add_pipeline_rows(store, seed, schedules=5)
        expected = dataset(db)
        process = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if wait_for_write_lock(db, process):
            time.sleep(rng.uniform(0.0, 0.15))  # the export takes 0.2-0.5 s on a busy core, less on a quiet one
            killed_inside += process.poll() is None
        with contextlib.suppress(ProcessLookupError):  # the export may have ended on its own
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        check_store_and_shards(db, shards)
        assert dataset(db) == expected
    assert killed_inside >= 1, "no kill landed inside an export"

    assert main(command[3:]) == 0  # the same command, run to its end
    check_store_and_shards(db, shards)
    with Store(db) as store:
        assert export_new_shard(store, shards) is None
    assert dataset(rebuild_store(shards, tmp_path / "rebuilt.db").path) == dataset(db)
