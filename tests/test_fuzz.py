"""Every parser and loader, fuzzed: any input gives a result or the loader's own named error, never a traceback.

Targets: featurization bytes and the Sample record, the stage-graph dump (arbitrary text and mutations
of a real one), shard lines (arbitrary and mutated lines under a valid content hash), ``.sample`` files,
pipeline URIs and ``FILE.py:FUNCTION`` specs, checkpoints (random bytes, mutated files, odd headers).

The examples here are few, to keep the suite fast; ``benchmarks/fuzz.py`` runs the same properties
with many more (``TARGETS`` below) and counts inputs tried and crashes found.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import json
import os
import tempfile
import zlib
from pathlib import Path

import numpy as np
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from perfgraph.data.export import SampleFileError, parse_sample_bytes, sample_bytes
from perfgraph.data.records import Sample
from perfgraph.data.shards import ShardError, export_new_shard, rebuild_store
from perfgraph.data.store import FeaturizationError, MeasurementRecord, Store, decode_featurization
from perfgraph.features.layout import FEATURES_PER_STAGE, NUM_EDGE_FEATURES
from perfgraph.measure.host import MachineInfo
from perfgraph.models.base import SchemaMismatchError
from perfgraph.models.checkpoint import CheckpointError, load_checkpoint, read_checkpoint_header, save_checkpoint
from perfgraph.schedules.stage_graph import StageGraph, StageGraphError, parse_dag_dump
from perfgraph.workloads.base import WorkloadError, family_of, parse_uri, resolve_builder
from perfgraph.workloads.user import split_user_target, user_uri

DATA = Path(__file__).parent / "data"
REAL_DUMP = (DATA / "conv_relu.dag.txt").read_text()  # Halide's FunctionDAG dump of user_pipelines.conv_relu

#: Inputs per property: few in the suite; ``benchmarks/fuzz.py`` sets PERFGRAPH_FUZZ_EXAMPLES before importing.
EXAMPLES = int(os.environ.get("PERFGRAPH_FUZZ_EXAMPLES", "40"))
FAST = settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
#: Properties that build a SQLite store per input (about 0.2 s each) get half as many.
SLOWER = settings(FAST, max_examples=max(EXAMPLES // 2, 1))


# -- mutations -------------------------------------------------------------------------------------------------------


@st.composite
def mutated_bytes(draw: st.DrawFn, original: bytes) -> bytes:
    """``original`` with a few bytes flipped, a range deleted or repeated, random bytes inserted, or cut short."""
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        operation = draw(st.sampled_from(["flip", "delete", "repeat", "insert", "cut"]))
        if operation == "flip":
            data[at] ^= draw(st.integers(1, 255))
        elif operation == "delete":
            del data[at : at + draw(st.integers(1, 64))]
        elif operation == "repeat":
            data[at:at] = data[at : at + draw(st.integers(1, 64))]
        elif operation == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        else:
            del data[at:]
    return bytes(data)


@st.composite
def mutated_lines(draw: st.DrawFn, lines: list[str]) -> list[str]:
    """``lines`` with some removed, repeated, swapped or rewritten (a character changed, text spliced in)."""
    lines = list(lines)
    for _ in range(draw(st.integers(1, 5))):
        if not lines:
            break
        at = draw(st.integers(0, len(lines) - 1))
        operation = draw(st.sampled_from(["remove", "repeat", "swap", "edit", "splice"]))
        if operation == "remove":
            del lines[at]
        elif operation == "repeat":
            lines.insert(at, lines[at])
        elif operation == "swap":
            other = draw(st.integers(0, len(lines) - 1))
            lines[at], lines[other] = lines[other], lines[at]
        elif operation == "edit" and lines[at]:
            column = draw(st.integers(0, len(lines[at]) - 1))
            lines[at] = lines[at][:column] + draw(st.characters()) + lines[at][column + 1 :]
        else:
            column = draw(st.integers(0, len(lines[at])))
            lines[at] = lines[at][:column] + draw(st.text(max_size=12)) + lines[at][column:]
    return lines


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)


# -- featurization bytes and the Sample record -------------------------------------------------------------------------


@FAST
@given(st.binary(max_size=4096) | st.binary(max_size=4096).map(zlib.compress))
@example(b"")
@example(zlib.compress(b"\x00" * 7))
def test_featurization_bytes_decode_to_stage_rows_or_a_featurization_error(blob):
    try:
        rows = decode_featurization(blob)
    except FeaturizationError:
        return
    assert rows.dtype == np.float32 and rows.ndim == 2 and rows.shape[1] == FEATURES_PER_STAGE


ARRAYS = st.builds(
    lambda shape, fill, dtype: np.full(shape, fill, dtype=dtype),
    st.lists(st.integers(0, 4), max_size=3).map(tuple),
    st.integers(-3, 8),
    st.sampled_from([np.float32, np.int64, np.float64]),
)


@FAST
@given(
    features=ARRAYS | st.integers(1, 3).map(lambda n: np.zeros((n, FEATURES_PER_STAGE), np.float32)),
    edges=ARRAYS,
    edge_features=ARRAYS | st.integers(0, 2).map(lambda n: np.zeros((n, NUM_EDGE_FEATURES), np.float32)),
)
@example(  # float edges, NaN included, once passed the range check
    features=np.zeros((2, FEATURES_PER_STAGE), np.float32),
    edges=np.full((2, 1), np.nan),
    edge_features=np.zeros((1, NUM_EDGE_FEATURES), np.float32),
)
def test_a_sample_holds_well_formed_arrays_or_says_which_is_not(features, edges, edge_features):
    try:
        sample = Sample(1, 2, "p", "random", features, edges, edge_features)
    except ValueError as error:
        assert "Sample 1/2" in str(error)
        return
    assert sample.features.shape[1] == FEATURES_PER_STAGE and sample.edges.shape[0] == 2
    assert np.issubdtype(sample.edges.dtype, np.integer)
    assert sample.edges.size == 0 or 0 <= sample.edges.min() <= sample.edges.max() < sample.num_stages


# -- the stage-graph dump ---------------------------------------------------------------------------------------------


def check_stage_graph(text: str) -> None:
    try:
        graph = parse_dag_dump(text)
    except StageGraphError:
        return
    assert isinstance(graph, StageGraph)
    assert len(graph.edges) == len(graph.edge_features) == len(graph.edge_info)
    assert all(0 <= a < graph.num_stages and 0 <= b < graph.num_stages for a, b in graph.edges)
    assert graph.edge_feature_array().shape == (len(graph.edges), NUM_EDGE_FEATURES)
    assert np.isfinite(graph.edge_feature_array()).all()


@FAST
@given(st.text())
@example("Node: f\nEdge: f -> g\n")
@example("Node: f\n  Stage 0:\n  Stage 99999999999:\n")
@example("Node: f\nNode: g\n  Stage 0:\nEdge: f -> g\n")
@example("Node: g\n  Stage 0:\nNode: f\n  Stage 0:\nEdge: f -> g\n  [" + "9" * 400 + "]\n")
def test_any_text_is_a_stage_graph_or_a_stage_graph_error(text):
    check_stage_graph(text)


@FAST
@given(mutated_lines(REAL_DUMP.splitlines()))
def test_a_mutated_real_dump_is_a_stage_graph_or_a_stage_graph_error(lines):
    check_stage_graph("\n".join(lines))


def test_the_real_dump_reads_as_its_pipeline():
    graph = parse_dag_dump(REAL_DUMP)
    assert graph.stage_names == ("relu", "conv.update(0)", "conv", "repeat_edge", "lambda_0")


# -- shard lines ------------------------------------------------------------------------------------------------------

TEST_MACHINE = MachineInfo(
    cpu_model="test cpu", logical_cores=2, target="x86-64-linux", halide_version="21.0.0", hostname="h", os="linux"
)


@functools.cache
def real_shard_lines() -> tuple[str, ...]:
    """The lines of a shard exported from a small store: a machine, pipelines, schedules, measurements, a failure."""
    with tempfile.TemporaryDirectory() as folder, Store(Path(folder) / "s.db") as store:
        machine = store.machine_id(TEST_MACHINE)
        for seed in range(2):
            graph = StageGraph(("f",), (), (), ())
            pipeline = store.add_pipeline(f"random:{seed}", f"{seed:064d}", "random", graph, {}, "h")
            for index in range(2):
                features = np.full(FEATURES_PER_STAGE, seed * 100 + index, np.float32).tobytes()
                record = MeasurementRecord(1.0 + index, 1.0, 0.01, (1.0,), 1, 0.5)
                store.add_schedule(pipeline, index, {"seed": index}, features, "// s", 0.1, machine, record)
        store.add_failure("random:9", -1, None, "workload_error", "build", "boom", None)
        shard = export_new_shard(store, Path(folder) / "shards")
        return tuple(gzip.decompress(shard.read_bytes()).decode().splitlines())


def check_shard(lines: list[str]) -> None:
    """A shard of ``lines`` under its right content hash rebuilds into a usable store, or is a ShardError."""
    payload = ("\n".join(lines) + "\n").encode()
    with tempfile.TemporaryDirectory() as folder:
        shards = Path(folder) / "shards"
        shards.mkdir()
        name = f"shard-0001-{hashlib.sha256(payload).hexdigest()[:10]}.jsonl.gz"
        (shards / name).write_bytes(gzip.compress(payload, mtime=0))
        try:
            store = rebuild_store(shards, Path(folder) / "rebuilt.db")
        except ShardError:
            assert not (Path(folder) / "rebuilt.db").exists()
            return
        with store:
            store.counts()
            store.samples(measured_only=False)


def edited_record(line: str, key: str, value: object, drop: bool) -> str:
    record = json.loads(line)
    if drop:
        record.pop(key, None)
    else:
        record[key] = value
    return json.dumps(record)


@st.composite
def shards_with_edited_fields(draw: st.DrawFn) -> list[str]:
    """The real shard with fields of some records given other JSON values, or removed."""
    lines = list(real_shard_lines())
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(lines) - 1))
        key = draw(st.sampled_from(sorted(json.loads(lines[at]))))
        lines[at] = edited_record(lines[at], key, draw(JSON_VALUES), draw(st.booleans()))
    return lines


@SLOWER
@given(st.lists(st.text(max_size=60) | JSON_VALUES.map(json.dumps), max_size=4))
@example(['{"type": "schedule", "uri": "random:1"}'])
@example(["[" * 100_000])
def test_a_shard_of_arbitrary_lines_rebuilds_or_is_a_shard_error(lines):
    check_shard(lines)


@SLOWER
@given(mutated_lines(list(real_shard_lines())) | shards_with_edited_fields())
def test_a_shard_of_mutated_real_lines_rebuilds_or_is_a_shard_error(lines):
    check_shard(lines)


def test_the_real_shard_rebuilds():
    check_shard(list(real_shard_lines()))


# -- .sample files ----------------------------------------------------------------------------------------------------


@FAST
@given(st.binary(max_size=3 * 4 * FEATURES_PER_STAGE + 32))
@example(b"\x00" * (4 * FEATURES_PER_STAGE + 12))
def test_any_bytes_are_a_sample_file_or_a_sample_file_error(data):
    try:
        sample = parse_sample_bytes(data)
    except SampleFileError:
        return
    assert sample.features.shape[1] == FEATURES_PER_STAGE and sample.features.shape[0] >= 1


@FAST
@given(
    stages=st.integers(1, 3),
    runtime_ms=st.floats(0, 1e6, width=32),
    pipeline_id=st.integers(0, 2**31 - 1),
    schedule_id=st.integers(0, 2**31 - 1),
)
def test_a_sample_file_reads_back_what_was_written(stages, runtime_ms, pipeline_id, schedule_id):
    features = np.arange(stages * FEATURES_PER_STAGE, dtype=np.float32).reshape(stages, FEATURES_PER_STAGE)
    sample = parse_sample_bytes(sample_bytes(features.tobytes(), runtime_ms, pipeline_id, schedule_id))
    np.testing.assert_array_equal(sample.features, features)
    assert (sample.runtime_ms, sample.pipeline_id, sample.schedule_id) == (runtime_ms, pipeline_id, schedule_id)


# -- pipeline URIs and specs ------------------------------------------------------------------------------------------

URI_LIKE = st.text() | st.builds(
    "{}:{}{}".format, st.sampled_from(["zoo", "random", "dlrandom", "file", "Zoo", ""]), st.text(), st.text()
)


@FAST
@given(URI_LIKE)
@example("zoo:relu?c=")
@example("random:" + "9" * 5000)
def test_any_uri_parses_or_is_a_workload_error(uri):
    try:
        kind, _, params = parse_uri(uri)
        family_of(uri)
        if kind != "file":  # resolving a file: URI imports the file; specs are fuzzed below
            resolve_builder(uri)
    except WorkloadError:
        return
    assert kind in ("zoo", "random", "dlrandom", "file") and isinstance(params, dict)


@FAST
@given(st.text() | st.builds("{}:{}".format, st.text(), st.text()))
@example("a\x00.py:f")
def test_any_pipeline_spec_splits_or_is_a_workload_error(spec):
    try:
        path, function = split_user_target(spec)
        uri = user_uri(spec)
    except WorkloadError:
        return
    assert function and uri.startswith("file:") and uri.endswith(f":{function}") and str(path)


# -- checkpoints ------------------------------------------------------------------------------------------------------


@functools.cache
def real_checkpoint() -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.pt"
        save_checkpoint(path, "xgboost", {"weights": torch.arange(8.0), "names": ["a", "b"], "depth": 3})
        return path.read_bytes()


def check_checkpoint(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.pt"
        path.write_bytes(data)
        try:
            record = read_checkpoint_header(path)
            load_checkpoint(path, "xgboost")
        except (CheckpointError, SchemaMismatchError):
            return
        assert isinstance(record["payload"], dict)


def torch_file(record: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(record, buffer)
    return buffer.getvalue()


@FAST
@given(st.binary(max_size=2048))
def test_random_bytes_are_no_checkpoint(data):
    check_checkpoint(data)


@FAST
@given(st.builds(lambda: real_checkpoint()).flatmap(mutated_bytes))
def test_a_mutated_checkpoint_is_refused_by_name(data):
    check_checkpoint(data)


@FAST
@given(
    st.fixed_dictionaries(
        {"format": st.sampled_from(["perfgraph-checkpoint", "other"])},
        optional={
            "model_kind": JSON_VALUES,
            "feature_schema_version": JSON_VALUES,
            "payload": JSON_VALUES,
            "payload_sha256": JSON_VALUES,
            "machine_kinds": JSON_VALUES,
        },
    )
    | JSON_VALUES
)
@example({"format": "perfgraph-checkpoint", "feature_schema_version": "x"})
@example({"format": "perfgraph-checkpoint", "feature_schema_version": 1.0e300 * 1e300})
def test_a_checkpoint_with_odd_header_values_is_refused_by_name(record):
    check_checkpoint(torch_file(record))


def test_the_real_checkpoint_loads():
    check_checkpoint(real_checkpoint())


#: What ``benchmarks/fuzz.py`` runs: target name -> property.
TARGETS = {
    "featurization bytes": test_featurization_bytes_decode_to_stage_rows_or_a_featurization_error,
    "Sample record": test_a_sample_holds_well_formed_arrays_or_says_which_is_not,
    "stage-graph dump (text)": test_any_text_is_a_stage_graph_or_a_stage_graph_error,
    "stage-graph dump (mutated)": test_a_mutated_real_dump_is_a_stage_graph_or_a_stage_graph_error,
    "shard lines (arbitrary)": test_a_shard_of_arbitrary_lines_rebuilds_or_is_a_shard_error,
    "shard lines (mutated)": test_a_shard_of_mutated_real_lines_rebuilds_or_is_a_shard_error,
    ".sample bytes": test_any_bytes_are_a_sample_file_or_a_sample_file_error,
    ".sample round trip": test_a_sample_file_reads_back_what_was_written,
    "pipeline URIs": test_any_uri_parses_or_is_a_workload_error,
    "pipeline specs": test_any_pipeline_spec_splits_or_is_a_workload_error,
    "checkpoint (random bytes)": test_random_bytes_are_no_checkpoint,
    "checkpoint (mutated)": test_a_mutated_checkpoint_is_refused_by_name,
    "checkpoint (odd headers)": test_a_checkpoint_with_odd_header_values_is_refused_by_name,
}
