"""The GNN cost model, its sequence control, losses, training loop, checkpoints and outputs."""

from __future__ import annotations

import csv
import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from torch_geometric.data import Batch, Data

from perfgraph.evaluate.metrics import rmse_log
from perfgraph.features.graphs import EDGE_ATTR_DIM, as_graphs
from perfgraph.features.layout import FEATURES_PER_STAGE
from perfgraph.models.base import NotFittedError, SchemaMismatchError
from perfgraph.models.directed_gine import DirectedGINE
from perfgraph.models.gnn import GNNCostModel
from perfgraph.models.losses import listwise_rank_loss, make_loss, pairwise_rank_loss, relative_error_loss
from perfgraph.models.predict import write_predictions_csv
from perfgraph.models.sequence import SequenceCostModel
from perfgraph.models.stage_gnn import StageGNN
from perfgraph.models.train import train_model
from perfgraph.models.training import PLATEAU_FACTOR, pipeline_batches, plot_loss_curve, train_network

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(model_class=GNNCostModel, **overrides):
    params = {
        "hidden": 16,
        "layers": 2,
        "epochs": 60,
        "patience": 1000,
        "lr": 1e-2,
        "loss": "mse",  # the overfitting check is about the network; the ranking term need not fall 10x
        "device": "cpu",
        "progress": False,
        **overrides,
    }
    if model_class is SequenceCostModel:
        params["layers"] = 1
    return model_class(**params)


@pytest.fixture(scope="module")
def fitted(real_samples) -> GNNCostModel:
    return tiny(conv="gatv2", epochs=15).fit(real_samples, real_samples)


@pytest.mark.parametrize("conv", ["gcn", "sage", "gatv2", "gin", "gin-dir", "transformer"])
def test_gnn_overfits_a_tiny_dataset(real_samples, conv):
    model = tiny(conv=conv).fit(real_samples, real_samples)
    assert model.log_[-1]["train_loss"] <= model.log_[0]["train_loss"] / 10


def test_sequence_model_overfits_a_tiny_dataset(real_samples):
    model = tiny(SequenceCostModel).fit(real_samples, real_samples)
    assert model.log_[-1]["train_loss"] <= model.log_[0]["train_loss"] / 10


@pytest.mark.parametrize(
    ("model_class", "params"),
    [
        (GNNCostModel, {}),
        (SequenceCostModel, {}),
        (GNNCostModel, {"conv": "gin-dir", "global_context": True, "lr_schedule": "plateau"}),
    ],
)
def test_save_then_load_gives_identical_predictions(real_samples, tmp_path, model_class, params):
    model = tiny(model_class, epochs=3, **params).fit(real_samples, real_samples)
    model.save(tmp_path / "model.pt")
    loaded = model_class.load(tmp_path / "model.pt")
    assert np.array_equal(loaded.predict(real_samples), model.predict(real_samples))
    assert loaded.get_params() == model.get_params() and loaded.log_ == model.log_


def test_a_checkpoint_of_another_schema_version_is_refused_naming_both(fitted, tmp_path):
    path = tmp_path / "gnn.pt"
    fitted.save(path)
    record = torch.load(path, weights_only=True)
    record["feature_schema_version"] += 41
    torch.save(record, path)
    with pytest.raises(SchemaMismatchError) as error:
        GNNCostModel.load(path)
    found, expected = record["feature_schema_version"], record["feature_schema_version"] - 41
    assert f"version {found}" in str(error.value) and f"version {expected}" in str(error.value)


def test_a_sequence_checkpoint_is_not_loaded_as_a_gnn(real_samples, tmp_path):
    tiny(SequenceCostModel, epochs=1).fit(real_samples, []).save(tmp_path / "seq.pt")
    with pytest.raises(ValueError, match="'sequence' checkpoint, expected 'gnn'"):
        GNNCostModel.load(tmp_path / "seq.pt")


def test_prediction_runs_on_cpu_and_gives_positive_milliseconds(fitted, real_samples, tmp_path):
    fitted.save(tmp_path / "gnn.pt")
    predicted = GNNCostModel.load(tmp_path / "gnn.pt", device="cpu").predict(real_samples)
    assert predicted.shape == (len(real_samples),)
    assert np.isfinite(predicted).all() and (predicted > 0).all()


def test_stage_costs_are_positive_one_per_stage_and_sum_to_the_prediction(fitted, real_samples):
    sample = real_samples[0]
    costs = fitted.stage_costs(sample)
    assert costs.shape == (sample.num_stages,) and (costs > 0).all()
    assert costs.sum() == pytest.approx(fitted.predict([sample])[0], rel=1e-5)


def test_unmeasured_samples_can_be_predicted_but_not_trained_on(fitted, real_samples):
    unmeasured = dataclasses.replace(real_samples[0], runtime_ms=None)
    assert np.isfinite(fitted.predict([unmeasured])).all()
    with pytest.raises(ValueError, match="no measured run time"):
        tiny(epochs=1).fit([unmeasured], [])


def test_update_fine_tunes_and_keeps_the_normaliser(real_samples):
    model = tiny(epochs=3, update_epochs=2).fit(real_samples, real_samples)
    mean, before = model.normalizer_.node_mean.clone(), model.predict(real_samples)
    model.update(real_samples[:4])
    assert torch.equal(model.normalizer_.node_mean, mean)
    assert not np.array_equal(model.predict(real_samples), before)
    assert [e.get("phase") for e in model.log_[-2:]] == ["update", "update"]


def test_update_replays_earlier_samples_so_that_fine_tuning_forgets_less(real_samples):
    first = sorted({s.pipeline_name for s in real_samples})[0]
    old = [s for s in real_samples if s.pipeline_name != first]
    new = [s for s in real_samples if s.pipeline_name == first]
    measured_old = np.array([s.runtime_ms for s in old])
    drift = {}
    for replay in (0, 4096):
        model = tiny(epochs=40, update_epochs=30, update_lr_factor=1.0, replay=replay).fit(old, [])
        assert len(model.replay_) == min(replay, len(old))
        before = rmse_log(model.predict(old), measured_old)
        model.update(new)
        drift[replay] = rmse_log(model.predict(old), measured_old) - before
        assert model.replay_.seen == len(old) + len(new)
    assert drift[4096] < drift[0], drift


@pytest.mark.parametrize("setting", [{"conv": "sage"}, {"conv": "gcn"}, {"layers": 0}])
def test_schedule_edges_without_convolutions_that_read_edges_are_refused(setting):
    with pytest.raises(ValueError, match="schedule_edges needs message passing that reads edge features"):
        GNNCostModel(schedule_edges=True, **setting)


def test_predict_before_fit_says_what_to_do():
    with pytest.raises(NotFittedError, match=r"call fit\(\) or load\(\) first"):
        GNNCostModel().predict([])


@pytest.mark.parametrize(
    ("argument", "value"), [("conv", "chebnet"), ("hidden", 0), ("loss", "hinge"), ("device", "tpu"), ("epochs", -1)]
)
def test_bad_hyper_parameters_are_refused_naming_argument_and_value(argument, value):
    with pytest.raises(ValueError, match=f"{argument}.*{value}"):
        GNNCostModel(**{argument: value})


def test_rank_loss_is_small_when_the_order_is_right_and_large_when_reversed():
    true = torch.tensor([0.0, 1.0, 2.0])
    group = torch.tensor([1, 1, 1])
    right = pairwise_rank_loss(true * 5, true, group)
    wrong = pairwise_rank_loss(-true * 5, true, group)
    assert right < 0.01 < 4 < wrong


def test_rank_loss_only_compares_schedules_of_one_pipeline():
    pred, true = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    assert pairwise_rank_loss(pred, true, torch.tensor([1, 2])) == 0
    assert pairwise_rank_loss(pred, true, torch.tensor([1, 1])) > 0


def test_listwise_loss_is_zero_for_the_measured_order_and_gaps_and_weighs_the_fastest_most():
    true = torch.tensor([0.0, 0.3, 0.6, 0.9, 5.0])
    group = torch.tensor([1, 1, 1, 1, 2])  # the lone schedule of pipeline 2 is not ranked
    assert float(listwise_rank_loss(true, true, group)) == pytest.approx(0.0, abs=1e-6)
    shifted = listwise_rank_loss(true + 3.0, true, group)  # a shift of a whole pipeline costs nothing
    assert float(shifted) == pytest.approx(0.0, abs=1e-6)
    swap_fastest = listwise_rank_loss(true[[1, 0, 2, 3, 4]], true, group)
    swap_slowest = listwise_rank_loss(true[[0, 1, 3, 2, 4]], true, group)
    assert float(swap_fastest) > float(swap_slowest) > 0


def test_listwise_loss_only_ranks_within_a_pipeline_and_has_a_gradient_without_pairs():
    pred, true = torch.tensor([1.0, 0.0], requires_grad=True), torch.tensor([0.0, 1.0])
    alone = listwise_rank_loss(pred, true, torch.tensor([1, 2]))
    assert float(alone.detach()) == 0
    alone.backward()
    assert make_loss("mse+listnet").uses_pairs
    assert float(listwise_rank_loss(pred, true, torch.tensor([4, 4])).detach()) > 0


def test_relative_loss_is_symmetric_in_over_and_under_prediction():
    true, group = torch.zeros(1), torch.zeros(1, dtype=torch.long)
    over = relative_error_loss(torch.tensor([math.log(2)]), true, group)
    under = relative_error_loss(torch.tensor([-math.log(2)]), true, group)
    assert float(over) == pytest.approx(1.0) and float(under) == pytest.approx(1.0)


def test_combined_loss_is_the_weighted_sum_of_its_terms():
    pred, true, group = torch.tensor([0.5, 0.0]), torch.tensor([0.0, 1.0]), torch.tensor([3, 3])
    mse, rank = make_loss("mse")(pred, true, group), make_loss("rank")(pred, true, group)
    assert float(make_loss("mse+0.5*rank")(pred, true, group)) == pytest.approx(float(mse + 0.5 * rank))


def test_batches_keep_the_schedules_of_a_pipeline_together():
    groups = [p for p in range(7) for _ in range(5)]
    batches = pipeline_batches(groups, batch_size=12, rng=np.random.default_rng(0))
    assert sorted(i for b in batches for i in b) == list(range(35))
    for batch in batches:
        assert len(batch) <= 12
        for p in {groups[i] for i in batch}:
            assert sum(groups[i] == p for i in batch) == 5


def test_loss_curve_is_written_as_png(tmp_path):
    log = [{"epoch": e, "train_loss": 1 / e, "valid_loss": 2 / e} for e in range(1, 6)]
    path = plot_loss_curve(log, tmp_path / "loss.png")
    assert path.read_bytes().startswith(b"\x89PNG")


def test_predictions_csv_has_the_agreed_header_and_blank_unmeasured_times(fitted, real_samples, tmp_path):
    samples = [real_samples[0], dataclasses.replace(real_samples[1], runtime_ms=None)]
    path = write_predictions_csv(fitted, samples, tmp_path / "pred.csv")
    rows = list(csv.reader(path.open()))
    assert rows[0] == ["pipeline_id", "schedule_id", "predicted_ms", "measured_ms"]
    assert rows[1][:2] == [str(samples[0].pipeline_id), str(samples[0].schedule_id)]
    assert float(rows[1][3]) == samples[0].runtime_ms and rows[2][3] == ""
    assert float(rows[2][2]) > 0


def test_train_model_writes_checkpoint_log_and_loss_curve(real_samples, tmp_path):
    out = tmp_path / "gnn.pt"
    result = train_model(real_samples, "gnn", out, epochs=3, device="cpu", seed=1, hidden=8, layers=1, progress=False)
    log = json.loads(result.log_path.read_text())
    assert result.checkpoint_path == out and out.is_file() and result.plot_path.is_file()
    assert len(log["epochs"]) == 3 and log["params"]["seed"] == 1
    assert set(log["split"]["test"]).isdisjoint(log["split"]["train"])
    assert np.array_equal(GNNCostModel.load(out).predict(real_samples), result.model.predict(real_samples))


def test_global_context_needs_message_passing_layers():
    with pytest.raises(ValueError, match="global_context .* needs layers >= 1"):
        GNNCostModel(global_context=True, layers=0)


@pytest.mark.parametrize("global_context", [False, True])
def test_global_context_lets_a_stage_see_beyond_its_neighbours(global_context):
    """A chain of 4 stages, one layer: stage 0's cost reads stage 3 only through the virtual node."""
    torch.manual_seed(0)
    network = StageGNN("gin", hidden=8, layers=1, global_context=global_context).eval()
    chain = torch.tensor([[1, 2, 3, 0, 1, 2], [0, 1, 2, 1, 2, 3]])
    x = torch.randn(4, FEATURES_PER_STAGE)
    far = x.clone()
    far[3] += 1.0
    batch = Batch.from_data_list(
        [Data(x=v, edge_index=chain, edge_attr=torch.zeros(6, EDGE_ATTR_DIM)) for v in (x, far)]
    )
    with torch.no_grad():
        costs = network.node_log_costs(batch).view(2, 4)
    assert (not torch.isclose(costs[0, 0], costs[1, 0])) is global_context
    assert not torch.isclose(costs[0, 2], costs[1, 2])  # a neighbour of stage 3 sees it either way


@pytest.mark.parametrize("lr_schedule", ["constant", "plateau"])
def test_the_plateau_schedule_halves_the_rate_when_the_loss_stalls(real_samples, lr_schedule):
    def stalled(pred, true, group):  # never improves after the first epoch
        return pred.sum() * 0.0 + 1.0

    log = train_network(
        StageGNN("gin", hidden=8, layers=1), as_graphs(real_samples[:8]), [], stalled,
        epochs=20, lr=1e-2, patience=9, batch_size=4, seed=0, lr_schedule=lr_schedule, progress=False,
    )  # fmt: skip
    rates = [entry["lr"] for entry in log]
    assert len(rates) == 10  # stopped by patience either way
    if lr_schedule == "constant":
        assert set(rates) == {1e-2}
    else:
        assert rates == sorted(rates, reverse=True) and rates[-1] == pytest.approx(1e-2 * PLATEAU_FACTOR**2)


def test_an_unknown_lr_schedule_is_refused():
    with pytest.raises(ValueError, match="lr_schedule.*cosine"):
        GNNCostModel(lr_schedule="cosine")


def test_the_directed_gin_tells_producers_from_consumers():
    """With the flag column's own weight zeroed, only the routing by direction can tell the two apart."""
    torch.manual_seed(0)
    layer = DirectedGINE(hidden=8, edge_dim=3, direction_column=2)
    x = torch.randn(3, 8)
    edge_index = torch.tensor([[0, 1, 1, 2], [1, 2, 0, 1]])  # the chain 0 -> 1 -> 2, both ways
    flags = torch.tensor([0.0, 0.0, 1.0, 1.0])
    edge_attr = torch.stack([torch.ones(4), torch.zeros(4), flags], dim=1)
    flipped = torch.stack([torch.ones(4), torch.zeros(4), 1 - flags], dim=1)
    with torch.no_grad():
        for conv in (layer.from_producers, layer.from_consumers):
            conv.lin.weight[:, 2] = 0.0
        assert not torch.allclose(layer(x, edge_index, edge_attr), layer(x, edge_index, flipped))
        layer.from_consumers.load_state_dict(layer.from_producers.state_dict())  # one set of weights
        assert torch.allclose(layer(x, edge_index, edge_attr), layer(x, edge_index, flipped))
    with pytest.raises(ValueError, match="direction_column"):
        DirectedGINE(hidden=8, edge_dim=3, direction_column=3)
