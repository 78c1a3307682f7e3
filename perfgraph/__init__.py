"""perfgraph: a learned performance model for Halide deep-learning pipelines.

The package folders follow the data flow::

    workloads -> schedules -> measure -> data -> features -> models -> evaluate
"""

__version__ = "0.1.0"
