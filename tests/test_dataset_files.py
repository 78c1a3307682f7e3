"""Exports (Halide .sample, Parquet), shards, stats and the store's guards."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from perfgraph.data.export import export_parquet, export_samples
from perfgraph.data.shards import export_new_shard, rebuild_store
from perfgraph.data.store import Store, StoreError
from perfgraph.schedules.stage_graph import StageGraph

pytestmark = pytest.mark.slow


def halide_tool(name: str):
    from pathlib import Path

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
    table = pq.read_table(samples_path).to_pylist()
    assert len(table) == measurements
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
    rebuilt = rebuild_store(tmp_path / "shards", tmp_path / "rebuilt.db")
    assert [(s.pipeline_name, s.schedule_id, s.runtime_ms, s.features.tobytes()) for s in rebuilt.samples()] == expected
    assert rebuilt.repeat_pairs() == pairs
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
    with Store(tiny_db) as store:
        per_pipeline = [sum(store.candidate_outcomes(p.pipeline_id, 100)) for p in store.pipelines()]
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
