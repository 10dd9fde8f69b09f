"""trainlab: train, measure, diagnose and compare small transformers."""
__version__ = "0.1.0"
