"""What the suite produces: per-metric values with provenance, per-benchmark results, the whole run."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from uniflow.evaluation.references import Reference

OK = "ok"
NOT_RUN = "not run"


@dataclass
class MetricValue:
    """A number (or None with the reason) and how it was made.

    ``provenance`` holds what is specific to this metric (reference statistics, Inception or VGG
    weights); the suite adds the run-wide and benchmark-wide entries before anything is written.
    """

    value: float | None
    reason: str | None = None
    provenance: dict[str, Any] = field(default_factory=dict)


@dataclass
class BenchmarkRun:
    """A runner's output: its metrics, benchmark-wide provenance (data, count, ...) and notes for the table."""

    metrics: dict[str, MetricValue]
    provenance: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass
class BenchmarkResult:
    """One benchmark in results.json and the table: status "ok" with metrics, or "not run" with the reason."""

    name: str
    family: str
    title: str
    paper: bool
    status: str
    reason: str | None
    metrics: dict[str, MetricValue]
    references: tuple[Reference, ...]
    notes: list[str] = field(default_factory=list)


@dataclass
class SuiteResults:
    created: str
    run: dict[str, Any]  # name, run directory, tokenizer directory and its sha256
    settings: dict[str, Any]  # run-wide provenance (sampler, steps, precision, device, world size, ...)
    benchmarks: list[BenchmarkResult]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def get(self, name: str) -> BenchmarkResult:
        for result in self.benchmarks:
            if result.name == name:
                return result
        raise KeyError(f"no benchmark {name!r} in these results; have {[b.name for b in self.benchmarks]}")
