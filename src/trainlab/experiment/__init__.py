"""Experiments: estimates before a run."""
