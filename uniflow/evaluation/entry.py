"""One benchmark as data: what the results table shows for it and, when it can run, how it runs.

Adapter modules build these and export them as ``BENCHMARKS``; :mod:`uniflow.evaluation.registry`
collects them. Kept apart from the registry so an adapter never imports the registry that imports it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from uniflow.evaluation.config import EvalConfig
from uniflow.evaluation.references import Reference
from uniflow.evaluation.results import BenchmarkRun

if TYPE_CHECKING:
    from uniflow.evaluation.context import EvalContext

# The paper's seven task families, in the order of the results table (benchmarks/README.md).
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
    # True for the paper's 13 benchmarks; False for the embedded CPU stand-ins.
    paper: bool
    # What ``eval.data.<name>`` points to and the layout expected there; empty when the benchmark
    # reads no path (the embedded sets are generated), so a path given for it is refused, not ignored.
    data: str = ""
    # What ``eval.fid_reference.<name>`` holds; empty when the benchmark takes no FID reference file.
    fid_reference: str = ""
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
        if self.pending is not None and not self.pending.strip():
            raise ValueError(f"benchmark {self.name!r}: a pending entry must say why it cannot run")
