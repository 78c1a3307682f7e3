"""Specification of the DL zoo: every entry computes what its layer or block means, checked against NumPy."""

from __future__ import annotations

import math
from collections.abc import Callable

import halide as hl
import numpy as np
import pytest

from perfgraph.workloads.base import (
    BuiltPipeline,
    WorkloadError,
    build_pipeline,
    family_of,
    parse_uri,
    random_input,
    resolve_builder,
    zoo_uri,
)
from perfgraph.workloads.zoo import VARIANT_MS, ZOO, all_zoo_variants, zoo_variants

Arrays = dict[str, np.ndarray]


def realize(built: BuiltPipeline, inputs: Arrays) -> list[np.ndarray]:
    """Run a built pipeline under Halide's default schedule; inputs and outputs in numpy order."""
    arguments = built.pipeline.infer_arguments()
    run = built.pipeline.compile_to_callable(arguments, hl.get_jit_target_from_environment())
    outputs = [hl.Buffer(hl.Float(32), list(spec.extents)) for spec in built.output_buffers]
    run(*[hl.Buffer(inputs[argument.name]) for argument in arguments], *outputs)
    return [np.asarray(output).copy() for output in outputs]


# --- NumPy references, float64, numpy layouts: images (C, H, W), conv weights (C_out, C_in, KY, KX) ---


def _windows(image: np.ndarray, kernel: int, stride: int, padding: int = 0):
    """Yield ``(ky, kx, patch)``: the input pixels under kernel tap (ky, kx) for every output pixel."""
    padded = np.pad(image, ((0, 0), (padding, padding), (padding, padding)))
    out_h = (padded.shape[1] - kernel) // stride + 1
    out_w = (padded.shape[2] - kernel) // stride + 1
    for ky in range(kernel):
        for kx in range(kernel):
            rows = slice(ky, ky + stride * (out_h - 1) + 1, stride)
            columns = slice(kx, kx + stride * (out_w - 1) + 1, stride)
            yield ky, kx, padded[:, rows, columns]


def np_conv2d(image: np.ndarray, weights: np.ndarray, stride: int = 1, padding: int = 0) -> np.ndarray:
    kernel = weights.shape[-1]
    taps = _windows(image, kernel, stride, padding)
    return sum(np.einsum("oi,iyx->oyx", weights[:, :, ky, kx], patch) for ky, kx, patch in taps)


def np_depthwise(image: np.ndarray, weights: np.ndarray, stride: int = 1, padding: int = 0) -> np.ndarray:
    kernel = weights.shape[-1]
    taps = _windows(image, kernel, stride, padding)
    return sum(weights[:, ky, kx, None, None] * patch for ky, kx, patch in taps)


def np_pointwise(image: np.ndarray, weights: np.ndarray) -> np.ndarray:
    return np.einsum("oi,iyx->oyx", weights, image)


def np_channelwise(values: np.ndarray) -> np.ndarray:
    return values[:, None, None]


def np_bn(image: np.ndarray, a: Arrays, name: str) -> np.ndarray:
    return image * np_channelwise(a[f"{name}_scale"]) + np_channelwise(a[f"{name}_shift"])


def np_relu(values: np.ndarray) -> np.ndarray:
    return np.maximum(values, 0)


def np_relu6(values: np.ndarray) -> np.ndarray:
    return np.clip(values, 0, 6)


def np_gelu(v: np.ndarray) -> np.ndarray:
    return 0.5 * v * (1 + np.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v**3)))


def np_max_pool(image: np.ndarray, kernel: int, stride: int) -> np.ndarray:
    return np.max([patch for _, _, patch in _windows(image, kernel, stride)], axis=0)


def np_avg_pool(image: np.ndarray, kernel: int, stride: int) -> np.ndarray:
    return np.mean([patch for _, _, patch in _windows(image, kernel, stride)], axis=0)


def np_softmax(values: np.ndarray, axis: int) -> np.ndarray:
    exp = np.exp(values - values.max(axis=axis, keepdims=True))
    return exp / exp.sum(axis=axis, keepdims=True)


def np_shortcut(a: Arrays, s: dict[str, int]) -> np.ndarray:
    if s["stride"] == 1 and s["c_in"] == s["c_out"]:
        return a["input"]
    return np_bn(np_conv2d(a["input"], a["downsample_conv_w"], s["stride"]), a, "downsample_bn")


def np_resnet_basic(a: Arrays, s: dict[str, int]) -> np.ndarray:
    out = np_relu(np_bn(np_conv2d(a["input"], a["conv1_w"], s["stride"], 1), a, "bn1"))
    out = np_bn(np_conv2d(out, a["conv2_w"], 1, 1), a, "bn2")
    return np_relu(out + np_shortcut(a, s))


def np_resnet_bottleneck(a: Arrays, s: dict[str, int]) -> np.ndarray:
    out = np_relu(np_bn(np_pointwise(a["input"], a["conv1_w"]), a, "bn1"))
    out = np_relu(np_bn(np_conv2d(out, a["conv2_w"], s["stride"], 1), a, "bn2"))
    out = np_bn(np_pointwise(out, a["conv3_w"]), a, "bn3")
    return np_relu(out + np_shortcut(a, s))


def np_inverted_residual(a: Arrays, s: dict[str, int]) -> np.ndarray:
    out = a["input"]
    if s["expand"] > 1:
        out = np_relu6(np_bn(np_pointwise(out, a["expand_w"]), a, "expand_bn"))
    out = np_relu6(np_bn(np_depthwise(out, a["dwconv_w"], s["stride"], 1), a, "dwconv_bn"))
    out = np_bn(np_pointwise(out, a["project_w"]), a, "project_bn")
    return out + a["input"] if s["stride"] == 1 and s["c_in"] == s["c_out"] else out


def np_vgg(a: Arrays, s: dict[str, int]) -> np.ndarray:
    out = a["input"]
    for i in range(1, s["depth"] + 1):
        out = np_conv2d(out, a[f"conv{i}_w"], 1, 1) + np_channelwise(a[f"conv{i}_b"])
        out = np_max_pool(np_relu(out), 2, 2)
    return out


def np_mlp(a: Arrays, s: dict[str, int]) -> np.ndarray:
    out = a["input"]
    for i in range(1, s["depth"] + 1):
        out = np_relu(out @ a[f"fc{i}_w"] + a[f"fc{i}_b"])
    last = s["depth"] + 1
    return out @ a[f"fc{last}_w"] + a[f"fc{last}_b"]


def np_attention(a: Arrays, s: dict[str, int]) -> np.ndarray:
    tokens, heads, head_dim = s["tokens"], s["heads"], s["head_dim"]

    def split_heads(projection: np.ndarray) -> np.ndarray:  # (tokens, model_dim) -> (heads, tokens, head_dim)
        return projection.reshape(tokens, heads, head_dim).transpose(1, 0, 2)

    q, k, v = (split_heads(a["input"] @ a[f"{p}_proj_w"]) for p in "qkv")
    probabilities = np_softmax(q @ k.transpose(0, 2, 1) / math.sqrt(head_dim), axis=-1)
    context = (probabilities @ v).transpose(1, 0, 2).reshape(tokens, heads * head_dim)
    return context @ a["out_proj_w"]


REFERENCES: dict[str, Callable[[Arrays, dict[str, int]], np.ndarray]] = {
    "conv2d": lambda a, s: np_conv2d(a["input"], a["conv_w"], s["stride"], s["padding"]) + np_channelwise(a["conv_b"]),
    "depthwise_conv2d": lambda a, s: np_depthwise(a["input"], a["dwconv_w"], s["stride"], s["padding"]),
    "pointwise_conv2d": lambda a, s: np_pointwise(a["input"], a["pwconv_w"]),
    "dense": lambda a, s: a["input"] @ a["dense_w"] + a["dense_b"],
    "matmul": lambda a, s: a["a"] @ a["b"],
    "bias_add": lambda a, s: a["input"] + np_channelwise(a["bias_b"]),
    "batch_norm": lambda a, s: np_bn(a["input"], a, "bn"),
    "relu": lambda a, s: np_relu(a["input"]),
    "relu6": lambda a, s: np_relu6(a["input"]),
    "gelu": lambda a, s: np_gelu(a["input"]),
    "max_pool": lambda a, s: np_max_pool(a["input"], s["kernel"], s["stride"]),
    "avg_pool": lambda a, s: np_avg_pool(a["input"], s["kernel"], s["stride"]),
    "global_avg_pool": lambda a, s: a["input"].mean(axis=(1, 2)),
    "softmax": lambda a, s: np_softmax(a["input"], axis=-1),
    "channel_softmax": lambda a, s: np_softmax(a["input"], axis=0),
    "residual_add": lambda a, s: a["a"] + a["b"],
    "concat": lambda a, s: np.concatenate([a["a"], a["b"]]),
    "upsample2x": lambda a, s: a["input"].repeat(2, axis=1).repeat(2, axis=2),
    "resnet_basic_block": np_resnet_basic,
    "resnet_bottleneck_block": np_resnet_bottleneck,
    "mobilenet_inverted_residual": np_inverted_residual,
    "vgg": np_vgg,
    "mlp": np_mlp,
    "attention": np_attention,
}

#: Inputs scaled beyond [-1, 1) so that ReLU6's clip and GELU's curve matter, and so that a softmax
#: without its max subtraction would overflow float32 (exp(100) > 3.4e38).
INPUT_SCALE = {"relu6": 8.0, "gelu": 4.0, "softmax": 100.0, "channel_softmax": 100.0}

#: Shapes beyond each entry's ``small`` that take other branches: projection shortcuts, no expansion.
OTHER_BRANCHES = [
    ("resnet_basic_block", {"w": 7, "h": 6, "c_in": 3, "c_out": 4, "stride": 2}),
    ("resnet_bottleneck_block", {"w": 7, "h": 6, "c_in": 4, "c_mid": 2, "c_out": 6, "stride": 2}),
    ("mobilenet_inverted_residual", {"w": 7, "h": 6, "c_in": 3, "c_out": 4, "expand": 1, "stride": 2}),
    ("mobilenet_inverted_residual", {"w": 6, "h": 5, "c_in": 3, "c_out": 3, "expand": 1, "stride": 1}),
    ("conv2d", {"w": 8, "h": 9, "c_in": 2, "c_out": 3, "kernel": 5, "stride": 1, "padding": 0}),
    ("mlp", {"batch": 2, "d_in": 3, "hidden": 4, "d_out": 2, "depth": 1}),
    ("attention", {"tokens": 4, "heads": 1, "head_dim": 5}),
]

CASES = [pytest.param(name, entry.small, id=name) for name, entry in ZOO.items()] + [
    pytest.param(name, shapes, id=f"{name}-{'-'.join(f'{k}{v}' for k, v in shapes.items())}")
    for name, shapes in OTHER_BRANCHES
]


def test_every_entry_has_a_reference():
    assert set(REFERENCES) == set(ZOO)


@pytest.mark.parametrize(("name", "shapes"), CASES)
def test_entry_matches_numpy_reference(name: str, shapes: dict[str, int]):
    built = build_pipeline(zoo_uri(name, **shapes))
    scale = np.float32(INPUT_SCALE.get(name, 1.0))
    inputs = {
        spec.name: random_input(spec, seed) * (scale if spec.name == "input" else np.float32(1))
        for seed, spec in enumerate(built.input_buffers)
    }
    (output,) = realize(built, inputs)
    as_float64 = {key: value.astype(np.float64) for key, value in inputs.items()}
    expected = REFERENCES[name](as_float64, {**ZOO[name].defaults, **shapes})
    assert output.shape == expected.shape
    np.testing.assert_allclose(output, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", list(ZOO))
def test_default_shapes_build_with_estimates_on_every_input_and_output(name: str):
    built = build_pipeline(zoo_uri(name))  # raises WorkloadError if an estimate is missing
    assert built.input_buffers and built.output_buffers
    assert all(spec.dtype == "float32" for spec in built.input_buffers + built.output_buffers)


@pytest.mark.parametrize("name", list(ZOO))
def test_default_shapes_are_estimated_to_run_a_measurable_time(name: str):
    assert VARIANT_MS[0] <= ZOO[name].estimated_ms({}) <= VARIANT_MS[1]


def test_family_of_a_zoo_uri_is_its_entry_family():
    assert family_of(zoo_uri("mobilenet_inverted_residual", w=14)) == "mobilenet"


def test_uri_parameters_override_the_defaults():
    built = build_pipeline(zoo_uri("relu", w=10, h=6, c=2))
    assert built.output_buffers[0].extents == (10, 6, 2)


def test_unknown_parameter_is_a_workload_error_naming_entry_and_parameter():
    with pytest.raises(WorkloadError, match=r"'conv2d'.*'kernal'"):
        resolve_builder("zoo:conv2d?kernal=3")


def test_non_integer_parameter_is_a_workload_error_naming_the_value():
    with pytest.raises(WorkloadError, match=r"'c_in'.*'sixteen'"):
        resolve_builder("zoo:conv2d?c_in=sixteen")


def test_kernel_larger_than_the_image_is_a_workload_error_naming_the_layer():
    with pytest.raises(WorkloadError, match=r"layer 'conv'.*kernel 7"):
        build_pipeline(zoo_uri("conv2d", w=4, h=4, kernel=7, padding=0))


def test_residual_block_with_mismatched_shapes_gets_a_projection_shortcut():
    built = build_pipeline(zoo_uri("resnet_basic_block", c_in=16, c_out=32))
    assert "downsample_conv_w" in [spec.name for spec in built.input_buffers]


def test_zoo_variants_are_deterministic():
    assert zoo_variants("conv2d", 5, seed=3) == zoo_variants("conv2d", 5, seed=3)


def test_zoo_variants_are_distinct():
    variants = zoo_variants("attention", 12, seed=0)
    assert len(variants) == len(set(variants)) == 12


def test_zoo_variants_depend_on_the_seed():
    assert zoo_variants("dense", 5, seed=0) != zoo_variants("dense", 5, seed=1)


def test_zoo_variants_with_a_larger_count_extend_a_smaller_one():
    assert zoo_variants("vgg", 6, seed=2)[:3] == zoo_variants("vgg", 3, seed=2)


def test_zoo_variants_name_their_entry_and_build():
    for uri in zoo_variants("resnet_bottleneck_block", 3, seed=0):
        assert family_of(uri) == "resnet"
        assert build_pipeline(uri).output_buffers


def test_zoo_variants_are_estimated_within_the_measurement_band():
    for uri in zoo_variants("depthwise_conv2d", 8, seed=0):
        _, _, params = parse_uri(uri)
        shapes = {key: int(value) for key, value in params.items()}
        assert VARIANT_MS[0] <= ZOO["depthwise_conv2d"].estimated_ms(shapes) <= VARIANT_MS[1]


def test_zoo_variants_of_an_unknown_entry_is_a_workload_error():
    with pytest.raises(WorkloadError, match="'lstm'"):
        zoo_variants("lstm", 1, seed=0)


def test_zoo_variants_beyond_the_shape_space_is_a_workload_error():
    with pytest.raises(WorkloadError, match="count=100000"):
        zoo_variants("relu", 100_000, seed=0)


def test_all_zoo_variants_covers_every_entry():
    uris = all_zoo_variants(2, seed=0)
    assert len(uris) == 2 * len(ZOO)
    assert {uri.split(":")[1].split("?")[0] for uri in uris} == set(ZOO)
