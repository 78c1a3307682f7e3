"""Specification of the seeded random pipelines (``random:SEED`` workloads)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from functools import cache

import halide as hl
import numpy as np
import pytest

from perfgraph.workloads.base import BuiltPipeline, build_pipeline, random_input
from perfgraph.workloads.random_pipeline import build_random_pipeline, describe_random_pipeline
from perfgraph.workloads.random_plan import PipelinePlan
from perfgraph.workloads.random_planner import MAX_ROWS, MIN_ROWS, plan_random_pipeline

SEEDS = range(30)
ALL_OPS = {"input", "stencil", "conv", "pool", "downsample", "upsample", "mix", "unary", "binary", "scan", "cast"}
ALL_DTYPES = {"float32", "float64", "uint8", "uint16", "int16", "int32"}


def _features(plan: PipelinePlan) -> set[tuple[str, ...]]:
    """What a plan exercises: each op with each word of its variant and with its value type."""
    found: set[tuple[str, ...]] = {("boundary", plan.boundary)}
    for stage in plan.stages:
        found.add((stage.op, stage.dtype))
        found.update((stage.op, word) for word in re.findall(r"[a-z]+", stage.variant))
    return found


@cache
def _covering_seeds(candidates: int = 300) -> tuple[int, ...]:
    """A few seeds that together exercise every op variant and type seen in the first seeds."""
    plans = [plan_random_pipeline(seed) for seed in range(candidates)]
    wanted = set().union(*(_features(p) for p in plans))
    chosen: list[int] = []
    covered: set[tuple[str, ...]] = set()
    while covered != wanted:  # greedy set cover, cheapest pipeline first among equals
        best = max(plans, key=lambda p: (len(_features(p) - covered), -p.estimated_ms))
        chosen.append(best.seed)
        covered |= _features(best)
    return tuple(chosen)


def _run(built: BuiltPipeline, data_seed: int = 0) -> np.ndarray:
    """Realize the (single) output over its estimated region on deterministic random inputs."""
    params = list(built.pipeline.infer_arguments())
    inputs = {spec.name: hl.Buffer(random_input(spec, data_seed + i)) for i, spec in enumerate(built.input_buffers)}
    (out_spec,) = built.output_buffers
    out = hl.Buffer(hl.Float(32), list(out_spec.extents))
    built.pipeline.compile_to_callable(params, hl.get_jit_target_from_environment())(
        *[inputs[p.name] for p in params], out
    )
    return np.array(out)


def _base_name(func: hl.Func) -> str:
    """A Func's name without the ``$n`` Halide appends when a process builds the same name again."""
    return func.name().split("$")[0]


def _built_at_root(seed: int) -> BuiltPipeline:
    plan = plan_random_pipeline(seed)
    return build_pipeline(f"random:{seed}", lambda: build_random_pipeline(plan, all_at_root=True))


# -- plans ----------------------------------------------------------------------------------------
def test_the_same_seed_gives_an_equal_plan() -> None:
    for seed in SEEDS:
        assert plan_random_pipeline(seed) == plan_random_pipeline(seed)


def test_different_seeds_give_different_pipelines() -> None:
    descriptions = {tuple(describe_random_pipeline(seed)[1:]) for seed in SEEDS}
    assert len(descriptions) == len(SEEDS)


def test_stage_counts_stay_between_2_and_20_and_spread_over_the_range() -> None:
    rows = [plan_random_pipeline(seed).rows for seed in SEEDS]
    assert all(MIN_ROWS <= r <= MAX_ROWS for r in rows), rows
    assert min(rows) <= 5 and max(rows) >= 15, rows


def test_plans_use_every_op_and_value_type() -> None:
    plans = [plan_random_pipeline(seed) for seed in range(200)]
    assert {stage.op for p in plans for stage in p.stages} == ALL_OPS
    assert {stage.dtype for p in plans for stage in p.stages} == ALL_DTYPES
    assert {p.boundary for p in plans} == {"repeat_edge", "zero"}


def test_every_stage_reaches_the_output() -> None:
    for seed in SEEDS:
        plan = plan_random_pipeline(seed)
        reached, frontier = set(), [plan.output.index]
        while frontier:
            index = frontier.pop()
            reached.add(index)
            frontier.extend(plan.stages[index].inputs)
        assert reached == set(range(len(plan.stages))), seed


def test_stages_are_named_by_index_and_op() -> None:
    plan = plan_random_pipeline(3)
    assert [s.name.split("_")[0] for s in plan.stages] == [f"s{i}" for i in range(len(plan.stages))]
    assert plan.stages[0].name == "s0_input"


def test_the_output_is_float32() -> None:
    assert {plan_random_pipeline(seed).output.dtype for seed in SEEDS} == {"float32"}


def test_input_sizes_keep_the_estimated_run_time_and_footprint_moderate() -> None:
    for seed in SEEDS:
        plan = plan_random_pipeline(seed)
        assert 0.05 <= plan.estimated_ms <= 30, (seed, plan.estimated_ms)
        assert plan.footprint_bytes <= 32 * 2**20, (seed, plan.footprint_bytes)


def test_value_bounds_fit_every_stage_type() -> None:
    """Integers cannot overflow and floats stay far from float32's 3.4e38, whatever the input."""
    int_max = {"uint8": 255, "uint16": 65535, "int16": 32768, "int32": 2**31}
    for seed in range(200):
        for stage in plan_random_pipeline(seed).stages:
            assert stage.bound <= int_max.get(stage.dtype, 1e24), (seed, stage.name, stage.bound)
            assert 0 < stage.rms <= stage.bound, (seed, stage.name)


def test_a_seed_that_is_not_an_int_is_refused_by_name() -> None:
    with pytest.raises(TypeError, match="seed must be an int, got '3'"):
        plan_random_pipeline("3")  # type: ignore[arg-type]


# -- Halide pipelines -----------------------------------------------------------------------------
def test_random_uris_build_with_the_planned_buffers() -> None:
    plan = plan_random_pipeline(5)
    built = build_pipeline("random:5")
    assert [_base_name(f) for f in built.outputs] == [plan.output.name]
    (out,) = built.output_buffers
    assert (out.dtype, out.extents) == ("float32", plan.extent(plan.output))
    (image,) = [b for b in built.input_buffers if b.name == "input"]
    assert image.extents == (plan.width, plan.height, plan.channels)
    weights = {b.name for b in built.input_buffers} - {"input"}
    assert weights == {f"{s.name}_weights" for s in plan.stages if s.op in ("conv", "mix")}


@pytest.mark.slow
@pytest.mark.parametrize("seed", _covering_seeds())
def test_pipelines_compile_and_run_to_finite_outputs(seed: int) -> None:
    plan = plan_random_pipeline(seed)
    values = _run(_built_at_root(seed))
    assert values.shape == tuple(reversed(plan.extent(plan.output)))
    assert np.isfinite(values).all()
    assert values.std() > 0, "a constant output would mean the pipeline ignores its input"


@pytest.mark.slow
def test_the_same_seed_computes_identical_outputs() -> None:
    seed = _covering_seeds()[0]
    np.testing.assert_array_equal(_run(_built_at_root(seed)), _run(_built_at_root(seed)))


# -- the Adams2019 autoscheduler ------------------------------------------------------------------
_AUTOSCHEDULE = """
import hashlib, json, os, sys
import halide as hl
import numpy as np
from perfgraph.workloads.base import build_pipeline
hl.load_plugin(os.path.join(hl.install_dir(), "lib64", "libautoschedule_adams2019.so"))
params = {"parallelism": "1", "beam_size": "1", "random_dropout": "1", "random_dropout_seed": "3",
          "disable_subtiling": "1"}
results = []
for seed in json.loads(sys.argv[1]):
    built = build_pipeline(f"random:{seed}")
    res = built.pipeline.apply_autoscheduler(hl.get_jit_target_from_environment(),
                                             hl.AutoschedulerParams("Adams2019", params))
    rows = np.frombuffer(bytes(res.featurization), np.float32).reshape(-1, 326)
    results.append({"seed": seed, "rows": rows.shape[0],
                    "features": hashlib.sha256(rows.tobytes()).hexdigest(),
                    "schedule": hashlib.sha256(res.schedule_source.encode()).hexdigest()})
print(json.dumps(results))
"""


def _autoschedule(seeds: list[int], hash_seed: str) -> list[dict]:
    """Autoschedule in a fresh process (a bad autoscheduler key would abort the test run)."""
    env = {**os.environ, "PYTHONHASHSEED": hash_seed, "HL_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", _AUTOSCHEDULE, json.dumps(seeds)], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_adams2019_autoschedules_random_pipelines_reproducibly() -> None:
    a, b = _covering_seeds()[:2]
    first = _autoschedule([a, b, a], hash_seed="1")
    again = _autoschedule([a], hash_seed="2")
    assert [r["rows"] for r in first] == [plan_random_pipeline(s).rows for s in (a, b, a)]
    assert first[0] == again[0]  # same seed, fresh process: same featurization and schedule
    assert first[0]["features"] == first[2]["features"]  # rebuilt in-process (Func names then differ)
    assert first[0]["features"] != first[1]["features"]
