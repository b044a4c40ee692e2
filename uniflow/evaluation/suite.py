"""The suite core: check the config, run every enabled benchmark, list the rest with the reason.

It never names a benchmark: everything specific lives in the registry entries, so new benchmarks
plug in without touching this file.
"""

from __future__ import annotations

import datetime as _dt
import time
from pathlib import Path

from uniflow.config import ConfigError
from uniflow.evaluation import registry
from uniflow.evaluation.config import EvalConfig
from uniflow.evaluation.context import EvalContext
from uniflow.evaluation.distributed import rank_and_world, resolve_device
from uniflow.evaluation.registry import Benchmark
from uniflow.evaluation.report import write_results
from uniflow.evaluation.results import NOT_RUN, OK, BenchmarkResult, BenchmarkRun, MetricValue, SuiteResults
from uniflow.metrics.inception import InceptionFeatureExtractor, sha256_file
from uniflow.tokenizer.model import WEIGHTS_FILE, UniFlowTokenizer


def enabled_benchmarks(cfg: EvalConfig) -> list[Benchmark]:
    """The benchmarks ``cfg`` enables, checked: unknown names, pending entries and missing settings
    raise ConfigError before any work starts."""
    duplicates = sorted({n for n in cfg.benchmarks if cfg.benchmarks.count(n) > 1})
    if duplicates:
        raise ConfigError(f"eval.benchmarks lists {duplicates} more than once")
    _check_keyed(cfg)
    enabled = [registry.get(name) for name in cfg.benchmarks]
    for bench in enabled:
        if bench.pending:
            raise ConfigError(f"benchmark {bench.name} in eval.benchmarks cannot run yet: {bench.pending}")
        if bench.check is not None:
            bench.check(cfg)
    return enabled


def _check_keyed(cfg: EvalConfig) -> None:
    """Every setting keyed by benchmark names a registered benchmark that reads it: a misspelt name,
    or a path for a benchmark that takes none, would otherwise be silently ignored."""
    valid = registry.names()
    keyed = {"num_samples": cfg.num_samples, "data": cfg.data, "fid_reference": cfg.fid_reference}
    for key, values in keyed.items():
        unknown = sorted(set(values) - set(valid))
        if unknown:
            raise ConfigError(f"eval.{key} has unknown benchmarks {unknown}; valid names: {valid}")
    for key in ("data", "fid_reference"):
        takes = [name for name in valid if getattr(registry.get(name), key)]
        refused = sorted(name for name in keyed[key] if name not in takes)
        if refused:
            raise ConfigError(
                f"eval.{key} sets {refused}, which take none; benchmarks that take one: {takes}"
            )


def _completed(bench: Benchmark, run: BenchmarkRun, common: dict) -> BenchmarkResult:
    missing = [m for m in bench.metrics if m not in run.metrics]
    if missing:
        raise RuntimeError(f"benchmark {bench.name} returned no value for {missing}")
    metrics = {
        name: MetricValue(value.value, value.reason, {**common, **run.provenance, **value.provenance})
        for name, value in run.metrics.items()
    }
    return BenchmarkResult(
        bench.name, bench.family, bench.title, bench.paper, OK, None, metrics, bench.references, run.notes
    )


def _not_run(bench: Benchmark) -> BenchmarkResult:
    reason = bench.pending or f"not enabled: {bench.hint}"
    metrics = {m: MetricValue(None, f"not run: {reason}") for m in bench.metrics}
    return BenchmarkResult(
        bench.name, bench.family, bench.title, bench.paper, NOT_RUN, reason, metrics, bench.references
    )


def run_suite(
    cfg: EvalConfig,
    tokenizer_dir: str | Path,
    output_dir: str | Path,
    *,
    run_name: str,
    extractor: InceptionFeatureExtractor | None = None,
    rank: int | None = None,
    world_size: int | None = None,
) -> SuiteResults:
    """Evaluate the tokenizer in ``tokenizer_dir`` on every benchmark ``cfg`` enables.

    Rank and world size come from torch.distributed unless given (tests simulate ranks this way).
    Every rank computes the same results; rank 0 writes ``results.json`` and ``results.md`` to
    ``output_dir``. ``extractor`` replaces the FID Inception (tests use a cheap one).
    """
    enabled = enabled_benchmarks(cfg)
    tokenizer_dir, output_dir = Path(tokenizer_dir), Path(output_dir)
    default_rank, default_world = rank_and_world()
    device = resolve_device(cfg.device)
    tokenizer = UniFlowTokenizer.from_pretrained(tokenizer_dir).to(device).eval()
    ctx = EvalContext(
        cfg=cfg,
        tokenizer=tokenizer,
        tokenizer_dir=tokenizer_dir,
        tokenizer_sha256=sha256_file(tokenizer_dir / WEIGHTS_FILE),
        device=device,
        output_dir=output_dir,
        rank=default_rank if rank is None else rank,
        world_size=default_world if world_size is None else world_size,
        extractor=extractor,
    )
    names = {bench.name for bench in enabled}
    results = []
    for bench in registry.all_benchmarks():
        if bench.name in names:
            ctx.info("%s: %s", bench.name, bench.title)
            assert bench.run is not None  # enabled_benchmarks refused pending entries
            start = time.perf_counter()
            results.append(_completed(bench, bench.run(ctx), ctx.provenance()))
            ctx.info("%s: done in %.0f s", bench.name, time.perf_counter() - start)
        else:
            results.append(_not_run(bench))
    suite = SuiteResults(
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        run={
            "name": run_name,
            "tokenizer_dir": str(tokenizer_dir),
            "tokenizer_sha256": ctx.tokenizer_sha256,
            "tokenizer_image_size": tokenizer.image_size,
        },
        settings=ctx.provenance(),
        benchmarks=results,
    )
    if ctx.is_main:
        write_results(suite, output_dir)
    return suite
