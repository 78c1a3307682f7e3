"""User pipelines (FILE.py:FUNCTION): the contract, and errors that name the file, function and problem."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from perfgraph.cli import main
from perfgraph.measure.collector import INPUT_SEED
from perfgraph.measure.inputs import make_buffers, scalar_argument
from perfgraph.measure.runner import JobResult, run_job
from perfgraph.schedules.autoscheduler import AutoschedulerConfig
from perfgraph.workloads.base import ScalarSpec, WorkloadError, build_pipeline

from .conftest import FAST_TIMING, USER_PIPELINES, collect_tiny


def test_a_good_pipeline_function_builds_with_its_estimates():
    built = build_pipeline(f"file:{USER_PIPELINES}:blur")
    assert [b.name for b in built.input_buffers] == ["input"]
    assert built.input_buffers[0].extents == (256, 256)
    assert [(b.name, b.extents) for b in built.output_buffers] == [("blur", (256, 256))]


def test_a_pipeline_object_is_accepted_too():
    built = build_pipeline(f"file:{USER_PIPELINES}:blur_pipeline")
    assert built.output_buffers[0].extents == (128, 128)


@pytest.mark.parametrize(
    ("function", "problem"),
    [
        ("no_such_function", "no function 'no_such_function'"),
        ("not_a_pipeline", "must return an hl.Pipeline or a list of output hl.Func, got int"),
        ("raises", "RuntimeError: boom in user code"),
        ("output_without_estimates", "output 'out' has no estimates"),
        ("input_without_estimates", "input 'input' has no estimates"),
    ],
)
def test_a_broken_pipeline_names_the_file_the_function_and_the_problem(function, problem):
    with pytest.raises(WorkloadError) as error:
        build_pipeline(f"file:{USER_PIPELINES}:{function}")
    message = str(error.value)
    assert str(USER_PIPELINES) in message
    assert problem in message
    if function != "no_such_function":
        assert function in message


def test_a_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(WorkloadError, match="no such file"):
        build_pipeline(f"file:{tmp_path / 'missing.py'}:build")


@pytest.mark.slow
def test_collect_reports_a_broken_user_pipeline_and_exits_2(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "perfgraph.cli",
            "collect",
            "--db",
            str(tmp_path / "x.db"),
            "--pipeline",
            f"{USER_PIPELINES}:raises",
            "--schedules",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    assert f"{USER_PIPELINES}" in result.stderr and "raises" in result.stderr and "boom in user code" in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("command", ["predict", "schedule"])
def test_predict_and_schedule_report_a_broken_user_pipeline_and_exit_2(command, tmp_path, capsys):
    argv = [command, "--pipeline", f"{USER_PIPELINES}:raises", "--candidates", "1"]
    if command == "schedule":
        argv += ["--db", str(tmp_path / "tuning.db"), "--out", str(tmp_path / "schedule.py")]
    assert main(argv) == 2  # a BuildError escaping main would fail here, as a traceback does on the terminal
    error = capsys.readouterr().err
    assert f"{USER_PIPELINES}" in error and "raises" in error and "boom in user code" in error, error
    assert not (tmp_path / "tuning.db").exists()  # schedule analyses the pipeline before opening its store


def test_collect_refuses_a_pipeline_argument_without_a_function(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "perfgraph.cli",
            "collect",
            "--db",
            str(tmp_path / "x.db"),
            "--pipeline",
            str(USER_PIPELINES),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    assert "FILE.py:FUNCTION" in result.stderr


# -- real pipelines that must work (issue 15, section 4) ----------------------------------------------------------


def test_scalar_params_keep_their_own_types():
    built = build_pipeline(f"file:{USER_PIPELINES}:typed_params")
    values = {spec.name: (spec.dtype, spec.value) for spec in built.input_scalars}
    assert values == {
        "radius": ("int32", 2),
        "offset": ("int64", 2**40 + 3),
        "gain": ("uint8", 200),
        "invert": ("bool", True),
        "scale": ("float32", 0.5),
    }
    inputs = make_buffers(built, input_seed=1).inputs
    types = {name: type(inputs[name]) for name in values}
    assert types == {"radius": int, "offset": int, "gain": int, "invert": bool, "scale": float}


@pytest.mark.parametrize(("dtype", "value"), [("uint8", 300), ("int32", 2.5), ("int8", -129), ("bool", 2)])
def test_a_scalar_value_that_does_not_fit_its_param_names_the_param(dtype, value):
    with pytest.raises(WorkloadError, match=f"scalar input 'gain' \\({dtype}\\): its value .* does not fit"):
        scalar_argument(ScalarSpec("gain", dtype, value))


@pytest.mark.slow
def test_a_pipeline_with_integer_int64_uint8_and_bool_params_is_measured(tmp_path):
    uri = f"file:{USER_PIPELINES}:typed_params"
    with collect_tiny(tmp_path / "typed.db", [uri], schedules=2, top_up=False, remeasure_fraction=0) as store:
        failures = store.execute("SELECT kind, message FROM failures").fetchall()
        measured = store.execute("SELECT COUNT(*) FROM measurements").fetchone()[0]
    assert failures == []
    assert measured >= 1


@pytest.fixture(scope="module")
def analysed_tone_curve(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A store that analysed the 8-bit tone curve, and its reference output."""
    db = tmp_path_factory.mktemp("tone") / "tone.db"
    uri = f"file:{USER_PIPELINES}:tone_curve_u8"
    collect_tiny(db, [uri], schedules=1, top_up=False, remeasure_fraction=0).close()
    (reference,) = Path(str(db) + ".refs").glob("*.npz")
    return db, reference


def _measure_against(reference: Path, tmp_path: Path) -> JobResult:
    """Benchmark one candidate of the tone curve and check its output against ``reference``."""
    job = {
        "kind": "measure",
        "uri": f"file:{USER_PIPELINES}:tone_curve_u8",
        "config": AutoschedulerConfig(random_dropout_seed=3).to_json(),
        "input_seed": INPUT_SEED,
        "reference_path": str(reference),
        "lock_path": str(tmp_path / "benchmark.lock"),
        "benchmark_cpus": [max(os.sched_getaffinity(0))],
        "compile_on_idle_benchmark_cpus": True,
        "timing": vars(FAST_TIMING),
    }
    return run_job(
        job,
        {"start": 120, "autoschedule": 120, "compile": 120, "run": 120},
        set(os.sched_getaffinity(0)),
        on_event=lambda event: '{"go": true}' if event["event"] == "scheduled" else None,
    )


def _shifted_reference(reference: Path, tmp_path: Path, step: int, every: int) -> Path:
    """The reference output with every ``every``-th value moved by ``step`` units (within 0..255)."""
    values = np.load(reference)["arr_0"].astype(np.int16)
    flat = values.reshape(-1)
    flat[::every] = np.where(flat[::every] + step > 255, flat[::every] - step, flat[::every] + step)
    path = tmp_path / f"shifted-{step}.npz"
    np.savez_compressed(path, values.astype(np.uint8))
    return path


@pytest.mark.slow
def test_an_8_bit_output_computed_in_float_may_round_one_unit_the_other_way(analysed_tone_curve, tmp_path):
    _, reference = analysed_tone_curve
    result = _measure_against(_shifted_reference(reference, tmp_path, step=1, every=7), tmp_path)
    assert result.ok, result.failure_message
    assert "measured" in result.events


@pytest.mark.slow
def test_an_8_bit_output_two_units_off_is_still_wrong(analysed_tone_curve, tmp_path):
    _, reference = analysed_tone_curve
    result = _measure_against(_shifted_reference(reference, tmp_path, step=2, every=997), tmp_path)
    assert result.failure_kind == "wrong_output"
    assert "differ from the reference (by up to 2)" in result.failure_message


@pytest.mark.slow
def test_an_autoscheduler_abort_says_what_went_wrong(tmp_path):
    uri = f"file:{USER_PIPELINES}:aborts_the_autoscheduler"
    with collect_tiny(tmp_path / "abort.db", [uri], schedules=1, top_up=False) as store:
        ((kind, message),) = store.execute("SELECT kind, message FROM failures").fetchall()
    assert kind == "autoschedule_error"
    assert "terminate called after throwing an instance of 'Halide::Error'" in message
    assert "what():  Error: " in message  # Halide's own text, not only that something was thrown
    assert "Pass 0" not in message  # the autoscheduler's debug output before it is left out


@pytest.mark.slow
def test_a_user_pipeline_that_yields_no_sample_names_it_says_why_and_exits_2(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "perfgraph.cli", "collect", "--db", str(tmp_path / "x.db")]
        + ["--pipeline", f"{USER_PIPELINES}:aborts_the_autoscheduler", "--schedules", "1", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr
    (error,) = [line for line in result.stderr.splitlines() if line.startswith("perfgraph: error: ")]
    assert f"pipeline file '{USER_PIPELINES}', function 'aborts_the_autoscheduler': no sample measured" in error
    assert "autoschedule_error" in error and "what(): Error: " in error  # on one line
