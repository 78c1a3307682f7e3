"""Halide's hand-designed cost terms, and the GNN head that mixes them (``cost_terms``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from perfgraph.features.graphs import as_graphs
from perfgraph.features.layout import SCHEDULE_FEATURE_NAMES, SCHEDULE_SLICE
from perfgraph.features.normalization import FeatureNormalizer
from perfgraph.models.gnn import GNNCostModel
from perfgraph.models.halide_terms import UNUSED_COEFFICIENTS, cost_terms, stage_costs
from perfgraph.models.term_readout import NUM_OUTPUTS, USED_TERMS, TermReadout

pytestmark = pytest.mark.usefixtures("one_torch_thread")

COLUMN = {name: i for i, name in enumerate(SCHEDULE_FEATURE_NAMES)}


def raw_stage(**values: float) -> torch.Tensor:
    stage = torch.zeros(len(SCHEDULE_FEATURE_NAMES), dtype=torch.float64)
    for name, value in values.items():
        stage[COLUMN[name]] = value
    return stage


def test_terms_follow_halides_branches_for_inlined_parallel_and_output_stages():
    serial_output = raw_stage(num_vectors=10, vector_size=8, num_scalars=3, num_realizations=2, bytes_at_realization=64)
    parallel_inlined = raw_stage(
        num_vectors=10,
        vector_size=8,
        num_scalars=3,
        inlined_calls=5,
        inner_parallelism=4,
        outer_parallelism=1,
        num_productions=1,
    )
    terms = cost_terms(torch.stack([serial_output, parallel_inlined]), num_cores=3)
    assert terms.shape == (2, 32) and bool((terms >= 0).all())
    assert terms[0, [0, 1, 2, 3]].tolist() == [80, 3, 0, 0]  # realized: coefficients 0 and 1
    # inlined: 2 and 3, x the idle-core wastage of 4 tasks on 3 cores, ceil(4/3) / (4/3) = 1.5
    assert terms[1, [0, 1, 2, 3]].tolist() == [0, 0, 120, 4.5]
    assert terms[0, 20] == 2 * 2 * 64 and terms[0, 19] == terms[0, 21] == 0  # the output stage's store coefficient
    assert terms[1, 25] == 1 and terms[1, 26] == 3  # one parallel launch of four tasks
    assert terms[0, 24] == 2  # one malloc per realization
    assert not bool(terms[:, list(UNUSED_COEFFICIENTS)].any())


def test_stage_cost_is_the_dot_product_of_terms_and_coefficients_and_output_mask_defaults_to_stage_0():
    generator = torch.Generator().manual_seed(0)
    features = torch.rand(3, 5, 39, generator=generator, dtype=torch.float64) * 50
    features[..., COLUMN["inner_parallelism"]] = 1.0  # serial stages: the output stage stores apart
    coefficients = torch.rand(3, 5, 32, generator=generator, dtype=torch.float64)
    expected = (cost_terms(features, 1) * coefficients).sum(-1) * 1e-9
    torch.testing.assert_close(stage_costs(features, coefficients, 1), expected)
    mask = torch.zeros(3, 5, dtype=torch.bool)
    mask[:, 0] = True
    torch.testing.assert_close(cost_terms(features, 1, is_output=mask), cost_terms(features, 1))
    assert not torch.equal(cost_terms(features, 1, is_output=~mask), cost_terms(features, 1))


def test_readout_recovers_raw_features_from_standardised_ones(real_samples):
    graphs = as_graphs(real_samples)
    normalizer = FeatureNormalizer().fit(graphs)
    readout = TermReadout().fit(normalizer, [g.x for g in graphs])
    raw = torch.sign(graphs[0].x) * torch.expm1(graphs[0].x.abs())
    recovered = readout.raw_schedule_features(normalizer.transform(graphs[0]).x[:, SCHEDULE_SLICE])
    torch.testing.assert_close(recovered, raw[:, SCHEDULE_SLICE].double(), rtol=1e-4, atol=1e-3)
    # The terms test counts exactly (inlined or not, serial or parallel): after the round trip through
    # float32 standardisation they must see the same branches as on the raw features.
    for sample, graph in zip(real_samples, graphs, strict=True):
        exact = cost_terms(torch.tensor(sample.features[:, SCHEDULE_SLICE], dtype=torch.float64), 1)
        again = cost_terms(readout.raw_schedule_features(normalizer.transform(graph).x[:, SCHEDULE_SLICE]), 1)
        assert torch.equal(exact > 0, again > 0)
        torch.testing.assert_close(again, exact, rtol=1e-4, atol=0.0)
    assert readout.term_offset.shape == (len(USED_TERMS),) and bool(torch.isfinite(readout.term_offset).all())


def test_readout_keeps_the_free_term_and_grows_with_each_present_term():
    readout = TermReadout()
    stages = torch.stack([raw_stage(), raw_stage(num_scalars=1000.0, num_realizations=1)])
    standardised = torch.sign(stages) * torch.log1p(stages.abs())  # mean 0, std 1: log transform only
    z = torch.zeros(2, NUM_OUTPUTS)
    z[:, 0] = 1.5
    is_output = torch.tensor([True, True])
    base = readout(z, standardised.float(), is_output)
    assert float(base[0]) == pytest.approx(1.5)  # no term present: the free term alone
    assert float(base[1]) > 1.5
    scalar_compute = 1 + USED_TERMS.index(1)
    z[:, scalar_compute] = 2.0
    raised = readout(z, standardised.float(), is_output)
    assert float(raised[0]) == pytest.approx(1.5) and float(raised[1]) > float(base[1])


def test_a_cost_terms_gnn_trains_saves_and_loads_with_its_term_statistics(real_samples, tmp_path):
    params = {"hidden": 16, "layers": 1, "epochs": 20, "patience": 100, "lr": 1e-2, "loss": "mse", "device": "cpu"}
    model = GNNCostModel(cost_terms=True, progress=False, **params).fit(real_samples, real_samples)
    assert model.log_[-1]["train_loss"] < model.log_[0]["train_loss"]
    assert float(model.network_.term_readout.term_offset.abs().sum()) > 0
    model.save(tmp_path / "terms.pt")
    loaded = GNNCostModel.load(tmp_path / "terms.pt")
    assert loaded.get_params()["cost_terms"] is True
    np.testing.assert_array_equal(loaded.predict(real_samples), model.predict(real_samples))
    plain = GNNCostModel(progress=False, **params).fit(real_samples, real_samples)
    assert not np.allclose(plain.predict(real_samples), model.predict(real_samples))
