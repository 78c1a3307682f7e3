"""User pipelines: ``FILE.py:FUNCTION`` where ``FUNCTION()`` returns an ``hl.Pipeline`` or output Funcs.

The contract (also in the README): the inputs are ``hl.ImageParam`` / ``hl.Param`` with estimates,
and every output has estimates. Every way this can go wrong is a :class:`WorkloadError` that names
the file, the function and the problem.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from perfgraph.workloads.base import Builder, WorkloadError


def split_user_target(target: str) -> tuple[Path, str]:
    """Split ``FILE.py:FUNCTION`` (the part after ``file:`` in a URI)."""
    path, sep, function = target.rpartition(":")
    if not sep or not path or not function:
        raise WorkloadError(f"pipeline {target!r}: expected FILE.py:FUNCTION")
    if "\0" in target:
        raise WorkloadError(f"pipeline {target!r}: a NUL character in FILE.py:FUNCTION")
    return Path(path), function


def load_user_builder(target: str) -> Builder:
    """Import the user's file and return its pipeline function, checking both exist."""
    path, function = split_user_target(target)
    if not path.is_file():
        raise WorkloadError(f"pipeline file {str(path)!r} (function {function!r}): no such file")
    module_name = f"perfgraph_user_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise WorkloadError(f"pipeline file {str(path)!r}: not an importable Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as error:
        raise WorkloadError(
            f"pipeline file {str(path)!r}: importing it raised {type(error).__name__}: {error}"
        ) from error
    builder = getattr(module, function, None)
    if builder is None:
        raise WorkloadError(f"pipeline file {str(path)!r}: no function {function!r}")
    if not callable(builder):
        raise WorkloadError(f"pipeline file {str(path)!r}: {function!r} is not a function")
    return builder


def user_uri(spec: str) -> str:
    """The canonical URI of a ``FILE.py:FUNCTION`` argument (absolute path, so workers find it)."""
    path, function = split_user_target(spec)
    try:
        return f"file:{path.resolve()}:{function}"
    except (OSError, RuntimeError) as error:  # a symbolic-link loop, an unreadable folder
        raise WorkloadError(f"pipeline file {str(path)!r}: cannot resolve its path ({error})") from error
