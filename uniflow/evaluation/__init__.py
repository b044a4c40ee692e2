"""The evaluation suite: the paper's benchmarks (and embedded stand-ins) as registry entries, their
adapters and readers, and results with provenance. ``python -m uniflow eval`` is :func:`cli.eval_main`."""

from uniflow.evaluation.registry import Benchmark, all_benchmarks, get
from uniflow.evaluation.results import BenchmarkResult, MetricValue, SuiteResults
from uniflow.evaluation.suite import enabled_benchmarks, run_suite

__all__ = [
    "Benchmark",
    "BenchmarkResult",
    "MetricValue",
    "SuiteResults",
    "all_benchmarks",
    "enabled_benchmarks",
    "get",
    "run_suite",
]
