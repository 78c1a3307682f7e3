"""Turning stored samples into model inputs: the feature layout, graphs, splits."""
