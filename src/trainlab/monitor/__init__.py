"""Metric sinks: JSONL, TensorBoard, console progress."""
