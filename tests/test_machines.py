"""Machines: a kind per CPU and target, samples of two kinds never mixed, checkpoints that know their kinds."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from perfgraph.cli import main
from perfgraph.data.export import export_samples, parse_sample_bytes
from perfgraph.data.stats import dataset_stats
from perfgraph.data.store import MeasurementRecord, Store, StoreError, algorithm_hash
from perfgraph.features.layout import FEATURES_PER_STAGE
from perfgraph.measure.host import MachineInfo
from perfgraph.models.registry import load_model
from perfgraph.models.train import train_model
from perfgraph.schedules.stage_graph import StageGraph

from .synthetic import synthetic_samples

ZEN4 = MachineInfo("AMD EPYC", 2, "x86-64-linux-tune_znver4-avx-avx2-f16c-fma-jit-sse41", "21.0.0", "a", "Linux 6.1")
ZEN5 = MachineInfo(
    "AMD EPYC", 2, "x86-64-linux-tune_znver5-avx-avx2-avxvnni-f16c-fma-jit-sse41", "21.0.0", "b", "Linux 6.1"
)
XEON = MachineInfo(
    "Intel(R) Xeon(R) Processor @ 2.50GHz", 2, "x86-64-linux-avx-avx2-f16c-fma-jit-sse41", "21.0.0", "c", "L"
)


def test_cpu_kinds_differ_and_old_fingerprints_are_kept():
    assert len({ZEN4.kind, ZEN5.kind, XEON.kind}) == 3
    # The fingerprint is computed from the fields stored before the descriptor grew (shards keep matching).
    richer = MachineInfo(**{**vars(ZEN4), "isa_flags": ("avx2",), "cache_kib": {"L2": 1024}, "base_mhz": 2500.0})
    assert richer.fingerprint == ZEN4.fingerprint and richer.kind == ZEN4.kind
    assert MachineInfo.from_json(richer.to_json()) == richer


def _measurement(ms: float) -> MeasurementRecord:
    return MeasurementRecord(ms, ms, 0.01, (ms, ms * 1.01), 1, 0.5)


@pytest.fixture
def two_machine_store(tmp_path):
    return build_two_machine_store(tmp_path)


def build_two_machine_store(tmp_path) -> Store:
    """Three schedules measured on Zen 4, two of them also on the Xeon (and one re-measured there)."""
    store = Store(tmp_path / "two.db")
    zen4, xeon = store.machine_id(ZEN4), store.machine_id(XEON)
    graph = StageGraph(("out",), (), (), ())
    rows = np.ones((1, FEATURES_PER_STAGE), np.float32)
    pipeline = store.add_pipeline("random:1", "identity", "random", graph, {}, algorithm_hash(rows.tobytes()))
    for index in range(3):
        featurization = (rows * (index + 1)).tobytes()
        schedule = store.add_schedule(pipeline, index, {}, featurization, "", 0.1, zen4, _measurement(1.0 + index))
        if index < 2:
            store.add_measurement(schedule, xeon, _measurement(10.0 + index))
    store.add_repeat_measurement(schedule - 2, xeon, _measurement(10.5))
    return store


def test_samples_come_from_one_machine_kind_and_the_default_is_the_one_with_most(two_machine_store):
    store = two_machine_store
    assert store.samples_by_machine_kind() == {ZEN4.kind: 3, XEON.kind: 2}
    assert store.default_machine_kind() == ZEN4.kind
    assert [s.runtime_ms for s in store.samples()] == [1.0, 2.0, 3.0]
    assert [s.runtime_ms for s in store.samples(machine=XEON.kind)] == [10.0, 11.0]
    assert store.repeat_pairs() == []
    assert [(a, b) for *_, a, b in store.repeat_pairs(machine=XEON.kind)] == [(10.0, 10.5)]
    with pytest.raises(StoreError, match="no measurements from machine kind 'nosuch'"):
        store.samples(machine="nosuch")


def _runtimes_by_schedule(paths) -> dict[int, float]:
    files = [parse_sample_bytes(path.read_bytes()) for path in paths]
    return {file.schedule_id: file.runtime_ms for file in files}


def test_sample_files_hold_one_machine_kinds_run_times(two_machine_store, tmp_path, capsys):
    schedules = [s.schedule_id for s in two_machine_store.samples()]
    default = export_samples(two_machine_store, tmp_path / "default")  # one file per schedule, Zen 4's times
    assert len(default) == 3 and _runtimes_by_schedule(default) == dict(zip(schedules, [1.0, 2.0, 3.0], strict=True))
    xeon = export_samples(two_machine_store, tmp_path / "xeon", machine=XEON.kind)
    assert len(xeon) == 2 and _runtimes_by_schedule(xeon) == dict(zip(schedules[:2], [10.0, 11.0], strict=True))
    with pytest.raises(StoreError, match="no measurements from machine kind 'nosuch'.*the store has"):
        export_samples(two_machine_store, tmp_path / "none", machine="nosuch")
    two_machine_store.close()
    db = str(two_machine_store.path)
    assert (
        main(["export", "--db", db, "--format", "samples", "--machine", XEON.kind, "--out", str(tmp_path / "c")]) == 0
    )
    assert f"wrote 2 .sample files of machine {XEON.kind}" in capsys.readouterr().out
    assert (
        main(["export", "--db", db, "--format", "parquet", "--machine", XEON.kind, "--out", str(tmp_path / "d")]) == 2
    )
    assert "--machine is only used with --format samples" in capsys.readouterr().err


def test_stats_break_counts_and_noise_down_by_machine_kind(two_machine_store):
    by_kind = dataset_stats(two_machine_store).by_machine_kind
    assert by_kind[ZEN4.kind]["samples"] == 3 and by_kind[XEON.kind]["samples"] == 2
    assert by_kind[XEON.kind]["repeat_pairs"] == 1 and by_kind[ZEN4.kind]["repeat_pairs"] == 0
    assert by_kind[XEON.kind]["min_runtime_ms"] == 10.0


def test_a_checkpoint_records_its_machine_kinds_and_a_model_for_another_machine_warns(tmp_path):
    out = tmp_path / "m.pt"
    train_model(synthetic_samples(8, 6), "xgboost_sum", out, machine="some-cpu/avx2")
    assert load_model(out).machine_kinds == ("some-cpu/avx2",)
    # Predicting on this machine with a model trained on another kind says so (exit 0 all the same).
    code = (
        "import sys; from pathlib import Path; from perfgraph.cli import _warn_if_unseen_machine;"
        "from perfgraph.models.registry import load_model;"
        f"_warn_if_unseen_machine(load_model({str(out)!r}), Path({str(out)!r}))"
    )
    finished = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr
    assert "was trained on some-cpu/avx2, not on this machine" in finished.stderr
    assert json.loads(json.dumps(list(load_model(out).machine_kinds))) == ["some-cpu/avx2"]
