"""The one declaration of Halide's per-stage featurization layout.

Halide's Adams2019 autoscheduler describes every stage of a pipeline with 326 float32 values:
39 *schedule* features (how the stage is scheduled) followed by 41 x 7 *pipeline* features
(what the stage computes: op histograms and memory-access patterns, one column per scalar type).
Everything else in perfgraph derives offsets and names from this module.

>>> FEATURES_PER_STAGE
326
>>> SCHEDULE_FEATURE_NAMES[0], PIPELINE_FEATURE_ROWS[1]
('num_realizations', 'op_Const')
"""

from __future__ import annotations

# Bump when the meaning of any stored or derived feature changes; datasets and checkpoints carry it.
FEATURE_SCHEMA_VERSION = 1

#: Per-edge features of a schedule, read from its source (:mod:`perfgraph.schedules.schedule_source`).
SCHEDULE_EDGE_FEATURE_NAMES: tuple[str, ...] = (
    "inlined",
    "compute_root",
    "compute_at_consumer",
    "compute_depth",
    "compute_at_other",
    "store_coarser",
    "store_on_stack",
)
NUM_SCHEDULE_EDGE_FEATURES = len(SCHEDULE_EDGE_FEATURE_NAMES)

#: Graph-level features of the machine kind a run time belongs to
#: (:meth:`perfgraph.measure.host.MachineInfo.feature_vector`).
MACHINE_FEATURE_NAMES: tuple[str, ...] = (
    "vendor_intel",
    "vendor_amd",
    "base_ghz",
    "target_avx512",
    "target_avx2",
    "target_fma",
    "target_f16c",
    "tune_zen_generation",
)
NUM_MACHINE_FEATURES = len(MACHINE_FEATURE_NAMES)

SCHEDULE_FEATURE_NAMES: tuple[str, ...] = (
    "num_realizations",
    "num_productions",
    "points_computed_per_realization",
    "points_computed_per_production",
    "points_computed_total",
    "points_computed_minimum",
    "innermost_loop_extent",
    "innermost_pure_loop_extent",
    "unrolled_loop_extent",
    "inner_parallelism",
    "outer_parallelism",
    "bytes_at_realization",
    "bytes_at_production",
    "bytes_at_root",
    "innermost_bytes_at_realization",
    "innermost_bytes_at_production",
    "innermost_bytes_at_root",
    "inlined_calls",
    "unique_bytes_read_per_realization",
    "unique_lines_read_per_realization",
    "allocation_bytes_read_per_realization",
    "working_set",
    "vector_size",
    "native_vector_size",
    "num_vectors",
    "num_scalars",
    "scalar_loads_per_vector",
    "vector_loads_per_vector",
    "scalar_loads_per_scalar",
    "bytes_at_task",
    "innermost_bytes_at_task",
    "unique_bytes_read_per_vector",
    "unique_lines_read_per_vector",
    "unique_bytes_read_per_task",
    "unique_lines_read_per_task",
    "working_set_at_task",
    "working_set_at_production",
    "working_set_at_realization",
    "working_set_at_root",
)

SCALAR_TYPES: tuple[str, ...] = ("Bool", "UInt8", "UInt16", "UInt32", "UInt64", "Float", "Double")

OP_TYPES: tuple[str, ...] = (
    "Const",
    "Cast",
    "Variable",
    "Param",
    "Add",
    "Sub",
    "Mod",
    "Mul",
    "Div",
    "Min",
    "Max",
    "EQ",
    "NE",
    "LT",
    "LE",
    "And",
    "Or",
    "Not",
    "Select",
    "ImageCall",
    "FuncCall",
    "SelfCall",
    "ExternCall",
    "Let",
)

ACCESS_PATTERNS: tuple[str, ...] = ("Pointwise", "Transpose", "Broadcast", "Slice")
ACCESS_KINDS: tuple[str, ...] = ("LoadFunc", "LoadSelf", "LoadImage", "Store")

PIPELINE_FEATURE_ROWS: tuple[str, ...] = (
    ("types_in_use",)
    + tuple(f"op_{op}" for op in OP_TYPES)
    + tuple(f"{pattern}_{kind}" for pattern in ACCESS_PATTERNS for kind in ACCESS_KINDS)
)

NUM_SCHEDULE_FEATURES = len(SCHEDULE_FEATURE_NAMES)
NUM_PIPELINE_FEATURE_ROWS = len(PIPELINE_FEATURE_ROWS)
NUM_SCALAR_TYPES = len(SCALAR_TYPES)
NUM_PIPELINE_FEATURES = NUM_PIPELINE_FEATURE_ROWS * NUM_SCALAR_TYPES
FEATURES_PER_STAGE = NUM_SCHEDULE_FEATURES + NUM_PIPELINE_FEATURES

# Slices into one featurization row.
SCHEDULE_SLICE = slice(0, NUM_SCHEDULE_FEATURES)
PIPELINE_SLICE = slice(NUM_SCHEDULE_FEATURES, FEATURES_PER_STAGE)

PIPELINE_FEATURE_NAMES: tuple[str, ...] = tuple(
    f"{row}[{scalar}]" for row in PIPELINE_FEATURE_ROWS for scalar in SCALAR_TYPES
)
FEATURE_NAMES: tuple[str, ...] = SCHEDULE_FEATURE_NAMES + PIPELINE_FEATURE_NAMES

# Per-edge features derived from Halide's load Jacobians and footprints (see schedules/stage_graph.py).
EDGE_FEATURE_NAMES: tuple[str, ...] = (
    "producer_dims",
    "consumer_loop_dims",
    "jacobian_nonzero_fraction",
    "jacobian_unknown_fraction",
    "jacobian_max_abs_coefficient",
    "is_pointwise",
    "is_stencil",
    "num_loads",
    "same_func_update",
)
NUM_EDGE_FEATURES = len(EDGE_FEATURE_NAMES)

assert NUM_SCHEDULE_FEATURES == 39
assert NUM_PIPELINE_FEATURE_ROWS == 41
assert FEATURES_PER_STAGE == 326
