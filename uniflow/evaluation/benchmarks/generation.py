"""Generation metrics: gFID and Inception Score of a sample source against ADM's ImageNet-256 reference.

A sample source yields uint8 images with sample indices, sharded over ranks. Today's source is an
ADM-format ``.npz`` made elsewhere (``eval.data.imagenet_gen``); a generator on UniFlow latents will
be another source, whose samples :func:`score_samples` also writes as ADM ``.npz`` files so ADM's
TensorFlow evaluator can check the number. Protocol (docs/evaluation.md): 50k samples, 50 per
class, against the ADM reference batch; sampler, steps, guidance and precision stated with it.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import torch

from uniflow.config import ConfigError
from uniflow.evaluation import references
from uniflow.evaluation.benchmarks.readers import Batch
from uniflow.evaluation.config import EvalConfig
from uniflow.evaluation.context import EvalContext
from uniflow.evaluation.entry import Benchmark
from uniflow.evaluation.results import BenchmarkRun, MetricValue
from uniflow.metrics import AdmNpzWriter, FIDMetric, ReferenceStats
from uniflow.metrics.reference import iter_npz_batches, read_npy_header

PROTOCOL_SAMPLES = 50_000
NOT_STATED = "not stated by the sample file"


class SampleSource(Protocol):
    """Generated images, each with a sample index in ``range(num_samples)``."""

    num_samples: int
    image_size: int

    def provenance(self) -> dict[str, Any]:
        """How the samples were made: sampler, steps, guidance, precision, model checkpoint hash."""
        ...

    def batches(self, rank: int, world_size: int, batch_size: int) -> Iterator[Batch]:
        """This rank's samples ``rank, rank + world_size, ...`` as (uint8 images, index, valid)."""
        ...


class NpzSamples:
    """An ADM sample file (uint8 ``arr_0`` N x H x W x 3); every rank streams it and keeps its share."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"generated samples not found: {self.path}")
        try:
            with zipfile.ZipFile(self.path) as archive, archive.open("arr_0.npy") as stream:
                shape, _, _ = read_npy_header(stream)  # the header only: no pixels are read
        except KeyError as err:
            raise ValueError(f"{self.path} is not an ADM sample file: it has no arr_0") from err
        self.num_samples, self.image_size = int(shape[0]), int(shape[1])

    def provenance(self) -> dict[str, Any]:
        return {
            "samples_file": str(self.path),
            "tokenizer_sha256": NOT_STATED,
            "sampler": NOT_STATED,
            "steps": NOT_STATED,
            "guidance": NOT_STATED,
            "precision": NOT_STATED,
        }

    def batches(self, rank: int, world_size: int, batch_size: int) -> Iterator[Batch]:
        start = 0
        for images in iter_npz_batches(self.path, "arr_0", batch_size):
            index = torch.arange(start, start + images.shape[0])
            start += images.shape[0]
            mine = index % world_size == rank
            if mine.any():
                yield images[mine], index[mine], torch.ones(int(mine.sum()), dtype=torch.bool)


def rank_npz_path(path: Path, rank: int, world_size: int) -> Path:
    """One ADM file per rank when distributed (each holds that rank's samples, shuffled)."""
    return path if world_size == 1 else path.with_name(f"{path.stem}.rank{rank}-of-{world_size}{path.suffix}")


def score_samples(
    ctx: EvalContext, source: SampleSource, reference: ReferenceStats, write_npz: Path | None = None
) -> BenchmarkRun:
    """gFID against ``reference`` and Inception Score of every sample of ``source``, exactly once.

    With ``write_npz`` the samples are also written in ADM's format (shuffled, one file per rank).
    """
    metric = FIDMetric(ctx.inception(), ctx.device, inception_score=True)
    writer = None
    if write_npz is not None:
        mine = len(range(ctx.rank, source.num_samples, ctx.world_size))
        path = rank_npz_path(write_npz, ctx.rank, ctx.world_size)
        writer = AdmNpzWriter(path, mine, source.image_size, seed=ctx.cfg.seed)
    for images, index, valid in source.batches(ctx.rank, ctx.world_size, ctx.cfg.batch_size):
        metric.update(images, valid=valid, index=index)
        if writer is not None and valid.any():
            writer.add(images[valid])
    written = str(writer.close()) if writer is not None else None
    metric.sync()
    count = metric.stats.count
    if count != source.num_samples:
        raise RuntimeError(f"{count} samples entered gFID, expected exactly {source.num_samples}")
    fid_provenance = {**ctx.inception_provenance(), "reference_stats": reference.id}
    score = metric.inception_score()
    metrics = {
        "gFID": MetricValue(metric.compute(reference), provenance=fid_provenance),
        "IS": MetricValue(
            score[0] if score else None,
            metric.inception_score_reason,
            {**ctx.inception_provenance(), "is_std": score[1] if score else None, "splits": 10},
        ),
    }
    notes = []
    if count != PROTOCOL_SAMPLES:
        notes.append(f"gFID from {count} samples; the protocol uses {PROTOCOL_SAMPLES} (50 per class)")
    data = {**source.provenance(), "samples": count}
    if written is not None:
        data["samples_written"] = written
    return BenchmarkRun(metrics, data, notes)


NAME = "imagenet_gen"
_KEYS = (
    (f"eval.data.{NAME}", "data", "an ADM .npz of samples"),
    (f"eval.fid_reference.{NAME}", "fid_reference", "ADM's reference batch, VIRTUAL_imagenet256_labeled.npz"),
)


def _check(cfg: EvalConfig) -> None:
    for key, field_name, what in _KEYS:
        value = getattr(cfg, field_name).get(NAME)
        if value is None:
            raise ConfigError(
                f"benchmark {NAME} needs {key} ({what}); there is no generator on UniFlow latents yet, "
                f"so it scores an ADM .npz of samples (eval.data.{NAME}) against ADM's reference batch "
                f"(eval.fid_reference.{NAME})"
            )
        if not Path(value).is_file():
            raise ConfigError(f"{key} not found: {value}")


def _run(ctx: EvalContext) -> BenchmarkRun:
    reference = ReferenceStats.load(ctx.cfg.fid_reference[NAME], ctx.inception(), ctx.cfg.batch_size)
    return score_samples(ctx, NpzSamples(ctx.cfg.data[NAME]), reference)


BENCHMARKS: tuple[Benchmark, ...] = (
    Benchmark(
        name=NAME,
        family="generation",
        title="ImageNet 256 class-conditional, 50k samples",
        metrics=("gFID", "IS"),
        references=references.IMAGENET_GENERATION,
        paper=True,
        data="an ADM-format .npz of generated samples (uint8 arr_0, N x 256 x 256 x 3; 50 per class)",
        fid_reference=(
            "ADM's ImageNet 256 reference batch, VIRTUAL_imagenet256_labeled.npz (its mu/sigma), "
            "or `python -m uniflow data ref-stats` statistics"
        ),
        hint=(
            f"no generator on UniFlow latents exists yet; to score an ADM .npz of samples set "
            f"eval.data.{NAME} and eval.fid_reference.{NAME} and add {NAME} to eval.benchmarks"
        ),
        run=_run,
        check=_check,
    ),
)
