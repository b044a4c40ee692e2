"""One contract over every registered benchmark: a runnable entry runs on its tiny fixture and writes
a value with provenance; a pending entry says why it cannot run. Plus the registry's own rules: one
definition per name, and a stage replaces a pending entry by exporting its own and deleting the
pending one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import sys
import types
from pathlib import Path

import pytest
from evaluation_fakes import BENCHMARK_FIXTURES, FakeExtractor, quick_metrics, save_tiny_tokenizer

from uniflow.config import ConfigError
from uniflow.evaluation import enabled_benchmarks, registry, run_suite
from uniflow.evaluation.benchmarks import pending
from uniflow.evaluation.config import EvalConfig
from uniflow.evaluation.entry import Benchmark
from uniflow.evaluation.results import BenchmarkRun, MetricValue

ROOT = Path(__file__).resolve().parents[1]
ENTRIES = registry.all_benchmarks()
PROVENANCE = {"tokenizer_sha256", "sampler", "steps", "guidance", "precision", "samples"}


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    return save_tiny_tokenizer(tmp_path_factory.mktemp("run") / "tiny" / "tokenizer")


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    with quick_metrics(tmp_path_factory.mktemp("cache")):
        yield


def _run(cfg: EvalConfig, tokenizer_dir: Path, out: Path) -> dict:
    run_suite(cfg, tokenizer_dir, out, run_name="contract", extractor=FakeExtractor())
    return json.loads((out / "results.json").read_text())


@pytest.mark.parametrize("bench", ENTRIES, ids=[b.name for b in ENTRIES])
def test_every_benchmark_runs_on_its_fixture_or_says_why_not(bench, quick, tokenizer_dir, tmp_path):
    if bench.run is None:
        assert bench.pending and bench.pending.strip()
        assert bench.name not in BENCHMARK_FIXTURES, "a pending entry has a fixture: is it runnable now?"
        with pytest.raises(ConfigError, match=rf"{bench.name} in eval.benchmarks cannot run yet: \w"):
            enabled_benchmarks(EvalConfig(benchmarks=[bench.name]))
        return
    assert bench.name in BENCHMARK_FIXTURES, (
        f"add a tiny fixture for {bench.name} to tests/evaluation_fakes.py"
    )
    settings = BENCHMARK_FIXTURES[bench.name](tmp_path / "data")
    cfg = EvalConfig(benchmarks=[bench.name], batch_size=4, num_workers=0, device="cpu", **settings)
    written = _run(cfg, tokenizer_dir, tmp_path / "eval")

    result = next(b for b in written["benchmarks"] if b["name"] == bench.name)
    assert result["status"] == "ok" and list(result["metrics"]) == list(bench.metrics)
    values = []
    for metric, entry in result["metrics"].items():
        # A number, or None with the reason: never a silent gap.
        assert (entry["value"] is None) == bool(entry["reason"]), metric
        if entry["value"] is not None:
            values.append(entry["value"])
        prov = entry["provenance"]
        # How it was made (a sample file made elsewhere says "not stated" for what it cannot know).
        assert set(prov) >= PROVENANCE and prov["samples"] >= 1 and prov["world_size"] == 1, metric
    assert values and all(isinstance(v, float) and not math.isnan(v) for v in values)
    table = (tmp_path / "eval" / "results.md").read_text()
    assert f"(`{bench.name}`)" in table and "## Provenance" in table


def _pending_stand_in(monkeypatch) -> Benchmark:
    """The pending module with one more entry, a paper row whose stage does not exist (the real module
    may be empty once every stage has landed); returns that entry."""
    later = Benchmark(
        name="later_probe",
        family="understanding",
        title="a paper row whose stage is not written yet",
        metrics=("score",),
        references=(),
        paper=True,
        pending="needs a stage that is not written yet",
    )
    module = types.ModuleType("pending_stand_in")
    module.BENCHMARKS = (*pending.BENCHMARKS, later)
    monkeypatch.setitem(sys.modules, module.__name__, module)
    adapters = tuple(module.__name__ if m == pending.__name__ else m for m in registry.ADAPTERS)
    monkeypatch.setattr(registry, "ADAPTERS", adapters)
    return later


def test_a_name_defined_twice_is_refused_naming_both_definitions(monkeypatch):
    later = _pending_stand_in(monkeypatch)
    probe = dataclasses.replace(
        later, pending=None, run=lambda ctx: BenchmarkRun({"score": MetricValue(0.5)})
    )
    with pytest.raises(ValueError, match=r"'later_probe' is defined twice, by here and there"):
        registry.build([("here", later), ("there", probe)])
    # A stage that exports the entry but forgets to delete the pending one fails the same way.
    module = types.ModuleType("forgetful_stage")
    module.BENCHMARKS = (probe,)
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setattr(registry, "ADAPTERS", (*registry.ADAPTERS, module.__name__))
    with pytest.raises(ValueError, match=r"by pending_stand_in and forgetful_stage; .*pending.py"):
        registry.all_benchmarks()


def test_a_stage_replaces_a_pending_entry_with_no_change_to_the_suite(monkeypatch, tmp_path):
    """What a stage does: export a runnable entry of the pending one's name and delete the pending one."""
    later = _pending_stand_in(monkeypatch)
    probe = dataclasses.replace(
        later, pending=None, run=lambda ctx: BenchmarkRun({"score": MetricValue(0.5)}, {"samples": 3})
    )
    before = [b.name for b in registry.all_benchmarks()]
    stage = types.ModuleType("later_stage")
    stage.BENCHMARKS = (probe,)
    trimmed = types.ModuleType("pending_without_later_probe")
    trimmed.BENCHMARKS = tuple(b for b in sys.modules["pending_stand_in"].BENCHMARKS if b.name != later.name)
    for module in (stage, trimmed):
        monkeypatch.setitem(sys.modules, module.__name__, module)
    adapters = tuple(m for m in registry.ADAPTERS if m != "pending_stand_in")
    monkeypatch.setattr(registry, "ADAPTERS", (*adapters, trimmed.__name__, stage.__name__))

    assert registry.get(later.name) is probe
    assert [b.name for b in registry.all_benchmarks()] == before  # table order kept
    cfg = EvalConfig(benchmarks=[later.name], device="cpu")
    result = run_suite(cfg, save_tiny_tokenizer(tmp_path / "tokenizer"), tmp_path / "eval", run_name="t")
    score = result.get(later.name).metrics["score"]
    assert score.value == 0.5 and score.provenance["samples"] == 3 and "tokenizer_sha256" in score.provenance


def test_an_adapter_module_must_export_its_entries(monkeypatch):
    module = types.ModuleType("registers_by_side_effect")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    with pytest.raises(AttributeError, match="registers_by_side_effect exports no BENCHMARKS"):
        registry.collect((module.__name__,))


def test_benchmarks_readme_lists_every_entry_with_its_status():
    """benchmarks/README.md is where a user finds the suite: it must not drift from the registry."""
    readme = (ROOT / "benchmarks" / "README.md").read_text()
    rows = {m.group(1): line for line in readme.splitlines() if (m := re.match(r"\| [^|]+ \| `(\w+)`", line))}
    assert set(rows) == {b.name for b in ENTRIES}
    for bench in ENTRIES:
        status = "runnable" if bench.run else "pending"
        assert f"| {status}" in rows[bench.name], (bench.name, rows[bench.name])
        assert bench.family in rows[bench.name]
