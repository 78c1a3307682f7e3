"""Specification of the seeded random DL pipelines (``dlrandom:SEED`` workloads)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from functools import cache

import halide as hl
import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from perfgraph.workloads.base import WorkloadError, build_pipeline, family_of, random_input
from perfgraph.workloads.dl_layers import LAYER_NORM_EPS
from perfgraph.workloads.dl_random import build_dl_random_pipeline, describe_dl_random_pipeline
from perfgraph.workloads.dl_random_plan import DLOp, DLPlan
from perfgraph.workloads.dl_random_planner import (
    MAX_ROWS,
    MAX_STAGES,
    MIN_STAGES,
    REALISTIC,
    TINY,
    estimated_ms,
    plan_dl_random_pipeline,
)
from perfgraph.workloads.zoo.work import estimating_work

SEEDS = range(40)
ALL_KINDS = {
    "conv",
    "depthwise",
    "pointwise",
    "batch_norm",
    "layer_norm",
    "relu",
    "relu6",
    "gelu",
    "sigmoid",
    "silu",
    "add",
    "max_pool",
    "avg_pool",
    "global_avg_pool",
    "vector_dense",
    "scale_channels",
    "flatten",
    "dense",
    "matmul",
    "attention_scores",
    "softmax",
    "attention_context",
}


# -- plans ----------------------------------------------------------------------------------------
def test_the_same_seed_gives_an_equal_plan() -> None:
    for seed in SEEDS:
        assert plan_dl_random_pipeline(seed) == plan_dl_random_pipeline(seed)
        assert plan_dl_random_pipeline(seed, TINY) == plan_dl_random_pipeline(seed, TINY)


def test_different_seeds_give_different_pipelines() -> None:
    descriptions = {tuple(describe_dl_random_pipeline(seed)) for seed in SEEDS}
    assert len(descriptions) == len(SEEDS)


def test_pipelines_have_3_to_20_funcs_and_spread_over_the_range() -> None:
    plans = [plan_dl_random_pipeline(seed) for seed in range(100)]
    stages = [plan.stages for plan in plans]
    assert all(MIN_STAGES <= s <= MAX_STAGES for s in stages), stages
    assert all(plan.rows <= MAX_ROWS for plan in plans)
    assert min(stages) <= 4 and max(stages) >= 18, stages


def test_seeds_cover_every_layer_kind_and_family() -> None:
    plans = [plan_dl_random_pipeline(seed) for seed in range(100)]
    assert {kind for plan in plans for kind in plan.kinds} == ALL_KINDS
    assert {plan.family for plan in plans} == {"cnn", "transformer", "vit"}
    assert sum("attention_scores" in plan.kinds for plan in plans) >= 10


def test_estimated_run_times_lie_in_the_measurement_band() -> None:
    low, high = REALISTIC.target_ms  # type: ignore[misc]
    estimates = [estimated_ms(plan_dl_random_pipeline(seed)) for seed in range(100)]
    assert all(low <= ms <= high for ms in estimates), estimates
    assert min(estimates) < 2 * low and max(estimates) > high / 2  # the band is used, not one corner


def test_shapes_are_those_of_real_networks() -> None:
    for seed in range(100):
        plan = plan_dl_random_pipeline(seed)
        first = plan.ops[0].shape
        if plan.family == "cnn":
            assert first[0] in REALISTIC.image_sides and first[2] in REALISTIC.channels
        elif plan.family == "transformer":
            assert first[1] in REALISTIC.tokens and 64 <= first[0] <= 512
        else:
            assert first[2] == 3 and plan.ops[1].name == "patch_embed" and plan.ops[2].kind == "flatten"


def test_every_op_reaches_the_output_and_names_are_unique() -> None:
    for seed in SEEDS:
        plan = plan_dl_random_pipeline(seed)
        reached, frontier = set(), [plan.output.index]
        while frontier:
            index = frontier.pop()
            reached.add(index)
            frontier.extend(plan.ops[index].inputs)
        assert reached == set(range(len(plan.ops))), seed
        assert len({op.name for op in plan.ops}) == len(plan.ops), seed


def test_the_planned_work_is_what_the_zoo_layers_count() -> None:
    """The estimate the plans are sized by is the zoo's: the planner's arithmetic matches the layers."""
    for seed in range(12):
        plan = plan_dl_random_pipeline(seed)
        with estimating_work() as work:
            build_dl_random_pipeline(plan)
        assert (work.macs, work.elements) == (plan.work.macs, plan.work.elements), seed


def test_a_seed_that_is_not_an_int_is_refused() -> None:
    with pytest.raises(TypeError, match="seed must be an int, got '3'"):
        plan_dl_random_pipeline("3")  # type: ignore[arg-type]
    with pytest.raises(WorkloadError, match="seed must be an integer"):
        build_pipeline("dlrandom:three")


# -- URIs -----------------------------------------------------------------------------------------
def test_dlrandom_uris_build_with_the_planned_buffers_and_family() -> None:
    plan = plan_dl_random_pipeline(5)
    built = build_pipeline("dlrandom:5")
    assert [f.name().split("$")[0] for f in built.outputs] == [plan.output.name]
    (out,) = built.output_buffers
    assert (out.dtype, out.extents) == ("float32", plan.output.shape)
    (image,) = [b for b in built.input_buffers if b.name == "input"]
    assert image.extents == plan.ops[0].shape
    assert all(b.dtype == "float32" and all(e > 0 for e in b.extents) for b in built.input_buffers)
    assert family_of("dlrandom:5") == "dlrandom"
    assert family_of("random:5") == "random"


# -- Halide against NumPy, on tiny shapes ---------------------------------------------------------
def _features(plan: DLPlan) -> set[tuple[str, ...]]:
    """What a tiny plan exercises: its kinds, strided windows, fused QKV and projection shortcuts."""
    found = {(op.kind,) for op in plan.ops[1:]}
    found |= {(op.kind, "stride2") for op in plan.ops if op.params.get("stride") == 2}
    found |= {("qkv", str(op.params["k_offset"] > 0)) for op in plan.ops if op.kind == "attention_scores"}
    found |= {("shortcut",) for op in plan.ops if op.name.endswith("down_conv")}
    return found


@cache
def _covering_tiny_seeds(candidates: int = 150) -> tuple[int, ...]:
    """A few tiny plans that together exercise every kind and variant seen in the first seeds."""
    plans = [plan_dl_random_pipeline(seed, TINY) for seed in range(candidates)]
    wanted = set().union(*(_features(p) for p in plans))
    chosen: list[int] = []
    covered: set[tuple[str, ...]] = set()
    while covered != wanted:  # greedy set cover, fewest Funcs first among equals (quicker compiles)
        best = max(plans, key=lambda p: (len(_features(p) - covered), -p.stages))
        chosen.append(best.seed)
        covered |= _features(best)
    return tuple(chosen)


def _realize(plan: DLPlan) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The output, every layer computed at root (JIT), and the random inputs it read, by name."""
    built = build_pipeline(f"dlrandom:{plan.seed}?tiny", lambda: build_dl_random_pipeline(plan, layers_at_root=True))
    arrays = {spec.name: random_input(spec, i) for i, spec in enumerate(built.input_buffers)}
    (out_spec,) = built.output_buffers
    out = hl.Buffer(hl.Float(32), list(out_spec.extents))
    params = list(built.pipeline.infer_arguments())
    compiled = built.pipeline.compile_to_callable(params, hl.get_jit_target_from_environment())
    compiled(*[hl.Buffer(arrays[p.name]) for p in params], out)
    return np.array(out), arrays


def _windows(image: np.ndarray, kernel: int, stride: int, padding: int) -> np.ndarray:
    """``(C, out_h, out_w, kernel, kernel)`` sliding windows of a zero-padded ``(C, H, W)`` image."""
    padded = np.pad(image, ((0, 0), (padding, padding), (padding, padding)))
    return sliding_window_view(padded, (kernel, kernel), axis=(1, 2))[:, ::stride, ::stride]


def _heads(matrix: np.ndarray, offset: int, heads: int, head_dim: int) -> np.ndarray:
    """``(heads, tokens, head_dim)`` slices of a ``(tokens, features)`` matrix."""
    return np.stack([matrix[:, offset + h * head_dim : offset + (h + 1) * head_dim] for h in range(heads)])


def _reference_op(op: DLOp, src: list[np.ndarray], w: dict[str, np.ndarray]) -> np.ndarray:
    """NumPy (float64, numpy axis order) for one layer; weights by their Halide names."""
    p, x = op.params, src[0] if src else None

    def weight(suffix: str) -> np.ndarray:
        return w[f"{op.name}_{suffix}"].astype(np.float64)

    if op.kind == "input":
        return w["input"].astype(np.float64)
    if op.kind == "conv":
        out = np.einsum("chwyx,ocyx->ohw", _windows(x, p["kernel"], p["stride"], p["padding"]), weight("w"))
        return out + weight("b")[:, None, None] if p["bias"] else out
    if op.kind == "depthwise":
        return np.einsum("chwyx,cyx->chw", _windows(x, p["kernel"], p["stride"], p["padding"]), weight("w"))
    if op.kind == "pointwise":
        return np.einsum("chw,oc->ohw", x, weight("w"))
    if op.kind == "batch_norm":
        return x * weight("scale")[:, None, None] + weight("shift")[:, None, None]
    if op.kind in ("max_pool", "avg_pool"):
        windows = _windows(x, 2, 2, 0)
        return windows.max(axis=(3, 4)) if op.kind == "max_pool" else windows.mean(axis=(3, 4))
    if op.kind == "global_avg_pool":
        return x.mean(axis=(1, 2))
    if op.kind in ("vector_dense", "dense"):
        return x @ weight("w") + weight("b")
    if op.kind == "matmul":
        return x @ weight("w")
    if op.kind == "scale_channels":
        return x * src[1][:, None, None]
    if op.kind == "flatten":
        return x.reshape(x.shape[0], -1).T
    if op.kind == "add":
        return x + src[1]
    if op.kind == "layer_norm":
        mean, var = x.mean(axis=-1, keepdims=True), x.var(axis=-1, keepdims=True)
        return (x - mean) / np.sqrt(var + LAYER_NORM_EPS) * weight("gamma") + weight("beta")
    if op.kind == "attention_scores":
        q = _heads(x, p["q_offset"], p["heads"], p["head_dim"])
        k = _heads(src[1], p["k_offset"], p["heads"], p["head_dim"])
        return q @ k.transpose(0, 2, 1) / math.sqrt(p["head_dim"])  # (head, query, key)
    if op.kind == "softmax":
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)
    if op.kind == "attention_context":
        heads = x.shape[0]
        v = _heads(src[1], p["v_offset"], heads, p["head_dim"])
        return np.concatenate(list(x @ v), axis=1)  # heads side by side: (tokens, heads * head_dim)
    activations = {
        "relu": lambda v: np.maximum(v, 0),
        "relu6": lambda v: np.clip(v, 0, 6),
        "gelu": lambda v: 0.5 * v * (1 + np.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v**3))),
        "sigmoid": lambda v: 1 / (1 + np.exp(-v)),
        "silu": lambda v: v / (1 + np.exp(-v)),
    }
    return activations[op.kind](x)


def _reference(plan: DLPlan, arrays: dict[str, np.ndarray]) -> np.ndarray:
    values: list[np.ndarray] = []
    for op in plan.ops:
        value = _reference_op(op, [values[i] for i in op.inputs], arrays)
        assert value.shape == tuple(reversed(op.shape)), (op.name, value.shape, op.shape)
        values.append(value)
    return values[-1]


def test_tiny_plans_cover_every_layer_kind() -> None:
    covered = set().union(*(_features(plan_dl_random_pipeline(s, TINY)) for s in _covering_tiny_seeds()))
    assert {kind for (kind, *_) in covered} >= ALL_KINDS
    assert {("qkv", "True"), ("qkv", "False"), ("shortcut",), ("conv", "stride2")} <= covered


@pytest.mark.slow
@pytest.mark.parametrize("seed", _covering_tiny_seeds())
def test_every_layer_kind_computes_what_numpy_computes(seed: int) -> None:
    plan = plan_dl_random_pipeline(seed, TINY)
    values, arrays = _realize(plan)
    expected = _reference(plan, arrays)
    assert np.isfinite(values).all()
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(values, expected, rtol=1e-4, atol=1e-4 * scale, err_msg=f"dlrandom tiny {seed}")


# -- fresh processes: stable names and featurization; random: URIs unchanged -----------------------
_FEATURIZE = """
import hashlib, json, os, sys
import halide as hl
import numpy as np
from perfgraph.data.store import algorithm_hash
from perfgraph.workloads.base import build_pipeline
hl.load_plugin(os.path.join(hl.install_dir(), "lib64", "libautoschedule_adams2019.so"))
params = {"parallelism": "1", "beam_size": "1", "random_dropout": "1", "random_dropout_seed": "3",
          "disable_subtiling": "1"}
results = []
for uri in json.loads(sys.argv[1]):
    built = build_pipeline(uri)
    res = built.pipeline.apply_autoscheduler(hl.get_jit_target_from_environment(),
                                             hl.AutoschedulerParams("Adams2019", params))
    rows = np.frombuffer(bytes(res.featurization), np.float32).reshape(-1, 326)
    results.append({"uri": uri, "rows": rows.shape[0], "identity": algorithm_hash(bytes(res.featurization)),
                    "features": hashlib.sha256(rows.tobytes()).hexdigest(),
                    "output": built.outputs[0].name(),
                    "inputs": sorted(b.name for b in built.input_buffers)})
print(json.dumps(results))
"""


def _weight_names(op: DLOp) -> list[str]:
    """The weight inputs a layer reads, by the zoo's naming convention."""
    suffixes = {
        "conv": ["w", "b"] if op.params.get("bias") else ["w"],
        "depthwise": ["w"],
        "pointwise": ["w"],
        "matmul": ["w"],
        "dense": ["w", "b"],
        "vector_dense": ["w", "b"],
        "batch_norm": ["scale", "shift"],
        "layer_norm": ["gamma", "beta"],
    }.get(op.kind, [])
    return [f"{op.name}_{suffix}" for suffix in suffixes]


def _featurize(uris: list[str], hash_seed: str) -> list[dict]:
    """Adams2019 (greedy, seeded) in a fresh process, where Funcs get their names without ``$N``."""
    env = {**os.environ, "PYTHONHASHSEED": hash_seed, "HL_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", _FEATURIZE, json.dumps(uris)], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


#: ``perfgraph.data.store.algorithm_hash`` of ``random:0`` .. ``random:5`` (schedule-independent pipeline
#: features), computed before the ``dlrandom:`` family was added: the shipped dataset identifies its
#: random pipelines by them, so they must never change.
RANDOM_IDENTITIES = {
    0: "d7b3956d6248879ebfde7ef56a6af0487b528c6f6f6dcb4cbb7d57d72e31d7c1",
    1: "c09831594289f264d4b3b1749e8b2c294374354a01080b826b0fbe0331c1ff12",
    2: "3a1dd32e7317461d3d1262df4f73a2041c2eb4da6fa7c4f6cc37c58e43ccabef",
    3: "e692899a8856cd868761c8da0990f8a16bf34f44a2852778726fdad56fab9ca5",
    4: "92b07c1b022c720f4c3244fa84362ab60083448fcf62537e2481685020c7e165",
    5: "9a2a35c573ad544c782670e38ca69af786b913bbc05e4565f303556cd084ac20",
}


@pytest.mark.slow
def test_random_uris_still_build_the_shipped_pipelines() -> None:
    results = _featurize([f"random:{seed}" for seed in RANDOM_IDENTITIES], hash_seed="0")
    assert {r["uri"]: r["identity"] for r in results} == {f"random:{s}": h for s, h in RANDOM_IDENTITIES.items()}


@pytest.mark.slow
def test_a_seed_builds_the_same_pipeline_in_every_process() -> None:
    uris = ["dlrandom:1", "dlrandom:2"]
    first, again = _featurize(uris, hash_seed="1"), _featurize(uris[:1], hash_seed="2")
    plan = plan_dl_random_pipeline(1)
    assert first[0] == again[0]  # same Func names, inputs and featurization
    assert (first[0]["output"], first[0]["rows"]) == (plan.output.name, plan.rows)
    assert first[0]["inputs"] == sorted({"input"} | {name for op in plan.ops for name in _weight_names(op)})
    assert first[0]["identity"] != first[1]["identity"]
