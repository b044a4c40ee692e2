"""The benchmark registry: every benchmark the results table knows, runnable or not yet.

An entry names its task family, the metrics it reports, the published numbers to show beside ours
and, when it can run, a runner (the dataset reader and metric, in ``uniflow.evaluation.benchmarks``)
with a config check. Entries without a runner carry the reason instead. New benchmarks (probes,
MLLM scores) plug in by registering an entry with a runner, replacing the pending one of the same
name; the suite core iterates the registry and never names a benchmark.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from uniflow.config import ConfigError, EvalConfig
from uniflow.evaluation.references import Reference
from uniflow.evaluation.results import BenchmarkRun

if TYPE_CHECKING:
    from uniflow.evaluation.context import EvalContext

# UNIFLOW.md section 5: the seven task families of the paper's 13 benchmarks.
FAMILIES = (
    "reconstruction",
    "generation",
    "understanding",
    "classification",
    "segmentation",
    "detection",
    "depth",
)

Runner = Callable[["EvalContext"], BenchmarkRun]
Check = Callable[[EvalConfig], None]


@dataclass(frozen=True)
class Benchmark:
    name: str
    family: str
    title: str
    metrics: tuple[str, ...]
    references: tuple[Reference, ...]
    # True for the paper's 13 (UNIFLOW.md section 5); False for the embedded CPU stand-ins.
    paper: bool
    # How a user enables it (shown when it is not run).
    hint: str = ""
    run: Runner | None = None
    # Raises ConfigError (naming the key) when the config cannot run it; called before any work.
    check: Check | None = None
    # Why there is no runner yet; required exactly when ``run`` is None.
    pending: str | None = None

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"benchmark {self.name!r}: family {self.family!r} is not one of {FAMILIES}")
        if (self.run is None) == (self.pending is None):
            raise ValueError(f"benchmark {self.name!r} needs exactly one of a runner or a pending reason")


_REGISTRY: dict[str, Benchmark] = {}


def register(benchmark: Benchmark) -> Benchmark:
    """Add ``benchmark``. A runnable entry and a pending one of the same name resolve to the runnable
    one whichever registers first, so modules need no import order; any other clash is an error."""
    existing = _REGISTRY.get(benchmark.name)
    if existing is None or (existing.pending and benchmark.run):
        _REGISTRY[benchmark.name] = benchmark
    elif not (existing.run and benchmark.pending):
        raise ValueError(f"benchmark {benchmark.name!r} is already registered")
    return _REGISTRY[benchmark.name]


def all_benchmarks() -> list[Benchmark]:
    """Every registered benchmark, in table order (embedded first, then UNIFLOW.md section 5's order)."""
    _load_entries()
    return sorted(_REGISTRY.values(), key=lambda b: (b.paper, FAMILIES.index(b.family)))


def get(name: str) -> Benchmark:
    _load_entries()
    if name not in _REGISTRY:
        raise ConfigError(f"unknown benchmark {name!r} in eval.benchmarks; valid names: {sorted(_REGISTRY)}")
    return _REGISTRY[name]


def _load_entries() -> None:
    # The entries live in their adapters' modules; importing the package registers them all.
    import uniflow.evaluation.benchmarks  # noqa: F401
