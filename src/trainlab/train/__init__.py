"""Trainer, schedules, checkpoints."""
