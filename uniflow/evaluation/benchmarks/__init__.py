"""Benchmark adapters (dataset reader + metric); importing this package registers every entry.

Lives inside the installed package so ``python -m uniflow eval`` works from any directory; the
repository's top-level ``benchmarks/`` holds performance benchmarks and published results.
"""

from uniflow.evaluation.benchmarks import generation, pending, reconstruction

__all__ = ["generation", "pending", "reconstruction"]
