"""User pipelines (FILE.py:FUNCTION): the contract, and errors that name the file, function and problem."""

from __future__ import annotations

import subprocess
import sys

import pytest

from perfgraph.workloads.base import WorkloadError, build_pipeline

from .conftest import USER_PIPELINES


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
