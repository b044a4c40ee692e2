"""Generation metric machinery: gFID / IS of a sample source against reference statistics, ADM sample files."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from evaluation_fakes import FakeExtractor, save_tiny_tokenizer
from threadpoolctl import threadpool_limits

from uniflow.config import ConfigError
from uniflow.evaluation import enabled_benchmarks, run_suite
from uniflow.evaluation.benchmarks.generation import NpzSamples, score_samples
from uniflow.evaluation.config import EvalConfig
from uniflow.evaluation.context import EvalContext
from uniflow.metrics import FeatureStats, ReferenceStats, frechet_distance, write_adm_npz
from uniflow.tokenizer.model import UniFlowTokenizer

N, SIZE = 10, 32


def _images(seed: int, n: int = N) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, 3, SIZE, SIZE), dtype=np.uint8))


class FakeGenerator:
    """A deterministic sample source: sample i is always the same image, whichever rank makes it."""

    image_size = SIZE

    def __init__(self, num_samples: int = N) -> None:
        self.num_samples = num_samples
        self.images = _images(1, num_samples)

    def provenance(self) -> dict[str, Any]:
        return {"sampler": "euler", "steps": 25, "guidance": 1.5, "precision": "bf16-mixed"}

    def batches(self, rank: int, world_size: int, batch_size: int) -> Iterator:
        mine = torch.arange(rank, self.num_samples, world_size)
        for start in range(0, len(mine), batch_size):
            index = mine[start : start + batch_size]
            yield self.images[index], index, torch.ones(len(index), dtype=torch.bool)


def _reference(path: Path) -> ReferenceStats:
    stats = FeatureStats()
    stats.update(FakeExtractor()(_images(2)))
    reference = ReferenceStats(stats.mean(), stats.cov(), {"source_name": "fake-adm", "count": N})
    reference.save(path)
    return reference


def _expected_gfid(images: torch.Tensor, reference: ReferenceStats) -> float:
    """The number computed directly: statistics of every sample's (fake) features against the reference."""
    stats = FeatureStats()
    stats.update(FakeExtractor()(images))
    return frechet_distance(stats.mean(), stats.cov(), reference.mu, reference.sigma)


@pytest.fixture
def ctx(tmp_path) -> EvalContext:
    directory = save_tiny_tokenizer(tmp_path / "tok")
    cfg = EvalConfig(batch_size=4, device="cpu")
    tokenizer = UniFlowTokenizer.from_pretrained(directory)
    context = EvalContext(cfg, tokenizer, directory, "x", torch.device("cpu"), tmp_path, 0, 1)
    context.extractor = FakeExtractor()
    return context


def test_generated_samples_are_scored_and_written_in_adm_format(ctx, tmp_path):
    ctx.extractor = FakeExtractor(classifier=True)
    reference = _reference(tmp_path / "ref.npz")
    source = FakeGenerator(40)
    with threadpool_limits(1):
        run = score_samples(ctx, source, reference, write_npz=tmp_path / "samples.npz")
    # score_samples refuses any count but 40: every sample entered the statistics exactly once.
    assert run.metrics["gFID"].value == pytest.approx(_expected_gfid(source.images, reference), rel=1e-6)
    assert run.metrics["gFID"].provenance["reference_stats"] == reference.id
    # 10 splits of 4 samples, as torch-fidelity computes it; 1.0 would mean identical predictions.
    assert run.metrics["IS"].reason is None and run.metrics["IS"].value > 1.0
    assert run.provenance["guidance"] == 1.5 and run.provenance["samples"] == 40
    assert "protocol uses 50000" in run.notes[0]
    with np.load(tmp_path / "samples.npz") as written:
        arr = written["arr_0"]
    assert arr.dtype == np.uint8 and arr.shape == (40, SIZE, SIZE, 3)
    originals = source.images.permute(0, 2, 3, 1).numpy()
    order = [next(j for j in range(40) if np.array_equal(row, originals[j])) for row in arr]
    assert sorted(order) == list(range(40)) and order != list(range(40))  # every sample once, shuffled


def test_sample_file_is_read_once_across_ranks(tmp_path):
    path = write_adm_npz(tmp_path / "s.npz", _images(3))
    source = NpzSamples(path)
    assert (source.num_samples, source.image_size) == (N, SIZE)
    seen = [int(i) for rank in range(3) for _, index, _ in source.batches(rank, 3, 4) for i in index]
    assert sorted(seen) == list(range(N))


def test_generation_benchmark_scores_a_sample_file_through_the_suite(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match=r"imagenet_gen needs eval.data.imagenet_gen \(an ADM .npz"):
        enabled_benchmarks(EvalConfig(benchmarks=["imagenet_gen"]))
    samples = write_adm_npz(tmp_path / "s.npz", _images(1))
    with pytest.raises(ConfigError, match=r"imagenet_gen needs eval.fid_reference.imagenet_gen \(ADM's"):
        enabled_benchmarks(EvalConfig(benchmarks=["imagenet_gen"], data={"imagenet_gen": str(samples)}))
    with pytest.raises(ConfigError, match=r"eval.fid_reference.imagenet_gen not found: .*nope.npz"):
        missing = {"imagenet_gen": str(tmp_path / "nope.npz")}
        enabled_benchmarks(
            EvalConfig(
                benchmarks=["imagenet_gen"], data={"imagenet_gen": str(samples)}, fid_reference=missing
            )
        )
    reference = _reference(tmp_path / "ref.npz")
    cfg = EvalConfig(
        benchmarks=["imagenet_gen"],
        data={"imagenet_gen": str(samples)},
        fid_reference={"imagenet_gen": str(tmp_path / "ref.npz")},
        batch_size=4,
        device="cpu",
    )
    directory = save_tiny_tokenizer(tmp_path / "run" / "tokenizer")
    with threadpool_limits(1):
        suite = run_suite(cfg, directory, tmp_path / "eval", run_name="t", extractor=FakeExtractor())
    gen = suite.get("imagenet_gen")
    assert gen.status == "ok"
    assert gen.metrics["gFID"].value == pytest.approx(_expected_gfid(_images(1), reference), rel=1e-6)
    assert gen.metrics["IS"].value is None and "no classifier" in gen.metrics["IS"].reason
    prov = gen.metrics["gFID"].provenance
    assert prov["guidance"] == prov["sampler"] == "not stated by the sample file"
    assert prov["samples"] == N and prov["samples_file"] == str(samples)
    table = (tmp_path / "eval" / "results.md").read_text()
    assert "guidance: not stated by the sample file" in table and "2.42 (= 2.51 - 0.09)" in table
    assert "imagenet_gen IS: n/a: the fake extractor has no classifier" in table
