"""Schedules: sampling candidates with Halide's Adams2019 autoscheduler and reading its view of the pipeline."""
