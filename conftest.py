"""Doctest collection of the package: the Ray executor is an optional extra, skipped when Ray is missing."""

import importlib.util

collect_ignore = [] if importlib.util.find_spec("ray") else ["perfgraph/measure/ray_executor.py"]
