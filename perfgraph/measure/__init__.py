"""Measurement: autoschedule, compile and benchmark candidates in isolated worker processes."""
