"""The stage graph, read from Halide's own view of the pipeline.

With ``HL_DEBUG_AUTOSCHEDULE=2`` the Adams2019 autoscheduler prints its ``FunctionDAG``: one ``Node:``
block per Func (with its ``Stage k:`` blocks) and one ``Edge: producer -> consumer`` block per
dependency, with footprints and load Jacobians. Halide's featurization has one row per stage of every
non-input node, in node order, with a Func's update stages *before* its pure stage. Reading the graph
from the same dump guarantees that graph nodes and featurization rows correspond one to one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from perfgraph.features.layout import NUM_EDGE_FEATURES


class StageGraphError(ValueError):
    """The autoscheduler's DAG dump could not be read (an unexpected Halide version or a truncated log)."""


@dataclass(frozen=True)
class EdgeInfo:
    """One producer -> consumer dependency as Halide describes it."""

    producer: str  # producing Func
    consumer: str  # consuming stage, e.g. "conv" or "conv.update(0)"
    footprint: tuple[str, ...]  # "Min i: expr" / "Max i: expr" lines, as printed
    jacobians: tuple[tuple[tuple[str, ...], ...], ...]  # one matrix per load, entries as printed


@dataclass(frozen=True)
class StageGraph:
    """Stages in featurization order and producer -> consumer edges between them (row indices)."""

    stage_names: tuple[str, ...]
    edges: tuple[tuple[int, int], ...]
    edge_features: tuple[tuple[float, ...], ...]
    edge_info: tuple[EdgeInfo | None, ...]  # None for the edge from one stage of a Func to its next

    @property
    def num_stages(self) -> int:
        return len(self.stage_names)

    def edge_array(self) -> np.ndarray:
        return np.array(self.edges, dtype=np.int64).reshape(-1, 2).T.copy()

    def edge_feature_array(self) -> np.ndarray:
        return np.array(self.edge_features, dtype=np.float32).reshape(-1, NUM_EDGE_FEATURES)

    def to_json(self) -> dict:
        return {
            "stage_names": list(self.stage_names),
            "edges": [list(e) for e in self.edges],
            "edge_features": [list(f) for f in self.edge_features],
            "edge_info": [
                None
                if info is None
                else {
                    "producer": info.producer,
                    "consumer": info.consumer,
                    "footprint": list(info.footprint),
                    "jacobians": [[list(r) for r in m] for m in info.jacobians],
                }
                for info in self.edge_info
            ],
        }

    @classmethod
    def from_json(cls, data: dict) -> StageGraph:
        infos = tuple(
            None
            if i is None
            else EdgeInfo(
                i["producer"],
                i["consumer"],
                tuple(i["footprint"]),
                tuple(tuple(tuple(r) for r in m) for m in i["jacobians"]),
            )
            for i in data["edge_info"]
        )
        return cls(
            tuple(data["stage_names"]),
            tuple(tuple(e) for e in data["edges"]),
            tuple(tuple(f) for f in data["edge_features"]),
            infos,
        )


_NODE = re.compile(r"^Node: (\S+)\s*$")
_STAGE = re.compile(r"^  Stage (\d+):\s*$")
_FLAGS = re.compile(r"^  pointwise: \d+ boundary condition: \d+ wrapper: \d+ input: (\d) output: \d")
_EDGE = re.compile(r"^Edge: (\S+) -> (\S+)\s*$")
_JACOBIAN_ROW = re.compile(r"^\s+\[(.*)\]\s*$")
_COEFFICIENT = re.compile(r"-?[0-9]+(/[0-9]+)?")  # what Halide prints for a known Jacobian entry


def _stage_name(func: str, stage: int) -> str:
    return func if stage == 0 else f"{func}.update({stage - 1})"


def parse_dag_dump(log: str) -> StageGraph:
    """Build the :class:`StageGraph` from an autoscheduler log written at ``HL_DEBUG_AUTOSCHEDULE=2``.

    Only the first DAG dump in the log is read (the autoscheduler prints it once per invocation).
    """
    funcs: list[tuple[str, int, bool]] = []  # (name, number of stages, is_input)
    edges_raw: list[EdgeInfo] = []
    lines = log.splitlines()
    i = 0
    current: list | None = None
    seen_nodes: set[str] = set()
    while i < len(lines):
        line = lines[i]
        node = _NODE.match(line)
        if node:
            if node.group(1) in seen_nodes:  # a second dump: stop at the first one
                break
            seen_nodes.add(node.group(1))
            current = [node.group(1), 0, False]
            funcs.append(current)  # type: ignore[arg-type]
        elif current is not None and _STAGE.match(line):
            index = int(_STAGE.match(line).group(1))  # type: ignore[union-attr]
            if index > current[1]:  # Halide numbers a Func's stages 0, 1, 2 ...
                raise StageGraphError(f"Node {current[0]}: 'Stage {index}:' after {current[1]} stages")
            current[1] = max(current[1], index + 1)
        elif current is not None and _FLAGS.match(line):
            current[2] = _FLAGS.match(line).group(1) == "1"  # type: ignore[union-attr]
        elif _EDGE.match(line):
            producer, consumer = _EDGE.match(line).groups()  # type: ignore[union-attr]
            i, edge = _read_edge(lines, i + 1, producer, consumer)
            edges_raw.append(edge)
            continue
        elif line.startswith(("Pass ", "Best cost", "Schedule features for")) and funcs:
            break
        i += 1
    if not funcs:
        raise StageGraphError("no 'Node:' blocks in the autoscheduler log (was HL_DEBUG_AUTOSCHEDULE=2 set?)")
    return _assemble(funcs, edges_raw)


def _read_edge(lines: list[str], i: int, producer: str, consumer: str) -> tuple[int, EdgeInfo]:
    footprint: list[str] = []
    jacobians: list[tuple[tuple[str, ...], ...]] = []
    matrix: list[tuple[str, ...]] = []
    while i < len(lines) and not lines[i].startswith(("Edge:", "Node:")) and (lines[i].startswith(" ") or not lines[i]):
        text = lines[i]
        row = _JACOBIAN_ROW.match(text)
        if row:
            matrix.append(tuple(row.group(1).split()))
        else:
            if matrix:
                jacobians.append(tuple(matrix))
                matrix = []
            stripped = text.strip()
            if stripped.startswith(("Min ", "Max ")):
                footprint.append(stripped)
        i += 1
    if matrix:
        jacobians.append(tuple(matrix))
    return i, EdgeInfo(producer, consumer, tuple(footprint), tuple(jacobians))


def _assemble(funcs: list, edges_raw: list[EdgeInfo]) -> StageGraph:
    stage_names: list[str] = []
    for name, num_stages, is_input in funcs:
        if not is_input:
            stage_names.extend(_stage_name(name, s) for s in reversed(range(num_stages)))
    row_of = {stage: row for row, stage in enumerate(stage_names)}
    stageless = [name for name, num_stages, is_input in funcs if not is_input and num_stages == 0]
    if stageless:
        raise StageGraphError(f"Node {stageless[0]}: no 'Stage 0:' block (a truncated or edited dump?)")
    final_stage = {name: _stage_name(name, n - 1) for name, n, is_input in funcs if not is_input}
    edges: list[tuple[int, int]] = []
    features: list[tuple[float, ...]] = []
    infos: list[EdgeInfo | None] = []
    for edge in edges_raw:
        if edge.producer not in final_stage:  # loads from pipeline inputs: inputs have no stage
            continue
        if edge.consumer not in row_of:
            raise StageGraphError(f"edge {edge.producer} -> {edge.consumer}: unknown consumer stage")
        edges.append((row_of[final_stage[edge.producer]], row_of[edge.consumer]))
        features.append(edge_features(edge))
        infos.append(edge)
    for name, num_stages, is_input in funcs:  # each update stage reads the stage before it
        if is_input:
            continue
        for s in range(1, num_stages):
            edges.append((row_of[_stage_name(name, s - 1)], row_of[_stage_name(name, s)]))
            features.append(_same_func_features())
            infos.append(None)
    return StageGraph(tuple(stage_names), tuple(edges), tuple(features), tuple(infos))


def _coefficient(entry: str) -> float | None:
    """A Jacobian entry's value; ``None`` for an unknown one (``_``) or anything else Halide would not print."""
    if not _COEFFICIENT.fullmatch(entry):
        return None
    try:
        return float(Fraction(entry))
    except ZeroDivisionError:
        return None
    except (ValueError, OverflowError) as error:  # more digits than a float (or Python's int parser) holds
        raise StageGraphError(f"Jacobian entry {entry[:20]}...: out of range ({error})") from error


def edge_features(edge: EdgeInfo) -> tuple[float, ...]:
    """The numeric edge features named in ``layout.EDGE_FEATURE_NAMES``, from Jacobians and footprint."""
    matrices = edge.jacobians or ((),)
    first = matrices[0]
    rows = len(first)
    cols = len(first[0]) if first else 0
    entries = [e for m in matrices for r in m for e in r]
    coefficients = [_coefficient(e) for e in entries]
    known = [abs(c) for c in coefficients if c is not None]
    n = max(len(entries), 1)
    nonzero = sum(1 for c in coefficients if c not in (None, 0.0)) / n
    unknown = sum(1 for c in coefficients if c is None) / n
    pointwise = float(
        len(edge.jacobians) == 1
        and rows > 0
        and all(
            _coefficient(first[r][c]) == (1.0 if r == c else 0.0) for r in range(rows) for c in range(min(cols, rows))
        )
        and all(_coefficient(first[r][c]) == 0.0 for r in range(rows) for c in range(rows, cols))
    )
    stencil = float(any("$" in term for term in edge.footprint) or len(edge.jacobians) > 1)
    return (
        float(rows),
        float(cols),
        nonzero,
        unknown,
        max(known, default=0.0),
        pointwise,
        stencil,
        float(len(edge.jacobians)),
        0.0,
    )


def _same_func_features() -> tuple[float, ...]:
    return (0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0)


def dag_dump_text(log: str) -> str:
    """The ``Node:`` / ``Edge:`` part of an autoscheduler log: Halide's full description of the algorithm."""
    lines = log.splitlines()
    start = next((i for i, line in enumerate(lines) if _NODE.match(line)), None)
    if start is None:
        raise StageGraphError("no 'Node:' blocks in the autoscheduler log (was HL_DEBUG_AUTOSCHEDULE=2 set?)")
    end = next(
        (i for i in range(start, len(lines)) if lines[i].startswith(("Loading weights", "Pass ", "Best cost"))),
        len(lines),
    )
    return "\n".join(lines[start:end])
