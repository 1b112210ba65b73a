"""LTGen-Bench: a benchmarking harness for long-tailed image generation."""

__version__ = "0.1.0"
