"""Run buffers: estimate-sized inputs, widened (data kept) when a schedule reads outside the estimates,
every buffer's data aligned as Halide's allocator aligns it."""

from __future__ import annotations

import subprocess
import sys

import halide as hl
import numpy as np
import pytest

from perfgraph.measure.inputs import BUFFER_ALIGNMENT, call_widening_inputs, make_buffers, widen_input
from perfgraph.workloads.base import build_pipeline

WIDTH, CHANNELS = 6, 32


def _shifted_split_pipeline(split_factor: int) -> list[hl.Func]:
    """out(x, c) = 2 * (in(x, c) + scale(c)), with the producer's channel loop split by ``split_factor``.

    A factor above the 32 channels makes Halide shift the split inwards to start at 32 - factor, so
    the schedule reads ``scale`` and ``in`` below 0, outside their estimates: the case Adams2019
    produced on a ResNet bottleneck block.
    """
    image = hl.ImageParam(hl.Float(32), 2, "image")
    scale = hl.ImageParam(hl.Float(32), 1, "scale")
    image.set_estimates([(0, WIDTH), (0, CHANNELS)])
    scale.set_estimates([(0, CHANNELS)])
    x, c, co, ci = hl.Var("x"), hl.Var("c"), hl.Var("co"), hl.Var("ci")
    shifted, out = hl.Func("shifted"), hl.Func("out")
    shifted[x, c] = image[x, c] + scale[c]
    out[x, c] = shifted[x, c] * 2
    out.set_estimates([(0, WIDTH), (0, CHANNELS)])
    shifted.compute_root().split(c, co, ci, split_factor)
    return [out]


def _run_widening(split_factor: int):  # type: ignore[no-untyped-def]
    built = build_pipeline("file:test.py:shifted", lambda: _shifted_split_pipeline(split_factor))
    buffers = make_buffers(built, input_seed=3)
    estimated = {name: np.array(buffer, copy=True) for name, buffer in buffers.inputs.items()}
    arguments = built.pipeline.infer_arguments()
    compiled = built.pipeline.compile_to_callable(arguments, hl.get_jit_target_from_environment())
    _, widenings = call_widening_inputs(
        lambda: compiled(*[buffers.inputs[a.name] for a in arguments], *buffers.outputs), buffers
    )
    assert widenings <= 4
    for buffer in [*buffers.inputs.values(), *buffers.outputs]:  # widened ones too
        assert np.asarray(buffer).ctypes.data % BUFFER_ALIGNMENT == 0
    return buffers, estimated, widenings


def test_a_read_below_the_estimates_widens_the_input_and_keeps_its_data():
    buffers, estimated, widenings = _run_widening(split_factor=37)
    assert widenings >= 1
    scale = buffers.inputs["scale"]
    assert (scale.dim(0).min(), scale.dim(0).extent()) == (-5, 37)
    np.testing.assert_array_equal(np.array(scale)[5:], estimated["scale"])
    np.testing.assert_array_equal(np.array(scale)[:5], 0)
    image = buffers.inputs["image"]
    assert image.dim(1).min() == -5
    np.testing.assert_array_equal(np.array(image)[5:, :], estimated["image"])
    # The output is the algorithm's, whatever was read outside the estimates.
    expected = 2 * (estimated["image"] + estimated["scale"][:, None])
    np.testing.assert_allclose(np.array(buffers.outputs[0]), expected, rtol=1e-6)


def test_a_schedule_inside_the_estimates_runs_on_the_estimate_sized_inputs():
    buffers, _, widenings = _run_widening(split_factor=8)
    assert widenings == 0
    assert buffers.inputs["scale"].dim(0).extent() == CHANNELS


def test_a_read_beyond_the_max_widens_upwards():
    built = build_pipeline("file:test.py:shifted", lambda: _shifted_split_pipeline(8))
    buffers = make_buffers(built, input_seed=3)
    before = np.array(buffers.inputs["scale"], copy=True)
    error = hl.HalideError("Error: Input buffer scale is accessed at 34, which is beyond the max (31) in dimension 0")
    assert widen_input(buffers, error)
    scale = buffers.inputs["scale"]
    assert (scale.dim(0).min(), scale.dim(0).extent()) == (0, 35)
    np.testing.assert_array_equal(np.array(scale)[:CHANNELS], before)


@pytest.mark.parametrize(
    "message",
    [
        "Error: Input buffer nowhere is accessed at -1, which is before the min (0) in dimension 0",
        "Error: Output buffer out is accessed at -1, which is before the min (0) in dimension 0",
        "Error: Can only unroll for loops over a constant extent",
    ],
)
def test_other_errors_are_not_widened(message):
    built = build_pipeline("file:test.py:shifted", lambda: _shifted_split_pipeline(8))
    buffers = make_buffers(built, input_seed=3)
    assert not widen_input(buffers, hl.HalideError(message))


def test_a_pipeline_whose_code_loads_its_output_with_aligned_vector_instructions_runs_and_is_right(tmp_path):
    """Mullapudi2016 schedules a global average pool so that Halide loads the output with ``vmovaps``:
    on NumPy's 16-byte-aligned memory that faulted (SIGSEGV) in 4 of 6 processes. It runs in a worker's
    way (its own process, as the reference a collector saves) and matches NumPy's mean.

    Three processes catch unaligned buffers most of the time, not always; the alignment assertions of
    :func:`_run_widening` are the deterministic guard, this is the symptom, end to end."""
    uri = "zoo:global_avg_pool?c=64&h=8&w=8"
    script = (
        "import sys; from pathlib import Path; from perfgraph.measure.worker import save_reference; "
        "from perfgraph.schedules.autoscheduler import benchmark_target; "
        "save_reference(sys.argv[1], 5, Path(sys.argv[2]), benchmark_target())"
    )
    for attempt in range(3):  # each process its own heap layout
        path = tmp_path / f"reference{attempt}.npz"
        done = subprocess.run([sys.executable, "-c", script, uri, str(path)], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
    built = build_pipeline(uri)
    image = np.array(make_buffers(built, 5).inputs[built.input_buffers[0].name])
    expected = image.reshape(image.shape[0], -1).mean(axis=1)  # numpy (c, h, w): a mean per channel
    np.testing.assert_allclose(np.load(path)["arr_0"], expected, rtol=1e-4)
