"""Generation metrics: gFID and Inception Score of a sample source against ADM's ImageNet-256 reference.

A sample source yields uint8 images with sample indices, sharded over ranks. ``eval.data.imagenet_gen``
names either an ADM-format ``.npz`` made elsewhere, or a generator run (``python -m uniflow train
experiments/generator/...``), which is sampled on the fly (:class:`GeneratorSamples`: each sample
exactly once over the ranks, equal counts per class) with its own sampling settings; the samples can
also be written as ADM ``.npz`` files (:func:`score_samples`) so ADM's TensorFlow evaluator can check
the number. Protocol (docs/evaluation.md): 50k samples, 50 per class, against the ADM reference
batch; guidance, steps, sampler, label sampling, weights, precision, seeds and hashes stated with it.
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


class GeneratorSamples:
    """Samples of a generator run, made while scoring: ``num_samples`` (equal per class when they divide
    evenly, else uniform random labels), the noise of chunk k from (seed, k), so the numbers do not
    depend on the ranks or the batch layout of the evaluation."""

    def __init__(
        self,
        run: str | Path,
        num_samples: int,
        seed: int,
        precision: str,
        device: torch.device,
        chunk_size: int,
    ) -> None:
        from uniflow.generation.pretrained import LatentGenerator
        from uniflow.generation.sampling import SampleMaker, class_labels

        classes = LatentGenerator.from_pretrained(run).num_classes
        per_class = num_samples // classes if num_samples % classes == 0 else None
        labels = class_labels(classes, num_samples, per_class, seed)
        label_sampling = f"{per_class} per class" if per_class else f"uniform random (seed {seed})"
        # bf16 autocast for the generator and its tokenizer; "16-mixed" has no CPU kernels to fall back on.
        precision = "bf16-mixed" if precision != "32-true" else precision
        self.maker = SampleMaker(run, labels, label_sampling, None, seed, chunk_size, precision, device)
        self.num_samples, self.image_size = num_samples, self.maker.image_size

    def provenance(self) -> dict[str, Any]:
        return self.maker.provenance()

    def batches(self, rank: int, world_size: int, batch_size: int) -> Iterator[Batch]:
        from uniflow.generation.sampling import iter_chunks

        for images, index in iter_chunks(self.maker, rank, world_size):
            yield images, index, torch.ones(len(index), dtype=torch.bool)


def is_generator_run(path: str | Path) -> bool:
    """Whether ``path`` is a generator run directory or its export (else it should be a sample file)."""
    from uniflow.generation.pretrained import EXPORT_NAME, WEIGHTS_FILE
    from uniflow.run_dir import RunDirectory

    try:
        RunDirectory.find_export(path, EXPORT_NAME, WEIGHTS_FILE)
    except FileNotFoundError:
        return False
    return True


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
    (f"eval.data.{NAME}", "data", "an ADM .npz of samples, or a generator run directory"),
    (f"eval.fid_reference.{NAME}", "fid_reference", "ADM's reference batch, VIRTUAL_imagenet256_labeled.npz"),
)


def _check(cfg: EvalConfig) -> None:
    for key, field_name, what in _KEYS:
        value = getattr(cfg, field_name).get(NAME)
        if value is None:
            raise ConfigError(
                f"benchmark {NAME} needs {key} ({what}); it scores a generator run (sampled here) or an "
                f"ADM .npz of samples (eval.data.{NAME}) against ADM's reference batch (eval.fid_reference.{NAME})"
            )
        if field_name == "data" and Path(value).is_dir():
            if not is_generator_run(value):
                raise ConfigError(f"{key}: {value} is a directory without a generator export (generator/)")
        elif not Path(value).is_file():
            raise ConfigError(f"{key} not found: {value}")


def _run(ctx: EvalContext) -> BenchmarkRun:
    reference = ReferenceStats.load(ctx.cfg.fid_reference[NAME], ctx.inception(), ctx.cfg.batch_size)
    data = ctx.cfg.data[NAME]
    if Path(data).is_dir():
        num = ctx.cfg.num_samples.get(NAME, PROTOCOL_SAMPLES)
        source: SampleSource = GeneratorSamples(
            data, num, ctx.cfg.seed, ctx.cfg.precision, ctx.device, ctx.cfg.batch_size
        )
    else:
        source = NpzSamples(data)
    return score_samples(ctx, source, reference)


BENCHMARKS: tuple[Benchmark, ...] = (
    Benchmark(
        name=NAME,
        family="generation",
        title="ImageNet 256 class-conditional, 50k samples",
        metrics=("gFID", "IS"),
        references=references.IMAGENET_GENERATION,
        paper=True,
        data=(
            "a generator run directory (sampled here: eval.num_samples.imagenet_gen, default 50k, equal per "
            "class) or an ADM-format .npz of generated samples (uint8 arr_0, N x 256 x 256 x 3; 50 per class)"
        ),
        fid_reference=(
            "ADM's ImageNet 256 reference batch, VIRTUAL_imagenet256_labeled.npz (its mu/sigma), "
            "or `python -m uniflow data ref-stats` statistics"
        ),
        hint=(
            f"set eval.data.{NAME} to a generator run (experiments/generator/imagenet256_*.yaml) or an ADM "
            f".npz of samples (python -m uniflow sample), eval.fid_reference.{NAME}, and add {NAME} to "
            "eval.benchmarks"
        ),
        run=_run,
        check=_check,
    ),
)
