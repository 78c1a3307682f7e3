"""Scoring many schedules of one pipeline at search speed, with the pipeline's part computed once.

A cost model inside a schedule search is called on thousands of candidates of one pipeline. The
training path builds one PyG graph per sample and collates them; here every group of samples that
share a pipeline (:func:`~perfgraph.features.pipeline_batch.group_by_pipeline`) becomes one
:class:`~perfgraph.features.pipeline_batch.PipelineBatch`:

- the shared edges are standardised once and offset for all candidates in one vectorised step;
- the stage encoder's first layer is split by columns: its pipeline part (287 of 326 inputs) is
  computed once per pipeline and added to the schedule part (39 inputs) of every candidate;
- the network's ``shared_node_heads`` (GNN, LSTM) reads the stages as one (S, N, hidden) block,
  and the run time is a plain ``logsumexp`` over the S stages of each candidate.

Predictions equal the training path's to float tolerance (``tests/test_fast_predict.py``): the same
weights, features and operations, only batched differently.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch
from torch import nn

from perfgraph.data.records import Sample
from perfgraph.features.layout import FEATURES_PER_STAGE, PIPELINE_SLICE, SCHEDULE_SLICE
from perfgraph.features.normalization import FeatureNormalizer
from perfgraph.features.pipeline_batch import PipelineBatch, group_by_pipeline, pipeline_batch
from perfgraph.models.stage_network import StageCostNetwork

#: Candidates scored per network call: large enough that per-call overhead vanishes, small enough to
#: keep the (S, N, hidden) blocks small (1024 candidates of 20 stages at 64 channels: 5 MB).
MAX_CANDIDATES_PER_CALL = 1024


def standardize(
    batch: PipelineBatch, normalizer: FeatureNormalizer, unread: torch.Tensor | None = None
) -> PipelineBatch:
    """``batch`` standardised as :meth:`FeatureNormalizer.transform` standardises a graph.

    ``unread``: an optional boolean mask over the 326 stage features; those columns are zeroed after
    standardisation, as a model trained on a feature subset sees them.
    """
    schedule_x = normalizer.standardize_nodes(batch.schedule_x, SCHEDULE_SLICE)
    pipeline_x = normalizer.standardize_nodes(batch.pipeline_x, PIPELINE_SLICE)
    if unread is not None:
        schedule_x[..., unread[SCHEDULE_SLICE]] = 0.0
        pipeline_x[..., unread[PIPELINE_SLICE]] = 0.0
    edge_attr = normalizer.standardize_edges(batch.edge_attr)
    return replace(batch, schedule_x=schedule_x, pipeline_x=pipeline_x, edge_attr=edge_attr)


def encode_stages(encoder: nn.Module, schedule_x: torch.Tensor, pipeline_x: torch.Tensor) -> torch.Tensor:
    """``encoder`` applied to every stage of every candidate: (S, N, 39) and (S, 287) to (S, N, hidden).

    When the encoder starts with a linear layer over the 326 features (:func:`stage_encoder`), that
    layer is split by columns and its pipeline part, with the bias, is computed once for the S stages.
    """
    first = encoder[0] if isinstance(encoder, nn.Sequential) else None
    if not (isinstance(first, nn.Linear) and first.in_features == FEATURES_PER_STAGE):
        n = schedule_x.shape[1]
        return encoder(torch.cat([schedule_x, pipeline_x.unsqueeze(1).expand(-1, n, -1)], dim=-1))
    shared = nn.functional.linear(pipeline_x, first.weight[:, PIPELINE_SLICE], first.bias)  # (S, hidden)
    per_schedule = nn.functional.linear(schedule_x, first.weight[:, SCHEDULE_SLICE])  # (S, N, hidden)
    return encoder[1:](per_schedule.add_(shared.unsqueeze(1)))


def pipeline_log_runtimes(network: StageCostNetwork, batch: PipelineBatch) -> torch.Tensor:
    """Predicted natural-log run times (ms), shape (N,), of a standardised batch already on the network's device.

    Networks without ``shared_node_heads`` get the batch as one PyG batch (still collated once).
    """
    shared_heads = getattr(network, "shared_node_heads", None)
    if shared_heads is None:
        return network(batch.to_batch())
    h = encode_stages(network.encoder, batch.schedule_x, batch.pipeline_x)
    if network.machine_film is not None:
        h = network.machine_film(h, batch.machine_x)  # one machine per batch, broadcast over (S, N)
    edge_attr = batch.full_edge_attr() if network.reads_schedule_edges else batch.edge_attr
    heads = shared_heads(h, batch.edge_index, edge_attr)  # (S, N, head_outputs)
    is_output = torch.zeros(heads.shape[:2], dtype=torch.bool, device=heads.device)
    is_output[0] = True  # stage 0 is the output stage, in Halide's featurization order
    node_log_costs = network.stage_log_costs_from_heads(heads, batch.schedule_x, is_output)
    return torch.logsumexp(node_log_costs, dim=0) + network.log_scale


@torch.inference_mode()
def predict_samples_log_runtimes(
    network: StageCostNetwork,
    normalizer: FeatureNormalizer,
    samples: Sequence[Sample],
    device: torch.device | str = "cpu",
    unread: torch.Tensor | None = None,
    max_per_call: int = MAX_CANDIDATES_PER_CALL,
) -> np.ndarray:
    """Predicted natural-log run times (ms, float64), one per sample in order; any mix of pipelines.

    ``network`` must already be on ``device`` and in eval mode; ``unread`` as in :func:`standardize`.
    """
    out = np.empty(len(samples), dtype=np.float64)
    for group in group_by_pipeline(samples):
        for start in range(0, len(group), max_per_call):
            positions = group[start : start + max_per_call]
            batch = standardize(pipeline_batch([samples[i] for i in positions]), normalizer, unread).to(device)
            out[positions] = pipeline_log_runtimes(network, batch).double().cpu().numpy()
    return out
