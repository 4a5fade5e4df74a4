"""wmss: weak-driven learning (WMSS) for causal language models."""

__version__ = "0.1.0"
