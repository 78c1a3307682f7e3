"""Halide Adams2019's hand-designed cost terms and training losses, as differentiable PyTorch code.

Transcribed from Halide's ``src/autoschedulers/adams2019/cost_model_generator.cpp``: the network there
only predicts 32 non-negative *coefficients* per stage; the run time of a stage is a hand-written
formula that multiplies them with raw (not log-scaled) schedule features such as the number of
vectors computed, the bytes loaded per realization or the number of parallel tasks. Keeping those
formulas verbatim is what makes this baseline "Halide's model" rather than just another MLP.

Shapes: ``schedule_features`` is ``(..., n_stages, 39)`` in the order of
:data:`perfgraph.features.layout.SCHEDULE_FEATURE_NAMES` (which is Halide's ``ScheduleFeatures``
order), ``coefficients`` is ``(..., n_stages, 32)``. Stage 0 is the pipeline's output stage, as in
Halide's featurization order.
"""

from __future__ import annotations

import torch

from perfgraph.features.layout import SCHEDULE_FEATURE_NAMES

# Network sizes from Halide's NetworkSize.h.
HEAD1_CHANNELS = 8
HEAD1_W = 40  # pipeline-feature rows the network reads (all but ``types_in_use``)
HEAD1_H = 7  # scalar-type columns
HEAD2_CHANNELS = 24
HEAD2_W = len(SCHEDULE_FEATURE_NAMES)
CONV1_CHANNELS = 32

#: The generator multiplies every stage cost by 1e-9 "so that network weights are in a human-readable range".
COST_UNIT = 1e-9
#: Weight of the regularizer that pushes pre-ReLU coefficients to be non-negative (helps dead ReLUs).
REGULARIZATION_WEIGHT = 1e-5
#: Halide clamps relative predicted run times from below before inverting them.
MIN_RELATIVE_PREDICTION = 1e-10

_INDEX = {name: i for i, name in enumerate(SCHEDULE_FEATURE_NAMES)}


def stage_costs(schedule_features: torch.Tensor, coefficients: torch.Tensor, num_cores: int) -> torch.Tensor:
    """Per-stage run time in Halide's units (``cost * 1e-9``), shape ``(..., n_stages)``.

    Coefficient indices are Halide's ``relu1(i, w, n)``; 4 and 28-31 are unused there too.

    >>> import torch
    >>> stage_costs(torch.zeros(1, 2, 39), torch.ones(1, 2, 32), num_cores=1).shape
    torch.Size([1, 2])
    """

    def feature(name: str) -> torch.Tensor:
        return schedule_features[..., _INDEX[name]]

    def k(i: int) -> torch.Tensor:
        return coefficients[..., i]

    num_realizations = feature("num_realizations")
    num_productions = feature("num_productions")
    inner_parallelism = feature("inner_parallelism")
    outer_parallelism = feature("outer_parallelism")
    bytes_at_realization = feature("bytes_at_realization")
    bytes_at_production = feature("bytes_at_production")
    inlined_calls = feature("inlined_calls")
    vector_size = feature("vector_size")
    num_vectors = feature("num_vectors")
    num_scalars = feature("num_scalars")
    bytes_at_task = feature("bytes_at_task")
    innermost_bytes_at_task = feature("innermost_bytes_at_task")
    unique_bytes_read_per_vector = feature("unique_bytes_read_per_vector")
    unique_lines_read_per_vector = feature("unique_lines_read_per_vector")
    one = torch.ones_like(num_realizations)

    # Compute: separate costs for vectors and scalars, and for inlined versus realized stages.
    compute_cost = torch.where(
        inlined_calls == 0,
        vector_size * num_vectors * k(0) + num_scalars * k(1),
        vector_size * num_vectors * k(2) + num_scalars * k(3),
    )
    # Round up according to how neatly the tasks fill the cores.
    num_tasks = torch.maximum(one, inner_parallelism * outer_parallelism)
    tasks_per_core = num_tasks / num_cores
    idle_core_wastage = torch.ceil(tasks_per_core) / torch.maximum(one, tasks_per_core)
    compute_cost = compute_cost * idle_core_wastage

    load_cost = (
        num_realizations * feature("unique_lines_read_per_realization") * k(5)
        + num_realizations * feature("unique_bytes_read_per_realization") * k(6)
        + num_vectors * feature("scalar_loads_per_vector") * k(7)
        + num_scalars * feature("scalar_loads_per_scalar") * k(8)
        + num_vectors * feature("vector_loads_per_vector") * k(9)
        + num_scalars * unique_bytes_read_per_vector * k(10)
        + num_vectors * unique_bytes_read_per_vector * k(11)
        + num_scalars * unique_lines_read_per_vector * k(12)
        + num_vectors * unique_lines_read_per_vector * k(13)
        + num_tasks * feature("unique_bytes_read_per_task") * k(14)
        + num_tasks * feature("unique_lines_read_per_task") * k(15)
    )

    # Stores: separate coefficients for internally parallel stages and for the output stage (w == 0).
    lines_written_per_realization = inner_parallelism * (bytes_at_task / torch.maximum(one, innermost_bytes_at_task))
    is_parallel = inner_parallelism > 1
    is_output = torch.zeros_like(is_parallel)
    is_output[..., 0] = True
    alpha = torch.where(is_parallel, k(16), torch.where(is_output, k(17), k(18)))
    beta = torch.where(is_parallel, k(19), torch.where(is_output, k(20), k(21)))
    store_cost = num_realizations * (lines_written_per_realization * alpha + bytes_at_realization * beta)

    # False sharing of cache lines, paid on every store of an internally parallel stage.
    store_cost = store_cost + torch.where(
        is_parallel,
        k(22) * (num_vectors + num_scalars) / torch.maximum(one, innermost_bytes_at_task),
        torch.zeros_like(one),
    )
    # False sharing of pages: faults are serviced serially, so the thread count multiplies again.
    max_threads_hitting_same_page_fault = torch.minimum(
        inner_parallelism, 4096 / torch.maximum(one, innermost_bytes_at_task)
    )
    store_cost = store_cost + (
        bytes_at_production * max_threads_hitting_same_page_fault * inner_parallelism * outer_parallelism * k(23)
    )

    cost_of_malloc = k(24) * num_realizations
    cost_of_parallel_launches = num_productions * torch.where(is_parallel, k(25), torch.zeros_like(one))
    cost_of_parallel_tasks = num_productions * (inner_parallelism - 1) * k(26)
    cost_of_working_set = feature("working_set") * k(27)

    # Halide doubles store_cost to stay compatible with its shipped weights (see the FIXME there).
    store_cost = store_cost * 2
    cost_of_parallelism = cost_of_parallel_tasks + cost_of_parallel_launches
    cost = compute_cost + store_cost + load_cost + cost_of_malloc + cost_of_parallelism + cost_of_working_set
    return cost * COST_UNIT


def coefficient_regularizer(conv1_pre_activation: torch.Tensor) -> torch.Tensor:
    """Halide's ``sum(-min(conv1_stage2, 0))`` per schedule: penalises negative pre-ReLU coefficients."""
    return (-torch.clamp(conv1_pre_activation, max=0.0)).sum(dim=(-2, -1))


def halide_throughput_loss(predicted: torch.Tensor, measured: torch.Tensor, regularizer: torch.Tensor) -> torch.Tensor:
    """Halide's training loss for one batch of schedules of **one** pipeline.

    L2 on relative throughput against the fastest schedule of the batch:
    ``sum_n (1 / max(p_n / r_ref, 1e-10) - r_ref / r_n)^2 + 1e-5 * regularizer_n``. Summed, not
    averaged, over the batch, as in the generator. Relative throughput weighs errors on fast
    schedules most, which is what a search that looks for the fastest schedule needs.
    """
    reference = measured[torch.argmin(measured)]
    relative_prediction = torch.clamp(predicted / reference, min=MIN_RELATIVE_PREDICTION)
    delta = (1.0 / relative_prediction - reference / measured) ** 2
    return (delta + REGULARIZATION_WEIGHT * regularizer).sum()


def log_mse_loss(predicted: torch.Tensor, measured: torch.Tensor, regularizer: torch.Tensor) -> torch.Tensor:
    """Our loss: mean squared error of log run time, with Halide's coefficient regularizer kept."""
    log_prediction = torch.log(torch.clamp(predicted, min=MIN_RELATIVE_PREDICTION))
    delta = (log_prediction - torch.log(measured)) ** 2
    return (delta + REGULARIZATION_WEIGHT * regularizer).mean()
