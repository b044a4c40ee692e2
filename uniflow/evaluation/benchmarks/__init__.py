"""Benchmark adapters (dataset reader + metric), each module exporting its entries as ``BENCHMARKS``.

Importing this package registers nothing: :mod:`uniflow.evaluation.registry` lists the adapter
modules and builds the registry from their exports. It lives inside the installed package so
``python -m uniflow eval`` works from any directory; the repository's top-level ``benchmarks/`` is
where a user reads about the suite (benchmarks/README.md) and finds the speed benchmarks.
"""
