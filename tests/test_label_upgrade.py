"""Labels taken under an old timing protocol, re-measured under the current one (``collect --upgrade-labels``)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest

from perfgraph.cli import main
from perfgraph.data.store import WINDOW_PROTOCOL, MeasurementRecord, Store
from perfgraph.evaluate.noise import MIN_PROTOCOL_PAIRS, noise_ceiling
from perfgraph.measure.collector import CollectOptions, Collector

from .conftest import FAST_TIMING, USER_PIPELINES, collect_tiny

BLUR = f"file:{USER_PIPELINES}:blur"
OLD_TIMING = dataclasses.replace(FAST_TIMING, quiet=False)  # window-v1, as sessions 1-7 measured


@pytest.fixture(scope="module")
def upgraded(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A store measured under window-v1, then upgraded: what each step left behind."""
    db = tmp_path_factory.mktemp("upgrade") / "old.db"
    with collect_tiny(db, [BLUR], schedules=4, top_up=False, remeasure_fraction=0.0, timing=OLD_TIMING) as store:
        kind = store.default_machine_kind()
        before = {s.schedule_id: s.runtime_ms for s in store.samples()}
        deterministic = {
            sid
            for sid, config in store.execute("SELECT schedule_id, config FROM schedules WHERE duplicate_of IS NULL")
            if not json.loads(config)["random_weights"]
        }
        options = CollectOptions(  # as `collect --upgrade-labels` alone: K = 32 adds no new candidates
            remeasure_fraction=0.0, show_progress=False, upgrade_labels=True, upgrade_only=True
        )
        options = dataclasses.replace(options, timing=FAST_TIMING)
        collector = Collector(store, options)
        stale_uris = collector.stale_label_pipelines()
        summary = collector.collect(stale_uris)
        again = Collector(store, options)
        return {
            "db": db,
            "kind": kind,
            "before": before,
            "deterministic": deterministic,
            "stale_uris": stale_uris,
            "summary": summary,
            "after": {s.schedule_id: s.runtime_ms for s in store.samples()},
            "protocols": store.label_protocols(),
            "measurements": store.execute(
                "SELECT schedule_id, protocol, runtime_ms, is_repeat FROM measurements ORDER BY measurement_id"
            ).fetchall(),
            "pairs": store.repeat_pairs(),
            "stale_after": again.stale_label_pipelines(),
            "second": again.collect([BLUR]),
        }


def test_stale_labels_are_found_and_re_measured_under_the_current_protocol(upgraded):
    assert upgraded["stale_uris"] == [BLUR]
    assert upgraded["deterministic"]  # the beam-search and dropout candidates can be rebuilt
    assert upgraded["summary"].upgraded == len(upgraded["deterministic"])
    assert upgraded["summary"].measured == 0 and upgraded["summary"].failures == {}
    new = {sid: (protocol, ms) for sid, protocol, ms, is_repeat in upgraded["measurements"] if is_repeat}
    assert set(new) == upgraded["deterministic"]
    assert all(protocol != WINDOW_PROTOCOL for protocol, _ in new.values())
    # The newer measurement is the label now; the old one is kept; schedules not rebuilt keep theirs.
    for sid, before_ms in upgraded["before"].items():
        if sid in new:
            assert upgraded["protocols"][sid] == new[sid][0]
            assert upgraded["after"][sid] == pytest.approx(new[sid][1])
        else:
            assert upgraded["protocols"][sid] == WINDOW_PROTOCOL and upgraded["after"][sid] == before_ms
    old = [(sid, ms) for sid, protocol, ms, is_repeat in upgraded["measurements"] if not is_repeat]
    assert dict(old) == upgraded["before"]


def test_an_upgrade_is_no_noise_pair_and_is_not_tried_again(upgraded):
    assert upgraded["pairs"] == []  # two protocols' measurements of a schedule are not a re-measurement pair
    assert upgraded["stale_after"] == []
    assert upgraded["second"].upgraded == 0 and upgraded["second"].measured == 0


def test_a_re_measurement_under_the_same_protocol_never_replaces_the_label(upgraded, tmp_path):
    db = tmp_path / "copy.db"
    db.write_bytes(Path(upgraded["db"]).read_bytes())
    with Store(db) as store:
        machine_id = store.machine_ids(upgraded["kind"])[0]
        kept_old = [sid for sid, protocol in upgraded["protocols"].items() if protocol == WINDOW_PROTOCOL]
        for sid in [*kept_old, *upgraded["deterministic"]]:  # a label never upgraded, and upgraded ones
            label, protocol = upgraded["after"][sid], upgraded["protocols"][sid]
            repeat = MeasurementRecord(label * 3, label * 3, 0.0, (label * 3,), 1, 0.0, protocol=protocol)
            store.add_repeat_measurement(sid, machine_id, repeat)
            assert {s.schedule_id: s.runtime_ms for s in store.samples()}[sid] == label
        # Only the never-upgraded labels have a first measurement under the repeat's protocol: a noise pair.
        assert sorted(pair[1] for pair in store.repeat_pairs()) == sorted(kept_old)


def test_stats_count_the_labels_of_each_protocol(upgraded, capsys):
    assert main(["stats", "--db", str(upgraded["db"]), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    protocols = stats["by_machine_kind"][upgraded["kind"]]["protocols"]
    assert sum(p["labels"] for p in protocols.values()) == len(upgraded["after"])
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
