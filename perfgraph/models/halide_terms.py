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


#: Columns of :func:`cost_terms`: the coefficient each term multiplies (Halide's ``relu1(i, w, n)``).
NUM_COEFFICIENTS = 32
#: Coefficients Halide's formula never reads (4 and 28-31); their terms are always zero.
UNUSED_COEFFICIENTS = (4, 28, 29, 30, 31)


def cost_terms(schedule_features: torch.Tensor, num_cores: int, is_output: torch.Tensor | None = None) -> torch.Tensor:
    """Halide's hand-designed cost terms of every stage, shape ``(..., n_stages, 32)``, non-negative.

    Column ``i`` is what coefficient ``i`` multiplies in ``cost_model_generator.cpp``, with the
    formula's branches (inlined or not; internally parallel, output or other stage) folded in as
    masks and its constant factors (the doubled store cost) kept, so that a stage's cost is exactly
    ``(cost_terms * coefficients).sum(-1)`` (:func:`stage_costs`). The terms are raw counts and bytes
    (vectors computed, lines loaded, parallel tasks, ...), spanning many orders of magnitude.
    ``is_output`` (bool, the features' shape without the last axis) marks the pipelines' output
    stages; by default the first stage along axis -2, Halide's featurization order.

    >>> import torch
    >>> f = torch.zeros(1, 39)
    >>> f[0, _INDEX["num_scalars"]] = 5.0
    >>> cost_terms(f, num_cores=1)[0, 1].item()  # scalar compute of a realized stage
    5.0
    """

    def feature(name: str) -> torch.Tensor:
        return schedule_features[..., _INDEX[name]]

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
    zero = torch.zeros_like(num_realizations)
    terms = [zero] * NUM_COEFFICIENTS

    # Compute: separate costs for vectors and scalars, and for inlined versus realized stages, rounded
    # up according to how neatly the tasks fill the cores.
    num_tasks = torch.maximum(one, inner_parallelism * outer_parallelism)
    tasks_per_core = num_tasks / num_cores
    idle_core_wastage = torch.ceil(tasks_per_core) / torch.maximum(one, tasks_per_core)
    realized = (inlined_calls == 0).to(one.dtype) * idle_core_wastage
    inlined = (inlined_calls != 0).to(one.dtype) * idle_core_wastage
    terms[0] = vector_size * num_vectors * realized
    terms[1] = num_scalars * realized
    terms[2] = vector_size * num_vectors * inlined
    terms[3] = num_scalars * inlined

    terms[5] = num_realizations * feature("unique_lines_read_per_realization")
    terms[6] = num_realizations * feature("unique_bytes_read_per_realization")
    terms[7] = num_vectors * feature("scalar_loads_per_vector")
    terms[8] = num_scalars * feature("scalar_loads_per_scalar")
    terms[9] = num_vectors * feature("vector_loads_per_vector")
    terms[10] = num_scalars * unique_bytes_read_per_vector
    terms[11] = num_vectors * unique_bytes_read_per_vector
    terms[12] = num_scalars * unique_lines_read_per_vector
    terms[13] = num_vectors * unique_lines_read_per_vector
    terms[14] = num_tasks * feature("unique_bytes_read_per_task")
    terms[15] = num_tasks * feature("unique_lines_read_per_task")

    # Stores: separate coefficients for internally parallel stages and for the output stage (stage 0).
    # Halide doubles the store cost to stay compatible with its shipped weights (see the FIXME there).
    lines_written_per_realization = inner_parallelism * (bytes_at_task / torch.maximum(one, innermost_bytes_at_task))
    is_parallel = inner_parallelism > 1
    if is_output is None:
        is_output = torch.zeros_like(is_parallel)
        is_output[..., 0] = True
    elif is_output.dtype != torch.bool or is_output.shape != is_parallel.shape:
        raise ValueError(
            f"is_output must be a bool tensor of shape {tuple(is_parallel.shape)}, "
            f"got {is_output.dtype} {tuple(is_output.shape)}"
        )
    masks = (
        is_parallel.to(one.dtype),
        (~is_parallel & is_output).to(one.dtype),
        (~is_parallel & ~is_output).to(one.dtype),
    )
    for offset, mask in enumerate(masks):
        terms[16 + offset] = 2 * num_realizations * lines_written_per_realization * mask
        terms[19 + offset] = 2 * num_realizations * bytes_at_realization * mask
    # False sharing of cache lines, paid on every store of an internally parallel stage.
    terms[22] = 2 * masks[0] * (num_vectors + num_scalars) / torch.maximum(one, innermost_bytes_at_task)
    # False sharing of pages: faults are serviced serially, so the thread count multiplies again.
    max_threads_hitting_same_page_fault = torch.minimum(
        inner_parallelism, 4096 / torch.maximum(one, innermost_bytes_at_task)
    )
    terms[23] = 2 * bytes_at_production * max_threads_hitting_same_page_fault * inner_parallelism * outer_parallelism

    terms[24] = num_realizations  # malloc
    terms[25] = num_productions * masks[0]  # parallel launches
    terms[26] = num_productions * (inner_parallelism - 1)  # parallel tasks
    terms[27] = feature("working_set")
    return torch.stack(terms, dim=-1)


def stage_costs(schedule_features: torch.Tensor, coefficients: torch.Tensor, num_cores: int) -> torch.Tensor:
    """Per-stage run time in Halide's units (``cost * 1e-9``), shape ``(..., n_stages)``.

    ``coefficients`` ``(..., n_stages, 32)`` are Halide's ``relu1(i, w, n)``; the stage cost is their
    dot product with :func:`cost_terms`.

    >>> import torch
    >>> stage_costs(torch.zeros(1, 2, 39), torch.ones(1, 2, 32), num_cores=1).shape
    torch.Size([1, 2])
    """
    return (cost_terms(schedule_features, num_cores) * coefficients).sum(dim=-1) * COST_UNIT


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
