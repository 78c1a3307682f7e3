"""Labels taken under an old timing protocol, re-measured under the current one (``collect --upgrade-labels``)."""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import json
import math
import types
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from perfgraph.cli import main
from perfgraph.data.export import export_parquet
from perfgraph.data.store import WINDOW_PROTOCOL, MeasurementRecord, Store
from perfgraph.evaluate.noise import MIN_PROTOCOL_PAIRS, noise_ceiling
from perfgraph.measure import runner
from perfgraph.measure.collector import CollectOptions, Collector
from perfgraph.measure.timing import TimingPolicy

from .conftest import FAST_TIMING, USER_PIPELINES, collect_tiny

BLUR = f"file:{USER_PIPELINES}:blur"
OLD_TIMING = dataclasses.replace(FAST_TIMING, quiet=False)  # window-v1, as sessions 1-7 measured
QUIET_V2 = dataclasses.replace(FAST_TIMING, fixed_layout=False)
QUIET_V3 = dataclasses.replace(FAST_TIMING, aligned_buffers=False)  # fixed layout, NumPy's buffer alignment


def _upgrade(store: Store, timing: TimingPolicy) -> dict:
    """``collect --upgrade-labels`` alone under ``timing``: what it found, did and left behind."""
    options = CollectOptions(  # as the command line: K = 32 would add candidates, were upgrades not alone
        remeasure_fraction=0.0, show_progress=False, upgrade_labels=True, upgrade_only=True, timing=timing
    )
    collector = Collector(store, options)
    stale_uris = collector.stale_label_pipelines()
    summary = collector.collect(stale_uris)
    return {
        "stale_uris": stale_uris,
        "summary": summary,
        "labels": {s.schedule_id: s.runtime_ms for s in store.samples()},
        "protocols": store.label_protocols(),
        "measurements": store.execute(
            "SELECT schedule_id, protocol, runtime_ms, is_repeat FROM measurements ORDER BY measurement_id"
        ).fetchall(),
        "pairs": store.repeat_pairs(),
        "failures": dict(store.execute("SELECT candidate_index, kind FROM failures").fetchall()),
        "stale_after": collector.stale_label_pipelines(),
    }


@contextlib.contextmanager
def _sandbox_without_personality():
    """Workers that cannot switch off address-space randomisation (as in a sandbox): they measure quiet-v2."""
    libc = ctypes.CDLL(None)
    fake = types.SimpleNamespace(prctl=libc.prctl, personality=lambda flags: 0)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runner, "ctypes", types.SimpleNamespace(CDLL=lambda name: fake))
        yield


@pytest.fixture(scope="module")
def upgraded(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A store measured under window-v1, upgraded to quiet-v2, quiet-v3 and quiet-v4, and once in a sandbox."""
    folder = tmp_path_factory.mktemp("upgrade")
    db = folder / "old.db"
    with collect_tiny(db, [BLUR], schedules=4, top_up=False, remeasure_fraction=0.0, timing=OLD_TIMING) as store:
        kind = store.default_machine_kind()
        before = {s.schedule_id: s.runtime_ms for s in store.samples()}
        deterministic = {
            sid
            for sid, config in store.execute("SELECT schedule_id, config FROM schedules WHERE duplicate_of IS NULL")
            if not json.loads(config)["random_weights"]
        }
        to_v2 = _upgrade(store, QUIET_V2)
        store.execute("VACUUM INTO ?", (str(folder / "v2.db"),))
        to_v3 = _upgrade(store, QUIET_V3)
        to_v4 = _upgrade(store, FAST_TIMING)
        again = _upgrade(store, FAST_TIMING)
    with Store(folder / "v2.db") as store, _sandbox_without_personality():
        sandboxed = _upgrade(store, FAST_TIMING)
        sandboxed_again = _upgrade(store, FAST_TIMING)
    return {
        "db": db,
        "kind": kind,
        "before": before,
        "deterministic": deterministic,
        "to_v2": to_v2,
        "to_v3": to_v3,
        "to_v4": to_v4,
        "again": again,
        "sandboxed": sandboxed,
        "sandboxed_again": sandboxed_again,
    }


def _new_measurements(step: dict, protocol: str) -> dict[int, float]:
    return {sid: ms for sid, p, ms, is_repeat in step["measurements"] if is_repeat and p == protocol}


def test_stale_labels_are_re_measured_under_each_newer_protocol(upgraded):
    deterministic, before = upgraded["deterministic"], upgraded["before"]
    assert deterministic and set(before) - deterministic  # rebuildable schedules, and one with random weights
    for step, protocol in (("to_v2", "quiet-v2"), ("to_v3", "quiet-v3"), ("to_v4", "quiet-v4")):
        result = upgraded[step]
        assert result["stale_uris"] == [BLUR]
        assert result["summary"].upgraded == len(deterministic), step
        assert result["summary"].measured == 0 and result["summary"].failures == {}
        new = _new_measurements(result, protocol)
        assert set(new) == deterministic
        # The newest measurement is the label now; schedules that cannot be rebuilt keep theirs.
        for sid, before_ms in before.items():
            if sid in deterministic:
                assert result["protocols"][sid] == protocol
                assert result["labels"][sid] == pytest.approx(new[sid])
            else:
                assert result["protocols"][sid] == WINDOW_PROTOCOL and result["labels"][sid] == before_ms
    # Nothing is lost: every schedule's window-v1 first measurement is still there.
    firsts = {sid: ms for sid, p, ms, is_repeat in upgraded["to_v4"]["measurements"] if not is_repeat}
    assert firsts == before


def test_an_upgrade_is_no_noise_pair_and_an_upgraded_label_is_left_alone(upgraded):
    assert upgraded["to_v4"]["pairs"] == []  # measurements under two protocols are not a re-measurement pair
    assert upgraded["to_v4"]["stale_after"] == []
    assert upgraded["again"]["stale_uris"] == [] and upgraded["again"]["summary"].upgraded == 0


def test_a_worker_that_cannot_reach_the_protocol_keeps_its_measurement_and_is_not_tried_again(upgraded):
    sandboxed, deterministic = upgraded["sandboxed"], upgraded["deterministic"]
    assert sandboxed["stale_uris"] == [BLUR]  # quiet-v2 labels, target quiet-v4
    assert sandboxed["summary"].upgraded == 0 and sandboxed["summary"].remeasured == len(deterministic)
    assert set(sandboxed["failures"].values()) == {"protocol_not_reached"}
    assert len(sandboxed["failures"]) == len(deterministic)
    assert all(sandboxed["protocols"][sid] == "quiet-v2" for sid in deterministic)
    assert sandboxed["stale_after"] == []  # failed here: not listed, not measured again
    assert upgraded["sandboxed_again"]["summary"].remeasured == 0


def test_a_re_measurement_under_the_same_protocol_never_replaces_the_label(upgraded, tmp_path):
    db = tmp_path / "copy.db"
    db.write_bytes(Path(upgraded["db"]).read_bytes())
    labels, protocols = upgraded["to_v4"]["labels"], upgraded["to_v4"]["protocols"]
    with Store(db) as store:
        machine_id = store.machine_ids(upgraded["kind"])[0]
        kept_old = [sid for sid, protocol in protocols.items() if protocol == WINDOW_PROTOCOL]
        assert kept_old
        for sid in [*kept_old, *upgraded["deterministic"]]:  # a label never upgraded, and upgraded ones
            label, protocol = labels[sid], protocols[sid]
            repeat = MeasurementRecord(label * 3, label * 3, 0.0, (label * 3,), 1, 0.0, protocol=protocol)
            store.add_repeat_measurement(sid, machine_id, repeat)
            assert {s.schedule_id: s.runtime_ms for s in store.samples()}[sid] == label
        # Only the never-upgraded labels have a first measurement under the repeat's protocol: a noise pair.
        assert sorted(pair[1] for pair in store.repeat_pairs()) == sorted(kept_old)
        rows = pq.read_table(export_parquet(store, tmp_path / "parquet")[0]).to_pylist()
    # The export marks the label of each schedule: the one Store.samples reads.
    exported = {row["schedule_id"]: (row["runtime_ms"], row["protocol"]) for row in rows if row["is_label"]}
    assert exported == {sid: (labels[sid], protocols[sid]) for sid in labels}


def test_stats_count_the_labels_of_each_protocol(upgraded, capsys):
    assert main(["stats", "--db", str(upgraded["db"]), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    # Three upgrades of every rebuildable schedule (to quiet-v2, -v3, -v4), no noise re-measurement.
    assert stats["upgraded_labels"] == 3 * len(upgraded["deterministic"]) and stats["repeat_measurements"] == 0
    protocols = stats["by_machine_kind"][upgraded["kind"]]["protocols"]
    assert protocols["quiet-v4"]["labels"] == len(upgraded["deterministic"])
    assert protocols["quiet-v2"]["labels"] == protocols["quiet-v3"]["labels"] == 0  # measured, no longer labels
    assert protocols[WINDOW_PROTOCOL]["labels"] == len(upgraded["before"]) - len(upgraded["deterministic"])


def test_the_noise_ceiling_draws_each_labels_noise_from_its_own_protocol():
    measured, pipelines = [1.0, 1.05, 1.1, 1.15] * 2, [0] * 4 + [1] * 4
    protocols = ["quiet-v3"] * 4 + ["window-v1"] * 4
    noisy = [math.log(2.0)] * MIN_PROTOCOL_PAIRS  # re-measurements a factor 2 apart
    by_protocol = {"quiet-v3": [0.0] * MIN_PROTOCOL_PAIRS, "window-v1": noisy}
    mixed = noise_ceiling(measured, pipelines, [0.0], protocols=protocols, ratios_by_protocol=by_protocol)
    assert 0 < mixed.rmse_log < math.log(2.0)  # the quiet half is exact, the other half off by ln 2
    assert mixed.rmse_log == pytest.approx(math.sqrt(math.log(2.0) ** 2 / 2))
    # A protocol with too few pairs to trust borrows the pooled noise (here: none).
    few = {"window-v1": noisy[: MIN_PROTOCOL_PAIRS - 1]}
    assert noise_ceiling(measured, pipelines, [0.0], protocols=protocols, ratios_by_protocol=few).rmse_log == 0.0
    with pytest.raises(ValueError, match="protocols has 3 entries"):
        noise_ceiling(measured, pipelines, [0.0], protocols=protocols[:3], ratios_by_protocol=by_protocol)


def test_upgrade_labels_alone_collects_the_stored_pipelines_with_stale_labels(tmp_path, capsys):
    db = tmp_path / "empty.db"
    Store(db).close()
    assert main(["collect", "--db", str(db), "--upgrade-labels", "--json"]) == 0
    captured = capsys.readouterr()
    assert "0 pipelines have labels to upgrade" in captured.err
    assert json.loads(captured.out)["upgraded"] == 0
