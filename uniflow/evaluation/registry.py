"""The benchmark registry: every benchmark the results table knows, runnable or not yet, as data.

Each adapter module exports its entries as ``BENCHMARKS: tuple[Benchmark, ...]``; the registry is
built from the modules listed in :data:`ADAPTERS`, in that order, the first time it is asked for.
Importing a module registers nothing, and a name exported twice is an error, so there is exactly
one definition of each benchmark.

Adding a benchmark: export its entry from a module and add the module to :data:`ADAPTERS`.
Implementing a pending benchmark (a probe, an MLLM score): export an entry of the same name with a
runner from the stage's module, add that module here, and delete the pending entry from
``uniflow/evaluation/benchmarks/pending.py``; forgetting the deletion fails with the duplicate error.
The suite core iterates the registry and never names a benchmark.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Iterable, Mapping
from types import MappingProxyType

from uniflow.config import ConfigError
from uniflow.evaluation.entry import FAMILIES, Benchmark

__all__ = [
    "ADAPTERS",
    "FAMILIES",
    "Benchmark",
    "all_benchmarks",
    "build",
    "collect",
    "get",
    "names",
]

# Imported by name when the registry is first needed: a stage's adapter may import heavy libraries
# (an LLM for the MLLM probe) or ``uniflow.evaluation`` itself, which must not happen at import time.
ADAPTERS: tuple[str, ...] = (
    "uniflow.evaluation.benchmarks.reconstruction",
    "uniflow.evaluation.benchmarks.generation",
    "uniflow.evaluation.benchmarks.drift",
    "uniflow.evaluation.benchmarks.probes",
    "uniflow.evaluation.benchmarks.mllm",
    "uniflow.evaluation.benchmarks.pending",
)


def build(entries: Iterable[tuple[str, Benchmark]]) -> Mapping[str, Benchmark]:
    """A read-only name -> entry map from ``(source, entry)`` pairs; a name given twice is refused,
    naming both sources."""
    table: dict[str, Benchmark] = {}
    sources: dict[str, str] = {}
    for source, bench in entries:
        if not isinstance(bench, Benchmark):
            raise TypeError(f"{source} exports {bench!r} in BENCHMARKS; expected Benchmark entries")
        if bench.name in table:
            raise ValueError(
                f"benchmark {bench.name!r} is defined twice, by {sources[bench.name]} and {source}; "
                "when a stage implements a pending benchmark, delete the pending entry from "
                "uniflow/evaluation/benchmarks/pending.py"
            )
        table[bench.name], sources[bench.name] = bench, source
    return MappingProxyType(table)


@functools.cache
def collect(modules: tuple[str, ...]) -> Mapping[str, Benchmark]:
    """The registry of the adapter ``modules`` (imported by name), each exporting ``BENCHMARKS``."""
    pairs = []
    for name in modules:
        module = importlib.import_module(name)
        exported = getattr(module, "BENCHMARKS", None)
        if exported is None:
            raise AttributeError(f"adapter module {name} exports no BENCHMARKS tuple")
        pairs += [(name, bench) for bench in exported]
    return build(pairs)


def _registry() -> Mapping[str, Benchmark]:
    # Looked up at call time, so a test that swaps ADAPTERS gets its own (cached) registry.
    return collect(ADAPTERS)


def all_benchmarks() -> list[Benchmark]:
    """Every registered benchmark, in table order: embedded first, then by task family
    (benchmarks/README.md), then in the order the adapters export them."""
    return sorted(_registry().values(), key=lambda b: (b.paper, FAMILIES.index(b.family)))


def names() -> list[str]:
    """Every registered benchmark's name, sorted (for error messages)."""
    return sorted(_registry())


def get(name: str) -> Benchmark:
    registry = _registry()
    if name not in registry:
        raise ConfigError(f"unknown benchmark {name!r} in eval.benchmarks; valid names: {sorted(registry)}")
    return registry[name]
