"""Where each stage is computed and stored, read from the schedule source Adams2019 writes.

Halide's featurization describes each stage alone. How stages sit relative to each other (a producer
inlined into its consumer, computed at one of the consumer's loops, or computed once at the root) is
what the schedule source says directly, so these per-edge features make the stage graph itself
depend on the schedule (issue 13: "schedule-aware structure"). The source is the C++ that
``Pipeline.apply_autoscheduler`` returns (``AutoSchedulerResults.schedule_source``); a ``Func``
without a block there is inlined, Halide's default.

Features of an edge producer -> consumer
(:data:`~perfgraph.features.layout.SCHEDULE_EDGE_FEATURE_NAMES`), all in [0, 1]:

- ``inlined``: the producer has no schedule of its own (it is inlined into its consumers);
- ``compute_root``: the producer is computed once, before everything that reads it;
- ``compute_at_consumer``: the producer is computed inside one of this consumer's loops;
- ``compute_depth``: that loop's depth in the consumer's loop nest, outermost 1/L ... innermost 1
  (0 unless ``compute_at_consumer``): deeper means smaller, more frequent realizations;
- ``compute_at_other``: the producer is computed inside a loop of another stage (further down);
- ``store_coarser``: the producer is stored at a coarser level than it is computed (sliding window);
- ``store_on_stack``: the producer's buffer is on the stack or in registers rather than the heap.

An edge between two stages of one ``Func`` (its pure definition and an update) gets zeros.

Names: the source spells a ``Func`` as a C++ identifier (Halide replaces ``$`` and other characters
by ``_``), and a pipeline built again in the same process has its ``Func`` names uniquified (``relu``
becomes ``relu$1``, written ``relu_1``), as happens when a builder worker autoschedules several
configs. :func:`resolve_func_names` maps source names back to the stage graph's. When no scheduled
``Func`` can be matched (the output is always scheduled, so the source is not this pipeline's) every
feature is 0, "unknown", rather than "inlined". Changing what this module computes changes every
cached graph: bump :data:`~perfgraph.features.graphs.GRAPH_FORMAT_VERSION`.

>>> source = '''
... Func out = pipeline.get_func(2);
... Func pad = pipeline.get_func(1);
... out
...     .split(x, x, xi, 8, TailStrategy::ShiftInwards)
...     .compute_root()
...     .reorder({xi, x, y, c});
... pad
...     .compute_at(out, x)
...     .store_at(out, y)
...     .reorder({x, y, c});
... '''
>>> schedules = parse_schedule_source(source)
>>> schedules["pad"].compute_at, schedules["pad"].store_at, schedules["out"].loops["out"]
(('out', 'x'), ('out', 'y'), ('xi', 'x', 'y', 'c'))
>>> edges = np.array([[0], [1]])  # pad -> out
>>> schedule_edge_features(source, ("pad", "out"), edges).tolist()
[[0.0, 0.0, 1.0, 0.75, 0.0, 1.0, 0.0]]
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from perfgraph.features.layout import NUM_SCHEDULE_EDGE_FEATURES

# A block starts with a Func name (optionally ``.update(k)``) alone on its line; directives follow,
# one per line, each starting with a dot.
_BLOCK_HEAD = re.compile(r"^(\w+)(?:\.update\((\d+)\))?\s*$")
_DIRECTIVE = re.compile(r"^\s*\.(\w+)\((.*)\)\s*;?\s*$")
_NOT_IDENTIFIER = re.compile(r"[^A-Za-z0-9_]")
_UNIQUIFIER = re.compile(r"_\d+$")


@dataclass
class FuncSchedule:
    """What the schedule source says about one ``Func`` (all its stages)."""

    compute_root: bool = False
    compute_at: tuple[str, str] | None = None  # (consumer Func, loop variable)
    store_at: tuple[str, str] | None = None
    store_root: bool = False
    on_stack: bool = False
    loops: dict[str, tuple[str, ...]] = field(default_factory=dict)  # stage name -> loops, innermost first

    @property
    def inlined(self) -> bool:
        return not self.compute_root and self.compute_at is None


def parse_schedule_source(source: str) -> dict[str, FuncSchedule]:
    """Every scheduled ``Func`` of ``source`` by name; a ``Func`` absent here is inlined.

    Lines that are not a block head or a directive (declarations, comments) are skipped, so an
    unexpected line costs at most its own information.
    """
    schedules: dict[str, FuncSchedule] = {}
    current: FuncSchedule | None = None
    stage = ""
    for line in source.splitlines():
        head = _BLOCK_HEAD.match(line)
        if head:
            func = head.group(1)
            current = schedules.setdefault(func, FuncSchedule())
            stage = func if head.group(2) is None else f"{func}.update({head.group(2)})"
            continue
        directive = _DIRECTIVE.match(line)
        if directive is None or current is None:
            if not line.startswith((" ", "\t")):
                current = None  # a declaration ends the block
            continue
        name, arguments = directive.group(1), directive.group(2)
        parts = [part.strip() for part in arguments.split(",")]
        if name == "compute_root":
            current.compute_root = True
        elif name == "compute_at" and len(parts) == 2:
            current.compute_at = (parts[0], parts[1])
        elif name == "store_at" and len(parts) == 2:
            current.store_at = (parts[0], parts[1])
        elif name == "store_root":
            current.store_root = True
        elif name == "store_in":
            current.on_stack = "Stack" in arguments or "Register" in arguments
        elif name == "reorder":
            current.loops[stage] = tuple(part.strip("{} ") for part in parts if part.strip("{} "))
    return schedules


def _func_of(stage_name: str) -> str:
    return stage_name.split(".update(", 1)[0]


def resolve_func_names(source_names: Iterable[str], stage_names: Sequence[str]) -> dict[str, str]:
    """Each source ``Func`` name that names a stage of ``stage_names``, mapped to that stage's ``Func``.

    A source name matches a stage ``Func`` spelled as a C++ identifier (``a$1`` is ``a_1``); failing
    that, with the ``_N`` that a rebuild in the same process appended removed. Unmatched names are left out.
    (Ambiguous, and resolved by the exact spelling: a pipeline with Funcs ``f`` and ``f_1`` rebuilt in
    one process, whose ``f`` the source then also writes ``f_1``.)

    >>> resolve_func_names(["out_1", "pad_1", "s5_pool_1"], ["out", "pad.update(0)", "pad", "s5_pool$1"])
    {'out_1': 'out', 'pad_1': 'pad', 's5_pool_1': 's5_pool$1'}
    """
    by_identifier = {_NOT_IDENTIFIER.sub("_", _func_of(name)): _func_of(name) for name in stage_names}
    resolved = {}
    for name in source_names:
        match = by_identifier.get(name) or by_identifier.get(_UNIQUIFIER.sub("", name))
        if match is not None:
            resolved[name] = match
    return resolved


def _depth(consumer: FuncSchedule | None, consumer_stage: str, var: str) -> float:
    """Depth of loop ``var`` in the consumer's loop nest: outermost 1/L ... innermost 1 (0: not found)."""
    if consumer is None:
        return 0.0
    nests = [consumer.loops.get(consumer_stage, ()), *consumer.loops.values()]
    for loops in nests:
        if var in loops:
            return (len(loops) - loops.index(var)) / len(loops)
    return 0.0


def _rename_stage(stage: str, names: dict[str, str]) -> str:
    func, _, rest = stage.partition(".update(")
    return names.get(func, func) + (f".update({rest}" if rest else "")


def schedule_edge_features(source: str, stage_names: tuple[str, ...], edges: np.ndarray) -> np.ndarray:
    """``(E, NUM_SCHEDULE_EDGE_FEATURES)`` float32 features of the producer -> consumer ``edges`` (2, E).

    ``stage_names`` names the featurization rows the edge indices point at (``f`` or
    ``f.update(k)``, as :class:`~perfgraph.schedules.stage_graph.StageGraph` names them).
    """
    edges = np.asarray(edges).reshape(2, -1)
    out = np.zeros((edges.shape[1], NUM_SCHEDULE_EDGE_FEATURES), dtype=np.float32)
    if not source or not stage_names:
        return out
    parsed = parse_schedule_source(source)
    names = resolve_func_names(parsed, stage_names)
    if not names:
        return out  # nothing in the source names a stage of this pipeline: unknown, not "all inlined"
    schedules = {names[name]: schedule for name, schedule in parsed.items() if name in names}
    for schedule in schedules.values():  # compute_at / store_at name consumers in the source's spelling
        if schedule.compute_at is not None:
            schedule.compute_at = (names.get(schedule.compute_at[0], schedule.compute_at[0]), schedule.compute_at[1])
        if schedule.store_at is not None:
            schedule.store_at = (names.get(schedule.store_at[0], schedule.store_at[0]), schedule.store_at[1])
        schedule.loops = {_rename_stage(stage, names): loops for stage, loops in schedule.loops.items()}
    for column, (producer_row, consumer_row) in enumerate(edges.T):
        producer, consumer_stage = _func_of(stage_names[producer_row]), stage_names[consumer_row]
        consumer = _func_of(consumer_stage)
        if producer == consumer:
            continue
        schedule = schedules.get(producer, FuncSchedule())
        compute_at = schedule.compute_at
        at_consumer = compute_at is not None and compute_at[0] == consumer
        depth = _depth(schedules.get(consumer), consumer_stage, compute_at[1]) if at_consumer else 0.0
        store_coarser = schedule.store_root and not schedule.compute_root
        store_coarser = store_coarser or (schedule.store_at is not None and schedule.store_at != compute_at)
        out[column] = (
            schedule.inlined,
            schedule.compute_root,
            at_consumer,
            depth,
            compute_at is not None and not at_consumer,
            store_coarser,
            schedule.on_stack,
        )
    return out
