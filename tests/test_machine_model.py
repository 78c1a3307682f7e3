"""A machine-aware model: one checkpoint that reads each sample's machine and predicts for several kinds."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from perfgraph.data.records import Sample
from perfgraph.evaluate.metrics import mean_kendall_tau
from perfgraph.features.dataset import StageGraphDataset
from perfgraph.features.graphs import sample_to_graph
from perfgraph.features.layout import MACHINE_FEATURE_NAMES, NUM_MACHINE_FEATURES
from perfgraph.features.pipeline_batch import group_by_pipeline
from perfgraph.measure.host import MachineInfo
from perfgraph.models.gnn import GNNCostModel
from perfgraph.models.registry import load_model
from perfgraph.models.sequence import SequenceCostModel
from perfgraph.models.train import train_model
from perfgraph.models.training import collate_batches

from .synthetic import synthetic_samples
from .test_machines import build_two_machine_store

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ZEN4 = MachineInfo("AMD EPYC", 2, "x86-64-linux-tune_znver4-avx-avx2-f16c-fma-jit-sse41", "21.0.0", "a", "Linux")
XEON = MachineInfo(
    "Intel(R) Xeon(R) Processor @ 2.50GHz", 2, "x86-64-linux-avx-avx2-f16c-fma-jit-sse41", "21.0.0", "c", "Linux"
)


def on(machine: MachineInfo, samples: list[Sample], runtime=None) -> list[Sample]:
    """``samples`` as measured on ``machine`` (run times optionally replaced by ``runtime(sample)``)."""
    return [
        dataclasses.replace(
            s,
            machine_kind=machine.kind,
            machine_features=machine.feature_vector(),
            runtime_ms=s.runtime_ms if runtime is None else runtime(s),
        )
        for s in samples
    ]


def two_machines(num_pipelines: int = 10, num_schedules: int = 8) -> list[Sample]:
    """The same schedules on two machines that order them differently.

    On Zen 4 a stage costs in proportion to its schedule feature 4 (``synthetic_samples``), on the
    Xeon to its feature 5, an independent random column: the two rankings are unrelated.
    """
    base = synthetic_samples(num_pipelines, num_schedules)
    return [*on(ZEN4, base), *on(XEON, base, runtime=lambda s: float(1e-3 * s.features[:, 5].sum()))]


def test_the_machine_descriptor_tells_vendors_isas_and_zen_generations_apart():
    zen4, xeon = ZEN4.feature_vector(), XEON.feature_vector()
    assert zen4.shape == xeon.shape == (NUM_MACHINE_FEATURES,) and zen4.dtype == np.float32
    column = dict(zip(MACHINE_FEATURE_NAMES, zen4, strict=True))
    assert column["vendor_amd"] == 1 and column["vendor_intel"] == 0 and column["tune_zen_generation"] == 0.5
    assert column["base_ghz"] == 0  # "AMD EPYC" states no frequency
    avx512 = dataclasses.replace(XEON, target="x86-64-linux-avx-avx2-avx512-avx512_skylake-f16c-fma-sse41")
    assert dict(zip(MACHINE_FEATURE_NAMES, avx512.feature_vector(), strict=True))["target_avx512"] == 1
    assert not np.array_equal(zen4, xeon)


def test_every_record_of_one_kind_gives_the_vector_the_live_host_of_that_kind_gives():
    # Older records lack caches and frequency; VMs of one kind differ in cores and OS: same kind, same input.
    richer = dataclasses.replace(ZEN4, logical_cores=8, os="Linux 6.9", cache_kib={"L2": 1024}, base_mhz=3100.0)
    assert richer.kind == ZEN4.kind
    assert np.array_equal(richer.feature_vector(), ZEN4.feature_vector())


def test_a_sample_takes_its_machine_kind_and_features_together_and_of_the_right_shape():
    (sample,) = synthetic_samples(1, 1)
    with pytest.raises(ValueError, match=r"machine_features must have shape \(8,\), got \(3,\)"):
        dataclasses.replace(sample, machine_kind="k", machine_features=np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="give machine_kind and machine_features together"):
        dataclasses.replace(sample, machine_kind="k")
    with pytest.raises(ValueError, match="give machine_kind and machine_features together"):
        dataclasses.replace(sample, machine_features=ZEN4.feature_vector())


def test_graphs_and_the_graph_cache_carry_the_machine(tmp_path):
    samples = two_machines(2, 2)
    graphs = [sample_to_graph(s) for s in samples]
    assert graphs[0].machine_kind == ZEN4.kind and graphs[-1].machine_kind == XEON.kind
    assert torch.equal(graphs[-1].machine_x[0], torch.from_numpy(XEON.feature_vector()))
    StageGraphDataset(graphs).save(tmp_path / "g.pt")
    loaded = list(StageGraphDataset.load(tmp_path / "g.pt"))
    assert [g.machine_kind for g in loaded] == [g.machine_kind for g in graphs]
    assert all(torch.equal(a.machine_x, b.machine_x) for a, b in zip(loaded, graphs, strict=True))
    unknown = sample_to_graph(synthetic_samples(1, 1)[0])
    assert unknown.machine_kind == "" and not unknown.machine_x.any()


def test_one_pipeline_on_two_machines_is_two_groups_for_search_batches_and_for_the_ranking_loss():
    samples = two_machines(1, 3)
    assert group_by_pipeline(samples) == [[0, 1, 2], [3, 4, 5]]
    ((_, batch),) = list(collate_batches([sample_to_graph(s) for s in samples], 64, None, torch.device("cpu")))
    assert batch.group.tolist() == [0, 0, 0, 1, 1, 1]  # the ranking loss never compares the two machines


TRAINING = {"layers": 0, "hidden": 32, "epochs": 60, "patience": 60, "batch_size": 16, "progress": False}


@pytest.fixture(scope="module")
def machine_aware() -> GNNCostModel:
    return GNNCostModel(machine_features=True, **TRAINING).fit(two_machines(), [])


def test_a_machine_aware_model_learns_two_machines_that_rank_the_same_schedules_differently(machine_aware):
    # A question of capacity, asked on the training pipelines: (random synthetic pipelines do not
    # generalise from 10 of them; the transfer benchmark measures generalisation on real data).
    samples = two_machines()
    taus = {}
    for kind in (ZEN4.kind, XEON.kind):
        mine = [s for s in samples if s.machine_kind == kind]
        predicted = machine_aware.predict(mine)
        taus[kind] = mean_kendall_tau(predicted, np.array([s.runtime_ms for s in mine]), [s.pipeline_id for s in mine])
    assert min(taus.values()) > 0.8, taus
    # A machine-blind model of the same architecture cannot: its two rankings are one.
    blind = GNNCostModel(**TRAINING).fit(samples, [])
    zen4 = [s for s in samples if s.machine_kind == ZEN4.kind]
    xeon = [s for s in samples if s.machine_kind == XEON.kind]
    assert np.allclose(blind.predict(zen4), blind.predict(xeon))


def test_machine_aware_predictions_agree_on_the_search_and_training_paths_and_survive_a_checkpoint(
    machine_aware, tmp_path
):
    samples = two_machines(3, 4)
    fast = machine_aware.predict(samples)
    slow = machine_aware.predict([sample_to_graph(s) for s in samples])
    np.testing.assert_allclose(fast, slow, rtol=1e-4)
    machine_aware.save(tmp_path / "m.pt")
    loaded = load_model(tmp_path / "m.pt")
    assert loaded.get_params()["machine_features"] is True
    np.testing.assert_allclose(loaded.predict(samples), fast, rtol=1e-6)


def test_a_machine_aware_model_refuses_samples_that_do_not_say_their_machine(machine_aware):
    with pytest.raises(ValueError, match=r"samples\[0\]: GNNCostModel reads the machine .* no machine features"):
        machine_aware.predict(synthetic_samples(1, 2))
    with pytest.raises(ValueError, match=r"train\[0\]: SequenceCostModel reads the machine"):
        SequenceCostModel(machine_features=True, epochs=1, progress=False).fit(synthetic_samples(1, 2), [])


def test_train_on_several_machine_kinds_needs_machine_features(tmp_path):
    build_two_machine_store(tmp_path).close()  # Zen 4 and Xeon run times of one pipeline
    command = [sys.executable, "-m", "perfgraph.cli", "train", "--db", str(tmp_path / "two.db"), "--out"]
    both = f"{ZEN4.kind},{XEON.kind}"
    finished = subprocess.run([*command, str(tmp_path / "m.pt"), "--machine", both], capture_output=True, text=True)
    assert finished.returncode == 2
    assert "2 machine kinds" in finished.stderr and "add --machine-features" in finished.stderr
    finished = subprocess.run([*command, str(tmp_path / "m.pt"), "--machine", "nosuch/avx2"], capture_output=True)
    assert finished.returncode == 2 and b"no samples from nosuch/avx2" in finished.stderr


def test_training_on_two_machine_kinds_records_both_and_scores_each_apart(tmp_path):
    result = train_model(
        two_machines(24, 3),
        "gnn",
        tmp_path / "m.pt",
        epochs=2,
        layers=0,
        hidden=8,
        machine_features=True,
        progress=False,
        machine=[ZEN4.kind, XEON.kind],
    )
    assert load_model(tmp_path / "m.pt").machine_kinds == (ZEN4.kind, XEON.kind)
    test = result.metrics["test"]["samples"]
    per_kind = [result.metrics[f"test {kind}"]["samples"] for kind in (ZEN4.kind, XEON.kind)]
    assert per_kind[0] == per_kind[1] == test / 2 > 0  # a pipeline's two machines fall in the same part
    with pytest.raises(ValueError, match="2 machine kinds .* a machine-blind xgboost_sum would average"):
        train_model(two_machines(24, 3), "xgboost_sum", tmp_path / "x.pt")


@pytest.mark.slow
def test_predict_ranks_candidates_for_a_stored_machine_kind_and_refuses_a_blind_model(tmp_path, capsys):
    from perfgraph.cli import main

    from .conftest import USER_PIPELINES

    build_two_machine_store(tmp_path).close()
    aware = GNNCostModel(machine_features=True, **{**TRAINING, "epochs": 3}).fit(two_machines(), [])
    aware.save(tmp_path / "aware.pt")
    GNNCostModel(**{**TRAINING, "epochs": 1}).fit(two_machines(2, 2)[:4], []).save(tmp_path / "blind.pt")
    command = ["predict", "--pipeline", f"file:{USER_PIPELINES}:blur", "--candidates", "3", "--json"]
    command += ["--db", str(tmp_path / "two.db")]
    predicted = {}
    for kind in (ZEN4.kind, XEON.kind):
        assert main([*command, "--model", str(tmp_path / "aware.pt"), "--machine", kind]) == 0
        ranked = json.loads(capsys.readouterr().out)["candidates"]
        predicted[kind] = sorted(c["predicted_ms"] for c in ranked)
    assert predicted[ZEN4.kind] != predicted[XEON.kind]  # the same candidates, two machines
    assert main([*command, "--model", str(tmp_path / "blind.pt"), "--machine", ZEN4.kind]) == 2
    assert "machine-blind" in capsys.readouterr().err
    assert main([*command, "--model", str(tmp_path / "aware.pt"), "--machine", "nosuch/avx2"]) == 2
    assert "no record of that machine kind" in capsys.readouterr().err


def test_adapting_a_machine_aware_model_with_replay_keeps_what_it_knew_of_the_other_machine(machine_aware):
    import copy

    from perfgraph.models.adapt import adapt

    samples = two_machines()
    zen4 = [s for s in samples if s.machine_kind == ZEN4.kind]
    # The Xeon re-measured: a third ordering, so that fine-tuning has something to unlearn.
    xeon = on(XEON, zen4, runtime=lambda s: float(1e-3 * s.features[:, 6].sum()))
    before = np.log(machine_aware.predict(zen4))
    drift = {}
    for name, replay in (("none", []), ("replay", zen4)):
        adapted = adapt(copy.deepcopy(machine_aware), xeon, epochs=20, replay=replay)
        assert adapted.replay_.seen == len(replay) + len(xeon)
        drift[name] = float(np.mean(np.abs(np.log(adapted.predict(zen4)) - before)))
    assert drift["replay"] < 0.7 * drift["none"], drift
    with pytest.raises(ValueError, match="does not read the machine"):
        adapt(GNNCostModel(**TRAINING), xeon, replay=zen4)  # refused before any training


def test_the_cli_adapts_a_machine_aware_model_replaying_the_kind_it_already_knew(tiny_db, tmp_path, capsys):
    import shutil

    from perfgraph.cli import main
    from perfgraph.data.store import Store

    from .test_machines import _measurement

    db = tmp_path / "two.db"
    shutil.copy(tiny_db, db)
    with Store(db) as store:  # the tiny store's schedules (this host's kind), again on another kind, twice as slow
        first = store.default_machine_kind()
        second = XEON if first != XEON.kind else ZEN4
        machine_id = store.machine_id(second)
        for sample in store.samples():
            store.add_measurement(sample.schedule_id, machine_id, _measurement(2.0 * sample.runtime_ms))
    model, out = tmp_path / "aware.pt", tmp_path / "adapted.pt"
    train = ["train", "--db", str(db), "--model", "gnn", "--layers", "0", "--machine", "all", "--machine-features"]
    assert main([*train, "--epochs", "2", "--out", str(model)]) == 0
    capsys.readouterr()
    adapt = ["adapt", "--db", str(db), "--model", str(model), "--machine", second.kind, "--samples", "4"]
    assert main([*adapt, "--epochs", "1", "--replay", "3", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"replaying 3 samples of {first}" in printed
    assert f"after  {first} test" in printed and f"after  {second.kind} test" in printed
    assert load_model(out).machine_kinds == load_model(model).machine_kinds
